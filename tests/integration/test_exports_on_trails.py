"""A due-diligence export is on the trail of each customer whose data it held.

SPEC §5: the export "is itself recorded as a disclosure to the acquirer"; SPEC §1, support
staff answer "who has my data". An export holds the customers registered among the events it
read (and, made `--as-of` T, registered by T); pseudonymous or not, the acquirer received
their consents, orders and disclosures. The expected rows below follow from each scenario's
own facts and exports: which customer was registered when, and which export read what.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.exports import Exporter
from ledger.feed import iso
from tests.cli_helpers import due_diligence_export, import_facts, run, run_json
from tests.examples import jsonl, line, registered

ACQUIRER = "Contoso Holdings"
SPEC_KEYS = ["at", "recipient", "recipient_kind", "purpose", "basis", "categories", "order"]


def _exports_on_trail(url: str, ref: str, *options: str) -> list[dict[str, Any]]:
    rows = run_json(url, "customer", "trail", ref, *options)["disclosures"]
    return [
        row for row in rows if row["fact_id"].startswith("export-") and "/" not in row["fact_id"]
    ]


def _row(export: dict[str, Any], categories: list[str]) -> dict[str, Any]:
    """The trail row an export is for a customer it held."""
    return {
        "at": export["at"],
        "recipient": ACQUIRER,
        "recipient_kind": "acquirer",
        "purpose": "business_transfer",
        "basis": "legitimate_interests",
        "categories": categories,
        "order": None,
        "fact_id": export["fact_id"],
    }


@pytest.fixture
def url(ledger_url: str) -> str:
    assert run(ledger_url, "db", "upgrade").exit_code == 0
    return ledger_url


def test_each_export_is_on_the_trail_of_the_customers_it_held(url: str, tmp_path: Path) -> None:
    # C1 registers in January 2025 and orders; C2 registers in March, orders nothing
    import_facts(
        url,
        [
            registered("C1", 0),
            line("order.placed", "C1-o", 60, customer="C1", order="O1"),
            registered("C2", 60 * 24 * 50),
        ],
        tmp_path / "a.jsonl",
    )
    # An export as of February holds C1 only; one of today holds both
    february = due_diligence_export(url, ACQUIRER, tmp_path / "feb", "--as-of", "2025-02-01")
    today = due_diligence_export(url, ACQUIRER, tmp_path / "today")
    # C3 registers after both: neither held it
    import_facts(url, [registered("C3", 60 * 24 * 60)], tmp_path / "b.jsonl")

    assert _exports_on_trail(url, "C1") == [
        _row(february, ["order_details"]),
        _row(today, ["order_details"]),
    ]
    assert _exports_on_trail(url, "C2") == [_row(today, [])]
    assert _exports_on_trail(url, "C3") == []
    # The rows keep SPEC §5's keys, and the trail stays ordered by `at`
    trail = run_json(url, "customer", "trail", "C1")["disclosures"]
    assert all(list(row) == [*SPEC_KEYS, "fact_id"] for row in trail)
    assert [row["at"] for row in trail] == sorted(row["at"] for row in trail)
    # In business time and in recorded time: not before the export was made
    assert _exports_on_trail(url, "C1", "--as-of", "2025-06-30") == []
    assert _exports_on_trail(url, "C1", "--known-at", february["at"]) == []
    assert _exports_on_trail(url, "C1", "--as-of", today["at"]) == [
        _row(february, ["order_details"]),
        _row(today, ["order_details"]),
    ]
    # The text table lists them too
    text = run(url, "customer", "trail", "C2").stdout
    assert today["fact_id"] in text and february["fact_id"] not in text


def test_the_subject_access_pack_lists_the_exports_that_held_the_customer(
    url: str, tmp_path: Path
) -> None:
    import_facts(url, [registered("C1", 0)], tmp_path / "a.jsonl")
    export = due_diligence_export(url, ACQUIRER, tmp_path / "dd")
    out = tmp_path / "pack.json"
    assert run(url, "customer", "access-export", "C1", "--out", str(out)).exit_code == 0
    pack = orjson.loads(out.read_bytes())
    assert pack["disclosures"] == [_row(export, [])]
    assert [row["recipient"] for row in pack["recipients"]] == [ACQUIRER]
    readable = (tmp_path / "pack.json.md").read_text()
    assert f"| {export['at']} | {ACQUIRER} | acquirer |" in readable
    assert "due-diligence export to a prospective buyer" in readable


def test_an_identified_export_is_listed_once_and_an_erased_customer_keeps_its_pseudonymous_row(
    url: str, tmp_path: Path
) -> None:
    import_facts(
        url,
        [
            registered("C1", 0),
            registered("C2", 1),
            line("subject.erased", "C2-x", 2, customer="C2"),
            line("transfer.initiated", "t-1", 3, acquirer=ACQUIRER),
        ],
        tmp_path / "a.jsonl",
    )
    export = due_diligence_export(url, ACQUIRER, tmp_path / "dd", "--identified")
    # C1, named with its personal data, has the export's own transfer.disclosure only
    trail = run_json(url, "customer", "trail", "C1")["disclosures"]
    mine = [row for row in trail if row["fact_id"].startswith(export["fact_id"])]
    assert [row["fact_id"].startswith(f"{export['fact_id']}/") for row in mine] == [True]
    # C2, erased, was held pseudonymously: the export itself is on its trail
    assert _exports_on_trail(url, "C2") == [_row(export, [])]


def test_an_exports_categories_are_the_orders_it_read(url: str, tmp_path: Path) -> None:
    """`order_details` is on an export's row if the export held an order of the customer's:
    one it read (its `orders` table), whatever its business time, and not one recorded
    after it, though dated before it (review of 2d05fea: the row followed the orders' times
    only, so it named orders the export never had and missed ones it had)."""
    three_years = 60 * 24 * 365 * 3
    import_facts(
        url,
        [
            registered("C1", 0),
            registered("C2", 1),
            # C2's order is dated years ahead (the feed allows it): the export reads it
            line("order.placed", "C2-o", three_years, customer="C2", order="O2"),
        ],
        tmp_path / "a.jsonl",
    )
    export = due_diligence_export(url, ACQUIRER, tmp_path / "dd")
    as_of = due_diligence_export(url, ACQUIRER, tmp_path / "dd-as-of", "--as-of", "2025-02-01")
    # C1's order is reported after both exports, dated before them: neither held it
    import_facts(url, [line("order.placed", "C1-o", 60, customer="C1", order="O1")], tmp_path / "b")
    later = due_diligence_export(url, ACQUIRER, tmp_path / "dd-later")

    def orders(folder: str) -> int:
        return sum(1 for _ in (tmp_path / folder / "orders.jsonl").read_bytes().splitlines())

    assert (orders("dd"), orders("dd-as-of"), orders("dd-later")) == (1, 0, 2)
    assert _exports_on_trail(url, "C1") == [
        _row(export, []),
        _row(as_of, []),
        _row(later, ["order_details"]),
    ]
    assert _exports_on_trail(url, "C2") == [
        _row(export, ["order_details"]),
        _row(as_of, []),
        _row(later, ["order_details"]),
    ]


def test_a_disclosure_at_an_exports_very_time_recorded_after_it_follows_it(
    url: str, tmp_path: Path
) -> None:
    """SPEC §1: ties at the same `at` are broken by recording order, the export's row too
    (review of 2d05fea: it came after every disclosure of its time)."""
    import_facts(
        url,
        [registered("C1", 0), line("transfer.initiated", "t-1", 1, acquirer=ACQUIRER)],
        tmp_path / "a.jsonl",
    )
    export = due_diligence_export(url, ACQUIRER, tmp_path / "dd")
    fact = line("transfer.disclosure", "late", 0, customer="C1", acquirer=ACQUIRER)
    fact["at"] = export["at"]
    assert run(url, "record", orjson.dumps(fact).decode()).exit_code == 0
    trail = run_json(url, "customer", "trail", "C1")["disclosures"]
    assert [row["fact_id"] for row in trail] == [export["fact_id"], "late"]
    assert trail[0]["at"] == trail[1]["at"]


def test_a_customer_registered_while_an_export_ran_is_not_on_its_trail(
    ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export reads events 1..N; a customer registered after N, before the export is
    recorded, is not in it (`tree_size`, version 2 of the export's event)."""
    from ledger.config import open_ledger, upgrade
    from ledger.exports import ExportRequest, export_due_diligence
    from ledger.persistence.database import Database

    upgrade(Database(ledger_url))
    ledger = open_ledger(ledger_url)
    try:
        ledger.import_lines([jsonl([registered("C1", 0)])])
        recording = Exporter._record

        def register_meanwhile(self: Exporter, *args: Any) -> None:
            self.app.import_lines([jsonl([registered("C2", 1)])])
            recording(self, *args)

        monkeypatch.setattr(Exporter, "_record", register_meanwhile)
        result = export_due_diligence(ledger, ExportRequest(out=tmp_path / "dd", acquirer=ACQUIRER))
    finally:
        ledger.database.dispose()
    assert result.customers == 1
    export = {"at": iso(_recorded_at(ledger_url, result.fact_id)), "fact_id": result.fact_id}
    assert _exports_on_trail(ledger_url, "C1") == [_row(export, [])]
    assert _exports_on_trail(ledger_url, "C2") == []


