"""`verify`'s digest of the facts the events recorded (`index_audit.FactDigest`): the fast
reading of an event's fact id agrees with decoding the state, whatever the id holds."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import orjson
import pytest

from ledger.persistence.index_audit import FactDigest, _fact_id


def _row(position: int, state: dict[str, Any]) -> tuple[Any, ...]:
    return (position, b"o" * 16, 1, b"topic", orjson.dumps(state))


@pytest.mark.parametrize(
    "fact_id",
    ["s-0001", "ünïcødé-✓", 'a"quote', "back\\slash", "tab\there", "x" * 300, ""],
)
def test_the_fact_id_read_fast_is_the_decoded_one(fact_id: str) -> None:
    nested = {"extra": {"fact_id": "not-this-one"}}
    state = {"timestamp": "2025-01-01T00:00:00+00:00", "fact_id": fact_id, **nested}
    assert _fact_id(_row(7, state)) == fact_id


def test_an_event_of_no_fact_or_a_state_that_is_not_json_gives_none() -> None:
    assert _fact_id(_row(1, {"timestamp": "t", "name": "Northwind"})) is None
    assert _fact_id((1, b"o" * 16, 1, b"topic", b"\xff\xfe not json")) is None
    assert _fact_id(_row(1, {"fact_id": 12})) is None


def test_the_digest_ignores_order_and_sees_any_change() -> None:
    pairs = [(i, f"f-{i}") for i in range(1, 50)]
    one, other = FactDigest(), FactDigest()
    one.add(pairs)
    other.add(reversed(pairs))
    assert one.same(other)
    swapped = [*pairs[:-2], (48, "f-49"), (49, "f-48")]
    for changed in (pairs[:-1], [*pairs[:-1], (49, "f-50")], [*pairs[:-1], (50, "f-49")], swapped):
        third = FactDigest()
        third.add(changed)
        assert not one.same(third)
    events = FactDigest()
    events.add_events([_row(p, {"timestamp": "t", "fact_id": f}) for p, f in pairs])
    assert events.same(one)


def test_the_digest_sees_every_swap_of_two_fact_ids() -> None:
    """A sum of tuple hashes missed about half of such swaps (141 of these 300)."""
    rows = [(i, f"s-{i:04d}") for i in range(1, 302)]
    whole = FactDigest()
    whole.add(rows)
    for i in range(300):
        (p, f), (q, g) = rows[i], rows[i + 1]
        swapped = FactDigest()
        swapped.add([*rows[:i], (p, g), (q, f), *rows[i + 2 :]])
        assert not whole.same(swapped), i


@pytest.mark.parametrize("seed", [None, "0", "12345"])
def test_the_digests_hash_is_keyed_anew_each_run_even_with_the_hash_seed_fixed(
    seed: str | None,
) -> None:
    """The digests sum Python's `hash`, SipHash keyed anew each run; with PYTHONHASHSEED
    fixed (as some deployments run) that key is known, and anyone could make altered rows
    sum the same in advance: then a BLAKE2b keyed by this run's random bytes is summed."""
    code = (
        "from ledger.persistence.index_audit import row_hash\n"
        "print(row_hash is hash, row_hash('7\\x1f\\'s-0001\\''))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    if seed is not None:
        env["PYTHONHASHSEED"] = seed
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(2)
    ]
    assert runs[0][0] == str(seed is None)  # Python's own hash where its key is random
    assert runs[0][1] != runs[1][1]  # a new key each run, either way
