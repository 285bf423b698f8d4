"""The database side of due-diligence exports: secrets, the export's fact id, streamed events.

An export's pseudonym secret is wrapped by the master key (bound to the export's id) in
`ledger_export_secrets`; `rewrap_export_secrets` re-wraps them when the master key rotates.
The export reads every customer's events in one ordered scan (`customer_streams`), bounded
by the tree size it verified and signed for, so the rows it writes are exactly the ledger
its manifest names, however many facts are recorded meanwhile.
"""

from __future__ import annotations

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
    "SELECT originator_id, originator_version, topic, state FROM ledger_events "
    "WHERE notification_id <= {mark} AND topic LIKE {mark} "
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


def export_rows(database: Database) -> list[dict[str, Any]]:
    """Every export recorded, oldest first (no secrets)."""
    columns = [c for c in _X.c if c.name != "wrapped_secret"]
    with database.reading() as conn:
        rows = conn.execute(sa.select(*columns).order_by(_X.c.created_at)).mappings().all()
    return [dict(row) for row in rows]


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
    mark = "?" if database.is_sqlite else "%s"
    sql = _STREAMS_SQL.format(mark=mark)
    with database.reading() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        # PostgreSQL: a named (server-side) cursor, so the rows stream.
        cursor = raw.cursor() if database.is_sqlite else raw.cursor(name="consent_ledger_export")
        try:
            cursor.execute(sql, (upto, _CUSTOMER_TOPIC))
            current: Any = None
            ident: Any = None
            stream: list[StoredEvent] = []
            while batch := cursor.fetchmany(_BATCH):
                for originator, version, topic, state in batch:
                    if originator != current:
                        if stream:
                            yield stream
                        stream = []
                        current = originator
                        ident = UUID(hex=originator) if isinstance(originator, str) else originator
                    stream.append(StoredEvent(ident, version, topic, bytes(state)))
            if stream:
                yield stream
        finally:
            cursor.close()
