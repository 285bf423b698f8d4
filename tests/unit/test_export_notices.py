"""The export's shortcut past `privacy.notifications` (`exports._may_notify`): it may say a
notification can be due when none is, never the reverse."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import privacy
from ledger.exports import _may_notify
from tests.unit.test_privacy import Builder, customer_facts


def test_a_rectification_of_a_category_disclosed_before_it_may_call_for_a_notice() -> None:
    b = Builder()
    b.add("affiliate.disclosure", 5, affiliate="Offspring", categories=["email", "name"])
    b.add("customer.updated", 50, email="new@x.org")
    assert privacy.notifications(b.ref, b.events)
    assert _may_notify(b.events)


def test_a_rectification_before_any_disclosure_of_what_it_changed_calls_for_none() -> None:
    b = Builder()
    b.add("affiliate.disclosure", 5, affiliate="Offspring", categories=["name"])
    b.add("customer.updated", 50, email="new@x.org")  # email: not disclosed before
    b.add("affiliate.disclosure", 60, affiliate="Offspring", categories=["email"])
    assert privacy.notifications(b.ref, b.events) == []
    assert not _may_notify(b.events)


def test_a_disclosure_at_the_same_time_recorded_first_counts_as_before() -> None:
    b = Builder()
    b.add("affiliate.disclosure", 50, affiliate="Offspring", categories=["email"])
    b.add("customer.updated", 50, email="new@x.org")
    assert privacy.notifications(b.ref, b.events)
    assert _may_notify(b.events)


def test_an_erasure_calls_for_notices_once_anything_was_disclosed_whenever() -> None:
    for erased_at, disclosed_at in ((50, 5), (5, 50)):
        b = Builder()
        b.add("affiliate.disclosure", disclosed_at, affiliate="Offspring", categories=["name"])
        b.add("subject.erased", erased_at)
        assert privacy.notifications(b.ref, b.events)
        assert _may_notify(b.events)
    nothing = Builder()
    nothing.add("subject.erased", 5)
    assert privacy.notifications(nothing.ref, nothing.events) == []
    assert not _may_notify(nothing.events)


_DETAILS = st.lists(
    st.sampled_from(["name", "email", "phone", "address"]), min_size=1, max_size=3, unique=True
)
_VALUES: dict[str, Any] = {
    "name": "M",
    "email": "m@x.org",
    "phone": "+44 7700 900000",
    "address": {"line1": "2 B St", "city": "C", "postcode": "D2 2DD", "country": "GB"},
}


@settings(max_examples=150, deadline=None)
@given(customer_facts(), st.lists(st.tuples(st.integers(1, 10_000), _DETAILS), max_size=3))
def test_no_notification_is_due_where_the_export_skips_the_check(
    facts: list[tuple[str, float, dict[str, Any]]], rectifications: list[tuple[int, list[str]]]
) -> None:
    b = Builder()
    erased = False
    for kind, minute, fields in facts:
        if erased and kind == "consent.given":
            continue  # refused after erasure, by design
        b.add(kind, minute, **fields)
        erased = erased or kind == "subject.erased"
    if not erased:
        for minute, changed in rectifications:
            b.add("customer.updated", minute, **{name: _VALUES[name] for name in changed})
    if not _may_notify(b.events):
        assert privacy.notifications(b.ref, b.events) == []
