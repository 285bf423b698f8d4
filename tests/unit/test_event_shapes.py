"""Events are forever: no event class changes shape under a class version already recorded.

The shapes are locked in `tests/data/event_shapes.json` (see `tests/event_shapes.py`).
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import orjson
import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic, resolve_topic

from tests import event_shapes
from tests.event_shapes import ShapeChangedError, class_version, merged, shape

LOCKED = event_shapes.load()
CLASSES = event_shapes.event_classes()
LEGACY = sorted((Path(__file__).parents[1] / "data" / "legacy").glob("*.db"))
# The first version's ledger (tests/data/legacy/README.md): the sample feed's 37 events and
# no due-diligence export, which each later fixture made at its events' version 1.
FIRST_VERSION = "at-0005-by-6d6c7e8.db"
_ADVICE = (
    "a recorded event class keeps its fields for ever: give it a new class_version and an "
    "upcaster from the last (then `python -m tests.event_shapes` records the new shape)"
)


def test_the_lock_holds_every_class_the_domain_can_record() -> None:
    missing = [get_topic(cls) for cls in CLASSES if get_topic(cls) not in LOCKED]
    assert not missing, f"new event classes: run `python -m tests.event_shapes` ({missing})"
    assert len(CLASSES) >= 23


@pytest.mark.parametrize("topic", sorted(LOCKED))
def test_every_locked_topic_still_names_its_class(topic: str) -> None:
    """A stored event is read back through its topic: renaming, moving or removing a class
    leaves every ledger that recorded one unreadable."""
    cls = resolve_topic(topic)
    assert isinstance(cls, type) and issubclass(cls, Aggregate.Event)
    assert get_topic(cls) == topic


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
def test_each_class_keeps_the_shape_recorded_for_its_version(cls: type) -> None:
    versions = LOCKED.get(get_topic(cls), {})
    version = str(class_version(cls))
    assert version in versions, f"{cls.__qualname__} v{version} is not in the lock"
    recorded = versions[version]
    assert shape(cls) == recorded, (
        f"{cls.__qualname__} v{version} changed: "
        f"{event_shapes.difference(recorded, shape(cls))}; {_ADVICE}"
    )


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
def test_a_later_class_version_keeps_every_older_shape_and_upcasts_from_each(
    cls: type,
) -> None:
    versions = LOCKED.get(get_topic(cls), {})
    for older in range(1, class_version(cls)):
        assert str(older) in versions, f"{cls.__qualname__}: shape v{older} was dropped"
        assert callable(getattr(cls, f"upcast_v{older}_v{older + 1}", None)), (
            f"{cls.__qualname__} has no upcast_v{older}_v{older + 1}: events recorded at "
            f"v{older} could not be read"
        )


VERSIONED = [cls for cls in CLASSES if class_version(cls) > 1]


@pytest.mark.parametrize("cls", VERSIONED, ids=lambda c: c.__qualname__)
def test_the_upcasters_turn_each_older_shape_into_the_current_one(cls: type) -> None:
    """From each locked older shape, the chain of upcasters gives exactly the current
    version's fields (as the library runs them: the state without its class version)."""
    versions = LOCKED[get_topic(cls)]
    current = set(versions[str(class_version(cls))])
    for older in range(1, class_version(cls)):
        state = dict.fromkeys(versions[str(older)])
        for version in range(older, class_version(cls)):
            getattr(cls, f"upcast_v{version}_v{version + 1}")(state)
        assert set(state) == current, (cls.__qualname__, older)


@pytest.mark.parametrize("path", LEGACY, ids=lambda p: p.name)
def test_older_versions_of_events_read_back_with_the_current_fields(path: Path) -> None:
    """Events earlier versions stored at a class version since superseded read back, through
    the ledger's mapper, as the current class with its current fields."""
    from eventsourcing.persistence import StoredEvent

    from ledger.persistence.recorder import LedgerMapper, LedgerTranscoder

    versioned = {get_topic(cls): cls for cls in VERSIONED}
    uri = f"file:{path}?mode=ro&immutable=1"
    with sqlite3.connect(uri, uri=True) as conn:
        rows = conn.execute(
            "SELECT originator_id, originator_version, topic, state FROM ledger_events"
        ).fetchall()
    mapper = LedgerMapper(LedgerTranscoder())
    read = 0
    for ident, version, topic, state in rows:
        if topic in versioned and "class_version" not in orjson.loads(state):
            event = mapper.to_domain_event(StoredEvent(UUID(hex=ident), version, topic, state))
            assert type(event) is versioned[topic]
            current = LOCKED[topic][str(class_version(versioned[topic]))]
            assert set(event.__dict__) == set(current)
            read += 1
    # Each legacy ledger but the first version's made a due-diligence export at version 1;
    # that one recorded none (nor any other event of a class versioned since).
    if path.name == FIRST_VERSION:
        assert read == 0
    else:
        assert read >= 1


