"""The hand-worked expectations of tests/data/feed-small.expected.md, on each backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ledger import application, views
from ledger.feed import parse_time


def _import(ledger: Any, path: Path) -> Any:
    with open(path, "rb") as handle:
        return ledger.import_lines(handle)


def test_import_then_reimport_counts(ledger: Any, feed_small: Path) -> None:
    first = _import(ledger, feed_small)
    assert (first.accepted, first.duplicates, first.rejected) == (26, 0, 0)
    again = _import(ledger, feed_small)
    assert (again.accepted, again.duplicates, again.rejected) == (0, 26, 0)


def test_audit_check_finds_exactly_the_expected_violations(ledger: Any, feed_small: Path) -> None:
    _import(ledger, feed_small)
    found = {(v.rule, v.fact_id) for v in ledger.audit()}
    assert found == {
        ("marketing_without_consent", "s-0013"),
        ("research_without_consent", "s-0020"),
        ("marketing_without_consent", "s-0026"),
        ("after_erasure", "s-0026"),
        # Beyond feed-small.expected.md (SPEC §3 only): issue 5's Art. 19 rule. C101's erasure
        # left Mastercard and Electoral Roll Check Ltd, which had C101's data, un-notified for
        # more than 30 days.
        ("recipient_not_notified", "s-0025"),
    }


def test_files_about_customers_recorded_before_read_them_a_chunk_at_a_time(
    ledger: Any, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file's facts about customers recorded by earlier files: each chunk reads the
    customers it names in one statement (`Recording._load_customers`), not one by one as its
    facts come, and the ledger is the one a single import makes."""
    lines = feed_small.read_bytes().splitlines(keepends=True)
    _import_lines(ledger, lines[:8])  # the customers, their first orders and consents
    from ledger.domainmodel import Customer

    get = ledger.repository.get

    def acquirers_only(ident: Any, **kwargs: Any) -> Any:
        found = get(ident, **kwargs)
        assert not isinstance(found, Customer), "a customer was read on its own"
        return found

    monkeypatch.setattr(ledger.repository, "get", acquirers_only)
    monkeypatch.setattr(application, "CHUNK", 1)  # (a fact naming only an order, alone)
    reads = []
    select_streams = ledger.ledger_recorder.select_streams

    def counted(ids: Any) -> Any:
        reads.append(len(ids))
        return select_streams(ids)

    monkeypatch.setattr(ledger.ledger_recorder, "select_streams", counted)
    for first in range(8, len(lines), 6):  # later files
        _import_lines(ledger, lines[first : first + 6])
    assert reads  # (and no customer alone: `acquirers_only`)
    test_audit_check_finds_exactly_the_expected_violations(ledger, feed_small)


def _import_lines(ledger: Any, lines: list[bytes]) -> None:
    summary = ledger.import_lines(lines)
    assert summary.rejected == 0


def test_trail_of_c100_in_business_order(ledger: Any, feed_small: Path) -> None:
    _import(ledger, feed_small)
    rows = views.trail_rows(ledger.customer_events("C100"))
    assert [
        (r["fact_id"], r["recipient"], r["recipient_kind"], r["purpose"], r["basis"]) for r in rows
    ] == [
        ("s-0006", "Visa", "card_issuer", "payment", "contract"),
        ("s-0007", "Experian", "identity_verification", "identity_verification", "consent"),
        (
            "s-0008",
            "Experian",
            "credit_reference_agency",
            "fraud_prevention",
            "legitimate_interests",
        ),
        ("s-0009", "DPD", "carrier", "delivery", "contract"),
        ("s-0011", "Offspring", "affiliate", "affiliate_marketing", "consent"),
        (
            "s-0023",
            "Northwind Retail Group",
            "acquirer",
            "business_transfer",
            "legitimate_interests",
        ),
    ]
    assert rows[4]["categories"] == ["name", "postal_address"]
    assert rows[5]["categories"] == ["email", "name", "order_details"]


def test_trail_of_c101_includes_refused_payment(ledger: Any, feed_small: Path) -> None:
    _import(ledger, feed_small)
    rows = views.trail_rows(ledger.customer_events("C101"))
    assert [(r["fact_id"], r["recipient"]) for r in rows] == [
        ("s-0017", "Mastercard"),
        ("s-0018", "Electoral Roll Check Ltd"),
    ]


def test_consent_as_of(ledger: Any, feed_small: Path) -> None:
    _import(ledger, feed_small)
    events = ledger.customer_events("C100")
    feb = views.consent_rows(events, parse_time("2025-02-15T00:00:00Z"))
    assert feb == [
        {
            "purpose": "marketing",
            "channel": "email",
            "status": "given",
            "since": "2025-01-10T09:01:00Z",
        },
        {
            "purpose": "affiliate_sharing",
            "channel": "post",
            "status": "given",
            "since": "2025-01-10T09:01:00Z",
        },
    ]
    april = views.consent_rows(events, parse_time("2025-04-01T00:00:00Z"))
    assert april[0] == {
        "purpose": "marketing",
        "channel": "email",
        "status": "withdrawn",
        "since": "2025-03-02T09:00:00Z",
    }
    assert views.consent_rows(events, parse_time("2025-01-01T00:00:00Z")) == []
