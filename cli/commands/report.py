"""`audit report --out FILE.html` (the auditor's report) and `report processing` (GDPR Art. 30
records of processing activities); the documents are built in `ledger.reports`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cli import logs
from cli.commands.audit import audit
from cli.output import check_writable, emit_json, json_option, progress_enabled, put_file
from cli.params import Choice
from ledger.errors import IntegrityFailure
from ledger.persistence.database import own_files


@audit.command("report")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="The HTML file to write (one self-contained file).",
)
@click.option(
    "--trust-read-models",
    "trust",
    is_flag=True,
    help="Do not rebuild the read models from the events to compare them (about as long as "
    "a rebuild): the report says they were not compared.",
)
@json_option
@click.pass_obj
def report_command(context: Any, out: Path, trust: bool, as_json: bool) -> None:
    """An auditor's report in one HTML file that opens offline: the ledger's integrity
    (verified, and its signed checkpoint), headline figures, violations by rule with their
    facts, charts of consent and disclosures over time, the recipients.

    Every read model is rebuilt from the events (in a transaction rolled back) and compared
    row for row with the one answering, unless --trust-read-models; if the violations read
    model differs, the violations shown are judged again from the events. The report is
    written whatever it finds; exit 4 if the ledger does not verify or a read model
    disagrees with the events (the report says which, first)."""
    check_writable(out, keep_off=own_files(context.database))  # before building it
    from ledger.reports import auditor_report, to_html

    def step(what: str) -> None:
        if progress_enabled():
            click.echo(what, err=True)

    now = datetime.now(UTC)
    figures, integrity = context.ledger.audited_figures(now, step, compare=not trust)
    exports, held = _exports_of_registry(context.ledger, figures)
    document = auditor_report(figures, now, exports, integrity=integrity, held=held)
    put_file(out, to_html(document).encode())
    violations = len(figures.violations)
    logs.log.info(
        "audit.report",
        violations=violations,
        bytes=out.stat().st_size,
        verified=integrity["ok"],
        disagreements=integrity["disagreements"],
    )
    if as_json:
        emit_json(
            {
                "out": str(out),
                "violations": violations,
                "head": figures.head,
                "verified": integrity["ok"],
                "read_models_agree": integrity["read_models_agree"],
            }
        )
    else:
        click.echo(f"wrote {out} ({violations} violations, event {figures.head})")
    if not integrity["ok"]:
        raise IntegrityFailure(
            f"the ledger failed verification ({len(integrity['problems'])} problem(s)): "
            f"{out} says so first; 'consent-ledger verify' names them"
        )
    if integrity["read_models_agree"] is False:
        raise IntegrityFailure(
            f"the violations read model disagrees with the events on "
            f"{integrity['disagreements']} violation(s), altered outside consent-ledger: "
            f"{out} shows the violations judged from the events, and says so first; "
            "'consent-ledger projections rebuild violations' makes the read model again"
        )
    if integrity["read_models_differing"]:
        names = ", ".join(integrity["read_models_differing"])
        raise IntegrityFailure(
            f"read models disagree with the events ({names}), altered outside consent-ledger: "
            f"{out} says so first; 'consent-ledger projections rebuild' makes them again"
        )


def _exports_of_registry(ledger: Any, figures: Any) -> tuple[list[Any], dict[str, int]]:
    """The due-diligence exports, and the customers each acquirer's held, that the
    recipient registry of `figures` counts with its own rows (`reports.with_exports`): those
    recorded by the registry's position. Read after it, each statement may find exports
    recorded since (an export listed beyond the registry's event, the customers held counted
    of exports not listed)."""
    from ledger.exports import customers_held, recorded_exports
    from projections.recipient_registry import RecipientRegistry

    upto = figures.positions[RecipientRegistry.name]
    return recorded_exports(ledger, upto), customers_held(ledger, upto)


@click.group("report")
def report() -> None:
    """Reports for the data protection officer."""


@report.command("processing", short_help="The records of processing activities (GDPR Art. 30).")
@click.option(
    "--format",
    "fmt",
    type=Choice(["markdown", "html"]),
    default="markdown",
    show_default=True,
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file instead of stdout.",
)
@click.pass_obj
def processing(context: Any, fmt: str, out: Path | None) -> None:
    """The records of processing activities (GDPR Art. 30): purposes, data categories,
    recipients by kind and by name with counts, lawful bases, transfers."""
    if out is not None:
        check_writable(out, keep_off=own_files(context.database))
    from ledger.reports import processing_records, to_html, to_markdown

    figures = context.ledger.read_models.figures(with_violations=False)
    exports, held = _exports_of_registry(context.ledger, figures)
    document = processing_records(figures, datetime.now(UTC), exports, held)
    text = to_html(document) if fmt == "html" else to_markdown(document)
    logs.log.info("report.processing", format=fmt, recipients=len(figures.recipients))
    if out is None:
        click.echo(text)
    else:
        put_file(out, text.encode())
        click.echo(f"wrote {out}")


commands = [report]
