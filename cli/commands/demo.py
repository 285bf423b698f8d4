"""`demo`: build a realistic sample ledger in a fresh SQLite file and tour what it answers."""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from cli import logs
from cli.output import emit_json, json_option, progress_enabled, table
from ledger.feed import iso


@click.command("demo")
@click.option(
    "--path",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("consent-ledger-demo.db"),
    show_default=True,
    help="The SQLite file to build (replaced if it exists). Without --path, a global "
    "--db sqlite:///FILE names it.",
)
@click.option(
    "--customers",
    type=click.IntRange(1, 2_000_000),
    default=1000,
    show_default=True,
    help="How many customers to generate (about 15 facts each).",
)
@click.option(
    "--seed", type=int, default=7, show_default=True, help="The same seed builds the same ledger."
)
@json_option
@click.pass_context
def demo(ctx: click.Context, path: Path, customers: int, seed: int, as_json: bool) -> None:
    """Build a sample ledger (customers, orders, consents, disclosures, rule breaks, late
    facts, an erasure, a merger) and show what an auditor and a support agent can ask."""
    from ledger import views
    from ledger.config import open_ledger
    from ledger.persistence.sqlite_reads import plain_sqlite_file
    from ledger.samplefeed import generate_lines

    given = ctx.find_root().params.get("db")
    if given is not None and ctx.get_parameter_source("path") is ParameterSource.DEFAULT:
        # The global --db, given on the command line (and no --path): the file to build.
        named = plain_sqlite_file(given)
        if named is None or not named or named == ":memory:":
            raise click.UsageError(
                "the demo builds an SQLite file: give --db sqlite:///FILE or --path FILE"
            )
        path = Path(named)

    for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    shutil.rmtree(f"{path}.keys", ignore_errors=True)
    ledger = open_ledger(f"sqlite:///{path}")
    started = time.perf_counter()
    lines = generate_lines(customers, seed=seed)
    if progress_enabled():
        with click.progressbar(
            lines,
            length=customers * 15,
            label="building the demo ledger",
            file=sys.stderr,
        ) as bar:
            summary = ledger.import_lines(bar)
    else:
        summary = ledger.import_lines(lines)
    seconds = time.perf_counter() - started
    violations = ledger.audit()
    by_rule = Counter(v.rule for v in violations)
    ref = _busiest_customer(ledger)
    events = ledger.customer_events(ref)
    trail = views.trail_rows(events)
    first_consent = min((e.at for e in events if e.FACT_TYPE.startswith("consent.")), default=None)
    as_of = (first_consent + timedelta(days=30)) if first_consent else None
    consents_then = views.consent_rows(events, as_of) if as_of else []
    from ledger.persistence.seals import verify_ledger

    integrity = verify_ledger(ledger)
    document: dict[str, Any] = {
        "database": f"sqlite:///{path}",
        "facts": summary.accepted,
        "customers": customers,
        "seconds": round(seconds, 2),
        "violations": dict(sorted(by_rule.items())),
        "customer": ref,
        "trail": trail,
        "as_of": iso(as_of) if as_of else None,
        "consents_as_of": consents_then,
        "verify": integrity.to_json(),
    }
    logs.summarise(facts=summary.accepted, violations=len(violations))
    if as_json:
        emit_json(document)
        return
    db = f"--db sqlite:///{path}"
    click.echo(
        f"Built {path}: {summary.accepted} facts about {customers} customers in {seconds:.1f} s.\n"
    )
    click.echo(f"Support: who has customer {ref}'s data, and why?  (customer trail {ref})")
    click.echo(table(trail, ["at", "recipient", "recipient_kind", "purpose", "basis", "order"]))
    if as_of is not None:
        click.echo(
            f"\nAuditor: what was {ref}'s consent on {iso(as_of)}?  "
            f"(consent show {ref} --as-of {iso(as_of)})"
        )
        click.echo(table(consents_then, ["purpose", "channel", "status", "since"]))
    click.echo(f"\nAuditor: which facts broke the rules?  (audit check): {len(violations)}")
    click.echo(
        table(
            [{"rule": r, "violations": n} for r, n in sorted(by_rule.items())],
            ["rule", "violations"],
        )
    )
    state = "nothing altered" if integrity.ok else f"{len(integrity.problems)} problems"
    click.echo(
        f"\nAuditor: has anything been altered?  (verify): {state}; {integrity.facts} facts "
        f"under the signed root {integrity.head[:16]}..."
    )
    # As it was run (`.venv/bin/consent-ledger`, say), so that each line can be pasted.
    program = sys.argv[0] if Path(sys.argv[0]).name == "consent-ledger" else "consent-ledger"
    click.echo("\nTry next:")
    for command in (
        f"customer show {ref}",
        f"customer trail {ref} --json",
        "audit check",
        f"consent show {ref} --as-of 2024-06-01",
        "verify --json",
        "audit report --out audit.html",
    ):
        click.echo(f"  {program} {db} {command}")


def _busiest_customer(ledger: Any) -> str:
    """A customer with the longest disclosure trail among the first hundred: a good tour."""
    from ledger import views

    best, best_count = "", -1
    for index, ref in enumerate(ledger.customer_refs()):
        if index >= 100:
            break
        count = len(views.trail_rows(ledger.customer_events(ref)))
        if count > best_count:
            best, best_count = ref, count
    return best


commands = [demo]
