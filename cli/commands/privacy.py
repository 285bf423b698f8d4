"""Data subjects' rights: `customer access-export`, `recipients list`, `recipients
notifications`, `recipients notified`, `suppression check`, and the master key's `keys
rotate`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import click
import orjson

from cli import logs
from cli.commands.customer import customer
from cli.output import (
    check_writable,
    discard,
    emit_json,
    json_option,
    table,
    write_file,
)
from cli.params import MOMENT, Choice, pass_ledger
from ledger.errors import InputError
from ledger.feed import iso
from ledger.vocabulary import RECIPIENT_KINDS


@customer.command("access-export", short_help="GDPR Art. 15 subject-access pack of customer REF.")
@click.argument("ref")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The JSON file to write; a Markdown rendering is written beside it (FILE.md).",
)
@click.option(
    "--record/--no-record",
    default=True,
    show_default=True,
    help="Record the request answered, as a subject.access_requested fact.",
)
@json_option
@pass_ledger
def access_export(ledger: Any, ref: str, out: Path, record: bool, as_json: bool) -> None:
    """GDPR Art. 15 subject-access pack of customer REF: personal data (or that it is
    erased), consents with history, orders, and every disclosure with its named recipient."""
    from ledger.persistence.database import own_files, signals_held

    readable = out.with_name(out.name + ".md")
    for path in (out, readable):  # checked first: nothing is recorded for a pack not written
        check_writable(path, keep_off=own_files(ledger.database))
    from ledger.privacy import access_pack_markdown
    from ledger.temporaries import FILE_TEMPORARY, partial_name, remove_abandoned

    remove_abandoned(out.parent, FILE_TEMPORARY)  # what an access pack killed left there
    partial = [partial_name(path) for path in (out, readable)]

    held = contextlib.ExitStack()

    def deliver(pack: dict[str, Any]) -> None:
        # Inside the transaction that records the request: a file that cannot be written
        # leaves the request unrecorded (Art. 15: recorded as served only when it was). Each
        # file is written whole under a temporary name, put in place once that commits.
        json_text = orjson.dumps(pack, option=orjson.OPT_INDENT_2) + b"\n"
        contents = (json_text, access_pack_markdown(pack).encode())
        for temporary, path, content in zip(partial, (out, readable), contents, strict=True):
            write_file(temporary, content, private=True, shown=path)  # personal data
        # Ctrl-C or SIGTERM held off from here (the writer's lock had) until the pack is in
        # place: never a request recorded with no pack.
        held.enter_context(signals_held())

    try:
        with held:
            pack = ledger.access_pack(ref, record_request=record, deliver=deliver)
            for temporary, path in zip(partial, (out, readable), strict=True):
                try:
                    os.replace(temporary, path)
                except OSError as error:
                    raise InputError(
                        f"the request was recorded as answered, but {path} could not be "
                        f"written ({error.strerror or error}); write the pack again with "
                        "--no-record"
                    ) from None
    finally:
        for temporary in partial:  # what a failure left half written, or not placed
            discard(temporary)
    logs.summarise(customer=logs.hashed(ref), disclosures=len(pack["disclosures"]))
    document = {
        "customer": ref,
        "erased": pack["erased"],
        "disclosures": len(pack["disclosures"]),
        "files": [str(out), str(readable)],
    }
    if as_json:
        emit_json(document)
    else:
        click.echo(f"access pack of customer {ref}: {out} and {readable}")


@click.group(
    "recipients",
    short_help="The recipient registry; Art. 19 notifications of erasure.",
)
def recipients() -> None:
    """Recipients of personal data: the registry of every one seen, and Art. 19
    notifications of erasure and rectification."""


_REGISTRY_COLUMNS = (
    "recipient_kind",
    "recipient",
    "disclosures",
    "customers",
    "exports",
    "exported_customers",
    "first_at",
    "last_at",
    "categories",
    "purposes",
    "bases",
)


@recipients.command(
    "list", short_help="Every recipient the ledger has seen, with its kind and counts."
)
@click.option(
    "--kind",
    type=Choice(sorted(RECIPIENT_KINDS)),
    help="Only the recipients of this kind.",
)
@json_option
@pass_ledger
def list_recipients(ledger: Any, kind: str | None, as_json: bool) -> None:
    """Every recipient the ledger has seen receive personal data (SPEC §1's registry), by
    kind then name: how many disclosures on customers' trails and of how many customers,
    how many due-diligence exports (to an acquirer) and how many customers they held, the
    first and the last, and the categories, purposes and bases. From the recipient registry
    read model, brought up to the head of the log first, and the exports recorded by then."""
    from ledger.exports import customers_held, recorded_exports
    from ledger.reports import with_exports

    position, rows = ledger.read_models.recipients(kind)
    # The exports recorded by the registry's position: read after it, they could hold one
    # recorded since (listed beyond it, or its customers counted though it is not listed).
    exports = [e for e in recorded_exports(ledger, position) if kind in (None, e["recipient_kind"])]
    rows = with_exports(rows, exports, customers_held(ledger, position) if exports else None)
    logs.summarise(rows=len(rows))
    if as_json:
        emit_json({"position": position, "recipients": rows})
        return
    kinds = f" of kind {kind}" if kind else ""
    click.echo(f"{len(rows)} recipient{'s' * (len(rows) != 1)}{kinds} (as of event {position})")
    click.echo(
        table(
            rows,
            _REGISTRY_COLUMNS,
            empty="(none recorded)",
        )
    )


@recipients.command("notifications")
@click.option("--all", "show_all", is_flag=True, help="Include the ones already notified.")
@json_option
@pass_ledger
def notifications(ledger: Any, show_all: bool, as_json: bool) -> None:
    """Recipients to tell of a customer's erasure or rectification (not yet notified): every
    one that received the data, and for an erasure the acquirer of each due-diligence export
    that held the customer and did not show the erasure (made before it was recorded); for a
    rectification, the acquirer of each identified export that gave the old details
    (recorded after it read the ledger, or dated after its --as-of)."""
    from ledger.privacy import outstanding

    dues = ledger.notifications()
    rows = [due.to_json() for due in (dues if show_all else outstanding(dues))]
    logs.summarise(rows=len(rows))
    if as_json:
        emit_json({"notifications": rows})
        return
    click.echo(f"{len(rows)} notifications {'in all' if show_all else 'due'}")
    click.echo(
        table(
            rows,
            ["due_by", "customer", "recipient", "reason", "categories", "fact_id", "notified_at"],
            empty="(none due)",
        )
    )


@recipients.command("notified")
@click.argument("recipient")
@click.option("--customer", "ref", help="The customer whose recipient was told.")
@click.option(
    "--all-due",
    is_flag=True,
    help="Every customer with a notification due to RECIPIENT (a batch sent to it): one "
    "fact each, all recorded or none.",
)
@click.option("--at", "at", type=MOMENT, help="When it was notified (default: now).")
@click.option("--id", "fact_id", help="Fact id (default: a new one; not with --all-due).")
@json_option
@pass_ledger
def notified(
    ledger: Any,
    recipient: str,
    ref: str | None,
    all_due: bool,
    at: Any,
    fact_id: str | None,
    as_json: bool,
) -> None:
    """Record that RECIPIENT was told of the customer's erasure or rectification (--customer),
    or of every one due to it (--all-due)."""
    if (ref is None) == (not all_due):
        raise click.UsageError("give one of --customer REF and --all-due")
    if all_due and fact_id is not None:
        raise click.UsageError("--id names one fact: each customer's gets a new id with --all-due")
    if ref is None:
        _notified_all_due(ledger, recipient, at, as_json)
        return
    recorded, answered = ledger.record_notification(ref, recipient, at, fact_id)
    logs.summarise(customer=logs.hashed(ref), fact_id=logs.hashed(recorded), answered=len(answered))
    regarding = sorted({due.fact_id for due in answered})
    if as_json:
        emit_json(
            {"customer": ref, "recipient": recipient, "fact_id": recorded, "regarding": regarding}
        )
    else:
        click.echo(
            f"recorded ({recorded}): {recipient} notified for customer {ref} "
            f"regarding {', '.join(regarding)}"
        )


def _notified_all_due(ledger: Any, recipient: str, at: Any, as_json: bool) -> None:
    done = ledger.record_notifications_due(recipient, at)
    rows = [
        {"customer": ref, "fact_id": fact_id, "regarding": sorted({d.fact_id for d in answered})}
        for ref, fact_id, answered in done
    ]
    logs.summarise(customers=len(rows), answered=sum(len(answered) for *_, answered in done))
    if as_json:
        emit_json({"recipient": recipient, "notified": rows})
        return
    many = len(rows) != 1
    click.echo(
        f"recorded {len(rows)} notification{'s' * many}: "
        f"{recipient} notified for {len(rows)} customer{'s' * many}"
    )
    click.echo(table(rows, ["customer", "fact_id", "regarding"]))


@click.group("suppression", short_help="Art. 21: emails whose owner objected to direct marketing.")
def suppression() -> None:
    """Art. 21: emails whose owner objected to direct marketing (kept as keyed hashes)."""


@suppression.command("check")
@click.argument("email")
@json_option
@pass_ledger
def check(ledger: Any, email: str, as_json: bool) -> None:
    """Is marketing to EMAIL suppressed? (Exit 0 either way.)"""
    digest, channels = ledger.suppression(email)
    # An erased owner's suppression does not say since when (it would tie the email to them).
    times = [since for since in channels.values() if since is not None]
    since = min(times) if times and len(times) == len(channels) else None
    logs.summarise(email_hash=digest[:12], suppressed=bool(channels))
    document = {
        "email_hash": digest,
        "suppressed": bool(channels),
        "since": iso(since) if since else None,
        "channels": sorted(channels),
    }
    if as_json:
        emit_json(document)
    elif channels:
        when = f"since {document['since']}" if since else "(since when is withheld: erased)"
        click.echo(f"suppressed {when} (marketing by {', '.join(sorted(channels))})")
    else:
        click.echo("not suppressed")


@click.group("keys")
def keys() -> None:
    """The master key that wraps every customer's data key."""


@keys.command("rotate")
@json_option
@pass_ledger
def rotate(ledger: Any, as_json: bool) -> None:
    """Re-wrap every data key under a new master key (events are not touched)."""
    result = ledger.rotate_master_key()
    logs.summarise(data_keys=result.data_keys)
    document = {
        "data_keys": result.data_keys,
        "key_file": str(result.new_key_file),
        "old_key_file": str(result.backup) if result.backup else None,
        "finished_earlier": result.finished_earlier,
    }
    if as_json:
        emit_json(document)
    elif result.finished_earlier:
        kept = f"; the old one kept in {result.backup}" if result.backup else ""
        click.echo(
            "an earlier rotation had committed without installing its key: nothing rotated "
            f"now; this ledger's master key is in {result.new_key_file}{kept}"
            + (" (set CONSENT_LEDGER_MASTER_KEY to its content)" if result.env else "")
        )
    elif result.env:
        click.echo(
            f"re-wrapped {result.data_keys} data keys; the new master key is in "
            f"{result.new_key_file}: set CONSENT_LEDGER_MASTER_KEY to its content, "
            "then delete that file (the old key no longer opens this ledger)"
        )
    else:
        click.echo(
            f"re-wrapped {result.data_keys} data keys; new master key in {result.new_key_file}, "
            f"the old one kept in {result.backup} (it no longer opens this ledger)"
        )


@keys.command("shred")
@json_option
@pass_ledger
def shred(ledger: Any, as_json: bool) -> None:
    """Remove what the database file still holds of destroyed keys' old bytes.

    An erasure (or a rotation) does this itself; a session that was reading an older
    snapshot meanwhile (an export, a verify, a backup) can hold it back, and the command
    then says so. Run this once that session ends. Exit 1 if it is still held back."""
    from ledger.errors import ShredPendingError

    if not ledger.keys.shred():
        raise ShredPendingError()
    logs.summarise(shredded=True)
    if as_json:
        emit_json({"shredded": True})
    else:
        click.echo("no old key bytes left in the database")


commands = [recipients, suppression, keys]
