"""The ledger's index queries: which fact ids are recorded, which customers and orders exist,
whose an order is. SQL lives here, not in the application service.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from functools import cache
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ledger.persistence.database import WriteTransaction

if TYPE_CHECKING:
    # The lookups of a write run on the driver (`WriteTransaction.select_in`); the others
    # build their statements with SQLAlchemy, imported where they do.
    from sqlalchemy.engine import Connection


@cache  # built once, on first use
def _select_order_customer() -> Any:
    import sqlalchemy as sa

    from ledger.persistence import tables

    _C, _O = tables.customers, tables.orders
    return (
        sa.select(_C.c.customer_ref)
        .select_from(_O.join(_C, _O.c.customer_id == _C.c.customer_id))
        .where(_O.c.order_ref == sa.bindparam("order_ref"))
    )


@cache  # built once, on first use
def _select_customer_refs() -> Any:
    import sqlalchemy as sa

    from ledger.persistence import tables

    _C = tables.customers
    return sa.select(_C.c.customer_ref).order_by(_C.c.notification_id)


def recorded_fact_ids(tx: WriteTransaction, ids: Collection[str]) -> set[str]:
    """Those of `ids` already recorded (the idempotency check of an import chunk)."""
    sql = "SELECT fact_id FROM ledger_facts WHERE fact_id {in_values}"
    return {row[0] for row in tx.select_in(sql, list(ids))}


def customer_ids(tx: WriteTransaction, refs: Collection[str]) -> set[UUID]:
    """The stream ids of those of `refs` that are registered customers."""
    sql = "SELECT customer_id FROM ledger_customers WHERE customer_ref {in_values}"
    return {_uuid(row[0]) for row in tx.select_in(sql, list(refs))}


def order_owners(tx: WriteTransaction, refs: Collection[str]) -> dict[str, UUID]:
    """Order reference -> its customer's stream id, for those of `refs` that exist."""
    sql = "SELECT order_ref, customer_id FROM ledger_orders WHERE order_ref {in_values}"
    return {row[0]: _uuid(row[1]) for row in tx.select_in(sql, list(refs))}


def _uuid(value: UUID | str) -> UUID:
    """A stream id as the driver gives it (SQLite: SQLAlchemy's 32 hex digits)."""
    return value if isinstance(value, UUID) else UUID(hex=value)


def customer_ref_of_order(conn: Connection, order_ref: str) -> str | None:
    value = conn.execute(_select_order_customer(), {"order_ref": order_ref}).scalar()
    return None if value is None else str(value)


def customer_refs(conn: Connection) -> Iterator[str]:
    """Every customer reference in registration order, streamed."""
    # Streamed by the statement's option: on the connection, it would stay set on a write
    # transaction's (SQLAlchemy 2 sets a connection's options in place), and every later
    # statement of that write would run through a server-side cursor on PostgreSQL.
    for row in conn.execute(_select_customer_refs().execution_options(yield_per=5000)):
        yield str(row[0])
