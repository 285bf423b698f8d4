# ruff: noqa: E501
"""The reports' documents and renderers, from figures made up here (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

from ledger.reports import (
    Document,
    auditor_report,
    processing_records,
    to_html,
    to_markdown,
    with_exports,
)
from ledger.rules import Violation
from ledger.vocabulary import DISCLOSURES, PURPOSE_CHANNELS, RULES
from projections.runner import LedgerFigures

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def figures(**changes: object) -> LedgerFigures:
    base = LedgerFigures(
        head=40,
        customers=3,
        erased_customers=1,
        facts_by_type={"customer.registered": 3, "marketing.contact": 2},
        violations=[
            Violation("marketing_without_consent", "C1", "f7", datetime(2025, 2, 1, tzinfo=UTC))
        ],
        violation_fact_types={"f7": "marketing.contact"},
        consent_now=[("marketing", "email", "given", 2)],
        consent_by_month=[("2025-01", "marketing", "email", "given", 2)],
        disclosures_by_month=[("2025-01", "carrier", 4), ("2025-02", "card_issuer", 1)],
        disclosure_purposes=[
            {
                "purpose": "delivery",
                "basis": "contract",
                "recipient_kind": "carrier",
                "disclosures": 4,
                "categories": ["name", "phone", "postal_address"],
            }
        ],
        orders_by_status=[("delivered", 4)],
        recipients=[
            {
                "recipient": "DPD <b>|x",
                "recipient_kind": "carrier",
                "disclosures": 4,
                "customers": 2,
                "first_at": "2025-01-02T00:00:00.000000Z",
                "last_at": "2025-01-09T00:00:00.000000Z",
                "categories": ["name", "phone", "postal_address"],
                "purposes": ["delivery"],
                "bases": ["contract"],
            }
        ],
        initiations={},
    )
    for name, value in changes.items():
        setattr(base, name, value)
    return base


def test_markdown_tables_escape_pipes_and_html_escapes_markup() -> None:
    doc = Document("T")
    doc.table(["a", "b"], [["x|y", 3], [None, ["p", "q"]]])
    assert to_markdown(doc).splitlines()[2:6] == [
        "| a | b |",
        "|---|---|",
        "| x\\|y | 3 |",
        "| - | p, q |",
    ]
    page = to_html(doc)
    assert '<td>x|y</td><td class="n">3</td>' in page
    doc.para("<script>alert(1)</script>")
    assert "<script>" not in to_html(doc)


def test_code_spans_and_empty_tables_read_as_prose() -> None:
    doc = Document("T")
    doc.para("run `export verify` on <their> copy")
    doc.table(["a"], [])
    page = to_html(doc)
    assert "<p>run <code>export verify</code> on &lt;their&gt; copy</p>" in page
    assert "<p><em>None.</em></p>" in page and "<table>" not in page
    assert to_markdown(doc).splitlines()[4] == "(none)"


def test_auditor_report_lists_every_rule_and_the_facts_that_broke_one() -> None:
    page = to_html(auditor_report(figures(), NOW))
    for rule in RULES:
        assert f"<td>{rule}</td>" in page
    assert "<h3>marketing_without_consent (1)</h3>" in page
    assert "<td>f7</td><td>marketing.contact</td>" in page
    assert page.count('src="data:image/svg+xml;base64,') == 2
    assert "DPD &lt;b&gt;|x" in page


def test_records_of_processing_cover_the_vocabulary_even_with_nothing_recorded() -> None:
    empty = figures(
        customers=0, erased_customers=0, consent_now=[], disclosure_purposes=[], recipients=[]
    )
    text = to_markdown(processing_records(empty, NOW))
    for purpose, channels in PURPOSE_CHANNELS.items():
        for channel in channels:
            assert f"| {purpose} | {channel} | consent | 0 | 0 |" in text
    for fact_type, rule in DISCLOSURES.items():
        assert f"| {rule.purpose} | {rule.basis} | {rule.recipient_kind} |" in text
        assert f"| 0 | {fact_type} |" in text
    recorded = to_markdown(
        processing_records(figures(initiations={"Northwind": ["2025-06-01T00:00:00Z"]}), NOW)
    )
    assert (
        "| delivery | contract | carrier | name, postal_address, phone | name, phone, postal_address | 4 | order.dispatched |"
        in recorded
    )
    assert "| Northwind | 2025-06-01T00:00:00Z | 0 | 0 | 0 | 0 | - |" in recorded


def _export(recipient: str, at: str, categories: list[str]) -> dict[str, object]:
    return {
        "recipient": recipient,
        "recipient_kind": "acquirer",
        "at": at,
        "categories": categories,
        "purpose": "business_transfer",
        "basis": "legitimate_interests",
    }


def test_exports_join_the_registry_as_disclosures_to_their_acquirer() -> None:
    registry = [
        {
            "recipient": "Northwind",
            "recipient_kind": "acquirer",
            "disclosures": 3,
            "customers": 2,
            "first_at": "2025-01-01T00:00:00.250000Z",
            "last_at": "2025-01-01T00:00:00.250000Z",
            "categories": ["email", "name"],
            "purposes": ["business_transfer"],
            "bases": ["legitimate_interests"],
        },
        {
            "recipient": "DPD",
            "recipient_kind": "carrier",
            "disclosures": 1,
            "customers": 1,
            "first_at": "2024-01-01T00:00:00Z",
            "last_at": "2024-01-01T00:00:00Z",
            "categories": ["name"],
            "purposes": ["delivery"],
            "bases": ["contract"],
        },
    ]
    exports = [
        # Earlier than the trail's first by a quarter second: "...00Z" sorts after
        # "...00.250000Z" as text, so times must be compared as times.
        _export("Northwind", "2025-01-01T00:00:00Z", ["order_details"]),
        _export("Blue", "2026-05-01T10:00:00Z", ["order_details"]),
        _export("Blue", "2026-04-01T10:00:00Z", ["order_details"]),
    ]
    merged = with_exports(registry, exports, {"Blue": 7, "Northwind": 5})
    assert [(r["recipient_kind"], r["recipient"]) for r in merged] == [
        ("acquirer", "Blue"),
        ("acquirer", "Northwind"),
        ("carrier", "DPD"),
    ]
    blue, northwind, dpd = merged
    assert blue["exports"] == 2 and (blue["disclosures"], blue["customers"]) == (0, 0)
    assert (blue["exported_customers"], northwind["exported_customers"]) == (7, 5)
    assert (blue["first_at"], blue["last_at"]) == ("2026-04-01T10:00:00Z", "2026-05-01T10:00:00Z")
    assert northwind["exports"] == 1 and northwind["disclosures"] == 3
    assert northwind["first_at"] == "2025-01-01T00:00:00Z"
    assert northwind["last_at"] == "2025-01-01T00:00:00.250000Z"
    assert northwind["categories"] == ["email", "name", "order_details"]
    assert dpd == {**registry[1], "exports": 0, "exported_customers": 0}
    assert registry[0]["categories"] == ["email", "name"]  # (the input is left as it was)
