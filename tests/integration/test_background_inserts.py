"""An import's inserts queued on the transaction's worker thread (`ledger.persistence.background`):
run in order, seen by the transaction's next statement, and their failures fail the whole
transaction, on both backends."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import pytest
import sqlalchemy as sa
from eventsourcing.persistence import IntegrityError

from ledger.persistence import tables
from ledger.persistence.background import _SWITCH_INTERVAL
from tests.examples import jsonl, story

_META = ("name", "value")


@pytest.fixture(autouse=True)
def _two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker thread is used with two cores or more: test it on any machine."""
    monkeypatch.setattr("ledger.persistence.database._usable_cores", lambda: 2)


def _names(ledger: Any) -> list[str]:
    with ledger.database.reading() as conn:
        query = sa.select(tables.meta.c.name).where(tables.meta.c.name.like("bg-%"))
        return sorted(conn.execute(query).scalars())


def test_queued_inserts_are_seen_by_the_next_statement_and_committed(ledger: Any) -> None:
    with ledger.database.writing() as tx:
        tx.overlap_inserts()
        assert tx.background is not None
        tx.insert_many("ledger_meta", _META, [("bg-1", "one"), ("bg-2", "two")])
        tx.insert_many("ledger_meta", _META, [("bg-3", "three")])
        inside = tx.connection.execute(
            sa.select(tables.meta.c.value).where(tables.meta.c.name.like("bg-%"))
        )
        assert sorted(inside.scalars()) == ["one", "three", "two"]
    assert _names(ledger) == ["bg-1", "bg-2", "bg-3"]


def test_a_queued_insert_that_breaks_a_constraint_fails_the_transaction(ledger: Any) -> None:
    with pytest.raises(IntegrityError, match="ledger_meta"), ledger.database.writing() as tx:
        tx.overlap_inserts()
        tx.insert_many("ledger_meta", _META, [("bg-1", "one")])
        tx.insert_many("ledger_meta", _META, [("bg-1", "again")])  # queued: no error yet
    assert _names(ledger) == []


def test_a_queued_insert_fails_before_commit_even_with_nothing_after_it(ledger: Any) -> None:
    with pytest.raises(IntegrityError), ledger.database.writing() as tx:
        tx.overlap_inserts()
        tx.insert_many("ledger_meta", _META, [("bg-1", "one"), ("bg-1", "again")])
    assert _names(ledger) == []
    # The database is usable afterwards: the worker has stopped and released it.
    with ledger.database.writing() as tx:
        tx.overlap_inserts()
        tx.insert_many("ledger_meta", _META, [("bg-1", "one")])
    assert _names(ledger) == ["bg-1"]


def test_with_one_core_inserts_run_in_turn(ledger: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ledger.persistence.database._usable_cores", lambda: 1)
    with ledger.database.writing() as tx:
        tx.overlap_inserts()
        assert tx.background is None
        tx.insert_many("ledger_meta", _META, [("bg-1", "one")])
    assert _names(ledger) == ["bg-1"]


def test_an_import_of_many_small_chunks_with_a_tiny_customer_cache_records_everything(
    ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each chunk's lookups run before the previous chunk's inserts; customers it registered
    # may already be evicted from the cache and must be read back through those inserts.
    monkeypatch.setattr("ledger.application.CHUNK", 2)
    monkeypatch.setattr("ledger.application._CUSTOMER_CACHE", 1)
    objs = story(prefix="a") + story(prefix="b")
    summary = ledger.import_lines(jsonl(objs).splitlines(keepends=True))
    assert (summary.accepted, summary.duplicates, summary.rejected) == (len(objs), 0, 0)
    for prefix in ("a", "b"):
        expected = [o["id"] for o in objs if o.get("customer") == f"{prefix}C1"]
        recorded = [e.fact_id for e in ledger.customer_events(f"{prefix}C1")]
        assert [fact for fact in recorded if fact in expected] == expected
    again = ledger.import_lines(jsonl(objs).splitlines(keepends=True))
    assert (again.accepted, again.duplicates) == (0, len(objs))


@pytest.mark.parametrize("fails", [False, True])
def test_the_switch_interval_is_short_while_the_worker_runs_and_restored_after(
    ledger: Any, fails: bool
) -> None:
    """On SQLite the worker asks for the GIL around each statement: the import thread must
    yield it quickly then (`_SWITCH_INTERVAL`), and the process gets its own interval back
    when the transaction ends, committed or rolled back."""

    before = sys.getswitchinterval()
    during: list[float] = []
    outcome = pytest.raises(IntegrityError) if fails else contextlib.nullcontext()
    with outcome, ledger.database.writing() as tx:
        tx.overlap_inserts()
        during.append(sys.getswitchinterval())
        tx.insert_many("ledger_meta", _META, [("bg-1", "one")] * (2 if fails else 1))
    assert sys.getswitchinterval() == before
    expected = _SWITCH_INTERVAL if ledger.database.is_sqlite else before
    assert during == [pytest.approx(expected)]


def test_a_failure_before_the_transaction_is_set_up_is_raised_as_itself(
    ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection lost at the writer's lock or at the read of the log's head (a server
    going away) is the error raised, and the transaction is rolled back; it once surfaced as
    an UnboundLocalError from the cleanup."""
    from ledger.persistence import database

    class Lost(Exception):
        pass

    def lost(*_args: Any, **_kwargs: Any) -> None:
        raise Lost("the server went away")

    monkeypatch.setattr(database.WriteTransaction, "__init__", lost)
    with pytest.raises(Lost), ledger.database.writing():
        pass
    monkeypatch.undo()
    with ledger.database.writing() as tx:  # the database is usable afterwards
        tx.insert_many("ledger_meta", _META, [("bg-after", "ok")])
    assert _names(ledger) == ["bg-after"]


def test_a_write_is_signed_after_its_queued_inserts_as_the_last_step_before_commit(
    ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint's `signed_at` is when `--known-at` counts the write as known: it must
    come after the write's inserts, not before the wait for them (a large import's last
    chunks and commit took up to a second after it was signed)."""
    import time
    from datetime import UTC, datetime

    from ledger.persistence import background
    from ledger.persistence.sqlite_reads import checkpoint_time

    settled: list[str] = []
    settle = background.BackgroundInserts.settle

    def slow_settle(self: background.BackgroundInserts) -> None:
        settle(self)
        time.sleep(0.02)  # the last inserts, taking their time
        settled.append(checkpoint_time(datetime.now(UTC)))

    monkeypatch.setattr(background.BackgroundInserts, "settle", slow_settle)
    summary = ledger.import_lines(jsonl(story()).splitlines(keepends=True))
    assert summary.accepted == len(story())
    with ledger.database.reading() as conn:
        signed = conn.execute(sa.text("SELECT max(signed_at) FROM ledger_checkpoints")).scalar()
    assert settled, "the import queued no insert on the worker"
    assert signed > max(settled)
