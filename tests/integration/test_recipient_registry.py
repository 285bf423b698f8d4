"""`recipients list`: the registry of every recipient the ledger has seen (SPEC §1), with its
kind and counts, against an oracle worked out from the feed itself with SPEC §2's table."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ledger.samplefeed import generate
from tests.cli_helpers import run, run_json

# SPEC §2, written out again: the field naming the recipient, its kind, the categories (None:
# listed on the fact), the purpose and the basis.
SPEC_DISCLOSURES: dict[str, tuple[str, str, tuple[str, ...] | None, str, str]] = {
    "payment.authorisation": (
        "issuer",
        "card_issuer",
        ("name", "card", "postal_address"),
        "payment",
        "contract",
    ),
    "identity.check": (
        "provider",
        "identity_verification",
        ("name", "postal_address"),
        "identity_verification",
        "consent",
    ),
    "cra.disclosure": (
        "agency",
        "credit_reference_agency",
        ("name", "postal_address", "order_details"),
        "fraud_prevention",
        "legitimate_interests",
    ),
    "order.dispatched": (
        "carrier",
        "carrier",
        ("name", "postal_address", "phone"),
        "delivery",
        "contract",
    ),
    "affiliate.disclosure": ("affiliate", "affiliate", None, "affiliate_marketing", "consent"),
    "transfer.disclosure": (
        "acquirer",
        "acquirer",
        None,
        "business_transfer",
        "legitimate_interests",
    ),
}


def expected_registry(facts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The registry as SPEC §1-2 define it, from the feed's facts alone."""
    owner = {f["order"]: f["customer"] for f in facts if f["type"] == "order.placed"}
    found: dict[tuple[str, str], dict[str, Any]] = {}
    customers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for fact in facts:
        rule = SPEC_DISCLOSURES.get(fact["type"])
        if rule is None:
            continue
        field, kind, categories, purpose, basis = rule
        key = (kind, fact[field])
        at = datetime.fromisoformat(fact["at"]).astimezone(UTC)
        entry = found.setdefault(
            key,
            {"disclosures": 0, "first": at, "last": at, "c": set(), "p": set(), "b": set()},
        )
        entry["disclosures"] += 1
        entry["first"], entry["last"] = min(entry["first"], at), max(entry["last"], at)
        entry["c"].update(categories if categories is not None else fact["categories"])
        entry["p"].add(purpose)
        entry["b"].add(basis)
        customers[key].add(fact["customer"] if "customer" in fact else owner[fact["order"]])
    return [
        {
            "recipient": name,
            "recipient_kind": kind,
            "disclosures": entry["disclosures"],
            "customers": len(customers[(kind, name)]),
            "exports": 0,
            "exported_customers": 0,
            "first_at": entry["first"],
            "last_at": entry["last"],
            "categories": sorted(entry["c"]),
            "purposes": sorted(entry["p"]),
            "bases": sorted(entry["b"]),
        }
        for (kind, name), entry in sorted(found.items())
    ]


def listed(url: str, *extra: str) -> tuple[int, list[dict[str, Any]]]:
    document = run_json(url, "recipients", "list", *extra)
    rows = document["recipients"]
    for row in rows:  # times in JSON are ISO 8601 in UTC (SPEC §5)
        for name in ("first_at", "last_at"):
            assert row[name].endswith("Z") and ".000000" not in row[name], row[name]
            row[name] = datetime.fromisoformat(row[name])
    return document["position"], rows


def import_facts(url: str, facts: list[dict[str, Any]], path: Path) -> None:
    assert run(url, "db", "upgrade").exit_code == 0  # (PostgreSQL's schema is made so)
    path.write_bytes(b"".join(orjson.dumps(f) + b"\n" for f in facts))
    assert run_json(url, "import", str(path))["accepted"] == len(facts)


def test_the_registry_lists_every_recipient_with_its_counts_as_the_feed_implies(
    ledger_url: str, tmp_path: Path
) -> None:
    facts = list(generate(60, seed=3))
    import_facts(ledger_url, facts, tmp_path / "feed.jsonl")
    event, rows = listed(ledger_url)
    expected = expected_registry(facts)
    assert len(expected) >= 6 and {r["recipient_kind"] for r in expected} >= {
        "card_issuer",
        "carrier",
        "acquirer",
    }
    assert rows == expected
    assert event == run_json(ledger_url, "projections", "status")["head"]

    # One kind only, in the same order.
    _, carriers = listed(ledger_url, "--kind", "carrier")
    assert carriers == [r for r in expected if r["recipient_kind"] == "carrier"]

    # The table a person reads names every recipient and the event it stands at.
    text = run(ledger_url, "recipients", "list")
    assert text.exit_code == 0, text.stderr
    assert f"{len(expected)} recipients (as of event {event})" in text.stdout
    assert all(r["recipient"] in text.stdout for r in expected)


def test_the_registry_follows_late_facts_and_keeps_an_erased_customers_disclosures(
    ledger_url: str, tmp_path: Path
) -> None:
    facts = list(generate(20, seed=5))
    import_facts(ledger_url, facts, tmp_path / "feed.jsonl")
    placed = next(f for f in facts if f["type"] == "order.placed")
    late = [
        {  # a new carrier, reported late and dated before everything else
            "id": "late-1",
            "type": "order.dispatched",
            "at": "2020-01-01T00:00:00+02:00",
            "order": placed["order"],
            "carrier": "Parcel Late Ltd",
            "tracking": "PL1",
        },
        {
            "id": "late-2",
            "type": "affiliate.disclosure",
            "at": "2030-06-01T00:00:00Z",
            "customer": placed["customer"],
            "affiliate": "Offspring",
            "categories": ["email"],
        },
    ]
    import_facts(ledger_url, late, tmp_path / "late.jsonl")
    run_json(ledger_url, "customer", "erase", placed["customer"])
    _, rows = listed(ledger_url)
    assert rows == expected_registry(facts + late)
    new = next(r for r in rows if r["recipient"] == "Parcel Late Ltd")
    assert new["first_at"] == datetime(2019, 12, 31, 22, tzinfo=UTC)
    assert (new["customers"], new["disclosures"]) == (1, 1)


