"""Streams replayed from their events by a direct fold, read on the driver: the acquirers'
transfer initiations that a preventive check judges a disclosure by, and the customers the
Art. 19 notices read back.

Statements run through a `Fetch` (`?` marks): `Database.fetch_on_driver` (inside a write,
the write's own connection) or `fetch_rows` on a connection of SQLAlchemy's. A disclosure
recorded by a command is judged without loading SQLAlchemy or the read models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent

from ledger.domainmodel import Acquirer, Customer, FactEvent
from ledger.iterables import batched
from ledger.persistence import sqlite_reads as reads
from ledger.persistence.recorder import resolve_stored_topic
from ledger.rules import Initiations

# A statement (`?` marks) and its parameters -> its rows.
Fetch = Callable[[str, tuple[Any, ...]], Sequence[Any]]

# As the partial index says it (`reads.INITIATIONS_ONLY`), for the index to serve it.
_INITIATING = (
    "SELECT DISTINCT originator_id FROM ledger_facts "
    f"WHERE {reads.INITIATIONS_ONLY} AND notification_id <= ? ORDER BY originator_id"
)
_HEAD = "SELECT max(notification_id) FROM ledger_events"
_STREAMS_AT_ONCE = 500
_UNSEEN: Any = object()


@dataclass
class Replayed:
    """One aggregate replayed from its events (recording order), with its fact events."""

    id: UUID
    aggregate: Customer | Acquirer
    events: list[FactEvent]
    positions: list[int]  # each event's position in the log

    def initiations(self) -> list[tuple[Any, int]]:
        """An acquirer's transfer initiations: (business time, position in the log)."""
        return [
            (event.at, position)
            for event, position in zip(self.events, self.positions, strict=True)
            if isinstance(event, Acquirer.TransferInitiated)
        ]


def head(fetch: Fetch) -> int:
    """The last position in the log (0: none)."""
    return int(fetch(_HEAD, ())[0][0] or 0)


def _uuid(value: UUID | str) -> UUID:
    """A stream id as the driver gives it (SQLite: SQLAlchemy's 32 hex digits)."""
    return value if isinstance(value, UUID) else UUID(hex=value)


def initiating_acquirers(fetch: Fetch, upto: int | None = None) -> list[UUID]:
    """The acquirers' streams with a `transfer.initiated` fact (recorded by event `upto`)."""
    limit = upto if upto is not None else 2**63 - 1
    return [_uuid(row[0]) for row in fetch(_INITIATING, (limit,))]


def stream_rows(fetch: Fetch, sqlite: bool, ids: Sequence[UUID], upto: int) -> Sequence[Any]:
    """(stream id, version, topic, state, position) of the events of streams `ids` (at most
    `_STREAMS_AT_ONCE`) up to position `upto`, by stream then version; the stream id as the
    driver gives it (SQLite: 32 hex digits, a UUID on PostgreSQL)."""
    marks = ", ".join("?" for _ in ids)
    sql = (
        "SELECT originator_id, originator_version, topic, state, notification_id "
        f"FROM ledger_events WHERE originator_id IN ({marks}) AND notification_id <= ? "
        "ORDER BY originator_id, originator_version"
    )
    return fetch(sql, (*(i.hex if sqlite else i for i in ids), upto))


def load(
    fetch: Fetch, sqlite: bool, mapper: Mapper[Any], ids: Iterable[UUID], upto: int
) -> list[Replayed]:
    """The streams `ids` replayed from their events up to position `upto`."""
    found: list[Replayed] = []
    to_domain_event = decoder(mapper)
    for chunk in batched(sorted(ids), _STREAMS_AT_ONCE):
        found.extend(replay(stream_rows(fetch, sqlite, chunk, upto), to_domain_event))
    return found


def initiations(fetch: Fetch, sqlite: bool, mapper: Mapper[Any], upto: int) -> Initiations:
    """Each acquirer's transfer initiations recorded by position `upto`, with positions."""
    acquirers = initiating_acquirers(fetch, upto)
    return Initiations(
        (
            (s.aggregate.name, s.initiations())
            for s in load(fetch, sqlite, mapper, acquirers, upto)
            if isinstance(s.aggregate, Acquirer)
        ),
        stream_ordered_until=stream_ordered_until(fetch),
    )


def stream_ordered_until(fetch: Fetch) -> int:
    """`ledger.rules.Initiations.stream_ordered_until` of this ledger (its meta)."""
    return reads.stream_ordered_until(list(fetch(reads.SELECT_META, (reads.STREAM_ORDERED_NAME,))))


def replay(
    rows: Iterable[Any], to_domain_event: Callable[[UUID, int, str, bytes], Any]
) -> Iterator[Replayed]:
    """Rows ordered by stream then version -> one replayed aggregate per stream."""
    current: Any = None
    ident = UUID(int=0)
    aggregate: Any = None
    events: list[FactEvent] = []
    positions: list[int] = []
    for raw_id, version, topic, state, position in rows:
        if raw_id != current:
            if aggregate is not None:
                yield Replayed(ident, aggregate, events, positions)
            current, aggregate, events, positions = raw_id, None, [], []
            ident = raw_id if isinstance(raw_id, UUID) else UUID(hex=raw_id)
        event: Any = to_domain_event(ident, version, topic, state)
        aggregate = event.mutate(aggregate)
        if isinstance(event, FactEvent):
            events.append(event)
            positions.append(position)
    if aggregate is not None:
        yield Replayed(ident, aggregate, events, positions)


def decoder(mapper: Mapper[Any]) -> Callable[[UUID, int, str, bytes], Any]:
    """The mapper's `to_domain_event` without its per-event generality: the ledger's
    transcoder, topics resolved once, no cipher or compressor (else: the mapper itself)."""
    if mapper.cipher is not None or mapper.compressor is not None:
        return lambda i, v, t, s: mapper.to_domain_event(StoredEvent(i, v, t, s))
    decode = mapper.transcoder.decode
    classes: dict[str, type[Any] | None] = {}

    def to_domain_event(ident: UUID, version: int, topic: str, state: bytes) -> Any:
        cls = classes.get(topic, _UNSEEN)
        if cls is _UNSEEN:
            resolved = resolve_stored_topic(topic, f" (stream {ident}, version {version})")
            cls = classes[topic] = None if getattr(resolved, "class_version", 1) > 1 else resolved
        if cls is None:  # upcasting needed: the library's path
            return mapper.to_domain_event(StoredEvent(ident, version, topic, state))
        event_state = decode(state)
        if "class_version" in event_state:
            return mapper.to_domain_event(StoredEvent(ident, version, topic, state))
        event_state["originator_id"] = ident
        event_state["originator_version"] = version
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", event_state)
        return event

    return to_domain_event
