"""Commands that record facts: `import`, `record`, `disclose`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from cli import logs
from cli.output import emit_json, json_option, progress_enabled, table
from cli.params import MOMENT, Choice, pass_ledger
from ledger.errors import InputError, InvalidFeedError
from ledger.feed import iso, load_object
from ledger.free_text import fields_shaped_like_personal_data
from ledger.vocabulary import DATA_CATEGORIES


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Validate and count; record nothing.")
@json_option
@pass_ledger
def import_feed(ledger: Any, file: Path, dry_run: bool, as_json: bool) -> None:
    """Record a feed file (JSON Lines): all of it, or nothing if any line is invalid.

    Lines whose id is already recorded are skipped and counted as duplicates, even months
    later. If any line is invalid, every invalid line is reported with its number and
    reason, nothing is recorded and the exit code is 1. A progress bar shows on stderr when
    it is a terminal.
    """
    try:
        size = os.path.getsize(file)
        with open(file, "rb") as handle:
            if progress_enabled() and size > 0:
                with click.progressbar(length=size, label="importing", file=sys.stderr) as bar:
                    summary_or_error = _import(ledger, handle, dry_run, bar.update)
            else:
                summary_or_error = _import(ledger, handle, dry_run, None)
    except OSError as failure:  # reading it failed (partway: the transaction was rolled back)
        raise InputError(f"cannot read {file}: {failure.strerror or failure}") from None
    if isinstance(summary_or_error, InvalidFeedError):
        error = summary_or_error
        # All or nothing: nothing was accepted.
        from ledger.application import ImportSummary

        refused = ImportSummary(0, error.duplicates, len(error.errors), error.errors, dry_run)
        document = refused.to_json()
        logs.summarise(rejected=len(error.errors), dry_run=dry_run)
        # The report of invalid lines is the command's result: stdout. The one `Error:`
        # line (and the exit code) follow on stderr.
        if as_json:
            emit_json(document)
        else:
            click.echo(f"nothing recorded: {len(error.errors)} invalid lines")
            click.echo(table(document["errors"], ["line", "error"]))
        raise error
    summary = summary_or_error
    logs.summarise(
        accepted=summary.accepted,
        duplicates=summary.duplicates,
        dry_run=dry_run,
    )
    if summary.shaped:
        _warn_of_shaped_free_text(summary)
    if as_json:
        emit_json(summary.to_json())
    else:
        verb = "would record" if dry_run else "recorded"
        click.echo(
            f"{verb} {summary.accepted} facts, skipped {summary.duplicates} duplicates, "
            f"rejected {summary.rejected}"
        )


def _warn_of_shaped_free_text(summary: Any) -> None:
    """A free-text field (a consent's method, a recipient's name...) that holds what looks
    like an email or phone number is most likely a shifted column: recorded in clear, as
    the feed said, and kept through an erasure. Said on stderr (lines and fields only)."""
    logs.log.warning(
        "free-text fields hold what looks like an email or phone number, kept in clear (not "
        "sealed, and an erasure does not remove it; a pseudonymous export withholds it): a "
        "shifted column in the feed?",
        lines=summary.shaped,
        first=[f"{number}: {', '.join(fields)}" for number, fields in summary.shaped_lines],
    )


def _import(ledger: Any, handle: Any, dry_run: bool, progress: Any) -> Any:
    try:
        return ledger.import_lines(handle, dry_run=dry_run, progress=progress)
    except InvalidFeedError as error:
        return error


def _record(ledger: Any, fact: dict[str, Any], as_json: bool, dry_run: bool = False) -> None:
    """Record a command's fact. An id already recorded must name that same fact (a retry:
    a duplicate, nothing changes); another fact under it is refused (`DuplicateFactError`),
    lest a withdrawal sent under a reused id be reported as done and never recorded."""
    recorded_fact, fresh = ledger.record_fact(fact, dry_run=dry_run)
    shaped = fields_shaped_like_personal_data(recorded_fact.type, recorded_fact.data)
    if shaped and fresh:
        logs.log.warning(
            "a free-text field holds what looks like an email or phone number, kept in clear "
            "(not sealed, and an erasure does not remove it)",
            fields=shaped,
        )
    logs.summarise(fact_id=logs.hashed(recorded_fact.id), type=recorded_fact.type, new=fresh)
    if recorded_fact.customer is not None:
        logs.summarise(customer=logs.hashed(recorded_fact.customer))
    document = {
        "recorded": fresh and not dry_run,
        "duplicate": not fresh,
        "fact_id": recorded_fact.id,
        "type": recorded_fact.type,
        "at": recorded_fact.to_json()["at"],
    }
    if not fresh:  # the fact recorded under that id, not the one given now
        found = ledger.recorded_fact(recorded_fact.id)
        if found is not None:
            document["type"], document["at"] = found[0], iso(found[1])
    if as_json:
        emit_json(document)
    elif not fresh:
        click.echo(f"{recorded_fact.id} was already recorded; nothing changed")
    else:
        click.echo(
            f"{'checked' if dry_run else 'recorded'} {recorded_fact.type} {recorded_fact.id}"
        )


@click.command("record")
@click.argument("fact")
@click.option("--dry-run", is_flag=True, help="Check the fact and the rules; record nothing.")
@json_option
@pass_ledger
def record(ledger: Any, fact: str, dry_run: bool, as_json: bool) -> None:
    """Record one fact, given as a feed line's JSON (or - to read it from stdin).

    `id` and `at` default to a new id and now. A fact that would break a rule is refused
    (exit 3) and nothing is recorded. An id already recorded: the same fact again is a
    duplicate (nothing changes, exit 0); another fact under that id is refused (exit 1).
    """
    if fact == "-" and sys.stdin is None:  # started with stdin closed (`<&-`)
        raise InputError("stdin is closed: give the fact as the argument, or pipe it to -")
    text = sys.stdin.read() if fact == "-" else fact
    text = text.removeprefix("\ufeff")  # a byte order mark, as `import` accepts one
    try:
        obj = load_object(text)
    except orjson.JSONDecodeError:
        raise InputError("FACT is not valid JSON") from None
    if not isinstance(obj, dict):
        raise InputError("FACT must be a JSON object")
    _record(ledger, obj, as_json, dry_run)


_DISCLOSURE_TYPES = {
    "affiliate": "affiliate.disclosure",
    "acquirer": "transfer.disclosure",
    "carrier": "order.dispatched",
    "card_issuer": "payment.authorisation",
    "identity_verification": "identity.check",
    "credit_reference_agency": "cra.disclosure",
}
_RECIPIENT_FIELD = {
    "affiliate.disclosure": "affiliate",
    "transfer.disclosure": "acquirer",
    "order.dispatched": "carrier",
    "payment.authorisation": "issuer",
    "identity.check": "provider",
    "cra.disclosure": "agency",
}


@click.command("disclose")
@click.argument("kind", type=Choice(sorted(_DISCLOSURE_TYPES)))
@click.argument("recipient")
@click.option("--customer", help="Customer reference (affiliate, acquirer).")
@click.option(
    "--order",
    help="Order reference (carrier, card_issuer, identity_verification, credit_reference_agency).",
)
@click.option(
    "--categories",
    help=f"Comma-separated, of: {', '.join(sorted(DATA_CATEGORIES))} (affiliate, acquirer).",
)
@click.option("--tracking", help="Carrier tracking number (required for carrier).")
@click.option("--result", help="authorised/refused (card_issuer); pass/fail/refer (identity).")
@click.option(
    "--source",
    type=Choice(["electoral_roll", "credit_reference"]),
    help="Identity check source.",
)
@click.option("--at", "at", type=MOMENT, help="Business time (default: now).")
@click.option("--id", "fact_id", help="Fact id (default: a new one).")
@json_option
@pass_ledger
def disclose(
    ledger: Any,
    kind: str,
    recipient: str,
    customer: str | None,
    order: str | None,
    categories: str | None,
    tracking: str | None,
    result: str | None,
    source: str | None,
    at: Any,
    fact_id: str | None,
    as_json: bool,
) -> None:
    """Record a disclosure of personal data to RECIPIENT, a third party of KIND.

    \b
    consent-ledger disclose affiliate Offspring --customer C100 --categories name,postal_address
    consent-ledger disclose carrier DPD --order O500 --tracking DPD123
    The rules are applied first: a disclosure that would break one is refused (exit 3).
    """
    fact_type = _DISCLOSURE_TYPES[kind]
    if categories is not None and kind not in ("affiliate", "acquirer"):
        raise click.UsageError(
            f"--categories is for affiliate and acquirer disclosures; a {kind} disclosure's "
            "categories are fixed by its type (SPEC §2)"
        )
    fact: dict[str, Any] = {"type": fact_type, _RECIPIENT_FIELD[fact_type]: recipient}
    optional = {
        "customer": customer,
        "order": order,
        "tracking": tracking,
        "result": result,
        "source": source,
        "categories": categories.split(",") if categories else None,
    }
    fact.update({k: v for k, v in optional.items() if v is not None})
    if at is not None:
        fact["at"] = at.isoformat()
    if fact_id is not None:
        fact["id"] = fact_id
    _record(ledger, fact, as_json)


commands = [import_feed, record, disclose]
