"""Example facts for the tests: one valid feed line of every type, and small builders.

The examples form a consistent little feed in the order of `FACT_TYPES_IN_ORDER`: customer
C1 registers, consents, orders O1, which is verified, dispatched and delivered, and so on.
Personal values are distinctive, so a test can search any text for them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

NAME = "Zebedee Quillfeather"
EMAIL = "zebedee.quill@example.org"
PHONE = "+44 7700 912345"
ADDRESS = {"line1": "7 Wobble Lane", "city": "Tumbleton", "postcode": "TT1 9ZZ", "country": "GB"}
# The country code alone identifies no one (and "GB" is in every "GBP").
PERSONAL_VALUES = (NAME, EMAIL, PHONE, ADDRESS["line1"], ADDRESS["city"], ADDRESS["postcode"])

T0 = datetime(2025, 1, 10, 9, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    """A business time `minutes` after T0, as the feed writes it."""
    return (T0 + timedelta(minutes=minutes)).isoformat()


EXAMPLES: dict[str, dict[str, Any]] = {
    "customer.registered": {
        "customer": "C1",
        "name": NAME,
        "email": EMAIL,
        "phone": PHONE,
        "address": ADDRESS,
    },
    "customer.updated": {"customer": "C1", "email": "z.q@example.net"},
    "consent.given": {
        "customer": "C1",
        "purpose": "marketing",
        "channel": "email",
        "method": "checkout-checkbox",
        "policy_version": "2024-01",
    },
    "consent.withdrawn": {
        "customer": "C1",
        "purpose": "marketing",
        "channel": "email",
        "method": "unsubscribe-link",
    },
    "order.placed": {"order": "O1", "customer": "C1", "total": "89.99", "currency": "GBP"},
    "order.confirmation_sent": {"order": "O1", "channel": "email"},
    "order.verification_contact": {"order": "O1", "channel": "phone"},
    "payment.authorisation": {"order": "O1", "issuer": "Visa", "result": "authorised"},
    "identity.check": {
        "order": "O1",
        "provider": "Experian",
        "source": "credit_reference",
        "result": "pass",
    },
    "cra.disclosure": {"order": "O1", "agency": "Equifax"},
    "order.dispatched": {"order": "O1", "carrier": "DPD", "tracking": "DPD1"},
    "order.delivered": {"order": "O1"},
    "order.cancelled": {"order": "O1", "reason": "customer_request"},
    "affiliate.disclosure": {
        "customer": "C1",
        "affiliate": "Offspring",
        "categories": ["name", "postal_address"],
    },
    "marketing.contact": {"customer": "C1", "channel": "email", "campaign": "spring"},
    "research.contact": {"customer": "C1", "channel": "email"},
    "transfer.initiated": {"acquirer": "Northwind", "scope": "all customers"},
    "transfer.disclosure": {
        "customer": "C1",
        "acquirer": "Northwind",
        "categories": ["email", "name"],
    },
    "subject.access_requested": {"customer": "C1"},
    "subject.erased": {"customer": "C1"},
}
FACT_TYPES_IN_ORDER = tuple(EXAMPLES)

# Enumerated fields per type, with a value outside the vocabulary.
ENUM_FIELDS: dict[str, tuple[str, ...]] = {
    "consent.given": ("purpose", "channel"),
    "consent.withdrawn": ("purpose", "channel"),
    "order.confirmation_sent": ("channel",),
    "order.verification_contact": ("channel",),
    "payment.authorisation": ("result",),
    "identity.check": ("source", "result"),
    "affiliate.disclosure": ("categories",),
    "marketing.contact": ("channel",),
    "research.contact": ("channel",),
    "transfer.disclosure": ("categories",),
}


def line(fact_type: str, fact_id: str, minutes: float = 0, **changes: Any) -> dict[str, Any]:
    """The example of `fact_type` as a feed object, with `changes` applied."""
    obj = {"id": fact_id, "type": fact_type, "at": at(minutes), **EXAMPLES[fact_type]}
    obj.update(changes)
    return obj


def story(prefix: str = "") -> list[dict[str, Any]]:
    """Every fact type once, in a consistent order (no cancellation of a delivered order:
    the second order O2 is the cancelled one)."""
    objs: list[dict[str, Any]] = []
    for minutes, fact_type in enumerate(FACT_TYPES_IN_ORDER):
        obj = line(fact_type, f"{prefix}e-{minutes:02d}", minutes)
        if "customer" in obj:
            obj["customer"] = prefix + obj["customer"]
        if "order" in obj:
            obj["order"] = prefix + obj["order"]
        if fact_type == "order.cancelled":
            objs.append(
                line("order.placed", f"{prefix}e-o2", minutes - 0.5, customer=prefix + "C1")
                | {"order": prefix + "O2"}
            )
            obj["order"] = prefix + "O2"
        objs.append(obj)
    return objs


def jsonl(objs: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(o) + b"\n" for o in objs)


def registered(ref: str, minutes: float) -> dict[str, Any]:
    """Customer `ref`'s registration (fact id `<ref>-r`), `minutes` into the examples' time."""
    return line("customer.registered", f"{ref}-r", minutes, customer=ref)
