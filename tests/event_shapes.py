"""The recorded shape of every event class, and the lock file that keeps it.

Events are forever: a ledger recorded years ago must still load and verify. An event is
stored as its topic (`ledger.domainmodel:Customer.ConsentGiven`) and its fields, so the
class behind a topic must keep every field it had when it was first recorded, with the same
meaning, for as long as any ledger holds one. A new shape needs a new `class_version` and
an upcaster from the last (`upcast_v1_v2`, as the eventsourcing library names them).

`tests/data/event_shapes.json` holds, for each topic, the fields (name: annotation) of each
of its class versions. `tests/unit/test_event_shapes.py` holds the code to it. To record a
new event class or a new class version, run `python -m tests.event_shapes`: it adds what is
new and refuses to change a shape already recorded.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

LOCK = Path(__file__).parent / "data" / "event_shapes.json"

Shapes = dict[str, dict[str, dict[str, str]]]  # topic -> class version -> field -> annotation


class ShapeChangedError(Exception):
    """A class's fields differ from those recorded for its class version."""


def event_classes() -> list[type[Aggregate.Event]]:
    """Every event class the domain can record: each aggregate's own event classes (of every
    aggregate in `ledger.domainmodel`), less the `Event` and `Created` bases the library
    makes for every aggregate."""
    from ledger import domainmodel

    aggregates = [
        value
        for value in vars(domainmodel).values()
        if isinstance(value, type)
        and issubclass(value, Aggregate)
        and value is not Aggregate
        and value.__module__ == domainmodel.__name__
    ]
    found = [
        value
        for aggregate in aggregates
        for name, value in vars(aggregate).items()
        if isinstance(value, type)
        and issubclass(value, Aggregate.Event)
        and name not in ("Event", "Created")
    ]
    return sorted(found, key=get_topic)


def class_version(cls: type) -> int:
    return int(getattr(cls, "class_version", 1))


def shape(cls: type) -> dict[str, str]:
    """The class's fields as stored: name and annotation, in declaration order."""
    return {
        f.name: f.type if isinstance(f.type, str) else repr(f.type) for f in dataclasses.fields(cls)
    }


def current_shapes() -> Shapes:
    return {get_topic(cls): {str(class_version(cls)): shape(cls)} for cls in event_classes()}


def load(path: Path = LOCK) -> Shapes:
    if not path.exists():
        return {}
    shapes: Shapes = json.loads(path.read_text(encoding="utf-8"))
    return shapes


def merged(recorded: Shapes, current: Shapes) -> Shapes:
    """`recorded` with what `current` adds (a new topic, a new class version); raises
    `ShapeChangedError` if `current` gives a recorded class version other fields."""
    result: Shapes = {topic: dict(versions) for topic, versions in recorded.items()}
    for topic, versions in current.items():
        for version, fields in versions.items():
            kept = result.setdefault(topic, {}).get(version)
            if kept is None:
                result[topic][version] = fields
            elif kept != fields:
                raise ShapeChangedError(f"{topic} v{version}: {difference(kept, fields)}")
    return {
        topic: dict(sorted(result[topic].items(), key=lambda item: int(item[0])))
        for topic in sorted(result)
    }


def difference(recorded: dict[str, str], now: dict[str, str]) -> str:
    """What changed between two shapes of one class version, in words."""
    parts = [f"+{name}: {now[name]}" for name in now if name not in recorded]
    parts += [f"-{name}: {recorded[name]}" for name in recorded if name not in now]
    parts += [
        f"{name}: {recorded[name]} -> {now[name]}"
        for name in recorded
        if name in now and recorded[name] != now[name]
    ]
    return ", ".join(parts)


def write(shapes: Shapes, path: Path = LOCK) -> None:
    path.write_text(json.dumps(shapes, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    del argv
    try:
        shapes = merged(load(), current_shapes())
    except ShapeChangedError as error:
        print(
            f"refused: {error}. A recorded event class keeps its fields for ever: give it a "
            "new class_version and an upcaster from the last instead.",
            file=sys.stderr,
        )
        return 1
    write(shapes)
    print(f"{LOCK}: {len(shapes)} event classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
