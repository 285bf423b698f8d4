"""Free-text values shaped like an email or phone number (a shifted column), and the shop's
words that are not."""

from __future__ import annotations

import pytest

from ledger.free_text import fields_shaped_like_personal_data, shaped_like_personal_data


@pytest.mark.parametrize(
    "value",
    [
        "ada@example.org",
        "Ada Lovelace <ada@example.org>",
        "+44 7700 900123",
        "07700 900123",
        "07700900123",
        "(020) 7946 0958",
        "+1-202-555-0143",
        "+33 1 23 45 67",
        # among words (privacy review: a phone was spotted only as the whole value)
        "phoned 07700 900555",
        "v2 ring +44 7700 900555",
        "tel:07700-900-555",
        "call 020 7946 0958 after 5",
    ],
)
def test_an_email_or_phone_number_is_spotted(value: str) -> None:
    assert shaped_like_personal_data(value)


@pytest.mark.parametrize(
    "value",
    [
        "checkout-checkbox",
        "unsubscribe-link",
        "2024-01",
        "2024-01-15",
        "2025-03-01 09:00",
        "v1.2.3",
        "1234567",
        "Visa",
        "DPD",
        "spring-sale-2025",
        "at@home",
        "insufficient funds",
        "",
        "2025-03-01 09:00 rev 3",
        "policy 2024-01-15 v12",
        "order 1234567 refunded",
    ],
)
def test_the_shops_words_dates_and_short_numbers_are_not(value: str) -> None:
    assert not shaped_like_personal_data(value)


def test_only_a_facts_free_text_fields_are_looked_at() -> None:
    given = {"customer": "07700900123", "method": "ada@example.org", "policy_version": "1"}
    assert fields_shaped_like_personal_data("consent.given", given) == ["method"]
    # A tracking number is a carrier's reference (often all digits), not free text.
    dispatched = {"carrier": "DPD", "tracking": "123456789012", "order": "O1"}
    assert fields_shaped_like_personal_data("order.dispatched", dispatched) == []
    # ... but an email in its place is a shifted column all the same.
    dispatched["tracking"] = "ada@example.org"
    assert fields_shaped_like_personal_data("order.dispatched", dispatched) == ["tracking"]
    initiated = {"acquirer": "Northwind", "scope": "all, ask ada@example.org"}
    assert fields_shaped_like_personal_data("transfer.initiated", initiated) == ["scope"]
    assert fields_shaped_like_personal_data("subject.erased", {"customer": "a@b.org"}) == []
