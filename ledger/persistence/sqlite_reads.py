"""Reads of an SQLite ledger on the stdlib driver itself, without SQLAlchemy.

A query command (`customer trail`, `consent show`) reads one stream and checks the schema's
revision: a few milliseconds of SQL. Importing SQLAlchemy to run them cost most of such a
process's time, so `Database` reads an SQLite file through here when it is not inside a write
(inside one, the write's connection is used: it sees the write's own events). Each thread
of each process has its own connection (sqlite3 connections are not shared across threads,
nor inherited across a fork). Each read is one statement in autocommit mode: in WAL mode
a statement reads one consistent snapshot of committed transactions.

The SQL of each read lives here once; `LedgerRecorder` runs the stream read on every backend.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.errors import DamagedDatabaseError, DatabaseUnavailableError, IntegrityFailure
from ledger.persistence.readers import PerThread, first_line

_PLAIN_PREFIX = "sqlite:///"

# A customer's (any aggregate's) stream, in version order. `?` marks (SQLite's paramstyle).
SELECT_STREAM = (
    "SELECT originator_id, originator_version, topic, state FROM ledger_events "
    "WHERE originator_id = ? ORDER BY originator_version"
)
# Several streams in one statement, each in version order (`WriteTransaction.select_in`
# fills in the ids): the customers an import's chunk names, read at once.
SELECT_STREAMS = (
    "SELECT originator_id, originator_version, topic, state FROM ledger_events "
    "WHERE originator_id {in_values} ORDER BY originator_id, originator_version"
)
# A customer's stream by reference (through the customers index, written with the customer's
# first event), in version order: what `customer trail` and `consent show` answer from.
SELECT_CUSTOMER_STREAM = (
    "SELECT e.originator_version, e.topic, e.state FROM ledger_customers c "
    "JOIN ledger_events e ON e.originator_id = c.customer_id "
    "WHERE c.customer_ref = ? ORDER BY e.originator_version"
)
# The ledger as it stood at a recorded time K: the events of every write committed by K.
# Each write (an import, a command) ends by signing a checkpoint of the whole log in its own
# transaction, so the log as known at K is the largest checkpoint signed at or before K
# (`signed_at` is fixed-width UTC text: it sorts as the time). A write still running at K
# counts as unknown, all of it, though its events were stamped one by one as it ran. The
# signing comes after every queued insert, just before COMMIT (`Database.writing`; what may
# run between them records no event: a change of the Art. 21 list, PostgreSQL's NOTIFY):
# only a write whose commit was under way at K, signed a moment before, is answered as
# known at K, from when it commits (an answer about a K of the last moment may change).
SELECT_KNOWN_SIZE = (
    "SELECT coalesce(max(tree_size), 0) FROM ledger_checkpoints WHERE signed_at <= ?"
)
SELECT_CUSTOMER_STREAM_KNOWN = (
    "SELECT e.originator_version, e.topic, e.state FROM ledger_customers c "
    "JOIN ledger_events e ON e.originator_id = c.customer_id "
    f"WHERE c.customer_ref = ? AND e.notification_id <= ({SELECT_KNOWN_SIZE}) "
    "ORDER BY e.originator_version"
)
# The due-diligence exports recorded after a customer's first event (by reference), with
# that event's position: the exports that may hold the customer (`ledger.views.export_rows`
# says which do). The condition is migration 0012's partial index's text, for the index to
# serve it (as a bound parameter, SQLite would not use it).
EXPORT_FACT_TYPE = "export.due_diligence"  # in ledger_facts only: not a feed fact type
EXPORTS_ONLY = f"fact_type = '{EXPORT_FACT_TYPE}'"
_EXPORTS_AFTER_CUSTOMER = (
    "SELECT c.notification_id, e.notification_id, e.state FROM ledger_customers c "
    "JOIN ledger_facts f ON f.notification_id > c.notification_id "
    "JOIN ledger_events e ON e.notification_id = f.notification_id "
    f"WHERE c.customer_ref = ? AND f.{EXPORTS_ONLY}"
)
SELECT_CUSTOMER_EXPORTS = f"{_EXPORTS_AFTER_CUSTOMER} ORDER BY f.notification_id"
SELECT_CUSTOMER_EXPORTS_KNOWN = (
    f"{_EXPORTS_AFTER_CUSTOMER} AND e.notification_id <= ({SELECT_KNOWN_SIZE}) "
    "ORDER BY f.notification_id"
)


# The position of each of a customer's events, by stream version: which of them an export
# read (its orders), and where the export falls among them in recording order.
SELECT_CUSTOMER_POSITIONS = (
    "SELECT e.originator_version, e.notification_id FROM ledger_customers c "
    "JOIN ledger_events e ON e.originator_id = c.customer_id WHERE c.customer_ref = ?"
)


def customer_exports(
    fetch: Callable[[str, tuple[Any, ...]], list[Any]], ref: str, known_at: datetime | None
) -> list[tuple[int, int, Any, dict[int, int]]]:
    """The rows of `SELECT_CUSTOMER_EXPORTS` for customer `ref` (those recorded by
    `known_at`, if given), through `fetch` (`Database.fetch_on_driver`), each with the
    position of every event of the customer's by stream version (`SELECT_CUSTOMER_POSITIONS`,
    read only when there is an export)."""
    if known_at is None:
        rows = fetch(SELECT_CUSTOMER_EXPORTS, (ref,))
    else:
        rows = fetch(SELECT_CUSTOMER_EXPORTS_KNOWN, (ref, checkpoint_time(known_at)))
    if not rows:
        return []
    positions = {int(version): int(at) for version, at in fetch(SELECT_CUSTOMER_POSITIONS, (ref,))}
    return [(first, position, state, positions) for first, position, state in rows]


# The last version of a stream among the first N events (SQLite: the id's 32 hex digits).
SELECT_LAST_VERSION = (
    "SELECT coalesce(max(originator_version), 0) FROM ledger_events "
    "WHERE originator_id = ? AND notification_id <= ?"
)
# For a customer reference whose stream read found nothing: whether the customer index has
# a row for it, and whether the customer's stream (SQLite: the id's 32 hex digits) has any
# event. One statement, so one snapshot: two would each see the log as it stood then (a
# PostgreSQL read is in autocommit), and an import committed between them would show a new
# customer's events without its index row, as if the index had been altered.
SELECT_CUSTOMER_INDEXED_AND_STREAM = (
    "SELECT EXISTS (SELECT 1 FROM ledger_customers WHERE customer_ref = ?), "
    "EXISTS (SELECT 1 FROM ledger_events WHERE originator_id = ?)"
)
# The key of the customer pseudonyms in logs (`cli.logs.hashed`): random, made by `db
# upgrade` (`keys.create_log_key`), base64 in `ledger_meta`.
LOG_KEY_NAME = "log_pseudonym_key"
# The master key's fingerprint (`keys.KeyStore`), recorded with the other keys a new ledger
# needs: a ledger without it has never had its keys made (`config.keys_unmade`).
MASTER_KEY_CHECK_NAME = "master_key_check"
SELECT_META = "SELECT value FROM ledger_meta WHERE name = ?"
# Whether the ledger has recorded anything.
SELECT_ANY_EVENT = "SELECT 1 FROM ledger_events LIMIT 1"
# The last position recorded before migration 0006: up to it, an import stored a chunk's
# events stream by stream, so two positions in one import do not give the order of its lines
# (`ledger.rules.Initiations`).
STREAM_ORDERED_NAME = "stream_ordered_until"


def stream_ordered_until(rows: list[Any]) -> int:
    """The position from `SELECT_META` rows of `STREAM_ORDERED_NAME` (0: none); a value the
    ledger never writes there (not a whole number from 0) is an `IntegrityFailure`."""
    if not rows:
        return 0
    value = rows[0][0]
    if type(value) is str and value.isdigit() and value.isascii():
        return int(value)
    if type(value) is int and value >= 0:
        return value
    raise IntegrityFailure(
        f"the ledger's meta row {STREAM_ORDERED_NAME} holds a value the ledger never writes: "
        "it was changed outside consent-ledger; restore the ledger_meta table from a backup"
    )


# The transfer initiations only: what every preventive check reads. Migration 0008 makes a
# partial index of them (`ix_ledger_facts_initiations`, with this condition); a query uses it
# only if its own condition is this text exactly (a literal, not a parameter).
INITIATIONS_ONLY = "fact_type = 'transfer.initiated'"

SELECT_RECORDED_FACT = (
    "SELECT f.fact_type, e.state, f.originator_id FROM ledger_facts f JOIN ledger_events e "
    "ON e.notification_id = f.notification_id WHERE f.fact_id = ?"
)


def checkpoint_time(moment: datetime) -> str:
    """A time as a checkpoint's `signed_at` holds it (fixed-width UTC text, sorting as the
    time), and as `SELECT_KNOWN_SIZE` compares one."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_TABLE_NAMES = (
    "SELECT name FROM sqlite_master WHERE type = 'table' "
    "AND name NOT LIKE 'sqlite~_%' ESCAPE '~' ORDER BY name"
)
_REVISION = "SELECT version_num FROM alembic_version"