@pytest.mark.parametrize("path", LEGACY, ids=lambda p: p.name)
def test_events_recorded_by_earlier_versions_have_exactly_the_locked_fields(path: Path) -> None:
    """The lock is what ledgers hold: every event that earlier versions of consent-ledger
    stored (`tests/data/legacy`) has the fields locked for its topic and class version."""
    uri = f"file:{path}?mode=ro&immutable=1"
    with sqlite3.connect(uri, uri=True) as conn:
        rows = conn.execute("SELECT topic, state FROM ledger_events").fetchall()
    assert len(rows) > (30 if path.name == FIRST_VERSION else 40)
    topics = set()
    for topic, state in rows:
        stored = orjson.loads(state)
        version = str(stored.pop("class_version", 1))
        fields = set(stored) | {"originator_id", "originator_version"}  # (in their columns)
        assert topic in LOCKED and version in LOCKED[topic], f"{topic} v{version} not locked"
        assert fields == set(LOCKED[topic][version]), topic
        topics.add(topic)
    assert len(topics) >= 15


def test_recording_a_new_class_or_version_adds_it_and_keeps_the_rest() -> None:
    recorded = {"m:A": {"1": {"x": "int"}}}
    current = {"m:A": {"2": {"x": "int", "y": "str"}}, "m:B": {"1": {"z": "str"}}}
    assert merged(recorded, current) == {
        "m:A": {"1": {"x": "int"}, "2": {"x": "int", "y": "str"}},
        "m:B": {"1": {"z": "str"}},
    }
    assert merged(recorded, recorded) == recorded


@pytest.mark.parametrize(
    ("now", "said"),
    [
        ({"x": "int", "y": "str"}, "+y: str"),
        ({}, "-x: int"),
        ({"x": "str"}, "x: int -> str"),
    ],
)
def test_recording_refuses_to_change_a_recorded_shape(now: dict[str, str], said: str) -> None:
    with pytest.raises(ShapeChangedError, match=re.escape(f"m:A v1: {said}")):
        merged({"m:A": {"1": {"x": "int"}}}, {"m:A": {"1": now}})


_READ_AS = {  # a locked annotation: the types `decode_state` reads its stored values as
    "str": (str,),
    "str | None": (str, type(None)),
    "datetime": (datetime,),
    "Decimal": (Decimal,),
    "list[str]": (list,),
    "dict[str, Any]": (dict,),
    "int": (int,),
    "bool": (bool,),
}


@pytest.mark.parametrize("topic", sorted(LOCKED))
def test_the_stored_shapes_the_readers_check_are_the_locked_ones(topic: str) -> None:
    """`stored_state.SHAPES` (what a read holds a stored state to: `misshapen`) is each
    topic's class version 1 as locked, less the fields kept in their own columns."""
    from ledger.persistence.stored_state import SHAPES

    locked = {
        name: _READ_AS[annotation]
        for name, annotation in LOCKED[topic]["1"].items()
        if name not in ("originator_id", "originator_version")
    }
    assert SHAPES[topic.split(":")[1]] == locked


@pytest.mark.parametrize("path", LEGACY, ids=lambda p: p.name)
def test_events_recorded_by_earlier_versions_are_not_misshapen(path: Path) -> None:
    from ledger.persistence.stored_state import decode_state, misshapen

    uri = f"file:{path}?mode=ro&immutable=1"
    with sqlite3.connect(uri, uri=True) as conn:
        rows = conn.execute("SELECT topic, state FROM ledger_events").fetchall()
    assert [t for t, s in rows if misshapen(t.split(":")[1], decode_state(s))] == []


def test_a_field_missing_added_or_of_another_type_is_misshapen() -> None:
    from ledger.persistence.stored_state import misshapen

    at = datetime(2025, 1, 10, 9, tzinfo=UTC)
    given = {
        "timestamp": at,
        "fact_id": "s-1",
        "at": at,
        "sealed": None,
        "purpose": "marketing",
        "channel": "email",
        "method": "web",
        "policy_version": "2024-01",
    }
    disclosed = {
        "timestamp": at,
        "fact_id": "s-2",
        "at": at,
        "sealed": None,
        "recipient": "Offspring",
        "recipient_kind": "affiliate",
        "categories": ["name"],
        "purpose": "affiliate_marketing",
        "basis": "consent",
        "affiliate": "Offspring",
    }
    assert not misshapen("Customer.ConsentGiven", given)
    assert not misshapen("Customer.ConsentGiven", {**given, "sealed": "c2VhbGVk"})
    assert not misshapen("Customer.ConsentGiven", {**given, "a": 1, "b": 2}, extra=2)
    assert not misshapen("Customer.AffiliateDisclosed", disclosed)
    assert not misshapen("Customer.AffiliateDisclosed", {**disclosed, "class_version": 2})
    assert not misshapen("Customer.NotAClass", {})  # (its topic is refused elsewhere)
    for changed in (
        {**given, "purpose": 7},
        {**given, "fact_id": None},
        {**given, "channel": ["email"]},
        {**given, "policy_version": {"v": 1}},
        {**given, "sealed": 1},
        {k: v for k, v in given.items() if k != "method"},
        {**given, "extra": "x"},
        {**{k: v for k, v in given.items() if k != "method"}, "extra": "x"},
    ):
        assert misshapen("Customer.ConsentGiven", changed), changed
    for value in ("name", None, [1], {"name": 1}, ["name", None], ["name", ["card"]]):
        assert misshapen("Customer.AffiliateDisclosed", {**disclosed, "categories": value})