def test_an_empty_ledger_has_no_recipients(ledger_url: str) -> None:
    assert run(ledger_url, "db", "upgrade").exit_code == 0
    assert listed(ledger_url) == (0, [])
    text = run(ledger_url, "recipients", "list")
    assert "0 recipients" in text.stdout and "(none recorded)" in text.stdout


def test_a_due_diligence_export_is_in_the_registry_as_the_disclosure_it_is(
    ledger_url: str, tmp_path: Path
) -> None:
    """SPEC §5: an export "is itself recorded as a disclosure to the acquirer"; the registry
    and the records of processing (Art. 30) name its acquirer, who may have received
    nothing else."""
    facts = list(generate(20, seed=9))
    import_facts(ledger_url, facts, tmp_path / "feed.jsonl")
    before = expected_registry(facts)
    feeds_acquirer = next(r["recipient"] for r in before if r["recipient_kind"] == "acquirer")
    for out, name in (("a", "Blue Acquirer"), ("b", "Blue Acquirer"), ("c", feeds_acquirer)):
        args = ["--acquirer", name, "--out", str(tmp_path / out)]
        assert run(ledger_url, "export", "due-diligence", *args).exit_code == 0
    exports = run_json(ledger_url, "export", "list")["exports"]
    assert len(exports) == 3

    _, rows = listed(ledger_url)
    blue = next(r for r in rows if r["recipient"] == "Blue Acquirer")
    times = sorted(datetime.fromisoformat(e["at"]) for e in exports[:2])
    assert blue["recipient_kind"] == "acquirer"
    assert (blue["disclosures"], blue["customers"], blue["exports"]) == (0, 0, 2)
    # Both its exports held every customer: the later one's count, once
    assert blue["exported_customers"] == exports[1]["customers"] == 20
    assert (blue["first_at"], blue["last_at"]) == (times[0], times[1])
    assert blue["categories"] == sorted(set(exports[0]["categories"]))
    assert blue["purposes"] == ["business_transfer"]
    # The acquirer of the feed's transfers keeps its trail's counts, with its export.
    known = next(r for r in before if r["recipient_kind"] == "acquirer")
    got = next(r for r in rows if r["recipient"] == known["recipient"])
    assert got["exports"] == 1 and got["exported_customers"] == exports[2]["customers"]
    assert (got["disclosures"], got["customers"]) == (known["disclosures"], known["customers"])
    assert got["last_at"] == max(known["last_at"], datetime.fromisoformat(exports[2]["at"]))
    # Everyone else as before, with no exports.
    rest = [r for r in rows if r["recipient_kind"] != "acquirer"]
    assert rest == [r for r in before if r["recipient_kind"] != "acquirer"]
    _, carriers = listed(ledger_url, "--kind", "carrier")
    assert carriers == [r for r in rest if r["recipient_kind"] == "carrier"]

    records = run(ledger_url, "report", "processing")
    assert records.exit_code == 0, records.stderr
    assert "| Blue Acquirer | never | 0 | 0 | 2 |" in records.stdout


def test_a_name_shaped_like_personal_data_is_withheld_once_all_its_customers_are_erased(
    ledger_url: str, tmp_path: Path
) -> None:
    """As an erased customer's trail withholds it (SPEC §4): an email put where the
    recipient's name goes may be the customer's own."""
    facts = list(generate(3, seed=4))
    first, second = sorted({f["customer"] for f in facts if "customer" in f})[:2]
    shifted = {  # only the first customer's
        "id": "shift-1",
        "type": "affiliate.disclosure",
        "at": "2025-03-01T00:00:00Z",
        "customer": first,
        "affiliate": "xavier.q@example.com",
        "categories": ["email"],
    }
    shared = [  # a recipient with an email-shaped name, used for both customers
        {
            "id": f"shared-{ref}",
            "type": "affiliate.disclosure",
            "at": "2025-03-02T00:00:00Z",
            "customer": ref,
            "affiliate": "partners@offspring.example",
            "categories": ["name"],
        }
        for ref in (first, second)
    ]
    import_facts(ledger_url, [*facts, shifted, *shared], tmp_path / "feed.jsonl")

    def names() -> set[str]:
        return {r["recipient"] for r in listed(ledger_url, "--kind", "affiliate")[1]}

    assert {"xavier.q@example.com", "partners@offspring.example"} <= names()
    run_json(ledger_url, "customer", "erase", first)
    after = names()
    assert "xavier.q@example.com" not in after
    assert "[withheld: shaped like an email or phone number]" in after
    assert "partners@offspring.example" in after  # (the second customer is not erased)
    records = run(ledger_url, "report", "processing")
    assert "xavier.q@example.com" not in records.stdout
    assert "partners@offspring.example" in records.stdout
    run_json(ledger_url, "customer", "erase", second)
    assert not {"xavier.q@example.com", "partners@offspring.example"} & names()
