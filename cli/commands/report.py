"""`audit report --out FILE.html` (the auditor's report) and `report processing` (GDPR Art. 30
records of processing activities); the documents are built in `ledger.reports`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cli import logs
from cli.commands.audit import audit
from cli.output import check_writable, emit_json, json_option, put_file
from cli.params import Choice
from ledger.persistence.database import own_files


@audit.command("report")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="The HTML file to write (one self-contained file).",
)
@json_option
@click.pass_obj
def report_command(context: Any, out: Path, as_json: bool) -> None:
    """An auditor's report in one HTML file that opens offline: headline figures, violations
    by rule with their facts, charts of consent and disclosures over time, the recipients."""
    check_writable(out, keep_off=own_files(context.database))  # before building it
    from ledger.exports import recorded_exports
    from ledger.reports import auditor_report, to_html

    figures = context.ledger.read_models.figures()
    exports = recorded_exports(context.ledger)
    document = auditor_report(figures, datetime.now(UTC), exports)
    put_file(out, to_html(document).encode())
    logs.log.info("audit.report", violations=len(figures.violations), bytes=out.stat().st_size)
    if as_json:
        emit_json({"out": str(out), "violations": len(figures.violations), "head": figures.head})
    else:
        click.echo(f"wrote {out} ({len(figures.violations)} violations, event {figures.head})")


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
    from ledger.exports import recorded_exports
    from ledger.reports import processing_records, to_html, to_markdown

    figures = context.ledger.read_models.figures(with_violations=False)
    exports = recorded_exports(context.ledger)
    document = processing_records(figures, datetime.now(UTC), exports)
    text = to_html(document) if fmt == "html" else to_markdown(document)
    logs.log.info("report.processing", format=fmt, recipients=len(figures.recipients))
    if out is None:
        click.echo(text)
    else:
        put_file(out, text.encode())
        click.echo(f"wrote {out}")


commands = [report]