def _recorded_at(url: str, fact_id: str) -> Any:
    from ledger.feed import parse_time

    (export,) = [e for e in run_json(url, "export", "list")["exports"] if e["fact_id"] == fact_id]
    return parse_time(export["at"])


def test_the_registry_counts_the_distinct_customers_the_exports_held(
    url: str, tmp_path: Path
) -> None:
    """`recipients list`: each acquirer's `exported_customers` is the number of customers
    whose trail lists one of its exports (read the other way: from the trails)."""
    import_facts(
        url,
        [registered("C1", 0), registered("C2", 60 * 24 * 50), registered("C3", 60 * 24 * 51)],
        tmp_path / "a.jsonl",
    )
    due_diligence_export(url, ACQUIRER, tmp_path / "feb", "--as-of", "2025-02-01")  # C1
    due_diligence_export(url, ACQUIRER, tmp_path / "all")  # C1, C2, C3
    other = "Fabrikam Group"
    run_json(
        url,
        "export",
        "due-diligence",
        "--acquirer",
        other,
        "--out",
        str(tmp_path / "f"),
        "--as-of",
        "2025-03-01",
    )  # C1, C2
    import_facts(url, [registered("C4", 60 * 24 * 52)], tmp_path / "b.jsonl")  # after them all
    held: dict[str, set[str]] = {}
    for ref in ("C1", "C2", "C3", "C4"):
        for row in run_json(url, "customer", "trail", ref)["disclosures"]:
            if row["fact_id"].startswith("export-"):
                held.setdefault(row["recipient"], set()).add(ref)
    rows = run_json(url, "recipients", "list", "--kind", "acquirer")["recipients"]
    counted = {row["recipient"]: row["exported_customers"] for row in rows}
    assert counted == {name: len(refs) for name, refs in held.items()}
    assert counted == {ACQUIRER: 3, other: 2}
    assert {row["recipient"]: row["customers"] for row in rows} == {ACQUIRER: 0, other: 0}


def test_an_export_missing_from_the_fact_index_is_an_integrity_failure_not_a_crash(
    ledger: Any, tmp_path: Path
) -> None:
    """The registry's count reads each export's position from the fact index: a row
    deleted there outside consent-ledger is exit 4 naming `verify` (it was a KeyError)."""
    from ledger.exports import ExportRequest, export_due_diligence
    from tests.integration.test_tamper import tamper

    ledger.import_lines([jsonl([registered("C1", 0)])])
    first = export_due_diligence(ledger, ExportRequest(out=tmp_path / "a", acquirer=ACQUIRER))
    export_due_diligence(ledger, ExportRequest(out=tmp_path / "b", acquirer=ACQUIRER))
    tamper(ledger, ("DELETE FROM ledger_facts WHERE fact_id = :f", {"f": first.fact_id}))
    done = run(ledger.database.url, "recipients", "list")
    assert done.exit_code == 4, done.stderr
    assert f"the fact index has no row for {first.fact_id}" in done.stderr
    assert "'consent-ledger verify' names what changed" in done.stderr