def plain_sqlite_file(url: str) -> str | None:
    """The database of a plain `sqlite:///FILE` URL, as SQLAlchemy's `make_url` reads it;
    None for any other URL (with a query, escapes, another scheme: SQLAlchemy parses it)."""
    if not url.startswith(_PLAIN_PREFIX) or any(c in url for c in "?%#"):
        return None
    return url[len(_PLAIN_PREFIX) :]


def for_driver(sql: str, paramstyle: str) -> str:
    """`sql` with its `?` marks in the driver's paramstyle (psycopg: `%s`)."""
    return sql if paramstyle == "qmark" else sql.replace("?", "%s")


def is_damaged(error: BaseException) -> bool:
    """Whether SQLite said its file is damaged (SQLITE_CORRUPT), raised as it is by the
    driver or wrapped by SQLAlchemy."""
    driver_error = getattr(error, "orig", None) or error
    return isinstance(driver_error, sqlite3.DatabaseError) and "malformed" in str(driver_error)


def read_only_hint(path: Path | None, error: BaseException | None) -> str:
    """What to do when SQLite could not open a ledger on read-only ground (a write-protected
    copy an auditor was given, say): nothing if that is not the cause."""
    text = str(getattr(error, "orig", None) or error or "")
    if path is None or ("readonly" not in text and "unable to open" not in text):
        return ""
    folder = path.parent
    if os.access(path, os.W_OK) and os.access(folder, os.W_OK):
        return ""
    return (
        " (the file or its folder is read-only, and SQLite writes a -shm file beside a ledger, "
        "which is in WAL mode, even to read it: copy the ledger, with any -wal file, to a "
        "folder you can write to)"
    )


