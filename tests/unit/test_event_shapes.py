"""Events are forever: no event class changes shape under a class version already recorded.

The shapes are locked in `tests/data/event_shapes.json` (see `tests/event_shapes.py`).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import orjson
import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic, resolve_topic

from tests import event_shapes
from tests.event_shapes import ShapeChangedError, class_version, merged, shape

LOCKED = event_shapes.load()
CLASSES = event_shapes.event_classes()
LEGACY = sorted((Path(__file__).parents[1] / "data" / "legacy").glob("*.db"))
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


@pytest.mark.parametrize("path", LEGACY, ids=lambda p: p.name)
def test_events_recorded_by_earlier_versions_have_exactly_the_locked_fields(path: Path) -> None:
    """The lock is what ledgers hold: every event that earlier versions of consent-ledger
    stored (`tests/data/legacy`) has the fields locked for its topic and class version."""
    uri = f"file:{path}?mode=ro&immutable=1"
    with sqlite3.connect(uri, uri=True) as conn:
        rows = conn.execute("SELECT topic, state FROM ledger_events").fetchall()
    assert len(rows) > 40
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
