"""Order status: each order with its customer, placing time, total and status now."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from projections.base import ReadModel, Rows, SlotTable, stream_column, text, time_column
from projections.fold import Stream

orders = SlotTable(
    "order_status",
    stream_column(),
    text("order_ref"),
    text("customer"),
    time_column("placed_at"),
    # Any length (0011): the feed bounds them now, but not every version did.
    sa.Column("total", sa.Text, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    text("status", 20),
    index=("stream_id", "order_ref"),
)


class OrderStatus(ReadModel):
    name = "order_status"
    tables = (orders,)
    description = "each order's status now"

    def rows(self, stream: Stream) -> Rows:
        customer = stream.customer
        if customer is None:
            return {}
        return {
            orders: [
                (
                    stream.key,
                    ref,
                    customer.ref,
                    stream.placed[ref],
                    str(order.total),
                    order.currency,
                    order.status,
                )
                for ref, order in customer.orders.items()
            ]
        }


def order_totals(conn: Connection, slot: str) -> list[tuple[str, int]]:
    """(status, orders)."""
    table = orders[slot]
    query = sa.select(table.c.status, sa.func.count()).group_by(table.c.status)
    return sorted((r[0], int(r[1])) for r in conn.execute(query))
