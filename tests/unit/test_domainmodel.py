"""The aggregates, given-when-then, with no database: what each fact does to a customer."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domainmodel import (
    EVENT_FOR_FACT,
    HEAD_ONLY_FACTS,
    Acquirer,
    Customer,
    DisclosureEvent,
    FactEvent,
    acquirer_id,
    customer_id,
)
from ledger.errors import CustomerErasedError, InvalidFactError
from ledger.feed import FACT_TYPES, validate
from ledger.vocabulary import DISCLOSURES
from tests.examples import EXAMPLES, line


def registered_customer(**changes: Any) -> Customer:
    fact = validate(line("customer.registered", "reg", 0, **changes))
    customer = Customer.register(fact, "sealed-registration")
    return customer


def record(customer: Customer, fact_type: str, fact_id: str, minutes: float = 1, **kw: Any) -> Any:
    customer.record(validate(line(fact_type, fact_id, minutes, **kw)), None)
    return customer.pending_events[-1]


def with_order(customer: Customer) -> Customer:
    record(customer, "order.placed", "o", 1)
    return customer


def test_every_fact_type_has_its_event_class() -> None:
    assert set(EVENT_FOR_FACT) == FACT_TYPES
    for fact_type, event_class in EVENT_FOR_FACT.items():
        assert fact_type == event_class.FACT_TYPE
        assert issubclass(event_class, DisclosureEvent) == (fact_type in DISCLOSURES)


def test_registration_creates_the_customer_with_a_stable_id() -> None:
    customer = registered_customer()
    assert customer.id == customer_id("C1")
    assert (customer.ref, customer.erased, customer.erased_at) == ("C1", False, None)
    assert customer.registered_at == datetime(2025, 1, 10, 9, 0, tzinfo=UTC)
    (event,) = customer.pending_events
    assert isinstance(event, Customer.Registered)
    assert (event.fact_id, event.sealed) == ("reg", "sealed-registration")


def test_personal_data_never_travels_in_clear_in_an_event() -> None:
    customer = registered_customer()
    record(customer, "customer.updated", "u", 1, name="New Name", phone="+44 1")
    for event in customer.pending_events:
        for value in event.__dict__.values():
            assert "Zebedee" not in str(value) and "New Name" not in str(value)
    updated = customer.pending_events[-1]
    assert isinstance(updated, Customer.DetailsUpdated)
    assert updated.fields_updated == ["email", "name", "phone"]


@pytest.mark.parametrize(
    "fact_type",
    sorted(t for t in EXAMPLES if t not in ("customer.registered", "transfer.initiated")),
)
def test_every_customer_fact_becomes_one_event_with_its_fact_id_and_time(fact_type: str) -> None:
    customer = with_order(registered_customer())
    changes = {"order": "O9"} if fact_type == "order.placed" else {}
    event = record(customer, fact_type, "f-9", 5, **changes)
    assert type(event) is EVENT_FOR_FACT[fact_type]
    assert (event.fact_id, event.at) == ("f-9", datetime(2025, 1, 10, 9, 5, tzinfo=UTC))
    assert event.originator_version == customer.version
    assert event.sealed is None
    public = event.fields()
    for name, value in EXAMPLES[fact_type].items():
        if name in ("customer", "categories") or fact_type == "customer.updated":
            continue
        expected = Decimal(value) if name == "total" else changes.get(name, value)
        assert public.get(name, getattr(event, name, None)) == expected, name


@pytest.mark.parametrize("erased", [False, True])
@pytest.mark.parametrize("fact_type", sorted(HEAD_ONLY_FACTS))
def test_a_customer_known_by_its_head_records_the_event_its_replayed_state_records(
    fact_type: str, erased: bool
) -> None:
    customer = with_order(registered_customer())
    record(customer, "customer.updated", "u", 2)
    record(customer, "consent.given", "g", 3)
    record(customer, "order.dispatched", "d", 4)
    if erased:
        record(customer, "subject.erased", "x", 5)
    customer.collect_events()
    head = Customer.at_head(customer.id, customer.ref, customer.version)
    fact = validate(line(fact_type, "h", 9, customer="C1"))
    customer.record(fact, None)
    head.record(fact, None)
    [made] = head.collect_events()
    [replayed] = customer.collect_events()
    assert type(made) is type(replayed)
    assert made.__dict__.keys() == replayed.__dict__.keys()
    assert {**made.__dict__, "timestamp": None} == {**replayed.__dict__, "timestamp": None}
    assert head.version == customer.version


@pytest.mark.parametrize(
    "fact_type",
    sorted(
        t
        for t in EXAMPLES
        if t not in HEAD_ONLY_FACTS and t not in ("customer.registered", "transfer.initiated")
    ),
)
def test_a_customer_known_by_its_head_records_no_fact_that_reads_its_state(
    fact_type: str,
) -> None:
    head = Customer.at_head(customer_id("C1"), "C1", 3)
    with pytest.raises(AssertionError, match="at its head"):
        head.record(validate(line(fact_type, "f", 9)), None)
    assert (head.version, head.pending_events) == (3, [])
    for state in ("erased", "erased_at", "orders", "consents", "registered_at"):
        with pytest.raises(AttributeError):
            getattr(head, state)


@pytest.mark.parametrize("fact_type", sorted(DISCLOSURES))
def test_disclosure_events_carry_what_the_fact_implies(fact_type: str) -> None:
    customer = with_order(registered_customer())
    event = record(customer, fact_type, "d", 5)
    rule = DISCLOSURES[fact_type]
    assert event.recipient == EXAMPLES[fact_type][rule.recipient_field]
    assert (event.recipient_kind, event.purpose, event.basis) == (
        rule.recipient_kind,
        rule.purpose,
        rule.basis,
    )
    expected = rule.categories or sorted(EXAMPLES[fact_type]["categories"])
    assert sorted(event.categories) == sorted(expected)


def test_consents_are_kept_per_purpose_and_channel_in_business_time_order() -> None:
    customer = registered_customer()
    record(customer, "consent.given", "g", 5)
    record(customer, "consent.withdrawn", "w", 3)  # late, dated earlier
    assert customer.consents[("marketing", "email")] == [
        (datetime(2025, 1, 10, 9, 3, tzinfo=UTC), 3, False),
        (datetime(2025, 1, 10, 9, 5, tzinfo=UTC), 2, True),
    ]
    assert customer.latest_consent("marketing", "email")[1:] == (2, True)
    assert customer.consent_given_at("marketing", "email", datetime(2025, 1, 10, 9, 6, tzinfo=UTC))
    assert not customer.consent_given_at(
        "marketing", "email", datetime(2025, 1, 10, 9, 4, tzinfo=UTC)
    )
    assert not customer.consent_given_at(
        "marketing", "email", datetime(2025, 1, 10, 9, 2, tzinfo=UTC)
    )
    assert not customer.consent_given_at("marketing", "post", datetime(2025, 1, 11, tzinfo=UTC))


def test_order_status_follows_its_facts() -> None:
    customer = with_order(registered_customer())
    order = customer.orders["O1"]
    assert (order.status, order.total, order.currency) == ("placed", Decimal("89.99"), "GBP")
    record(customer, "payment.authorisation", "p", 2)
    record(customer, "identity.check", "i", 3, result="fail")
    assert order.payments == [(datetime(2025, 1, 10, 9, 2, tzinfo=UTC), 3, "authorised")]
    assert order.identity_checks == [(datetime(2025, 1, 10, 9, 3, tzinfo=UTC), 4, "fail")]
    record(customer, "order.dispatched", "d", 4)
    assert order.status == "dispatched"
    record(customer, "order.delivered", "dl", 5)
    assert order.status == "delivered"
    record(customer, "order.placed", "o2", 6, order="O2")
    record(customer, "order.cancelled", "c", 7, order="O2")
    assert customer.orders["O2"].status == "cancelled"


def test_order_status_is_its_latest_lifecycle_fact_in_business_time() -> None:
    customer = with_order(registered_customer())
    order = customer.orders["O1"]
    record(customer, "order.delivered", "dl", 9)
    record(customer, "order.dispatched", "d", 4)  # reported late, dated before the delivery
    assert order.status == "delivered"
    record(customer, "order.cancelled", "c", 9)  # a tie: the later recorded wins
    assert order.status == "cancelled"


def test_an_order_of_another_customer_is_refused() -> None:
    customer = registered_customer()
    with pytest.raises(InvalidFactError, match="does not belong to customer 'C1'"):
        record(customer, "order.dispatched", "d", 4, order="O-other")
    assert len(customer.pending_events) == 1


def test_an_order_placed_twice_is_refused() -> None:
    customer = with_order(registered_customer())
    with pytest.raises(InvalidFactError, match="already placed"):
        record(customer, "order.placed", "o-again", 2)


def test_registering_a_registered_customer_is_refused() -> None:
    customer = registered_customer()
    with pytest.raises(InvalidFactError, match="already registered"):
        record(customer, "customer.registered", "reg-2", 2)


def test_erasure_marks_the_customer_and_keeps_the_earliest_time() -> None:
    customer = registered_customer()
    record(customer, "subject.erased", "x1", 30)
    record(customer, "subject.erased", "x2", 20)
    assert customer.erased
    assert customer.erased_at == datetime(2025, 1, 10, 9, 20, tzinfo=UTC)


def test_after_erasure_a_details_update_is_refused() -> None:
    customer = registered_customer()
    record(customer, "subject.erased", "x", 10)
    with pytest.raises(CustomerErasedError, match="a details update"):
        record(customer, "customer.updated", "late", 11)


def test_after_erasure_a_consent_given_is_recorded_late_or_not() -> None:
    """SPEC §2 names only a details update of an erased customer as invalid: a consent
    given, dated before the erasure and reported late, or dated after it, is recorded."""
    customer = registered_customer()
    record(customer, "subject.erased", "x", 10)
    record(customer, "consent.given", "late", 5)
    record(customer, "consent.given", "after", 11)
    assert [c[0].minute for c in customer.consents[("marketing", "email")]] == [5, 11]


def test_after_erasure_withdrawals_and_history_are_still_recorded() -> None:
    customer = registered_customer()
    record(customer, "subject.erased", "x", 10)
    event = record(customer, "consent.withdrawn", "w", 11)
    assert isinstance(event, Customer.ConsentWithdrawn)


def test_acquirer_records_its_transfer_initiations() -> None:
    acquirer = Acquirer.create("Northwind")
    assert acquirer.id == acquirer_id("Northwind")
    fact = validate(line("transfer.initiated", "t", 10, secret_room="7"))
    acquirer.initiate_transfer(fact, "sealed-by-the-application")
    event = acquirer.pending_events[-1]
    assert isinstance(event, Acquirer.TransferInitiated) and isinstance(event, FactEvent)
    # The unknown field travels sealed, never in the clear.
    assert (event.scope, event.extra) == ("all customers", {})
    assert event.sealed == "sealed-by-the-application"
    assert acquirer.initiations == [datetime(2025, 1, 10, 9, 10, tzinfo=UTC)]


@settings(max_examples=200, deadline=None)
@given(facts=st.lists(st.tuples(st.integers(0, 6), st.booleans()), max_size=12))
def test_consent_at_a_moment_is_the_latest_fact_at_or_before_it_in_business_time(
    facts: list[tuple[int, bool]],
) -> None:
    """The timeline is searched by bisection: it answers as a scan of every consent fact
    would (SPEC §3: the latest at or before the moment, recording order breaking a tie, and a
    fact at the same moment counting only if recorded before `before`), late facts and ties
    included, at every moment and position."""
    customer = registered_customer()
    recorded = []
    for number, (minutes, give) in enumerate(facts):
        kind = "consent.given" if give else "consent.withdrawn"
        event = record(customer, kind, f"c{number}", minutes)
        recorded.append((event.at, event.originator_version, give))
    for moment in range(-1, 8):
        when = datetime(2025, 1, 10, 9, max(moment, 0), tzinfo=UTC)
        if moment < 0:
            when = datetime(2024, 1, 1, tzinfo=UTC)
        for before in (None, *range(1, len(facts) + 3)):
            eligible = [
                entry
                for entry in recorded
                if entry[0] < when or (entry[0] == when and (before is None or entry[1] < before))
            ]
            expected = max(eligible)[2] if eligible else False
            assert customer.consent_given_at("marketing", "email", when, before) is expected
    if recorded:
        assert customer.latest_consent("marketing", "email") == max(recorded)
