"""An import's inserts, run on a second thread while the next chunk is applied.

An import alternates Python work (parse, validate, build events, seal) with the database's
work (insert a chunk's rows, update their indexes). Done in turn, the one waits for the other:
on PostgreSQL the client sat idle for a third of a 1M-fact import while the server inserted.
Here a chunk's inserts are handed to one worker thread, in order, and the import goes on with
the next chunk; anything else that uses the transaction's connection first waits for the
queued inserts (`WriteTransaction.driver` does that), so every statement still runs in
recording order on the one connection, inside the one transaction. Measured on two cores
(`benchmarks/bench_import.py`): ~9 % faster for ~20 % more CPU on SQLite at 1M facts; on
PostgreSQL ~9 % faster at 200k, and within the noise at 1M, where the local server needs the
second core itself. With one core it is not used.

The worker must not need Python's GIL while the database works, or it would only take turns
with the import:
- PostgreSQL: `COPY` (psycopg formats rows in C and waits on the socket without the GIL).
- SQLite: Python's driver releases the GIL only inside each `sqlite3_step`, so an
  `executemany` reacquires it after every row (and waits up to a switch interval for it while
  the import thread computes). One statement instead inserts the whole chunk in one step:
  `INSERT ... SELECT json_extract(value, '$[i]') ... FROM json_each(?1)`, the rows as one
  JSON array; bytes values travel in a second parameter, one blob, taken out with `substr`.
  Even so the worker needs the GIL for a moment before and after each statement, and with
  Python's default switch interval (5 ms) each of those moments waited for the import thread
  to be told to yield: at 1M facts the worker spent 10 s of wall time for 5 s of CPU on the
  events' inserts alone. While the worker runs on SQLite the interval is 0.1 ms
  (`_SWITCH_INTERVAL`): the import thread yields within that when the worker asks, which
  costs it nothing otherwise (1M facts: 28.3 s instead of 31.2 s;
  `benchmarks/bench_import.py --switch` compares the two).
  PostgreSQL's `COPY` showed no gain from it, only more CPU, so there it stays as it was.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import accumulate
from typing import Any
from uuid import UUID

import orjson

from ledger.persistence.database import bulk_insert, signals_held


class BackgroundInserts:
    """A FIFO of bulk inserts on one transaction's connection, run by one worker thread."""

    def __init__(self, driver: Any, is_sqlite: bool, integrity_error: type[Exception]) -> None:
        self._driver = driver
        self._is_sqlite = is_sqlite
        self._integrity_error = integrity_error
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="consent-ledger-insert")
        with signals_held():  # its one thread started now, never to take Ctrl-C or SIGTERM
            self._executor.submit(_nothing).result()  # (see `database.signals_held`)
        self._pending: list[Future[None]] = []
        self._interval: float | None = None
        if is_sqlite:
            self._interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._interval, _SWITCH_INTERVAL))

    def submit(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> bool:
        """Queue the insert; False if these rows cannot be inserted in the background (the
        caller then inserts them itself, after `settle()`)."""
        job: Callable[[], None]
        if self._is_sqlite:
            statement = json_insert(table, columns, rows)
            if statement is None:
                return False
            sql, params = statement
            job = self._guarded(table, lambda: self._driver.execute(sql, params).close())
        else:
            job = self._guarded(
                table, lambda: bulk_insert(self._driver, False, table, columns, rows)
            )
        self._pending.append(self._executor.submit(job))
        return True

    def submit_statement(self, sql: str, params: tuple[Any, ...]) -> None:
        """Queue one statement, written for the driver (its own parameter marks)."""
        if self._is_sqlite:
            job = self._guarded("statement", lambda: self._driver.execute(sql, params).close())
        else:
            job = self._guarded("statement", lambda: _execute(self._driver, sql, params))
        self._pending.append(self._executor.submit(job))

    def _guarded(self, table: str, job: Callable[[], None]) -> Callable[[], None]:
        """`job`, the driver's integrity errors raised as eventsourcing's (as a synchronous
        insert raises them)."""
        integrity_error = self._integrity_error

        def run() -> None:
            try:
                job()
            except integrity_error as error:
                from eventsourcing.persistence import IntegrityError

                first = (str(error).strip().splitlines() or ["integrity error"])[0]
                raise IntegrityError(f"{table}: {first}") from None

        return run

    def settle(self) -> None:
        """Wait for every queued insert; raise the first one's error, if any failed."""
        pending, self._pending = self._pending, []
        error: BaseException | None = None
        for future in pending:
            failure = future.exception()
            if failure is not None and error is None:
                error = failure
        if error is not None:
            raise error

    def close(self) -> None:
        """Wait for the worker (errors are for `settle`, which a rollback skips) and stop it."""
        try:
            self.settle()
        except Exception:  # the transaction is being rolled back anyway
            pass
        finally:
            self._executor.shutdown(wait=True)
            if self._interval is not None:
                sys.setswitchinterval(self._interval)
                self._interval = None


_SWITCH_INTERVAL = 0.0001  # seconds: see the module's docstring


def _execute(driver: Any, sql: str, params: tuple[Any, ...]) -> None:
    with driver.cursor() as cursor:
        cursor.execute(sql, params)


def json_insert(
    table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> tuple[str, tuple[Any, ...]] | None:
    """One SQLite statement inserting `rows`, and its parameters; None for a value it cannot
    carry (anything but int, str, bytes, UUID and None, or a column of mixed kinds).

    A UUID is stored as its 32 hex digits, as our engine's adapter stores it (its text as
    orjson writes it, dashes taken out by SQLite, on the worker's thread); bytes come back
    as a BLOB of the same bytes; text and integers as themselves.
    """
    # The rows column by column, once (a comprehension per column and value was slower).
    by_column: list[tuple[Any, ...]] = (
        list(zip(*rows, strict=True)) if rows else [()] * len(columns)
    )
    kinds: list[str] = []
    with_none: list[bool] = []
    for values in by_column:
        classes = set(map(type, values))
        kind = _kind(classes)
        if kind is None:
            return None
        kinds.append(kind)
        with_none.append(type(None) in classes)
    exprs: list[str] = []
    position = 0
    for kind in kinds:
        if kind == "bytes":
            exprs.append(
                f"substr(?2, json_extract(value, '$[{position}]'), "
                f"json_extract(value, '$[{position + 1}]'))"
            )
            position += 2
        elif kind == "uuid":  # orjson writes a UUID in C, with its dashes: taken out here
            exprs.append(f"replace(json_extract(value, '$[{position}]'), '-', '')")
            position += 1
        else:
            exprs.append(f"json_extract(value, '$[{position}]')")
            position += 1
    sql = f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(exprs)} FROM json_each(?1)"
    if "bytes" not in kinds:
        return _encoded(sql, rows)
    # Column by column (a comprehension each), then back to rows: several times faster
    # than a Python loop over every value.
    columns_out: list[Sequence[Any]] = []
    blobs: list[bytes] = []
    offset = 1  # substr counts from 1
    for kind, values, nones in zip(kinds, by_column, with_none, strict=True):
        if kind != "bytes":
            columns_out.append(values)
        elif nones:
            lengths = [None if v is None else len(v) for v in values]
            starts: list[int | None] = []
            for length in lengths:
                starts.append(None if length is None else offset)
                offset += length or 0
            columns_out.extend((starts, lengths))
            blobs.extend(v for v in values if v is not None)
        else:  # the same, without a Python step per value
            sizes = list(map(len, values))
            starts_at = list(accumulate(sizes, initial=offset))
            offset = starts_at.pop()
            columns_out.extend((starts_at, sizes))
            blobs.extend(values)
    statement = _encoded(sql, list(zip(*columns_out, strict=True)))
    if statement is None:
        return None
    # A blob even when every value is empty or None: one byte that no offset reaches.
    return sql, (statement[1][0], b"".join(blobs) or b"\0")


def _encoded(sql: str, items: Sequence[Sequence[Any]]) -> tuple[str, tuple[Any, ...]] | None:
    """The statement with its rows as JSON text (text, not a blob: SQLite 3.45 and later
    would read a blob as its binary JSONB)."""
    try:
        encoded = orjson.dumps(items)
    except orjson.JSONEncodeError:  # e.g. a string that is not valid Unicode
        return None
    if b"\\u0000" in encoded:  # SQLite's JSON text would end at a NUL character
        return None
    return sql, (encoded.decode(),)


def _kind(classes: set[type]) -> str | None:
    """The kind of a column whose values are of `classes`, None aside: "plain" (int and
    str), "bytes" or "uuid"."""
    classes = classes - {type(None)}
    if classes <= {int, str}:
        return "plain"
    if classes == {bytes}:
        return "bytes"
    if classes == {UUID}:
        return "uuid"
    return None


def _nothing() -> None:
    """What starts the worker's thread."""
