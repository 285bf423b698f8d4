"""What every read model shares: slot tables, the stream it is derived from, the writer.

A read model is a function of the event streams: every row belongs to one stream (a customer's
or an acquirer's) and is derived from that stream's whole history, so bringing a model up to
date is "replace the rows of each stream that has new events". Replacing is idempotent, which
is what makes a catch-up safe to repeat and an incremental model equal to a rebuilt one.

Each read model keeps two sets of tables, slot `a` and slot `b`. Queries read the slot named
in the model's tracking row; a rebuild fills the other slot and then, in one transaction,
points the tracking row at it (with its position). A rebuild killed halfway leaves queries
answering from the slot they already used. Tables hold references, ids, recipients, kinds
and times: never names, emails, phones or addresses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.iterables import batched
from ledger.persistence.database import bulk_insert
from ledger.persistence.index_audit import row_hash

if TYPE_CHECKING:
    from projections.fold import Stream

metadata = sa.MetaData()
SLOTS = ("a", "b")
# Streams folded and written per batch by a pass (in its own process or a worker).
STREAMS_PER_BATCH = 1000

tracking = sa.Table(
    "rm_tracking",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    # The last notification id applied: written in the same transaction as the rows.
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("slot", sa.String(1), nullable=False),
    sa.Column("rebuilt_at", sa.String(40), nullable=True),
)

STAMP_LENGTH = 27


def stamp(moment: datetime) -> str:
    """A time as fixed-width UTC text: sorts like the time, readable in the database."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:26] + "Z"


def unstamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


def stamp_to_iso(text: str) -> str:
    """The ledger's printed form (`ledger.feed.iso`) of a stamp."""
    return text[:19] + "Z" if text.endswith(".000000Z") else text


class SlotTable:
    """One logical table of a read model, present twice (slots a and b)."""

    def __init__(self, name: str, *columns: sa.Column[Any], index: Sequence[str] = ()) -> None:
        self.name = name
        self.columns = tuple(c.name for c in columns)
        self.slots: dict[str, sa.Table] = {}
        for slot in SLOTS:
            table_name = f"rm_{name}_{slot}"
            table = sa.Table(table_name, metadata, *(c._copy() for c in columns))
            for column in index:
                sa.Index(f"ix_{table_name}_{column}", table.c[column])
            self.slots[slot] = table

    def __getitem__(self, slot: str) -> sa.Table:
        return self.slots[slot]


def stream_column() -> sa.Column[str]:
    """The stream (aggregate id, hex) a row was derived from: rows are replaced by stream."""
    return sa.Column("stream_id", sa.String(32), nullable=False)


def text(name: str, length: int = 500, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(length), nullable=nullable)


def time_column(name: str, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(STAMP_LENGTH), nullable=nullable)


Rows = dict[SlotTable, list[tuple[Any, ...]]]


class Writer:
    """Writes one read model's slot inside the runner's transaction."""

    def __init__(self, connection: Connection, slot: str) -> None:
        self.connection = connection
        self.slot = slot
        self.is_sqlite = connection.dialect.name == "sqlite"

    def table(self, logical: SlotTable) -> sa.Table:
        return logical[self.slot]

    def insert(self, logical: SlotTable, rows: list[tuple[Any, ...]]) -> None:
        """Bulk insert on the driver (rows hold only str, int and None): SQLite's
        executemany, PostgreSQL's COPY."""
        if not rows:
            return
        driver = self.connection.connection.dbapi_connection
        bulk_insert(driver, self.is_sqlite, logical[self.slot].name, logical.columns, rows)

    def delete_streams(self, logical: SlotTable, keys: Sequence[str]) -> None:
        table = logical[self.slot]
        for chunk in batched(keys, 500):
            self.connection.execute(table.delete().where(table.c.stream_id.in_(chunk)))

    def select_streams(self, logical: SlotTable, keys: Sequence[str]) -> list[Any]:
        table = logical[self.slot]
        found: list[Any] = []
        for chunk in batched(keys, 500):
            found.extend(
                self.connection.execute(table.select().where(table.c.stream_id.in_(chunk)))
            )
        return found

    def select_all(self, logical: SlotTable) -> list[Any]:
        """Every row of the slot table."""
        return list(self.connection.execute(sa.select(logical[self.slot])))

    def delete_where(self, logical: SlotTable, where: sa.ColumnElement[bool]) -> None:
        """Delete the slot table's rows that match `where` (a clause on `table(logical)`)."""
        self.connection.execute(logical[self.slot].delete().where(where))

    def drop_indexes(self, logical: SlotTable) -> list[sa.Index]:
        """Drop the slot table's indexes (in this transaction); returns them to create again."""
        table = logical[self.slot]
        indexes = sorted(table.indexes, key=lambda index: str(index.name))
        for index in indexes:
            index.drop(self.connection)
        return indexes

    def truncate(self, logical: SlotTable) -> None:
        table = logical[self.slot]
        if self.is_sqlite:
            self.connection.exec_driver_sql(f"DELETE FROM {table.name}")
        else:
            self.connection.exec_driver_sql(f"TRUNCATE {table.name}")


