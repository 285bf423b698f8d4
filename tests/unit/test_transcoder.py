"""Events are forever: every field of every event class survives storage, and an aggregate
rebuilt from its stored events equals the one that recorded them."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Mapper
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import domainmodel
from ledger.domainmodel import Acquirer, Customer, acquirer_id, customer_id, replay
from ledger.errors import UnreadableEventError
from ledger.feed import validate
from ledger.persistence.recorder import (
    DATETIME_FIELDS,
    DECIMAL_FIELDS,
    EventDecoder,
    LedgerTranscoder,
)
from ledger.persistence.stored_state import decode_state
from ledger.samplefeed import generate
from tests.examples import story

MAPPER = Mapper(transcoder=LedgerTranscoder())
DECODER = EventDecoder(MAPPER)


def event_classes() -> list[type[Aggregate.Event]]:
    found: list[type[Aggregate.Event]] = []
    for aggregate in (Customer, Acquirer):
        for value in vars(aggregate).values():
            if isinstance(value, type) and issubclass(value, Aggregate.Event):
                found.append(value)
    return found


EVENT_CLASSES = event_classes()
MOMENT = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


def sample(name: str, annotation: str) -> Any:
    """A distinctive value of the declared type (annotations are strings here)."""
    kind = annotation.replace(" ", "")
    values: dict[str, Any] = {
        "str": f"{name}-value",
        "str|None": f"{name}-value",
        "int": 7,
        "int|None": 11,
        "datetime": MOMENT,
        "Decimal": Decimal("1234.5600"),
        "UUID": uuid4(),
        "list[str]": [f"{name}-a", f"{name}-b"],
        "dict[str,Any]": {"note": name, "nested": {"n": 1, "list": [1, "two"]}},
        "bool": True,
    }
    if kind not in values:
        raise AssertionError(f"no sample for field {name!r} of type {annotation!r}: add one")
    return values[kind]


def instance(event_class: type[Aggregate.Event]) -> Aggregate.Event:
    kwargs = {f.name: sample(f.name, str(f.type)) for f in dataclasses.fields(event_class)}
    kwargs["originator_id"] = uuid4()
    if "originator_topic" in kwargs:
        kwargs["originator_topic"] = "ledger.domainmodel:Customer"
    return event_class(**kwargs)


def test_every_event_class_is_covered() -> None:
    names = {c.__qualname__ for c in EVENT_CLASSES}
    assert {"Customer.Registered", "Customer.ConsentGiven", "Acquirer.TransferInitiated"} <= names
    assert set(domainmodel.EVENT_FOR_FACT.values()) <= set(EVENT_CLASSES)


@pytest.mark.parametrize("event_class", EVENT_CLASSES, ids=lambda c: c.__qualname__)
def test_every_field_round_trips_with_its_type(event_class: type[Aggregate.Event]) -> None:
    event = instance(event_class)
    stored = MAPPER.to_stored_event(event)
    assert stored.topic == f"ledger.domainmodel:{event_class.__qualname__}"
    back = MAPPER.to_domain_event(stored)
    assert type(back) is event_class
    for name, value in event.__dict__.items():
        assert back.__dict__[name] == value, name
        assert type(back.__dict__[name]) is type(value), name


@pytest.mark.parametrize("event_class", EVENT_CLASSES, ids=lambda c: c.__qualname__)
def test_the_decoder_rebuilds_every_event_class_as_the_mapper_does(
    event_class: type[Aggregate.Event],
) -> None:
    stored = MAPPER.to_stored_event(instance(event_class))
    row = (stored.originator_id.hex, stored.originator_version, stored.topic, stored.state)
    fast, slow = DECODER.stream(stored.originator_id, [row])[0], MAPPER.to_domain_event(stored)
    assert type(fast) is type(slow) is event_class
    assert fast.__dict__ == slow.__dict__
    assert [type(v) for v in fast.__dict__.values()] == [type(v) for v in slow.__dict__.values()]


_GIVEN = {"fact_id": "F1", "at": "2025-03-04T05:06:07+00:00", "sealed": None}
_ORDER = {**_GIVEN, "timestamp": "2025-03-04T05:06:07+00:00", "order": "O1", "currency": "GBP"}


@pytest.mark.parametrize(
    "state",
    [
        '{"fact_id": "F1"}',  # SQLite text where the ledger stores a blob
        b"not json",
        b'["a list"]',
        orjson.dumps({**_ORDER, "total": "10.50", "at": "2025-03-04T05:06:07"}),  # no offset
        orjson.dumps({**_ORDER, "total": "10.50", "timestamp": 12}),
        orjson.dumps({**_ORDER, "total": 10.5}),  # a number: the ledger writes text
        orjson.dumps({**_ORDER, "total": "ten"}),
    ],
    ids=["text", "not-json", "a-list", "naive-time", "time-a-number", "total-a-number", "nan"],
)
def test_the_decoder_refuses_what_the_transcoder_refuses(state: Any) -> None:
    """A state the ledger cannot have written is unreadable on the fast path too."""
    with pytest.raises(UnreadableEventError):
        decode_state(state)
    row = ("ab" * 16, 3, "ledger.domainmodel:Customer.OrderPlaced", state)
    with pytest.raises(UnreadableEventError, match="version 3"):
        DECODER.stream(uuid4(), [row])


def test_the_decoder_refuses_a_topic_not_of_the_ledger() -> None:
    row = (None, 1, "os:system", orjson.dumps(_GIVEN))
    with pytest.raises(UnreadableEventError):
        DECODER.stream(uuid4(), [row])


@pytest.mark.parametrize("event_class", EVENT_CLASSES, ids=lambda c: c.__qualname__)
def test_typed_fields_are_declared_to_the_transcoder(event_class: type[Aggregate.Event]) -> None:
    for f in dataclasses.fields(event_class):
        if "datetime" in str(f.type):
            assert f.name in DATETIME_FIELDS, f.name
        if "Decimal" in str(f.type):
            assert f.name in DECIMAL_FIELDS, f.name


def test_times_keep_their_instant_and_decimals_their_digits() -> None:
    transcoder = LedgerTranscoder()
    offset = datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    state = {"at": offset, "timestamp": MOMENT, "total": Decimal("0.10")}
    back = transcoder.decode(transcoder.encode(state))
    assert back == state and str(back["total"]) == "0.10"


# -- replay equals the live state ------------------------------------------------------------


def record_in_memory(objs: list[dict[str, Any]]) -> dict[UUID, Customer | Acquirer]:
    """Feed objects recorded by the aggregates alone (routing as the application does)."""
    aggregates: dict[UUID, Customer | Acquirer] = {}
    owners: dict[str, UUID] = {}
    for obj in objs:
        fact = validate(obj)
        sealed = f"sealed:{fact.id}" if fact.type.startswith("customer.") else None
        if fact.type == "customer.registered":
            customer = Customer.register(fact, sealed)
            aggregates[customer.id] = customer
        elif fact.type == "transfer.initiated":
            ident = acquirer_id(fact.data["acquirer"])
            acquirer = aggregates.setdefault(ident, Acquirer.create(fact.data["acquirer"]))
            assert isinstance(acquirer, Acquirer)
            acquirer.initiate_transfer(fact, f"sealed:{fact.id}" if fact.extra else None)
        else:
            ref = fact.customer
            ident = customer_id(ref) if ref is not None else owners[str(fact.order)]
            target = aggregates[ident]
            assert isinstance(target, Customer)
            target.record(fact, sealed)
            if fact.type == "order.placed":
                owners[fact.data["order"]] = ident
    return aggregates


def state_of(aggregate: Customer | Acquirer) -> dict[str, Any]:
    return {k: v for k, v in aggregate.__dict__.items() if k != "_pending_events"}


def assert_replay_equals_live(aggregates: dict[UUID, Customer | Acquirer]) -> None:
    for live in aggregates.values():
        stored = [MAPPER.to_stored_event(e) for e in live.collect_events()]
        assert stored, "every aggregate has at least its creation event"
        rebuilt: Any = None
        for event in map(MAPPER.to_domain_event, stored):
            rebuilt = event.mutate(rebuilt)
        assert type(rebuilt) is type(live)
        assert state_of(rebuilt) == state_of(live)
        # And as an import reads a recorded customer back: the rows, decoded and replayed.
        rows = [(None, e.originator_version, e.topic, e.state) for e in stored]
        assert state_of(replay(None, DECODER.stream(live.id, rows))) == state_of(live)


def test_replay_of_every_fact_type_equals_the_live_aggregate() -> None:
    aggregates = record_in_memory(story())
    assert len(aggregates) == 2
    assert_replay_equals_live(aggregates)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), customers=st.integers(1, 6))
def test_replay_equals_live_for_generated_feeds(seed: int, customers: int) -> None:
    assert_replay_equals_live(record_in_memory(list(generate(customers, seed=seed))))
