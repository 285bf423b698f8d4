"""The database side of due-diligence exports: secrets, the export's fact id, streamed events.

An export's pseudonym secret is wrapped by the master key (bound to the export's id) in
`ledger_export_secrets`; `rewrap_export_secrets` re-wraps them when the master key rotates.
The export reads every customer's events in one ordered scan (`customer_event_rows`), bounded
by the tree size it verified and signed for, so the rows it writes are exactly the ledger
its manifest names, however many facts are recorded meanwhile; a large export splits the
scan by customer id among worker processes (`worker_event_rows`), each on its own connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from eventsourcing.persistence import StoredEvent
from sqlalchemy.engine import Connection

from ledger.crypto import SealError, unwrap_key, wrap_key
from ledger.errors import MasterKeyError
from ledger.persistence import tables
from ledger.persistence.database import Database, WriteTransaction

EXPORT_FACT_TYPE = "export.due_diligence"  # in ledger_facts only: not a feed fact type
_X = tables.export_secrets
_BATCH = 5000
_CUSTOMER_TOPIC = "ledger.domainmodel:Customer.%"
_STREAMS_SQL = (
    "SELECT originator_id, originator_version, topic, state, notification_id FROM ledger_events "
    "WHERE notification_id <= {mark} AND topic LIKE {mark}{where} "
    "ORDER BY originator_id, originator_version"
)


def _context(export_id: UUID) -> bytes:
    return b"export-secret:" + export_id.bytes


def wrap_secret(master: bytes, export_id: UUID, secret: bytes) -> bytes:
    return wrap_key(master, secret, _context(export_id))


def store_export(
    tx: WriteTransaction,
    *,
    export_id: UUID,
    acquirer: str,
    wrapped_secret: bytes,
    created_at: datetime,
    manifest_sha256: str,
    identified: bool,
    customers: int,
) -> None:
    tx.insert(
        _X,
        [
            {
                "export_id": export_id,
                "acquirer": acquirer,
                "wrapped_secret": wrapped_secret,
                "created_at": created_at,
                "manifest_sha256": manifest_sha256,
                "identified": identified,
                "customers": customers,
            }
        ],
    )


def export_secret(database: Database, master: bytes, export_id: UUID) -> bytes | None:
    """The export's pseudonym secret (None if there is no such export)."""
    with database.reading() as conn:
        wrapped = conn.execute(
            sa.select(_X.c.wrapped_secret).where(_X.c.export_id == export_id)
        ).scalar()
    if wrapped is None:
        return None
    try:
        return unwrap_key(master, wrapped, _context(export_id))
    except SealError:
        raise MasterKeyError("the master key does not open this export's secret") from None


def exporting_streams(database: Database) -> list[UUID]:
    """The acquirers' streams that recorded an export, from the fact index (which `verify`
    holds against the events), not from the export secrets (which it does not)."""
    facts = tables.facts
    with database.reading() as conn:
        rows = conn.execute(
            sa.select(facts.c.originator_id).where(facts.c.fact_type == EXPORT_FACT_TYPE).distinct()
        ).scalars()
        return [UUID(str(ident)) for ident in rows]


def rewrap_export_secrets(conn: Connection, old: bytes, new: bytes) -> int:
    """Re-wrap every export secret under a new master key (for key rotation)."""
    rows = conn.execute(
        sa.select(_X.c.export_id, _X.c.wrapped_secret).where(_X.c.wrapped_secret.is_not(None))
    ).all()
    for export_id, wrapped in rows:
        secret = unwrap_key(old, wrapped, _context(export_id))
        conn.execute(
            _X.update()
            .where(_X.c.export_id == export_id)
            .values(wrapped_secret=wrap_key(new, secret, _context(export_id)))
        )
    return len(rows)


def record_export_fact(
    tx: WriteTransaction, fact_id: str, notification_id: int, originator_id: UUID
) -> None:
    """Index the export's event under its fact id, like a fact: recorded once for all time,
    and provable (`prove FACT_ID`)."""
    tx.insert_many(
        tables.facts,
        ("fact_id", "notification_id", "fact_type", "originator_id"),
        [(fact_id, notification_id, EXPORT_FACT_TYPE, originator_id)],
    )


