"""SPEC §3, rule by rule: a violating and a non-violating case of each, judged in business
time, ties at the same `at` broken by recording order, late facts dated earlier."""

from __future__ import annotations

from typing import Any

from ledger.domainmodel import Customer, FactEvent
from ledger.feed import parse_time, validate
from ledger.rules import (
    JUDGED_TYPES,
    RULED_TYPES,
    Initiations,
    Judged,
    audit_customer,
    broken_rules,
)
from tests.examples import line


def customer_from(objs: list[dict[str, Any]]) -> tuple[Customer, list[FactEvent]]:
    """Given these feed objects recorded in this order, the customer and its events."""
    facts = [validate(obj) for obj in objs]
    customer = Customer.register(facts[0], None)
    for fact in facts[1:]:
        customer.record(fact, None)
    events = [e for e in customer.collect_events() if isinstance(e, FactEvent)]
    return customer, events


# `violations` places the customer's facts at positions 100, 101, ... of the log.
FIRST_POSITION = 100


def initiated_at(*moments: str, position: int = 0) -> Initiations:
    """Northwind's transfer initiations at these times, recorded at `position` in the log
    (by default before any of the customer's facts)."""
    return Initiations([("Northwind", [(parse_time(m), position) for m in moments])])


def violations(objs: list[dict[str, Any]], initiated: Any = None) -> set[tuple[str, str]]:
    customer, events = customer_from(objs)
    positions = [FIRST_POSITION + event.originator_version for event in events]
    found = audit_customer(customer, events, positions, initiated or initiated_at())
    return {(v.rule, v.fact_id) for v in found}


def registered() -> dict[str, Any]:
    return line("customer.registered", "reg", 0)


def given(fact_id: str, minutes: float, purpose: str, channel: str) -> dict[str, Any]:
    return line("consent.given", fact_id, minutes, purpose=purpose, channel=channel)


def withdrawn(fact_id: str, minutes: float, purpose: str, channel: str) -> dict[str, Any]:
    return line("consent.withdrawn", fact_id, minutes, purpose=purpose, channel=channel)


def contact(fact_id: str, minutes: float, kind: str, channel: str) -> dict[str, Any]:
    return line(kind, fact_id, minutes, channel=channel)


def affiliate(fact_id: str, minutes: float) -> dict[str, Any]:
    return line("affiliate.disclosure", fact_id, minutes)


# -- affiliate_without_consent -------------------------------------------------------------


def test_affiliate_disclosure_without_affiliate_sharing_is_a_violation() -> None:
    objs = [registered(), given("g", 1, "marketing", "post"), affiliate("a", 10)]
    assert violations(objs) == {("affiliate_without_consent", "a")}


def test_affiliate_disclosure_with_affiliate_sharing_on_any_channel_is_not() -> None:
    for channel in ("email", "post"):
        objs = [registered(), given("g", 1, "affiliate_sharing", channel), affiliate("a", 10)]
        assert violations(objs) == set()


def test_affiliate_disclosure_before_the_consent_is_a_violation() -> None:
    objs = [registered(), affiliate("a", 10), given("g", 20, "affiliate_sharing", "post")]
    assert violations(objs) == {("affiliate_without_consent", "a")}


def test_affiliate_disclosure_after_the_only_consent_is_withdrawn_is_a_violation() -> None:
    objs = [
        registered(),
        given("g", 1, "affiliate_sharing", "email"),
        withdrawn("w", 5, "affiliate_sharing", "email"),
        affiliate("a", 10),
    ]
    assert violations(objs) == {("affiliate_without_consent", "a")}


# -- marketing_without_consent / research_without_consent ----------------------------------


def test_marketing_contact_on_a_channel_without_consent_is_a_violation() -> None:
    objs = [
        registered(),
        given("g", 1, "marketing", "email"),
        contact("ok", 10, "marketing.contact", "email"),
        contact("bad", 10, "marketing.contact", "post"),
    ]
    assert violations(objs) == {("marketing_without_consent", "bad")}


def test_marketing_consent_does_not_cover_research() -> None:
    objs = [
        registered(),
        given("g", 1, "marketing", "email"),
        contact("r", 10, "research.contact", "email"),
    ]
    assert violations(objs) == {("research_without_consent", "r")}


def test_research_contact_with_market_research_consent_is_not_a_violation() -> None:
    objs = [
        registered(),
        given("g", 1, "market_research", "email"),
        contact("r", 10, "research.contact", "email"),
    ]
    assert violations(objs) == set()


def test_research_contact_after_withdrawal_is_a_violation() -> None:
    objs = [
        registered(),
        given("g", 1, "market_research", "post"),
        withdrawn("w", 5, "market_research", "post"),
        contact("r", 10, "research.contact", "post"),
    ]
    assert violations(objs) == {("research_without_consent", "r")}


