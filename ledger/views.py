"""The answers of SPEC §5, built from a customer's events: pure functions, no I/O.

The CLI renders these dictionaries as JSON or as tables; read models and exports reuse them,
so a question has one answer whichever way it is asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ledger.domainmodel import Customer, DisclosureEvent, FactEvent
from ledger.feed import iso
from ledger.vocabulary import PURPOSE_CHANNELS

_PURPOSE_CHANNEL_ORDER = {
    (purpose, channel): index
    for index, (purpose, channel) in enumerate(
        (p, c) for p, channels in PURPOSE_CHANNELS.items() for c in sorted(channels)
    )
}


def business_order(events: Iterable[FactEvent]) -> list[FactEvent]:
    """Business time, ties broken by recording order."""
    return sorted(events, key=lambda e: (e.at, e.originator_version))


def consent_status(event: FactEvent) -> str:
    return "given" if isinstance(event, Customer.ConsentGiven) else "withdrawn"


def consent_history(
    events: Iterable[FactEvent], as_of: datetime | None = None
) -> dict[tuple[str, str], list[FactEvent]]:
    """Consent facts per (purpose, channel) at or before `as_of`, in business order."""
    history: dict[tuple[str, str], list[FactEvent]] = {}
    for event in business_order(events):
        if isinstance(event, (Customer.ConsentGiven, Customer.ConsentWithdrawn)) and (
            as_of is None or event.at <= as_of
        ):
            history.setdefault((event.purpose, event.channel), []).append(event)
    return dict(sorted(history.items(), key=lambda kv: _PURPOSE_CHANNEL_ORDER[kv[0]]))


def consent_rows(
    events: Iterable[FactEvent], as_of: datetime | None = None
) -> list[dict[str, Any]]:
    """One row per purpose and channel with any fact at or before `as_of`.

    `since` is when the current status began: a consent given twice is given since the first.
    """
    rows = []
    for (purpose, channel), entries in consent_history(events, as_of).items():
        status = consent_status(entries[-1])
        since = entries[-1].at
        for entry in reversed(entries):
            if consent_status(entry) != status:
                break
            since = entry.at
        rows.append({"purpose": purpose, "channel": channel, "status": status, "since": iso(since)})
    return rows


def consent_history_rows(events: Iterable[FactEvent]) -> list[dict[str, Any]]:
    """Every consent fact with its method and policy version, in business order."""
    rows = []
    for entries in consent_history(events).values():
        for event in entries:
            fields = event.fields()
            rows.append(
                {
                    "at": iso(event.at),
                    "purpose": fields["purpose"],
                    "channel": fields["channel"],
                    "status": consent_status(event),
                    "method": fields["method"],
                    "policy_version": fields.get("policy_version"),
                    "fact_id": event.fact_id,
                }
            )
    rows.sort(key=lambda r: r["at"])
    return rows


def disclosure_row(event: DisclosureEvent) -> dict[str, Any]:
    return {
        "at": iso(event.at),
        "recipient": event.recipient,
        "recipient_kind": event.recipient_kind,
        "purpose": event.purpose,
        "basis": event.basis,
        "categories": sorted(event.categories),
        "order": event.__dict__.get("order"),
        "fact_id": event.fact_id,
    }


def trail_rows(events: Iterable[FactEvent]) -> list[dict[str, Any]]:
    """SPEC §5 `customer trail`: every disclosure, ordered by `at` (then recording order)."""
    return [
        disclosure_row(event)
        for event in business_order(events)
        if isinstance(event, DisclosureEvent)
    ]


def order_rows(customer: Customer, events: Iterable[FactEvent]) -> list[dict[str, Any]]:
    """Each order with its status and its facts in business order."""
    facts: dict[str, list[dict[str, Any]]] = {ref: [] for ref in customer.orders}
    for event in business_order(events):
        ref = event.__dict__.get("order")
        if ref in facts:
            entry = {"at": iso(event.at), "type": event.FACT_TYPE, "fact_id": event.fact_id}
            entry.update(
                {k: v for k, v in event.fields().items() if k != "order" and v is not None}
            )
            facts[ref].append(entry)
    rows = []
    for ref, order in sorted(customer.orders.items(), key=lambda kv: (kv[1].placed_at, kv[0])):
        rows.append(
            {
                "order": ref,
                "placed_at": iso(order.placed_at),
                "total": str(order.total),
                "currency": order.currency,
                "status": order.status,
                "facts": [_jsonable(f) for f in facts[ref]],
            }
        )
    return rows


def _jsonable(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (str(v) if not isinstance(v, (str, int, float, bool, list)) else v)
        for k, v in entry.items()
    }
