"""`consent show`, `consent give`, `consent withdraw`."""

from __future__ import annotations

from typing import Any

import click

from cli import logs
from cli.output import emit_json, json_option, table
from cli.params import MOMENT, Choice, known_at_option, pass_context, pass_ledger
from ledger.feed import iso
from ledger.vocabulary import CONSENT_CHANNELS, PURPOSES


@click.group("consent")
def consent() -> None:
    """A customer's consents: as of any time, and changes to them."""


@consent.command("show")
@click.argument("ref")
@click.option(
    "--as-of",
    "as_of",
    type=MOMENT,
    help="Business time to answer for (a date means the end of that day, UTC).",
)
@known_at_option
@json_option
@pass_context
def show(context: Any, ref: str, as_of: Any, known_at: Any, as_json: bool) -> None:
    """Consent of customer REF per purpose and channel, now or as of a past time."""
    from ledger import views

    rows = views.consent_rows(context.customer_facts(ref, known_at), as_of)
    logs.summarise(customer=logs.hashed(ref), rows=len(rows))
    document = {
        "customer": ref,
        "as_of": iso(as_of) if as_of is not None else None,
        "consents": rows,
    }
    if as_json:
        emit_json(document)
        return
    when = f"as of {document['as_of']}" if as_of is not None else "now"
    click.echo(f"Consents of customer {ref}, {when}")
    click.echo(table(rows, ["purpose", "channel", "status", "since"], empty="(no consent facts)"))


def _change(
    kind: str,
    ref: str,
    purpose: str,
    channel: str,
    method: str,
    policy_version: str | None,
    at: Any,
    fact_id: str | None,
) -> dict[str, Any]:
    fact: dict[str, Any] = {
        "type": kind,
        "customer": ref,
        "purpose": purpose,
        "channel": channel,
        "method": method,
    }
    if policy_version is not None:
        fact["policy_version"] = policy_version
    if at is not None:
        fact["at"] = at.isoformat()
    if fact_id is not None:
        fact["id"] = fact_id
    return fact


_purpose = click.argument("purpose", type=Choice(sorted(PURPOSES)))
_channel = click.argument("channel", type=Choice(sorted(CONSENT_CHANNELS)))
_at = click.option("--at", "at", type=MOMENT, help="Business time (default: now).")
_id = click.option("--id", "fact_id", help="Fact id (default: a new one).")


@consent.command("give")
@click.argument("ref")
@_purpose
@_channel
@click.option("--method", required=True, help="How it was given, e.g. checkout-checkbox.")
@click.option("--policy-version", required=True, help="The privacy policy version agreed to.")
@_at
@_id
@json_option
@pass_ledger
def give(
    ledger: Any,
    ref: str,
    purpose: str,
    channel: str,
    method: str,
    policy_version: str,
    at: Any,
    fact_id: str | None,
    as_json: bool,
) -> None:
    """Record that customer REF gave consent for PURPOSE on CHANNEL.

    \b
    Channels by purpose: marketing, affiliate_sharing and market_research on email or
    post; personalisation on web."""
    from cli.commands.recording import _record

    fact = _change("consent.given", ref, purpose, channel, method, policy_version, at, fact_id)
    _record(ledger, fact, as_json)


@consent.command("withdraw")
@click.argument("ref")
@_purpose
@_channel
@click.option("--method", required=True, help="How it was withdrawn, e.g. unsubscribe-link.")
@_at
@_id
@json_option
@pass_ledger
def withdraw(
    ledger: Any,
    ref: str,
    purpose: str,
    channel: str,
    method: str,
    at: Any,
    fact_id: str | None,
    as_json: bool,
) -> None:
    """Record that customer REF withdrew consent for PURPOSE on CHANNEL.

    \b
    Channels by purpose: marketing, affiliate_sharing and market_research on email or
    post; personalisation on web."""
    from cli.commands.recording import _record

    fact = _change("consent.withdrawn", ref, purpose, channel, method, None, at, fact_id)
    _record(ledger, fact, as_json)


commands = [consent]