def row_sum(rows: Iterable[Sequence[Any]]) -> int:
    """The sum of a hash of each row's text (`repr` of its values as a tuple), keyed by a
    secret random to each process (`index_audit.row_hash`), so no one can make other rows
    sum the same in advance; a repeated row counts each time. A multiset's digest, which
    the read-model check compares (`ReadModels.check`)."""
    return sum(row_hash(repr(row if type(row) is tuple else tuple(row))) for row in rows)


class DigestWriter(Writer):
    """A writer that keeps, for each table it is given rows for, how many and their
    `row_sum` (in `digests`, by the slot table's name) instead of inserting them: what
    the slot would hold after a pass from event zero into it, without writing it. It
    writes nothing at all, so a pass with it runs in a read transaction (the read-model
    check's, `ReadModels.check`): a table it is told to empty is empty to the pass from
    then on (a model's `finish` may read one back), and left as it is in the database.
    A pass from event zero empties every table first: a table not emptied is not one it
    may be asked about."""

    def __init__(self, connection: Connection, slot: str, digests: dict[str, list[int]]) -> None:
        super().__init__(connection, slot)
        self.digests = digests
        self.emptied: set[str] = set()

    def insert(self, logical: SlotTable, rows: list[tuple[Any, ...]]) -> None:
        digest = self.digests.setdefault(logical[self.slot].name, [0, 0])
        digest[0] += len(rows)
        digest[1] += row_sum(rows)

    def truncate(self, logical: SlotTable) -> None:
        self.emptied.add(logical[self.slot].name)

    def select_all(self, logical: SlotTable) -> list[Any]:
        self._empty(logical)
        return []

    def select_streams(self, logical: SlotTable, keys: Sequence[str]) -> list[Any]:
        self._empty(logical)
        return []

    def delete_where(self, logical: SlotTable, where: sa.ColumnElement[bool]) -> None:
        self._empty(logical)

    def delete_streams(self, logical: SlotTable, keys: Sequence[str]) -> None:
        self._empty(logical)

    def drop_indexes(self, logical: SlotTable) -> list[sa.Index]:
        return []

    def _empty(self, logical: SlotTable) -> None:
        """The rows the pass has not digested are none only in a table it emptied."""
        if logical[self.slot].name not in self.emptied:
            raise AssertionError(f"a digest of {logical[self.slot].name} read before emptied")


class Pass:
    """What a model learns at the start of a pass: its writer, and the acquirers that changed."""

    def __init__(
        self,
        writer: Writer,
        acquirers: list[Stream],
        *,
        fresh: bool,
        stream_ordered_until: int = 0,
    ) -> None:
        self.writer = writer
        self.acquirers = acquirers
        self.fresh = fresh
        # `ledger.rules.Initiations.stream_ordered_until`, from the ledger's meta.
        self.stream_ordered_until = stream_ordered_until


class ReadModel:
    """A read model: its tables (each keyed by stream) and the rows a stream yields."""

    name: ClassVar[str]
    tables: ClassVar[tuple[SlotTable, ...]]
    # Tables not keyed by stream (running totals), maintained in `finish`.
    totals: ClassVar[tuple[SlotTable, ...]] = ()
    description: ClassVar[str] = ""
    # What the model reads of a folded stream beyond its state (`projections.fold.Folder`).
    uses_timelines: ClassVar[bool] = False
    uses_links: ClassVar[bool] = False
    uses_stamps: ClassVar[bool] = True

    @classmethod
    def all_tables(cls) -> tuple[SlotTable, ...]:
        return cls.tables + cls.totals

    def begin(self, run: Pass) -> set[UUID]:
        """Prepare a pass; return streams to re-derive beyond those with new events."""
        return set()

    def rows(self, stream: Stream) -> Rows:
        raise NotImplementedError

    def replace(self, writer: Writer, streams: list[Stream], *, fresh: bool) -> None:
        """Replace the rows of `streams` (in a fresh slot there is nothing to delete)."""
        produced: Rows = {table: [] for table in self.tables}
        for stream in streams:
            for table, rows in self.rows(stream).items():
                produced[table].extend(rows)
        keys = [s.key for s in streams]
        for table in self.tables:
            if not fresh:
                writer.delete_streams(table, keys)
            writer.insert(table, produced[table])

    def finish(self, writer: Writer) -> None:
        """End of a pass: write anything accumulated across streams."""

    def handover(self) -> Any:
        """What `replace` accumulated across streams (a worker's share of a pass, see
        `projections.parallel`), for `take_over` in the pass's own process."""
        return None

    def take_over(self, accumulated: Any) -> None:
        """Merge a worker's `handover` into this model's pass."""
