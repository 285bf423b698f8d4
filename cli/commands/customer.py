"""`customer show`, `customer trail`, `customer erase`: what support staff answer with."""

from __future__ import annotations

from typing import Any

import click

from cli import logs
from cli.output import emit_json, json_option, table
from cli.params import MOMENT, known_at_option, pass_context, pass_ledger
from ledger.feed import iso


@click.group("customer")
def customer() -> None:
    """A customer's details, disclosure trail and erasure."""


def customer_document(ledger: Any, ref: str) -> dict[str, Any]:
    from ledger import views

    # One snapshot: an erasure committed between the stream's read and the key's would show
    # a customer not erased whose key is gone (as if the key row had been deleted).
    with ledger.database.one_snapshot():
        aggregate, events = ledger.customer_with_events(ref)
        details = ledger.personal_data(aggregate, events)
    return {
        "customer": ref,
        "erased": aggregate.erased,
        "registered_at": iso(aggregate.registered_at),
        "details": details,
        "consents": views.consent_rows(events),
        "orders": [
            {k: v for k, v in row.items() if k != "facts"}
            for row in views.order_rows(aggregate, events)
        ],
    }


@customer.command("show")
@click.argument("ref")
@json_option
@pass_ledger
def show(ledger: Any, ref: str, as_json: bool) -> None:
    """Current details (or that they are erased), consents and orders of customer REF."""
    document = customer_document(ledger, ref)
    logs.summarise(customer=logs.hashed(ref))
    if as_json:
        emit_json(document)
        return
    click.echo(f"Customer {ref} (registered {document['registered_at']})")
    details = document["details"]
    if details is None:
        click.echo("  personal data: ERASED")
    else:
        address = details.get("address") or {}
        click.echo(f"  name:    {details.get('name', '-')}")
        click.echo(f"  email:   {details.get('email', '-')}")
        click.echo(f"  phone:   {details.get('phone', '-')}")
        parts = (address.get(k, "") for k in ("line1", "city", "postcode", "country"))
        click.echo(f"  address: {', '.join(parts)}")
    click.echo("Consents")
    click.echo(table(document["consents"], ["purpose", "channel", "status", "since"]))
    click.echo("Orders")
    click.echo(table(document["orders"], ["order", "placed_at", "total", "currency", "status"]))


@customer.command("trail")
@click.argument("ref")
@click.option(
    "--as-of",
    "as_of",
    type=MOMENT,
    help="Only the disclosures made at or before this business time (a date means the end "
    "of that day, UTC).",
)
@known_at_option
@json_option
@pass_context
def trail(context: Any, ref: str, as_of: Any, known_at: Any, as_json: bool) -> None:
    """Who has received customer REF's data, when, what and why (by business time): every
    disclosure, each due-diligence export that held the customer (fact id export-<id>), or
    those made by --as-of, as recorded now or by --known-at."""
    from ledger import views

    erased, facts, exports = _trail_reads(context, ref, known_at)
    rows = views.trail_rows(facts, as_of, erased, exports)
    logs.summarise(customer=logs.hashed(ref), disclosures=len(rows))
    if as_json:
        emit_json({"customer": ref, "disclosures": rows})
        return
    heading = [f"Disclosures of customer {ref}'s personal data"]
    heading += [f"as of {iso(as_of)}"] if as_of is not None else []
    heading += [f"as recorded by {iso(known_at)}"] if known_at is not None else []
    click.echo(", ".join(heading))
    click.echo(
        table(
            rows,
            [
                "at",
                "recipient",
                "recipient_kind",
                "purpose",
                "basis",
                "categories",
                "order",
                "fact_id",
            ],
            empty="(no disclosures)",
        )
    )


def _trail_reads(context: Any, ref: str, known_at: Any) -> tuple[bool | None, list[Any], list[Any]]:
    """What a trail is made of, as the log stood at one moment: whether the customer is
    erased now (None: read from the facts), their facts (by `known_at`) and the exports that
    may hold them (`views.trail_rows`).

    Each read is a statement of its own, which sees the log as committed when it ran: a
    write committed between two of them (a disclosure then an export, an erasure) would mix
    two moments in the answer. Without `known_at`, the exports (none, mostly) are read after
    the facts; with none, they were none when the facts were read too. Else their read ends
    with the position of each of the customer's events: if the customer has no event since
    the facts were read, those facts are theirs as the exports were read. Any other case is
    read again, all in one snapshot (two round trips more on PostgreSQL)."""
    from ledger import views

    if known_at is None:
        facts = context.customer_facts(ref)
        exports = context.customer_exports(ref)
        last = max((e.originator_version for e in facts), default=0)
        if not exports or max(exports[0][3], default=0) == last:
            return None, facts, exports
    with context.database.one_snapshot():
        erased = None
        if known_at is not None:  # the erasure is today's truth, whenever it was recorded
            now = context.customer_facts(ref)
            erased = any(views.event_name(e) == "Customer.Erased" for e in now)
        return (
            erased,
            context.customer_facts(ref, known_at),
            context.customer_exports(ref, known_at),
        )


@customer.command("erase")
@click.argument("ref")
@click.option("--at", "at", type=MOMENT, help="Business time of the erasure (default: now).")
@click.option("--id", "fact_id", help="Fact id (default: a new one).")
@json_option
@pass_ledger
def erase(ledger: Any, ref: str, at: Any, fact_id: str | None, as_json: bool) -> None:
    """Erase customer REF's personal data (destroys their key); history stays provable.

    A customer already erased is not erased again (nothing is recorded, and the erasure on
    record is named), unless --at says the erasure happened earlier than the one recorded.
    """
    erasure, fresh = ledger.erase(ref, at=at, fact_id=fact_id)
    # A repeat tries the clean-up again: an earlier one may have been held back.
    shredded = not ledger.keys.leftover if fresh else ledger.keys.shred()
    ledger.keys.leftover = not shredded  # (also warned of on stderr, for --json users)
    logs.summarise(
        customer=logs.hashed(ref), fact_id=logs.hashed(erasure), recorded=fresh, shredded=shredded
    )
    if as_json:
        emit_json(
            {
                "customer": ref,
                "erased": True,
                "fact_id": erasure,
                "recorded": fresh,
                "shredded": shredded,
            }
        )
        return
    if fresh:
        click.echo(f"customer {ref} erased ({erasure}); their data key is destroyed")
    else:
        click.echo(f"customer {ref} was already erased ({erasure}): nothing recorded")
    if shredded:
        click.echo("their personal data is gone: the database holds no readable copy")
    else:
        click.echo(
            "but the database file still holds the old key's bytes: another session reads a "
            "snapshot from before the erasure; run 'consent-ledger keys shred' once it ends "
            "(or this command again)"
        )


commands = [customer]