def test_consent_given_again_after_withdrawal_covers_later_contacts() -> None:
    objs = [
        registered(),
        given("g1", 1, "marketing", "email"),
        withdrawn("w", 2, "marketing", "email"),
        contact("between", 3, "marketing.contact", "email"),
        given("g2", 4, "marketing", "email"),
        contact("after", 5, "marketing.contact", "email"),
    ]
    assert violations(objs) == {("marketing_without_consent", "between")}


def test_a_late_withdrawal_dated_earlier_turns_an_earlier_contact_into_a_violation() -> None:
    before = [
        registered(),
        given("g", 1, "marketing", "email"),
        contact("c", 30, "marketing.contact", "email"),
    ]
    assert violations(before) == set()
    late = [*before, withdrawn("w-late", 20, "marketing", "email")]
    assert violations(late) == {("marketing_without_consent", "c")}


def test_a_late_consent_dated_earlier_clears_an_earlier_contact() -> None:
    objs = [
        registered(),
        contact("c", 30, "marketing.contact", "email"),
        given("g-late", 20, "marketing", "email"),
    ]
    assert violations(objs) == set()


def test_tie_consent_recorded_before_the_contact_at_the_same_at_counts() -> None:
    objs = [
        registered(),
        given("g", 10, "marketing", "email"),
        contact("c", 10, "marketing.contact", "email"),
    ]
    assert violations(objs) == set()


def test_tie_consent_recorded_after_the_contact_at_the_same_at_does_not_count() -> None:
    objs = [
        registered(),
        contact("c", 10, "marketing.contact", "email"),
        given("g", 10, "marketing", "email"),
    ]
    assert violations(objs) == {("marketing_without_consent", "c")}


def test_tie_given_and_withdrawn_at_the_same_at_the_later_recorded_wins() -> None:
    given_last = [
        registered(),
        withdrawn("w", 5, "marketing", "email"),
        given("g", 5, "marketing", "email"),
        contact("c", 10, "marketing.contact", "email"),
    ]
    assert violations(given_last) == set()
    withdrawn_last = [
        registered(),
        given("g", 5, "marketing", "email"),
        withdrawn("w", 5, "marketing", "email"),
        contact("c", 10, "marketing.contact", "email"),
    ]
    assert violations(withdrawn_last) == {("marketing_without_consent", "c")}


def test_tie_withdrawal_recorded_after_the_contact_at_the_same_at_does_not_count() -> None:
    objs = [
        registered(),
        given("g", 1, "marketing", "post"),
        contact("c", 10, "marketing.contact", "post"),
        withdrawn("w", 10, "marketing", "post"),
    ]
    assert violations(objs) == set()


# -- dispatch_without_payment / dispatch_after_failed_verification -------------------------


def order(*facts: tuple[str, str, float, dict[str, Any]]) -> list[dict[str, Any]]:
    objs = [registered(), line("order.placed", "o", 1)]
    objs.extend(
        line(kind, fact_id, minutes, **changes) for kind, fact_id, minutes, changes in facts
    )
    return objs


PAID = ("payment.authorisation", "pay", 2, {})
REFUSED = ("payment.authorisation", "pay", 2, {"result": "refused"})
DISPATCHED = ("order.dispatched", "d", 10, {})


def test_dispatch_after_authorised_payment_is_not_a_violation() -> None:
    assert violations(order(PAID, DISPATCHED)) == set()


def test_dispatch_without_any_payment_is_a_violation() -> None:
    assert violations(order(DISPATCHED)) == {("dispatch_without_payment", "d")}


def test_dispatch_after_a_refused_payment_only_is_a_violation() -> None:
    assert violations(order(REFUSED, DISPATCHED)) == {("dispatch_without_payment", "d")}


def test_dispatch_before_a_later_authorisation_is_a_violation() -> None:
    late_payment = ("payment.authorisation", "pay", 20, {})
    assert violations(order(DISPATCHED, late_payment)) == {("dispatch_without_payment", "d")}


def test_dispatch_tie_with_payment_is_broken_by_recording_order() -> None:
    payment_same_at = ("payment.authorisation", "pay", 10, {})
    assert violations(order(payment_same_at, DISPATCHED)) == set()
    assert violations(order(DISPATCHED, payment_same_at)) == {("dispatch_without_payment", "d")}


def test_a_late_authorisation_dated_before_the_dispatch_clears_it() -> None:
    late_but_earlier = ("payment.authorisation", "pay", 5, {})
    assert violations(order(DISPATCHED, late_but_earlier)) == set()


def check(fact_id: str, minutes: float, result: str) -> tuple[str, str, float, dict[str, Any]]:
    return ("identity.check", fact_id, minutes, {"result": result})


