"""A streamed read inside a write leaves the write's connection as it found it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ledger.domainmodel import customer_id
from ledger.persistence import indexes, personal


def test_a_streamed_read_inside_a_write_leaves_the_write_able_to_commit(
    ledger: Any, feed_small: Path
) -> None:
    """SQLAlchemy 2 sets a connection's execution options in place: a `yield_per` set on
    the write's connection made every later statement of that write run through a
    server-side cursor on PostgreSQL, and its NOTIFY at commit fail (`recipients notified
    --all-due` reads customers' streams so, in its write)."""
    ledger.import_lines(feed_small.read_bytes().splitlines())
    with ledger.database.writing() as tx:
        refs = list(indexes.customer_refs(tx.connection))
        streams = list(personal.streams_with_facts(ledger.database, ["subject.erased"]))
        assert tx.connection.get_execution_options().get("yield_per") is None
        ledger.record_fact(
            {
                "type": "transfer.initiated",
                "id": "t-streamed",
                "at": "2025-09-01T00:00:00Z",
                "acquirer": "Acme",
                "scope": "all",
            }
        )
    assert refs == ["C100", "C101"]
    whole = list(ledger.events.get(customer_id("C101")))  # the only one erased
    assert [(i, len(events)) for i, events in streams] == [(customer_id("C101"), len(whole))]
    assert ledger.recorded_fact("t-streamed") is not None
