"""The timelines the rules search by bisection answer as a scan of every fact would.

An order's payments and identity checks, an acquirer's initiations, the notifications sent
to a recipient and the gate in front of the export's notifications are kept in business-time
order and searched, not scanned per fact judged (a scan made auditing an order with
thousands of disclosures quadratic). Each is checked here against the scan it replaced, on
facts arriving in any order, with ties.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domainmodel import Customer, OrderState
from ledger.exports import _may_notify
from ledger.privacy import FIELD_CATEGORY
from ledger.rules import Initiations

T0 = datetime(2025, 1, 1, tzinfo=UTC)
RESULTS = st.sampled_from(["authorised", "refused", "pass", "fail", "refer"])
# (minute, result) of facts in the order they are recorded: versions follow that order.
FACTS = st.lists(st.tuples(st.integers(0, 5), RESULTS), max_size=10)


def minute(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


@settings(max_examples=200, deadline=None)
@given(payments=FACTS, checks=FACTS)
def test_an_orders_payment_and_check_before_a_dispatch(
    payments: list[tuple[int, str]], checks: list[tuple[int, str]]
) -> None:
    order = OrderState("O1", T0, Decimal("1"), "GBP")
    paid, checked = [], []
    version = 1
    for (m, result), add, kept in [
        *((fact, order.add_payment, paid) for fact in payments),
        *((fact, order.add_identity_check, checked) for fact in checks),
    ]:
        version += 2  # (gaps for dispatches; every version is tried as one below)
        add(minute(m), version, result)
        kept.append((minute(m), version, result))
    for m in range(-1, 7):
        for dispatch_version in range(0, version + 3):
            key = (minute(m), dispatch_version)
            expected_paid = any(r == "authorised" and (a, v) < key for a, v, r in paid)
            assert order.authorised_before(key) is expected_paid
            earlier = [c for c in checked if (c[0], c[1]) < key]
            expected_check = max(earlier)[2] if earlier else None
            assert order.identity_check_before(key) == expected_check


@settings(max_examples=200, deadline=None)
@given(
    initiations=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 8)), max_size=8),
    legacy=st.integers(0, 8),
)
def test_an_initiation_counts_if_earlier_or_tied_and_recorded_first(
    initiations: list[tuple[int, int]], legacy: int
) -> None:
    found = [(minute(m), position) for m, position in initiations]
    check = Initiations(stream_ordered_until=legacy)
    half = len(found) // 2
    check.add("Acme", found[:half])
    check.add("Acme", found[half:])  # added in two lots, out of order
    for m in range(-1, 6):
        for position in (None, *range(0, 10)):
            expected = any(
                at < minute(m)
                or (
                    at == minute(m)
                    and (
                        position is None
                        or recorded < position
                        or (position <= legacy and recorded <= legacy)
                    )
                )
                for at, recorded in found
            )
            assert check("Acme", minute(m), position) is expected
    assert check("Other", minute(5), None) is False


CATEGORY_SETS = st.lists(
    st.sampled_from(["name", "email", "phone", "postal_address", "card"]), min_size=1, max_size=3
)
FIELD_SETS = st.lists(st.sampled_from(["name", "email", "phone", "address"]), max_size=3)


@settings(max_examples=200, deadline=None)
@given(
    disclosures=st.lists(st.tuples(st.integers(0, 5), CATEGORY_SETS), max_size=5),
    updates=st.lists(st.tuples(st.integers(0, 5), FIELD_SETS), max_size=5),
    erased=st.booleans(),
)
def test_the_exports_notification_gate_opens_as_the_scan_did(
    disclosures: list[tuple[int, list[str]]], updates: list[tuple[int, list[str]]], erased: bool
) -> None:
    """`_may_notify` (False: no notification can be due) against the scan it replaced: a
    disclosure at or before a rectification sharing a changed category, or any disclosure
    and an erasure."""
    ident = uuid4()
    events: list[Any] = []
    version = 0

    def make(cls: type, m: int, **fields: Any) -> Any:
        nonlocal version
        version += 1
        return cls(
            originator_id=ident,
            originator_version=version,
            timestamp=T0,
            fact_id=f"f{version}",
            at=minute(m),
            sealed=None,
            **fields,
        )

    for m, categories in disclosures:
        events.append(
            make(
                Customer.AffiliateDisclosed,
                m,
                affiliate="Offspring",
                categories=categories,
                recipient="Offspring",
                recipient_kind="affiliate",
                purpose="affiliate_marketing",
                basis="consent",
            )
        )
    for m, fields in updates:
        events.append(make(Customer.DetailsUpdated, m, fields_updated=fields))
    if erased:
        events.append(make(Customer.Erased, 5))
    found = [e for e in events if isinstance(e, Customer.AffiliateDisclosed)]
    expected = bool(found) and (
        erased
        or any(
            d.at <= u.at and {FIELD_CATEGORY[f] for f in u.fields_updated} & set(d.categories)
            for u in events
            if isinstance(u, Customer.DetailsUpdated)
            for d in found
        )
    )
    assert _may_notify(events) is expected