def test_dispatch_after_a_failed_identity_check_is_a_violation() -> None:
    assert violations(order(PAID, check("i", 3, "fail"), DISPATCHED)) == {
        ("dispatch_after_failed_verification", "d")
    }


def test_dispatch_after_a_passed_identity_check_is_not() -> None:
    assert violations(order(PAID, check("i", 3, "pass"), DISPATCHED)) == set()
    assert violations(order(PAID, check("i", 3, "refer"), DISPATCHED)) == set()


def test_only_the_latest_identity_check_before_dispatch_counts() -> None:
    failed_then_passed = order(PAID, check("i1", 3, "fail"), check("i2", 4, "pass"), DISPATCHED)
    assert violations(failed_then_passed) == set()
    passed_then_failed = order(PAID, check("i1", 3, "pass"), check("i2", 4, "fail"), DISPATCHED)
    assert violations(passed_then_failed) == {("dispatch_after_failed_verification", "d")}


def test_a_failed_check_after_the_dispatch_does_not_count() -> None:
    assert violations(order(PAID, DISPATCHED, check("i", 11, "fail"))) == set()


def test_identity_check_tie_with_dispatch_is_broken_by_recording_order() -> None:
    failed_same_at = check("i", 10, "fail")
    assert violations(order(PAID, failed_same_at, DISPATCHED)) == {
        ("dispatch_after_failed_verification", "d")
    }
    assert violations(order(PAID, DISPATCHED, failed_same_at)) == set()


def test_a_late_failed_check_dated_before_the_dispatch_makes_it_a_violation() -> None:
    assert violations(order(PAID, check("i1", 3, "pass"), DISPATCHED, check("i2", 5, "fail"))) == {
        ("dispatch_after_failed_verification", "d")
    }


def test_dispatch_can_break_both_order_rules_at_once() -> None:
    assert violations(order(check("i", 3, "fail"), DISPATCHED)) == {
        ("dispatch_without_payment", "d"),
        ("dispatch_after_failed_verification", "d"),
    }


# -- transfer_without_initiation -----------------------------------------------------------


def transfer(fact_id: str, minutes: float, acquirer: str = "Northwind") -> dict[str, Any]:
    return line("transfer.disclosure", fact_id, minutes, acquirer=acquirer)


def test_transfer_disclosure_after_initiation_is_not_a_violation() -> None:
    objs = [registered(), transfer("t", 10)]
    assert violations(objs, initiated_at("2025-01-10T09:05:00Z")) == set()


def test_transfer_disclosure_without_initiation_is_a_violation() -> None:
    objs = [registered(), transfer("t", 10, acquirer="Contoso")]
    assert violations(objs, initiated_at("2025-01-10T09:05:00Z")) == {
        ("transfer_without_initiation", "t")
    }


def test_transfer_disclosure_before_the_initiation_is_a_violation() -> None:
    objs = [registered(), transfer("t", 10)]
    assert violations(objs, initiated_at("2025-01-10T09:30:00Z")) == {
        ("transfer_without_initiation", "t")
    }


def test_an_initiation_at_the_same_at_counts_only_if_recorded_before_the_disclosure() -> None:
    """SPEC §1: ties at the same `at` are broken by recording order, here across two
    streams (the acquirer's and the customer's): their positions in the log."""
    objs = [registered(), transfer("t", 10)]  # "t" is at position 102 (version 2)
    same_at = "2025-01-10T09:10:00Z"
    assert violations(objs, initiated_at(same_at, position=FIRST_POSITION)) == set()
    assert violations(objs, initiated_at(same_at, position=FIRST_POSITION + 3)) == {
        ("transfer_without_initiation", "t")
    }
    # A later initiation is no help, wherever it was recorded.
    assert violations(objs, initiated_at("2025-01-10T09:10:01Z", position=0)) == {
        ("transfer_without_initiation", "t")
    }


def test_a_tie_between_facts_both_recorded_before_0006_is_judged_as_it_was() -> None:
    """Until migration 0006 an import stored a chunk's events stream by stream, so their
    positions did not order its lines: a tie between two facts both recorded by then counts
    the initiation, as the ledger judged it then; one after it is ordered by position."""
    moment = parse_time("2025-01-10T09:10:00Z")
    legacy = Initiations([("Northwind", [(moment, 50)])], stream_ordered_until=100)
    assert legacy("Northwind", moment, 40)  # both by 100: the old reading
    assert legacy("Northwind", moment, 101)  # the disclosure after 100 came later
    later = Initiations([("Northwind", [(moment, 150)])], stream_ordered_until=100)
    assert not later("Northwind", moment, 40)  # an initiation after 100 came later
    assert not Initiations([("Northwind", [(moment, 50)])])("Northwind", moment, 40)


