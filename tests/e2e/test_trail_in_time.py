"""`customer trail --as-of / --known-at`: who had received the customer's data by a business
time, and the trail as the ledger knew it at a recorded time."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ledger.feed import iso
from tests.cli_helpers import error_line, run, run_json
from tests.examples import jsonl, line

SMALL = Path(__file__).parents[1] / "data" / "feed-small.jsonl"


@pytest.fixture
def url(ledger_url: str) -> str:
    run_json(ledger_url, "db", "upgrade")
    run_json(ledger_url, "import", str(SMALL))
    return ledger_url


def trail(url: str, *args: str) -> list[dict[str, Any]]:
    document = run_json(url, "customer", "trail", "C100", *args)
    assert list(document) == ["customer", "disclosures"]  # SPEC §5's shape, whatever asked
    rows: list[dict[str, Any]] = document["disclosures"]
    return rows


def at(row: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(row["at"])


def test_a_trail_as_of_a_time_holds_the_disclosures_made_by_then(url: str) -> None:
    everything = trail(url)
    assert len(everything) >= 4
    # At a disclosure's own time: that one and every earlier one (at or before).
    for row in everything:
        by_then = trail(url, "--as-of", row["at"])
        assert by_then == [r for r in everything if at(r) <= at(row)]
        assert row in by_then
    first = at(everything[0])
    assert trail(url, "--as-of", iso(first.replace(year=first.year - 1))) == []
    # A date is the end of that day (UTC).
    day = everything[0]["at"][:10]
    assert trail(url, "--as-of", day) == [r for r in everything if r["at"][:10] <= day]
    text = run(url, "customer", "trail", "C100", "--as-of", day)
    assert f"as of {day}T23:59:59.999999Z" in text.stdout


def test_a_trail_known_at_a_time_leaves_out_what_was_recorded_later(
    url: str, tmp_path: Path
) -> None:
    before = trail(url)
    time.sleep(0.01)
    known_at = iso(datetime.now(UTC))
    time.sleep(0.01)
    late = line("order.dispatched", "late-dispatch", 0, at="2025-01-01T00:00:00Z")
    late |= {"order": "O500", "carrier": "Late Carrier Ltd", "tracking": "LC1"}
    feed = tmp_path / "late.jsonl"
    feed.write_bytes(jsonl([late]))
    assert run_json(url, "import", str(feed))["accepted"] == 1

    now = trail(url)
    assert [r["fact_id"] for r in now if r not in before] == ["late-dispatch"]
    assert trail(url, "--known-at", known_at) == before
    # Both: by a business time, as known then.
    assert trail(url, "--known-at", known_at, "--as-of", "2025-01-10") == [
        r for r in before if r["at"][:10] <= "2025-01-10"
    ]
    refused = run(url, "customer", "trail", "C100", "--known-at", "2000-01-01")
    assert refused.exit_code == 1
    assert "was not in the ledger as known at 2000-01-01" in error_line(refused)


def test_an_erased_customers_trail_known_before_the_erasure_still_withholds(
    url: str, tmp_path: Path
) -> None:
    # SPEC §4: after the erasure no command shows the customer's data, whatever time is asked
    # for; an email-shaped recipient name is the customer's data (`free_text.rows_withheld`).
    shaped = line("affiliate.disclosure", "shaped-1", 0, at="2025-02-02T10:00:00Z")
    shaped |= {"customer": "C100", "affiliate": "c100.private@example.com", "categories": ["name"]}
    feed = tmp_path / "shaped.jsonl"
    feed.write_bytes(jsonl([shaped]))
    assert run_json(url, "import", str(feed))["accepted"] == 1
    time.sleep(0.01)
    known_at = iso(datetime.now(UTC))  # before the erasure
    time.sleep(0.01)
    assert run(url, "customer", "erase", "C100").exit_code == 0
    for args in ((), ("--known-at", known_at), ("--known-at", known_at, "--as-of", "2025-12-31")):
        rows = trail(url, *args)
        assert "c100.private@example.com" not in str(rows), args
        text = run(url, "customer", "trail", "C100", *args).stdout
        assert "c100.private@example.com" not in text, args
