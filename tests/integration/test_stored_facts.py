"""The query commands answer from stored facts (no domain model); every answer equals the one
computed from the domain's events, on each backend."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli.main import LedgerContext
from ledger import views
from ledger.errors import CustomerNotFoundError
from ledger.samplefeed import generate_lines


@pytest.fixture
def recorded(ledger: Any, feed_small: Path) -> Any:
    ledger.import_lines(feed_small.read_bytes().splitlines())
    ledger.import_lines(generate_lines(40, seed=3))  # every fact type, late facts, erasures
    return ledger


def refs(ledger: Any) -> list[str]:
    return list(ledger.customer_refs())


def test_stored_facts_give_every_answer_the_domain_gives(recorded: Any) -> None:
    context = LedgerContext(recorded.database._raw_url)
    try:
        found = refs(recorded)
        assert len(found) > 40
        moments = [
            None,
            *(datetime(2024, 6, 1, tzinfo=UTC) + timedelta(days=d) for d in (0, 200, 400, 700)),
        ]
        for ref in found:
            stored = context.customer_facts(ref)
            assert all(type(f) is views.StoredFact for f in stored)
            events = recorded.customer_events(ref)
            assert views.trail_rows(stored) == views.trail_rows(events)
            assert views.consent_history_rows(stored) == views.consent_history_rows(events)
            for moment in moments:
                assert views.consent_rows(stored, moment) == views.consent_rows(events, moment)
            assert [views.event_name(f) for f in stored] == [type(e).__qualname__ for e in events]
            assert [f.__dict__ for f in stored] == [
                {k: v for k, v in e.__dict__.items() if k != "originator_id"} for e in events
            ]
        assert context._ledger is None  # answered without the domain model
    finally:
        context.close()


def test_known_at_counts_the_writes_committed_by_then(ledger: Any, feed_small: Path) -> None:
    ledger.import_lines(feed_small.read_bytes().splitlines())
    imported = [e.fact_id for e in ledger.customer_events("C100")]
    between = datetime.now(UTC)
    time.sleep(0.002)
    late = {"type": "consent.withdrawn", "customer": "C100", "purpose": "marketing"}
    ledger.record_fact({**late, "channel": "email", "method": "web", "id": "late-1"})
    after = datetime.now(UTC)
    context = LedgerContext(ledger.database._raw_url)
    try:
        for known_at, expected in ((between, imported), (after, [*imported, "late-1"])):
            stored = context.customer_facts("C100", known_at)
            assert [f.fact_id for f in stored] == expected
            assert [e.fact_id for e in ledger.customer_with_events("C100", known_at)[1]] == (
                expected
            )
        # A time inside the import: its events were stamped one by one as it ran, but none
        # was known before the import committed, so none counts (never a part of it).
        inside = ledger.customer_events("C100")[3].timestamp
        with pytest.raises(CustomerNotFoundError):
            context.customer_facts("C100", inside)
        with pytest.raises(CustomerNotFoundError):
            ledger.customer_with_events("C100", inside)
        assert ledger.audit(None, inside) == []
        with pytest.raises(CustomerNotFoundError):
            context.customer_facts("no-such-customer")
    finally:
        context.close()


def test_once_the_ledger_is_open_it_answers(recorded: Any) -> None:
    context = LedgerContext(recorded.database._raw_url)
    try:
        ref = refs(recorded)[0]
        assert context.ledger is not None
        answered = context.customer_facts(ref)
        assert [type(e) for e in answered] == [type(e) for e in recorded.customer_events(ref)]
    finally:
        context.close()
