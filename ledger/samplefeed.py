"""A realistic synthetic feed: the demo's ledger, the benchmarks' load, the tests' volume.

Deterministic for a seed. About fifteen facts per customer: registration, consents (some
withdrawn, some withdrawals arriving late and dated earlier), orders with payment, identity
checks, credit-reference disclosure, dispatch and delivery or cancellation, affiliate sharing,
marketing and research contacts, access requests, erasures, and a merger: a transfer
initiation followed by transfer disclosures. A few per cent of facts break a rule, as real
feeds do. Customers are emitted in small interleaved groups, merged by business time, so
the feed looks like a shop's event stream rather than a per-customer dump.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

FIRST = (
    "Ada",
    "Alan",
    "Grace",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Tim",
    "Radia",
    "Ken",
    "Margaret",
    "Dennis",
    "Sophie",
    "John",
    "Karen",
    "Niklaus",
    "Hedy",
    "Claude",
    "Mary",
)
LAST = (
    "Lovelace",
    "Turing",
    "Hopper",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Berners-Lee",
    "Perlman",
    "Thompson",
    "Hamilton",
    "Ritchie",
    "Wilson",
    "Backus",
    "Jones",
    "Wirth",
)
CITIES = (
    ("London", "W1"),
    ("Manchester", "M1"),
    ("Leeds", "LS1"),
    ("Bristol", "BS1"),
    ("Glasgow", "G1"),
    ("Cardiff", "CF1"),
    ("Belfast", "BT1"),
    ("York", "YO1"),
)
ISSUERS = ("Visa", "Mastercard", "American Express")
CARRIERS = ("DPD", "Royal Mail", "Evri", "DHL")
CRAS = ("Experian", "Equifax", "TransUnion")
ID_PROVIDERS = (("Experian", "credit_reference"), ("Electoral Roll Check Ltd", "electoral_roll"))
ACQUIRER = "Northwind Retail Group"
OTHER_BIDDER = "Contoso Holdings"
START = datetime(2024, 1, 1, tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class _Customer:
    def __init__(self, index: int, rng: random.Random, prefix: str) -> None:
        self.index = index
        self.rng = rng
        self.prefix = prefix
        self.ref = f"{prefix}C{index:07d}"
        self.facts: list[dict[str, Any]] = []
        self.serial = 0

    def add(self, kind: str, at: datetime, **fields: Any) -> None:
        self.serial += 1
        self.facts.append(
            {"id": f"{self.ref}-{self.serial:03d}", "type": kind, "at": _iso(at), **fields}
        )


def _customer_facts(
    index: int, rng: random.Random, prefix: str, transfer_at: datetime
) -> list[dict[str, Any]]:
    c = _Customer(index, rng, prefix)
    at = START + timedelta(minutes=rng.randrange(0, 60 * 24 * 500))
    first, last = rng.choice(FIRST), rng.choice(LAST)
    city, area = rng.choice(CITIES)
    address = {
        "line1": f"{rng.randrange(1, 200)} {rng.choice(LAST)} Street",
        "city": city,
        "postcode": f"{area} {rng.randrange(1, 9)}{chr(65 + rng.randrange(26))}"
        f"{chr(65 + rng.randrange(26))}",
        "country": "GB",
    }
    registration: dict[str, Any] = {
        "customer": c.ref,
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}.{index}@example.org",
        "address": address,
    }
    if rng.random() < 0.8:
        registration["phone"] = f"+44 7700 {900000 + index % 100000:06d}"
    c.add("customer.registered", at, **registration)
    given: set[tuple[str, str]] = set()
    for purpose, channel in (
        ("marketing", "email"),
        ("marketing", "post"),
        ("affiliate_sharing", "email"),
        ("market_research", "email"),
        ("personalisation", "web"),
    ):
        if rng.random() < 0.5:
            given.add((purpose, channel))
            c.add(
                "consent.given",
                at + timedelta(minutes=1),
                customer=c.ref,
                purpose=purpose,
                channel=channel,
                method="checkout-checkbox",
                policy_version="2024-01",
            )
    for n in range(rng.choice((1, 1, 2))):
        order = f"{c.ref}-O{n}"
        placed = at + timedelta(days=rng.randrange(0, 60), minutes=2)
        c.add(
            "order.placed",
            placed,
            order=order,
            customer=c.ref,
            total=f"{rng.randrange(5, 400)}.{rng.randrange(100):02d}",
            currency="GBP",
        )
        c.add(
            "order.confirmation_sent", placed + timedelta(seconds=30), order=order, channel="email"
        )
        refused = rng.random() < 0.05
        payment = {
            "order": order,
            "issuer": rng.choice(ISSUERS),
            "result": "refused" if refused else "authorised",
        }
        if refused:
            payment["reason"] = "do_not_honour"
        c.add("payment.authorisation", placed + timedelta(minutes=1), **payment)
        provider, source = rng.choice(ID_PROVIDERS)
        failed = rng.random() < 0.03
        c.add(
            "identity.check",
            placed + timedelta(minutes=2),
            order=order,
            provider=provider,
            source=source,
            result="fail" if failed else "pass",
        )
        if rng.random() < 0.5:
            c.add(
                "cra.disclosure",
                placed + timedelta(minutes=3),
                order=order,
                agency=rng.choice(CRAS),
            )
        if refused and rng.random() < 0.7:
            c.add(
                "order.cancelled",
                placed + timedelta(hours=1),
                order=order,
                reason="payment_refused",
            )
            continue
        dispatched = placed + timedelta(days=1)
        c.add(
            "order.dispatched",
            dispatched,
            order=order,
            carrier=rng.choice(CARRIERS),
            tracking=f"TRK{index:07d}{n}",
        )
        c.add("order.delivered", dispatched + timedelta(days=2), order=order)
    later = at + timedelta(days=70)
    if ("affiliate_sharing", "email") in given or rng.random() < 0.05:
        c.add(
            "affiliate.disclosure",
            later,
            customer=c.ref,
            affiliate="Offspring",
            categories=["name", "postal_address"],
        )
    for channel in ("email", "post"):
        if ("marketing", channel) in given or rng.random() < 0.03:
            c.add(
                "marketing.contact",
                later + timedelta(days=1),
                customer=c.ref,
                channel=channel,
                campaign="spring-sale",
            )
    if ("market_research", "email") in given or rng.random() < 0.02:
        c.add("research.contact", later + timedelta(days=2), customer=c.ref, channel="email")
    if ("marketing", "email") in given and rng.random() < 0.2:
        # A late withdrawal: recorded after the contact, dated before it.
        c.add(
            "consent.withdrawn",
            later + timedelta(hours=12),
            customer=c.ref,
            purpose="marketing",
            channel="email",
            method="unsubscribe-link",
        )
    if rng.random() < 0.3:
        c.add(
            "customer.updated",
            later + timedelta(days=5),
            customer=c.ref,
            email=f"{first.lower()}.{index}@example.net",
        )
    if rng.random() < 0.4:
        c.add(
            "transfer.disclosure",
            transfer_at + timedelta(days=1 + rng.randrange(10)),
            customer=c.ref,
            acquirer=ACQUIRER,
            categories=["email", "name", "order_details"],
        )
    if rng.random() < 0.01:
        # A transfer to a bidder that was never initiated: a rule break for the auditor.
        c.add(
            "transfer.disclosure",
            transfer_at + timedelta(days=3),
            customer=c.ref,
            acquirer=OTHER_BIDDER,
            categories=["email", "name"],
        )
    if rng.random() < 0.05:
        c.add("subject.access_requested", later + timedelta(days=20), customer=c.ref)
    if rng.random() < 0.02:
        c.add("subject.erased", later + timedelta(days=30), customer=c.ref)
        if rng.random() < 0.5:
            c.add(
                "marketing.contact",
                later + timedelta(days=40),
                customer=c.ref,
                channel="post",
                campaign="winback",
            )
    return c.facts


def generate(
    customers: int, *, seed: int = 7, prefix: str = "", group: int = 50
) -> Iterator[dict[str, Any]]:
    """Feed objects for `customers` customers, in recording order."""
    rng = random.Random(seed)
    transfer_at = START + timedelta(days=600)
    yield {
        "id": f"{prefix}transfer-initiated",
        "type": "transfer.initiated",
        "at": _iso(transfer_at),
        "acquirer": ACQUIRER,
        "scope": "all customers",
    }
    for first in range(0, customers, group):
        batch: list[tuple[int, dict[str, Any]]] = []
        for index in range(first, min(first + group, customers)):
            facts = _customer_facts(index, rng, prefix, transfer_at)
            batch.extend((rank, fact) for rank, fact in enumerate(facts))
        # Round-robin over the group: interleaved, each customer's recording order kept.
        batch.sort(key=lambda item: item[0])
        for _, fact in batch:
            yield fact


def generate_lines(customers: int, *, seed: int = 7, prefix: str = "") -> Iterator[bytes]:
    for fact in generate(customers, seed=seed, prefix=prefix):
        yield orjson.dumps(fact) + b"\n"