def customer_count(database: Database) -> int:
    with database.reading() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(tables.customers)).scalar()
    return int(count or 0)


def erased_after(database: Database, position: int) -> set[UUID]:
    """Customers erased by a fact recorded after event `position`."""
    facts = tables.facts
    with database.reading() as conn:
        rows = conn.execute(
            sa.select(facts.c.originator_id).where(
                facts.c.fact_type == "subject.erased", facts.c.notification_id > position
            )
        )
        return {row[0] for row in rows}


def customer_streams(database: Database, upto: int) -> Iterator[list[StoredEvent]]:
    """Each customer's stored events (events 1..`upto` only), one list per customer, read
    in one ordered scan off the driver's cursor: memory holds one customer at a time."""
    for ident, rows in customer_event_rows(database, upto):
        yield [StoredEvent(ident, row[1], row[2], bytes(row[3])) for row in rows]


# A customer's event as the export reads it: (originator_id as stored, originator_version,
# topic, state), the driver's row as it is.
EventRow = tuple[Any, int, str, bytes, int]  # stream id, version, topic, state, position


def customer_event_rows(
    database: Database, upto: int, bounds: tuple[UUID | None, UUID | None] = (None, None)
) -> Iterator[tuple[UUID, list[EventRow]]]:
    """`customer_streams` without the `StoredEvent` wrapping, over the database's own
    connection: each customer's id and its rows, optionally only customers whose id is in
    [low, high) (`bounds`, None for open)."""
    with database.reading() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        yield from _scan(raw, database.is_sqlite, upto, bounds)


def worker_event_rows(
    database: Database, upto: int, bounds: tuple[UUID | None, UUID | None]
) -> Iterator[tuple[UUID, list[EventRow]]]:
    """`customer_event_rows` for a forked worker process: on a connection of its own (a
    connection never crosses a fork), read-only on SQLite. Events never change, so every
    worker's snapshot agrees on events 1..`upto`."""
    raw: Any
    if database.is_sqlite:
        path = database.sqlite_path
        assert path is not None
        raw = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=120)
    else:
        import psycopg

        url = database.url.set(drivername="postgresql")
        raw = psycopg.connect(url.render_as_string(hide_password=False), connect_timeout=10)
    try:
        yield from _scan(raw, database.is_sqlite, upto, bounds)
    finally:
        raw.close()


def _scan(
    raw: Any, is_sqlite: bool, upto: int, bounds: tuple[UUID | None, UUID | None]
) -> Iterator[tuple[UUID, list[EventRow]]]:
    mark = "?" if is_sqlite else "%s"
    low, high = bounds
    where = ""
    params: list[Any] = [upto, _CUSTOMER_TOPIC]
    for bound, op in ((low, ">="), (high, "<")):
        if bound is not None:
            where += f" AND originator_id {op} {mark}"
            # SQLite keeps a UUID as its 32 hex digits (ordered as the UUID's bytes).
            params.append(bound.hex if is_sqlite else bound)
    sql = _STREAMS_SQL.format(mark=mark, where=where)
    if not is_sqlite:
        # In stream order straight off the stream index: a planner misled by statistics
        # (the topic's selectivity) would sort the whole scan first, spilling it to disk,
        # before the first row comes. (This transaction's own setting.)
        raw.execute("SET LOCAL enable_sort = off")
    # PostgreSQL: a named (server-side) cursor, so the rows stream.
    cursor = raw.cursor() if is_sqlite else raw.cursor(name="consent_ledger_export")
    try:
        cursor.execute(sql, params)
        current: Any = None
        ident: Any = None
        rows: list[EventRow] = []
        while batch := cursor.fetchmany(_BATCH):
            for row in batch:
                originator = row[0]
                if originator != current:
                    if rows:
                        yield ident, rows
                    rows = []
                    current = originator
                    ident = UUID(hex=originator) if isinstance(originator, str) else originator
                rows.append(row)
        if rows:
            yield ident, rows
    finally:
        cursor.close()
