"""The statement that carries a chunk's rows to SQLite in one step (`background.json_insert`)."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.persistence.background import json_insert

COLUMNS = ("n", "ident", "label", "payload", "maybe")


def _table() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE t (n INTEGER, ident VARCHAR(32), label TEXT, payload BLOB, maybe BLOB)"
    )
    return conn


def _inserted(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    conn = _table()
    statement = json_insert("t", COLUMNS, rows)
    assert statement is not None
    conn.execute(*statement)
    return conn.execute("SELECT n, ident, label, payload, maybe FROM t ORDER BY rowid").fetchall()


def _stored(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """What an executemany through our engine stores: a UUID as its hex digits."""
    return tuple(v.hex if isinstance(v, uuid.UUID) else v for v in row)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.uuids() | st.none(),
            st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
            st.binary(max_size=64),
            st.binary(max_size=8) | st.none(),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_rows_come_back_exactly_as_an_executemany_stores_them(
    rows: list[tuple[Any, ...]],
) -> None:
    if any("\0" in row[2] for row in rows):  # SQLite's JSON text would cut it short
        assert json_insert("t", COLUMNS, rows) is None
        return
    assert _inserted(rows) == [_stored(row) for row in rows]


def test_bytes_stay_blobs_even_when_empty_and_none_stays_null() -> None:
    conn = _table()
    statement = json_insert("t", COLUMNS, [(1, None, "a", b"", None), (2, None, "b", b"x", b"")])
    assert statement is not None
    conn.execute(*statement)
    kinds = conn.execute("SELECT typeof(payload), typeof(maybe) FROM t ORDER BY n").fetchall()
    assert kinds == [("blob", "null"), ("blob", "blob")]


@pytest.mark.parametrize(
    "value",
    [datetime(2025, 1, 1, tzinfo=UTC), True, 1.5, "\ud800", "a\0b"],
    ids=["datetime", "bool", "float", "lone surrogate", "NUL"],
)
def test_a_value_it_cannot_carry_leaves_the_rows_to_executemany(value: Any) -> None:
    assert json_insert("t", ("label",), [("fine",), (value,)]) is None


def test_a_column_of_mixed_kinds_is_left_to_executemany() -> None:
    assert json_insert("t", ("payload",), [(b"bytes",), ("text",)]) is None
    assert json_insert("t", ("ident",), [(uuid.uuid4(),), (b"bytes",)]) is None


def test_the_worker_never_takes_ctrl_c_or_sigterm() -> None:
    """The worker thread blocks SIGINT and SIGTERM from its start: a signal sent to the
    process as a write commits (which holds them in the main thread, `signals_held`) waits
    for the commit and what completes it, not taken by the worker, which the kernel may
    pick while it lives (its thread outlives `shutdown` by a moment)."""
    import signal

    from ledger.persistence.background import BackgroundInserts

    class Driver:
        masks: list[set[int]] = []

        def execute(self, sql: str, params: Any) -> Any:
            self.masks.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
            return self

        def close(self) -> None:
            pass

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    inserts = BackgroundInserts(Driver(), True, sqlite3.IntegrityError)
    try:
        inserts.submit_statement("SELECT 1", ())
        inserts.settle()
    finally:
        inserts.close()
    assert Driver.masks and {signal.SIGINT, signal.SIGTERM} <= Driver.masks[0]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
