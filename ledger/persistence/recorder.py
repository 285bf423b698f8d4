"""eventsourcing's persistence interface over our database.

`LedgerRecorder` is an `ApplicationRecorder` (events by stream, notifications in recording
order) that writes inside the ambient write transaction of `Database`, so an application's
`save()` joins whatever import or command is in progress. `LedgerTranscoder` is an orjson
transcoder that knows the ledger's few typed fields; it is several times faster than the
library's JSON transcoder, and `tests/unit/test_transcoder.py` checks that every event field
round-trips.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

import orjson
from eventsourcing.domain import CanMutateAggregate, DomainEventProtocol, TAggregateID
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    EventStore,
    InfrastructureFactory,
    Mapper,
    Notification,
    ProcessRecorder,
    Recording,
    StoredEvent,
    Subscription,
    TrackingRecorder,
    Transcoder,
)
from eventsourcing.utils import get_topic, resolve_topic

from ledger.errors import UnreadableEventError
from ledger.persistence import sqlite_reads
from ledger.persistence.database import Database, WriteTransaction
from ledger.persistence.stored_state import DATETIME_FIELDS as DATETIME_FIELDS
from ledger.persistence.stored_state import DECIMAL_FIELDS as DECIMAL_FIELDS
from ledger.persistence.stored_state import aware_time, decode_state, misshapen


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return str(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


class LedgerTranscoder(Transcoder):
    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(obj, default=_default)

    def decode(self, data: bytes) -> Any:
        return decode_state(data)


# Every topic the ledger stores names one of its domain's event classes.
_TOPIC_PREFIX = "ledger.domainmodel:"


def resolve_stored_topic(topic: str, where: str = "") -> type[Any]:
    """The event class a stored event's topic names. The library's `resolve_topic` imports
    whatever module a topic names: a topic written into the database by someone else would
    make reading the ledger import (run) that module. Only the ledger's own event classes
    are resolved; any other topic is an `UnreadableEventError` (`where`: which event)."""
    if isinstance(topic, str) and topic.startswith(_TOPIC_PREFIX):
        try:
            cls = resolve_topic(topic)
        except Exception:  # (TopicError, or an attribute path that fails on the way)
            cls = None
        if isinstance(cls, type) and issubclass(cls, CanMutateAggregate):
            return cls
    raise UnreadableEventError(where)


def misshapen_event(database: Database, head: int | None = None) -> str | None:
    """Where the first stored event (up to position `head`, if given) is that the ledger
    cannot have written: its topic not one of the ledger's, its state not JSON it reads
    (`decode_state`), or without a field of its class, with one it does not have or with a
    value of another type (`stored_state.misshapen`). None if every event is as written,
    or if the database cannot be read for it.

    The readers take an event's fields as they come, unchecked (checking them would cost a
    read of every event); an altered one then fails further on, in whatever used the field.
    A command that failed so reads the whole log through this, after the fact, to tell a
    database changed outside the ledger (`UnreadableEventError`, exit 4) from a bug."""
    import sqlalchemy as sa

    from ledger.persistence.tables import events as _E

    query = sa.select(_E.c.originator_id, _E.c.originator_version, _E.c.topic, _E.c.state)
    if head is not None:
        query = query.where(_E.c.notification_id <= head)
    query = query.order_by(_E.c.notification_id).execution_options(yield_per=10_000)
    try:
        with database.connect() as conn, conn.begin():
            for ident, version, topic, state in conn.execute(query):
                if not (isinstance(topic, str) and topic.startswith(_TOPIC_PREFIX)):
                    return f" (stream {ident}, version {version})"
                try:
                    if misshapen(topic[len(_TOPIC_PREFIX) :], decode_state(state)):
                        return f" (stream {ident}, version {version})"
                except UnreadableEventError:
                    return f" (stream {ident}, version {version})"
    except Exception:  # (the database failing as well: the command's own error stands)
        return None
    return None


class EventDecoder:
    """Stored rows straight to the ledger's events: the library mapper's `to_domain_event`
    less what the ledger never uses (ciphers, compression, id conversion, a `StoredEvent`
    for each row), as strict as `decode_state` (tested equal to the mapper). A tenth of an
    export's time at a million events; a third of reading a chunk's recorded customers back
    in an import. An event whose class has a `class_version` (or whose state carries one)
    goes through the mapper, so upcasting is never skipped."""

    def __init__(self, mapper: Mapper[Any]) -> None:
        self.mapper = mapper
        self.classes: dict[str, tuple[type, bool]] = {}

    def __call__(self, stored: StoredEvent) -> Any:
        row = (None, stored.originator_version, stored.topic, stored.state)
        return self.stream(stored.originator_id, [row])[0]

    def stream(self, originator_id: Any, rows: Iterable[Sequence[Any]]) -> list[Any]:
        """One stream's events from its rows in version order, each row (stream id,
        version, topic, state, ...) as the driver gives it (the stream id is not read: it
        is `originator_id`). One loop: this runs for every event an export reads."""
        classes = self.classes
        loads = orjson.loads
        parse = aware_time
        new = object.__new__
        set_dict = object.__setattr__
        events: list[Any] = []
        for row in rows:
            version, topic, data = row[1], row[2], row[3]
            plan = classes.get(topic)
            if plan is None:
                cls = resolve_stored_topic(topic, f" (stream {originator_id}, version {version})")
                plan = classes[topic] = (cls, getattr(cls, "class_version", 1) != 1)
            cls, versioned = plan
            try:
                if type(data) is str:  # (SQLite text: the ledger stores a state as a blob)
                    raise TypeError("text")
                state = loads(data)
                if type(state) is not dict:
                    raise TypeError("not an object")
                if versioned or "class_version" in state:
                    stored = StoredEvent(originator_id, version, topic, bytes(data))
                    events.append(self.mapper.to_domain_event(stored))
                    continue
                if "at" in state:
                    state["at"] = parse(state["at"])
                if "timestamp" in state:
                    state["timestamp"] = parse(state["timestamp"])
                if "total" in state:
                    if type(state["total"]) is not str:  # (the ledger writes a total as text)
                        raise TypeError("not text")
                    state["total"] = Decimal(state["total"])
            except (ValueError, TypeError, ArithmeticError):
                where = f" (stream {originator_id}, version {version})"
                raise UnreadableEventError(where) from None
            state["originator_id"] = originator_id
            state["originator_version"] = version
            event: Any = new(cls)
            set_dict(event, "__dict__", state)
            events.append(event)
        return events


_EVENT_COLUMNS = ("notification_id", "originator_id", "originator_version", "topic", "state")


def seal_inserted(tx: WriteTransaction, rows: list[tuple[Any, ...]]) -> None:
    """`sealing.seal_inserted`, imported on first write (it loads cryptography; reads do
    not)."""
    from ledger.persistence import sealing

    sealing.seal_inserted(tx, rows)


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(row.originator_id, row.originator_version, row.topic, row.state)


def _stored_from_driver(row: tuple[Any, ...]) -> StoredEvent:
    """A row of `sqlite_reads.SELECT_STREAM` as the driver gives it."""
    originator_id, version, topic, state = row
    return StoredEvent(_stream_id(originator_id), version, topic, _state(state))


def _stream_id(value: Any) -> UUID:
    """A stream id as the driver gives it: SQLite keeps a UUID as its 32 hex digits
    (SQLAlchemy's `Uuid` storage form), PostgreSQL as a UUID."""
    return UUID(hex=value) if isinstance(value, str) else value


def _state(value: Any) -> Any:
    """A stored state as the driver gives it: PostgreSQL's bytea as a memoryview (SQLite
    gives bytes, or text if altered: the transcoder refuses that as unreadable)."""
    return bytes(value) if isinstance(value, memoryview) else value


class LedgerRecorder(ApplicationRecorder):
    """Events and notifications in `ledger_events`, written under the writer's lock."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        first = self.insert_rows(
            [(e.originator_id, e.originator_version, e.topic, e.state) for e in stored_events]
        )
        return list(range(first, first + len(stored_events)))

    def insert_rows(self, rows: Sequence[tuple[Any, Any, str, bytes]]) -> int:
        """Stored events as (originator id, version, topic, state) rows, recorded and sealed
        in order in the ambient write; returns the first one's notification id."""
        with self.database.writing() as tx:
            first = tx.next_notification_id
            numbered = [(position, *row) for position, row in enumerate(rows, first)]
            tx.insert_many("ledger_events", _EVENT_COLUMNS, numbered)
            seal_inserted(tx, numbered)
            tx.next_notification_id = first + len(numbered)
            return first

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        if gt is None and lte is None and not desc and limit is None:
            ident = originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
            param: UUID | str = ident.hex if self.database.is_sqlite else ident
            rows = self.database.fetch_on_driver(sqlite_reads.SELECT_STREAM, (param,))
            return [_stored_from_driver(row) for row in rows]
        import sqlalchemy as sa

        from ledger.persistence.tables import events as _E

        query = sa.select(_E.c.originator_id, _E.c.originator_version, _E.c.topic, _E.c.state)
        query = query.where(_E.c.originator_id == originator_id)
        if gt is not None:
            query = query.where(_E.c.originator_version > gt)
        if lte is not None:
            query = query.where(_E.c.originator_version <= lte)
        version = _E.c.originator_version
        query = query.order_by(version.desc() if desc else version.asc())
        if limit is not None:
            query = query.limit(limit)
        with self.database.reading() as conn:
            return [_stored(row) for row in conn.execute(query)]

    def select_streams(self, ids: Collection[UUID]) -> dict[UUID, list[tuple[Any, ...]]]:
        """The rows (stream id, version, topic, state) of each stream of `ids` that has
        any, in version order, as the driver gives them (`EventDecoder.stream` reads them):
        one statement on the ambient write's connection (an import's chunk reads the
        customers it names at once, not one by one as its facts come)."""
        tx = self.database.current
        assert tx is not None, "select_streams reads inside a write"
        values: list[Any] = [i.hex for i in ids] if self.database.is_sqlite else list(ids)
        streams: dict[UUID, list[tuple[Any, ...]]] = {}
        raw: Any = None  # the stream id of the row before, as the driver gave it
        rows: list[tuple[Any, ...]] = []
        for row in tx.select_in(sqlite_reads.SELECT_STREAMS, values, binary=True):
            if row[0] != raw:  # a stream's first row (they come stream by stream)
                raw = row[0]
                rows = streams[_stream_id(raw)] = []
            rows.append(row)
        return streams

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        import sqlalchemy as sa

        from ledger.persistence.tables import events as _E

        query = sa.select(_E)
        if start is not None:
            column = _E.c.notification_id
            query = query.where(column >= start if inclusive_of_start else column > start)
        if stop is not None:
            query = query.where(_E.c.notification_id <= stop)
        if topics:
            query = query.where(_E.c.topic.in_(list(topics)))
        query = query.order_by(_E.c.notification_id).limit(limit)
        with self.database.reading() as conn:
            return [
                Notification(
                    id=row.notification_id,
                    originator_id=row.originator_id,
                    originator_version=row.originator_version,
                    topic=row.topic,
                    state=row.state,
                )
                for row in conn.execute(query)
            ]

    def max_notification_id(self) -> int | None:
        import sqlalchemy as sa

        from ledger.persistence.tables import events as _E

        with self.database.reading() as conn:
            value = conn.execute(sa.select(sa.func.max(_E.c.notification_id))).scalar()
        return int(value) if value is not None else None

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        raise NotImplementedError("use projections.runner, which polls or listens")

    def iter_notifications(
        self, start: int = 1, stop: int | None = None, batch: int = 5000
    ) -> Iterator[Notification]:
        """Every notification from `start` (inclusive) in recording order, in batches."""
        position = start
        while True:
            page = self.select_notifications(position, batch, stop)
            yield from page
            if len(page) < batch:
                return
            position = page[-1].id + 1


_V = TypeVar("_V")


def _value(cls: type[_V], state: dict[str, Any]) -> _V:
    """A frozen dataclass of the library's with `state` as its fields, built the way its
    mapper rebuilds a stored event (the `__dict__` at once): the frozen `__init__`, one
    `object.__setattr__` per field, was a measurable share of an import."""
    value = object.__new__(cls)
    object.__setattr__(value, "__dict__", state)
    return value


class LedgerMapper(Mapper[Any]):
    """The library's mapper, less its per-event overheads (no cipher, no compressor here)."""

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[Any]:
        """The library's, for the ledger's own event classes only (`resolve_stored_topic`:
        each topic checked once)."""
        topic = stored_event.topic
        if topic not in self._topics:
            where = (
                f" (stream {stored_event.originator_id}, version {stored_event.originator_version})"
            )
            resolve_stored_topic(topic, where)
            self._topics.add(topic)
        return super().to_domain_event(stored_event)

    def __init__(self, transcoder: Transcoder) -> None:
        super().__init__(transcoder)
        # Each event class's topic and class version, found once.
        self._classes: dict[type, tuple[str, int]] = {}
        self._topics: set[str] = set()  # the topics `resolve_stored_topic` has let through

    def to_stored_event(self, domain_event: DomainEventProtocol[Any]) -> StoredEvent:
        originator_id, originator_version, topic, state = self.to_row(domain_event)
        return _value(
            StoredEvent,
            {
                "originator_id": originator_id,
                "originator_version": originator_version,
                "topic": topic,
                "state": state,
            },
        )

    def to_row(self, domain_event: DomainEventProtocol[Any]) -> tuple[Any, int, str, bytes]:
        """The stored event's (originator id, version, topic, state), as a plain tuple."""
        return self.to_rows([domain_event])[0]

    def to_rows(
        self, domain_events: Sequence[DomainEventProtocol[Any]]
    ) -> list[tuple[Any, int, str, bytes]]:
        """`to_row` of each event, in one loop (an import's flush: a call less per event)."""
        encode, classes = self.transcoder.encode, self._classes
        rows = []
        for domain_event in domain_events:
            cls = type(domain_event)
            known = classes.get(cls)
            if known is None:
                known = classes[cls] = (get_topic(cls), getattr(cls, "class_version", 1))
            topic, class_version = known
            state = dict(domain_event.__dict__)
            originator_id = state.pop("originator_id")
            originator_version = state.pop("originator_version")
            if class_version > 1:
                state["class_version"] = class_version
            rows.append((originator_id, originator_version, topic, encode(state)))
        return rows


class LedgerEventStore(EventStore[Any]):
    """The library's event store; its recordings built without frozen `__init__`s."""

    def record(self, domain_events: Sequence[DomainEventProtocol[Any]]) -> int:
        """`put` for an import: the same stored events, recorded without a `Recording`
        and a `StoredEvent` per event; returns the first event's notification id (the
        rest follow in order)."""
        mapper, recorder = self.mapper, self.recorder
        assert isinstance(mapper, LedgerMapper) and isinstance(recorder, LedgerRecorder)
        return recorder.insert_rows(mapper.to_rows(domain_events))

    def put(
        self, domain_events: Sequence[DomainEventProtocol[Any]], **kwargs: Any
    ) -> list[Recording[Any]]:
        stored = [self.mapper.to_stored_event(event) for event in domain_events]
        ids = self.recorder.insert_events(stored, **kwargs)
        if not ids:
            return []
        assert len(ids) == len(stored)
        return [
            _value(
                Recording,
                {
                    "domain_event": event,
                    "notification": _value(Notification, {**s.__dict__, "id": position}),
                },
            )
            for event, s, position in zip(domain_events, stored, ids, strict=True)
        ]


class LedgerInfrastructure(InfrastructureFactory[TrackingRecorder]):
    """eventsourcing's factory, bound to one `Database` instead of environment strings."""

    def __init__(self, env: Any, database: Database) -> None:
        super().__init__(env)
        self.database = database

    def transcoder(self) -> Transcoder:
        return LedgerTranscoder()

    def mapper(
        self,
        transcoder: Transcoder | None = None,
        mapper_class: type[Mapper[TAggregateID]] | None = None,
    ) -> Mapper[TAggregateID]:
        return LedgerMapper(transcoder or self.transcoder())

    def event_store(
        self,
        mapper: Mapper[TAggregateID] | None = None,
        recorder: AggregateRecorder | None = None,
    ) -> EventStore[TAggregateID]:
        return LedgerEventStore(
            mapper=mapper or self.mapper(), recorder=recorder or self.application_recorder()
        )

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return self.application_recorder()

    def application_recorder(self) -> ApplicationRecorder:
        return LedgerRecorder(self.database)

    def tracking_recorder(
        self, tracking_recorder_class: type[TrackingRecorder] | None = None
    ) -> TrackingRecorder:
        raise NotImplementedError("read models track their position in projections/")

    def process_recorder(self) -> ProcessRecorder:
        raise NotImplementedError("the ledger has no process applications")
