"""`audit check`: every fact that broke a rule, judged in business time."""

from __future__ import annotations

from collections import Counter
from typing import Any

import click

from cli import logs
from cli.output import emit_json, json_option, table
from cli.params import MOMENT, known_at_option, pass_ledger
from ledger.feed import iso


@click.group("audit")
def audit() -> None:
    """An auditor's tools: rule violations and the auditor's report."""


@audit.command("check")
@click.option(
    "--as-of", "as_of", type=MOMENT, help="Judge only facts at or before this business time."
)
@known_at_option
@json_option
@pass_ledger
def check(ledger: Any, as_of: Any, known_at: Any, as_json: bool) -> None:
    """Every recorded fact that broke a rule of the policy (SPEC §3)."""
    violations = ledger.audit(as_of, known_at)
    logs.summarise(violations=len(violations))
    rows = [
        {"rule": v.rule, "customer": v.customer, "fact_id": v.fact_id, "at": iso(v.at)}
        for v in violations
    ]
    if as_json:
        emit_json({"violations": rows})
        return
    counts = Counter(v.rule for v in violations)
    click.echo(f"{len(rows)} violations")
    for rule, count in sorted(counts.items()):
        click.echo(f"\n{rule}: {count}")
        click.echo(table([r for r in rows if r["rule"] == rule], ["at", "customer", "fact_id"]))


commands = [audit]
