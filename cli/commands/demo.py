"""`demo`: build a realistic sample ledger in a fresh SQLite file and tour what it answers."""

from __future__ import annotations

import os
import shlex
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
from cli.params import IntRange
from ledger.config import KEY_SETTINGS, keys_beside
from ledger.feed import iso


@click.command("demo")
@click.option(
    "--path",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("consent-ledger-demo.db"),
    show_default=True,
    help="The SQLite file to build (replaced if an earlier demo built it; any other file is "
    "refused). Without --path, a global --db sqlite:///FILE names it (not CONSENT_LEDGER_DB: "
    "the demo never builds in the ledger your environment names).",
)
@click.option(
    "--customers",
    type=IntRange(1, 2_000_000),
    default=1000,
    show_default=True,
    help="How many customers to generate (about 15 facts each).",
)
@click.option(
    "--seed",
    type=IntRange(0),
    default=7,
    show_default=True,
    help="The same seed builds the same ledger.",
)
@json_option
@click.pass_context
def demo(ctx: click.Context, path: Path, customers: int, seed: int, as_json: bool) -> None:
    """Build a sample ledger (customers, orders, consents, disclosures, rule breaks, late
    facts, an erasure, a merger) and show what an auditor and a support agent can ask."""
    from ledger import views
    from ledger.config import open_ledger
    from ledger.persistence.sqlite_reads import DEMO_MARK, DEMO_MARK_VALUE, plain_sqlite_file
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

    keys = Path(f"{path}.keys")
    _refuse_unless_demo(path, keys)
    with keys_beside(keys):
        # The key folder first: a demo stopped between the two leaves a marked ledger behind,
        # which the next demo replaces, never a key folder without the ledger it opens.
        shutil.rmtree(keys, ignore_errors=True)
        for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            stale.unlink(missing_ok=True)
        ledger = open_ledger(f"sqlite:///{path}")
        ledger.database.set_meta(DEMO_MARK, DEMO_MARK_VALUE)
        (keys / _KEYS_MARK).write_text("the keys of a sample ledger that `demo` built\n")
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
        first_consent = min(
            (e.at for e in events if e.FACT_TYPE.startswith("consent.")), default=None
        )
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
    configured = [name for name in KEY_SETTINGS if name in os.environ]
    if configured:  # your ledgers' key settings would not open the demo's: set its own
        unset = "".join(f"-u {name} " for name in configured)
        program = f"env {unset}CONSENT_LEDGER_KEY_DIR={shlex.quote(str(keys))} {program}"
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


_KEYS_MARK = "built-by-demo"  # in the demo's key folder


def _refuse_unless_demo(path: Path, keys: Path) -> None:
    """The demo replaces its file and that file's key folder: only ones it built itself.
    Anything else there (a real ledger, its keys, any other file) is left as it is."""
    from ledger.errors import InputError
    from ledger.persistence.sqlite_reads import built_by_demo

    empty = path.is_file() and not path.is_symlink() and path.stat().st_size == 0
    if (path.exists() or path.is_symlink()) and not empty:  # (empty: a demo cut short, say)
        if path.is_file() and not path.is_symlink() and built_by_demo(path):
            return
        what = f"{path} holds something the demo did not build"
    elif not keys.exists() or (keys / _KEYS_MARK).is_file():  # (its ledger removed by hand)
        return
    else:
        what = f"{keys} holds keys of a ledger the demo did not build"
    raise InputError(
        f"{what}; the demo replaces its file and key folder, so it leaves these alone: "
        "give --path a new file name (or remove them yourself)"
    )


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