class Readers(PerThread[sqlite3.Connection]):
    """A read connection to one SQLite file per thread and process, opened on first use."""

    def __init__(self, path: Path, url: str) -> None:
        super().__init__()
        self.path = path
        self.url = url  # a plain sqlite:/// URL: no password in it

    def _open(self) -> sqlite3.Connection:
        # Used by its thread only; `close()` may run on another (hence no same-thread check).
        try:
            conn = sqlite3.connect(
                self.path, timeout=120, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=120000")
            conn.execute("PRAGMA schema_version")  # reads the header: is it a database?
        except sqlite3.Error as error:
            if is_damaged(error):
                raise DamagedDatabaseError(self.url) from None
            raise DatabaseUnavailableError(
                f"cannot connect to {self.url}: {first_line(error)}"
                f"{read_only_hint(self.path, error)}"
            ) from None
        return conn

    def _begin(self) -> sqlite3.Connection:
        # Deferred: the snapshot is the one the first read takes (WAL mode), kept to the end.
        conn = self.connection()
        self._run(conn.execute, "BEGIN")
        return conn

    def _end(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("COMMIT")
        except sqlite3.Error:  # (nothing was written) not used again: it may keep the snapshot
            self.discard(conn)

    def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        rows: list[Any] = self._run(lambda: self.connection().execute(sql, params).fetchall())
        return rows

    def _run(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except sqlite3.Error as error:  # e.g. locked beyond the timeout
            if is_damaged(error):
                raise DamagedDatabaseError(self.url) from None
            raise DatabaseUnavailableError(
                f"the database {self.url} failed: {first_line(error)}"
            ) from None

    def table_names(self) -> list[str]:
        return [name for (name,) in self.fetch(_TABLE_NAMES)]

    def schema_revision(self) -> str | None:
        if "alembic_version" not in self.table_names():
            return None
        rows = self.fetch(_REVISION)
        return str(rows[0][0]) if rows else None


# The demo's own ledgers (`demo` replaces its file, and only a file it built itself).
DEMO_MARK = "built_by"
DEMO_MARK_VALUE = "consent-ledger demo"


def built_by_demo(path: Path) -> bool:
    """Whether the SQLite file at `path` is a ledger the demo built (marked so in its
    `ledger_meta`); False for anything else, a file that is no database included. Read only."""
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        return conn.execute(SELECT_META, (DEMO_MARK,)).fetchall() == [(DEMO_MARK_VALUE,)]
    except sqlite3.Error:  # not a database, or not a ledger
        return False
    finally:
        conn.close()
