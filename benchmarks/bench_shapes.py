"""Benchmark: the cost of one entity's long history (a customer, an order, an acquirer).

    .venv/bin/python benchmarks/bench_shapes.py --facts 10000
    .venv/bin/python benchmarks/bench_shapes.py --facts 5000 --shapes consent-toggles,email-changes

A retailer's feed is many customers with a few facts each, and `benchmarks/run.py` measures
that. This script measures the other shape: every fact about ONE customer (or one order of
theirs), where any work that scans the entity's history per fact makes recording quadratic
(30k consent facts for one customer once took 149 s to import, a second file of 30k more
9 min 22 s; `audit check` of one order's 40k disclosures, 33 s).

For each shape, at N and at 2N facts, into a fresh SQLite ledger: the import of a first file
of that many facts, then of a second file of as many more (the history read back from the
ledger), then one `record` of a fact of the shape (the aggregate loaded from its stream), then
`audit check` (its read model caught up from event zero: every contact and disclosure judged
against the history), then the customer's trail and consent state as the commands compute
them. "2N/N" is each time's
ratio between the two sizes: about 2 where the cost grows linearly with the history, about 4
where it grows with its square (queries: best of three). Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from machine import best_of, watched

T0 = datetime(2025, 1, 1, tzinfo=UTC)
ADDRESS = {"line1": "1 Long Row", "city": "Leeds", "postcode": "LS1 1AA", "country": "GB"}


def _at(second: int) -> str:
    return (T0 + timedelta(seconds=second)).isoformat()


def _registration() -> dict[str, Any]:
    return {
        "type": "customer.registered",
        "customer": "C1",
        "name": "Long History",
        "email": "long.history@example.org",
        "address": ADDRESS,
    }


def _consent(number: int, purpose: str = "marketing", channel: str = "email") -> dict[str, Any]:
    if number % 2:
        return {
            "type": "consent.withdrawn",
            "customer": "C1",
            "purpose": purpose,
            "channel": channel,
            "method": "web",
        }
    return {
        "type": "consent.given",
        "customer": "C1",
        "purpose": purpose,
        "channel": channel,
        "method": "web",
        "policy_version": "2024-01",
    }


def consent_toggles(number: int) -> list[dict[str, Any]]:
    """Marketing by email given and withdrawn in turn."""
    return [_consent(number)]


def email_changes(number: int) -> list[dict[str, Any]]:
    """A new email, then a marketing consent fact (the suppression list reads the email)."""
    return [
        {"type": "customer.updated", "customer": "C1", "email": f"n{number}@example.org"},
        _consent(number),
    ]


def marketing_contacts(number: int) -> list[dict[str, Any]]:
    """Marketing contacts judged against consent (facts of both kinds, mixed)."""
    if number % 10 == 0:
        return [_consent(0, channel="post")]
    return [
        {"type": "marketing.contact", "customer": "C1", "channel": "post", "campaign": f"k{number}"}
    ]


def orders(number: int) -> list[dict[str, Any]]:
    """Orders placed, authorised and dispatched."""
    order = f"O{number}"
    return [
        {
            "type": "order.placed",
            "order": order,
            "customer": "C1",
            "total": "9.99",
            "currency": "GBP",
        },
        {"type": "payment.authorisation", "order": order, "issuer": "Visa", "result": "authorised"},
        {
            "type": "order.dispatched",
            "order": order,
            "carrier": "Parcelfast",
            "tracking": f"T{number}",
        },
    ]


def one_order(number: int) -> list[dict[str, Any]]:
    """Disclosures of one order: payment retries, identity checks, dispatches."""
    kinds = (
        {"type": "payment.authorisation", "order": "O1", "issuer": "Visa", "result": "refused"},
        {
            "type": "identity.check",
            "order": "O1",
            "provider": "Experian",
            "source": "credit_reference",
            "result": "pass",
        },
        {"type": "order.dispatched", "order": "O1", "carrier": "Parcelfast", "tracking": "T1"},
    )
    return [kinds[number % len(kinds)]]


def transfers(number: int) -> list[dict[str, Any]]:
    """Disclosures to one acquirer."""
    return [
        {
            "type": "transfer.disclosure",
            "customer": "C1",
            "acquirer": "Bigger Shop plc",
            "categories": ["name", "email"],
        }
    ]


def late_initiations(number: int) -> list[dict[str, Any]]:
    """Disclosures to one acquirer, and its initiations, every one dated after them all."""
    if number % 2 == 0:
        return transfers(number)
    later = _at(10**8 + number)
    return [
        {"type": "transfer.initiated", "acquirer": "Bigger Shop plc", "scope": "all", "at": later}
    ]


SHAPES: dict[str, Callable[[int], list[dict[str, Any]]]] = {
    "consent-toggles": consent_toggles,
    "email-changes": email_changes,
    "marketing-contacts": marketing_contacts,
    "orders": orders,
    "one-order": one_order,
    "transfers": transfers,
    "late-initiations": late_initiations,
}
PREAMBLE: dict[str, list[dict[str, Any]]] = {
    "one-order": [
        {
            "type": "order.placed",
            "order": "O1",
            "customer": "C1",
            "total": "9.99",
            "currency": "GBP",
        },
    ],
    "transfers": [
        {"type": "transfer.initiated", "acquirer": "Bigger Shop plc", "scope": "all customers"},
    ],
}


def feed(shape: str, start: int, facts: int, *, first: bool) -> Iterator[bytes]:
    """Lines `start`.. of the shape until `facts` facts (the preamble's included)."""
    make = SHAPES[shape]
    objs: list[dict[str, Any]] = [_registration(), *PREAMBLE.get(shape, [])] if first else []
    number = start
    while len(objs) < facts:
        objs.extend(make(number))
        number += 1
    for index, obj in enumerate(objs[:facts]):  # (an `at` of the shape's own is kept)
        second = start * 4 + index
        yield orjson.dumps({"id": f"{shape}-{start}-{index}", "at": _at(second), **obj}) + b"\n"


def timed(action: Callable[[], Any], rounds: int = 1) -> float:
    """Seconds of the action, best of `rounds`."""
    return best_of(rounds, action)


def imported(ledger: Any, lines: Iterator[bytes]) -> None:
    summary = ledger.import_lines(lines)
    if summary.errors:  # a benchmark of a refused file would measure nothing
        raise SystemExit(f"the generated feed was refused: {summary.errors[0]}")


def measure(shape: str, facts: int, folder: Path) -> dict[str, float]:
    from cli.main import LedgerContext
    from ledger import views
    from ledger.config import open_ledger, upgrade
    from ledger.persistence.database import Database

    url = f"sqlite:///{folder / f'{shape}-{facts}.db'}"
    upgrade(Database(url))
    ledger = open_ledger(url)
    figures = {
        "first file": timed(lambda: imported(ledger, feed(shape, 0, facts, first=True))),
        "second file": timed(lambda: imported(ledger, feed(shape, facts, facts, first=False))),
    }
    one = next(feed(shape, 3 * facts + 1, 1, first=False))
    obj = {k: v for k, v in orjson.loads(one).items() if k not in ("id", "at")}
    figures["one record"] = timed(lambda: ledger.record_fact(obj))
    figures["audit"] = timed(ledger.audit)  # the violations model caught up from event zero
    ledger.database.dispose()
    context = LedgerContext(url)
    try:
        figures["trail"] = timed(
            lambda: views.trail_rows(
                context.customer_facts("C1"), exports=context.customer_exports("C1")
            ),
            3,
        )
        as_of = T0 + timedelta(days=365)
        figures["consent as-of"] = timed(
            lambda: views.consent_rows(context.customer_facts("C1"), as_of), 3
        )
    finally:
        context.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=10_000, help="N: facts per file")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated")
    parser.add_argument("--work", type=Path, help="a folder for the ledgers (default: temporary)")
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    folder = args.work or Path(tempfile.mkdtemp(prefix="bench-shapes-"))
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["CONSENT_LEDGER_KEY_DIR"] = str(folder / "keys")
    n = args.facts
    print(f"one entity's history: N = {n:,} facts a file, then 2N; seconds (2N/N)")
    for shape in shapes:
        small = measure(shape, n, folder)
        large = measure(shape, 2 * n, folder)
        cells = "  ".join(
            f"{name} {small[name]:.2f}/{large[name]:.2f} s ({large[name] / small[name]:.1f}x)"
            for name in small
        )
        print(f"  {shape:<19} {cells}", flush=True)
    if args.work is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    with watched():
        main()
