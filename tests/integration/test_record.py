"""Recording one fact (`record`, `consent give/withdraw`, `disclose`) on each backend: the
feed's validation plus the rules of SPEC §3 applied before anything is recorded."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from ledger.errors import (
    CustomerErasedError,
    InvalidFactError,
    RuleViolationError,
)
from tests.examples import jsonl, line


def count(ledger: Any) -> int:
    with ledger.database.reading() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM ledger_events")).scalar())


@pytest.fixture
def shop(ledger: Any) -> Any:
    """C1 registered with marketing/email given, order O1 placed; Northwind initiated."""
    objs = [
        line("customer.registered", "reg", 0),
        line("consent.given", "g", 1),
        line("order.placed", "o", 2),
        line("transfer.initiated", "t", 3),
    ]
    ledger.import_lines(jsonl(objs).splitlines(keepends=True))
    return ledger


def refused(ledger: Any, obj: dict[str, Any]) -> RuleViolationError:
    before = count(ledger)
    with pytest.raises(RuleViolationError) as caught:
        ledger.record_fact(obj)
    assert count(ledger) == before, "nothing may be recorded"
    return caught.value


def recorded(ledger: Any, obj: dict[str, Any]) -> None:
    fact, fresh = ledger.record_fact(obj)
    assert fresh and fact.id == obj["id"]
    assert fact.id in {e.fact_id for e in ledger.customer_events("C1")}


REFUSED = [
    (line("affiliate.disclosure", "r", 10), ["affiliate_without_consent"]),
    (line("marketing.contact", "r", 10, channel="post"), ["marketing_without_consent"]),
    (line("research.contact", "r", 10), ["research_without_consent"]),
    (line("order.dispatched", "r", 10), ["dispatch_without_payment"]),
    (line("transfer.disclosure", "r", 10, acquirer="Contoso"), ["transfer_without_initiation"]),
    (line("transfer.disclosure", "r", 2), ["transfer_without_initiation"]),
    (line("marketing.contact", "r", 0.5), ["marketing_without_consent"]),
]


def test_a_fact_that_would_break_a_rule_is_refused(shop: Any) -> None:
    # One ledger for every case (each leaves it unchanged): fixtures cost more than cases.
    for obj, rules in REFUSED:
        error = refused(shop, obj)
        assert error.rules == rules, obj
        assert str(error).startswith(f"refused by rule {', '.join(rules)}: {obj['type']}")
        assert str(error).endswith("nothing was recorded")
    # The id is not used up: it stays free for a fact that is allowed.
    assert "r" not in {e.fact_id for e in shop.customer_events("C1")}
    recorded(shop, line("marketing.contact", "r", 10))


ALLOWED = [
    line("marketing.contact", "ok-1", 10),
    line("marketing.contact", "ok-2", 1),  # same `at` as the consent, recorded after it
    line("transfer.disclosure", "ok-3", 3),
    line("order.confirmation_sent", "ok-4", 3),
    line("cra.disclosure", "ok-5", 3),
    line("subject.access_requested", "ok-6", 3),
]


def test_a_fact_that_breaks_no_rule_is_recorded(shop: Any) -> None:
    for obj in ALLOWED:
        recorded(shop, obj)


def test_dispatch_after_authorisation_is_recorded_but_not_after_failed_check(shop: Any) -> None:
    recorded(shop, line("payment.authorisation", "p", 4))
    recorded(shop, line("identity.check", "i", 5, result="fail"))
    error = refused(shop, line("order.dispatched", "d", 6))
    assert error.rules == ["dispatch_after_failed_verification"]
    recorded(shop, line("identity.check", "i2", 7, result="pass"))
    recorded(shop, line("order.dispatched", "d", 8))


def test_consent_given_then_the_affiliate_disclosure_is_allowed(shop: Any) -> None:
    refused(shop, line("affiliate.disclosure", "a", 10))
    recorded(shop, line("consent.given", "ga", 9, purpose="affiliate_sharing", channel="post"))
    recorded(shop, line("affiliate.disclosure", "a", 10))


def test_after_erasure_disclosures_and_contacts_are_refused(shop: Any) -> None:
    recorded(shop, line("subject.erased", "x", 20))
    assert refused(shop, line("marketing.contact", "m", 21)).rules == ["after_erasure"]
    assert "after_erasure" in refused(shop, line("order.confirmation_sent", "c", 21)).rules
    with pytest.raises(CustomerErasedError):
        shop.record_fact(line("customer.updated", "u", 22))


def test_a_recorded_id_is_a_duplicate_and_changes_nothing(shop: Any) -> None:
    before = count(shop)
    fact, fresh = shop.record_fact(line("consent.given", "g", 1))
    assert (fact.id, fresh) == ("g", False)
    assert count(shop) == before


def test_id_and_at_default_to_a_new_id_and_now(shop: Any) -> None:
    obj = {"type": "subject.access_requested", "customer": "C1"}
    first, fresh = shop.record_fact(obj)
    second, _ = shop.record_fact(obj)
    assert fresh and first.id != second.id and first.id.startswith("cmd-")
    assert first.at.tzinfo is not None


INVALID = [
    (line("consent.given", "v", 1, purpose="marketting"), "unknown purpose 'marketting'"),
    (line("subject.access_requested", "v", 1, customer="C9"), "unknown customer 'C9'"),
    (line("order.delivered", "v", 1, order="O9"), "unknown order 'O9'"),
    (line("order.delivered", "v", 1, at="2025-01-10T09:00:00"), "no UTC offset"),
    (line("customer.registered", "v", 1), "customer 'C1' is already registered"),
]


def test_an_invalid_fact_is_refused_with_its_reason(shop: Any) -> None:
    before = count(shop)
    for obj, reason in INVALID:
        with pytest.raises(InvalidFactError) as caught:
            shop.record_fact(obj)
        assert reason in str(caught.value)
    assert count(shop) == before


def test_dry_run_checks_and_records_nothing(shop: Any) -> None:
    before = count(shop)
    _, fresh = shop.record_fact(line("marketing.contact", "dry", 10), dry_run=True)
    assert fresh and count(shop) == before
    with pytest.raises(RuleViolationError):
        shop.record_fact(line("marketing.contact", "dry", 10, channel="post"), dry_run=True)


def test_a_late_withdrawal_is_recorded_and_turns_an_earlier_contact_into_a_violation(
    shop: Any,
) -> None:
    recorded(shop, line("marketing.contact", "m", 30))
    assert [v.fact_id for v in shop.audit() if v.customer == "C1"] == []
    recorded(shop, line("consent.withdrawn", "w", 20))  # recorded now, dated earlier
    found = [(v.rule, v.fact_id) for v in shop.audit() if v.customer == "C1"]
    assert ("marketing_without_consent", "m") in found
    refused(shop, line("marketing.contact", "m2", 31))