def test_a_candidate_disclosure_comes_after_every_recorded_initiation() -> None:
    initiated = initiated_at("2025-01-10T09:10:00Z", position=10**9)
    moment = parse_time("2025-01-10T09:10:00Z")
    assert initiated("Northwind", moment, None)
    assert not initiated("Northwind", moment, 10**9 - 1)
    assert not initiated("Contoso", moment, None)


# -- after_erasure -------------------------------------------------------------------------


def erased(minutes: float) -> dict[str, Any]:
    return line("subject.erased", "x", minutes)


def test_contact_and_disclosure_after_erasure_are_violations() -> None:
    objs = [
        registered(),
        given("g", 1, "marketing", "post"),
        given("ga", 1, "affiliate_sharing", "post"),
        line("order.placed", "o", 2),
        line("payment.authorisation", "pay", 3),
        erased(10),
        contact("m", 11, "marketing.contact", "post"),
        affiliate("a", 12),
        line("order.confirmation_sent", "conf", 13),
        line("order.dispatched", "d", 14),
    ]
    assert violations(objs) == {
        ("after_erasure", "m"),
        ("after_erasure", "a"),
        ("after_erasure", "conf"),
        ("after_erasure", "d"),
    }


def test_contacts_and_disclosures_before_erasure_are_not() -> None:
    objs = [
        registered(),
        given("g", 1, "marketing", "post"),
        contact("m", 5, "marketing.contact", "post"),
        line("order.placed", "o", 6),
        line("order.verification_contact", "v", 7),
        erased(10),
        line("subject.access_requested", "sar", 11),
    ]
    assert violations(objs) == set()


def test_contact_at_the_same_at_as_the_erasure_is_a_violation() -> None:
    objs = [registered(), given("g", 1, "marketing", "post")]
    assert violations([*objs, erased(10), contact("m", 10, "marketing.contact", "post")]) == {
        ("after_erasure", "m")
    }


def test_a_late_erasure_dated_earlier_turns_an_earlier_contact_into_a_violation() -> None:
    objs = [registered(), given("g", 1, "marketing", "post")]
    objs += [contact("m", 20, "marketing.contact", "post"), erased(10)]
    assert violations(objs) == {("after_erasure", "m")}


# -- the preventive side: the same rules judged for a candidate fact -------------------------


def judged(obj: dict[str, Any], customer: Customer) -> Judged:
    fact = validate(obj)
    return Judged(fact.type, fact.id, fact.at, customer.version + 1, fact.data, None)


def test_preventive_check_judges_a_candidate_against_the_state_it_would_join() -> None:
    customer, _ = customer_from([registered(), given("g", 1, "marketing", "email")])
    no_initiation = initiated_at()
    email = judged(contact("c1", 5, "marketing.contact", "email"), customer)
    post = judged(contact("c2", 5, "marketing.contact", "post"), customer)
    before = judged(contact("c3", 0.5, "marketing.contact", "email"), customer)
    at_same_time = judged(contact("c4", 1, "marketing.contact", "email"), customer)
    assert broken_rules(customer, email, no_initiation) == []
    assert broken_rules(customer, post, no_initiation) == ["marketing_without_consent"]
    assert broken_rules(customer, before, no_initiation) == ["marketing_without_consent"]
    assert broken_rules(customer, at_same_time, no_initiation) == []


def test_preventive_check_reports_every_rule_a_candidate_breaks() -> None:
    customer, _ = customer_from([registered(), erased(5)])
    candidate = judged(affiliate("a", 6), customer)
    assert broken_rules(customer, candidate, initiated_at()) == [
        "affiliate_without_consent",
        "after_erasure",
    ]


def test_only_the_ruled_types_break_a_rule_for_a_customer_never_erased() -> None:
    """`RULED_TYPES` (which the export trusts to judge only those facts of a customer never
    erased): with no consent, order or initiation, a fact of each of them breaks its own
    rule, a fact of any other judged type breaks none, and every one breaks
    `after_erasure` once the customer is erased."""
    assert RULED_TYPES < JUDGED_TYPES
    bare, _ = customer_from([registered()])
    gone, _ = customer_from([registered(), erased(5)])
    for kind in sorted(JUDGED_TYPES):
        broken = broken_rules(bare, judged(line(kind, "x", 10), bare), initiated_at())
        assert bool(broken) is (kind in RULED_TYPES), kind
        assert "after_erasure" not in broken
        after = broken_rules(gone, judged(line(kind, "x", 10), gone), initiated_at())
        assert after[-1:] == ["after_erasure"], kind


def test_facts_that_are_neither_contacts_nor_disclosures_are_never_judged() -> None:
    objs = [registered(), erased(1)]
    objs += [line("order.placed", "o", 2), line("order.delivered", "dl", 3)]
    objs += [line("order.cancelled", "oc", 4), line("subject.access_requested", "s", 5)]
    assert violations(objs) == set()
