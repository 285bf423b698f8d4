"""Bad input at volume: streams of invalid lines are refused line by line, nothing recorded.

Every kind of invalid line SPEC §2 names (not JSON, wrong types, huge strings, control
characters, unknown enums, times without an offset, missing fields, unknown customers and
orders) is refused with its line number and a short one-line reason, the import records
nothing and does not crash, and its memory does not grow with the size of the stream.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.errors import InvalidFeedError
from ledger.persistence import tables
from tests.cli_helpers import run_json

AT = "2025-03-01T10:00:00+00:00"
# Valid lines in form, about a customer and an order this ledger has never seen.
BASES: dict[str, dict[str, Any]] = {
    "consent.given": {
        "customer": "C-unknown",
        "purpose": "marketing",
        "channel": "email",
        "method": "web-form",
        "policy_version": "2024-01",
    },
    "order.placed": {"order": "O-1", "customer": "C-unknown", "total": "12.50", "currency": "GBP"},
    "order.dispatched": {"order": "O-unknown", "carrier": "DPD", "tracking": "DPD1"},
    "identity.check": {
        "order": "O-unknown",
        "provider": "Experian",
        "source": "credit_reference",
        "result": "pass",
    },
    "affiliate.disclosure": {
        "customer": "C-unknown",
        "affiliate": "Offspring",
        "categories": ["name", "email"],
    },
    "customer.updated": {"customer": "C-unknown", "email": "new@example.com"},
}
TEXT_FIELDS = {
    kind: [name for name, value in base.items() if isinstance(value, str)]
    for kind, base in BASES.items()
}
ENUM_FIELDS = {
    "consent.given": ["purpose", "channel"],
    "identity.check": ["source", "result"],
    "affiliate.disclosure": ["categories"],
}
INTEGERS = st.integers(-(2**63), 2**63 - 1)  # what JSON (orjson) carries
NOT_TEXT = st.one_of(
    INTEGERS,
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(INTEGERS, max_size=3),
    st.dictionaries(st.text(max_size=5), INTEGERS, max_size=2),
)
CONTROL = st.sampled_from([chr(c) for c in range(0x20)] + ["\x7f"])


def _line(kind: str, fields: dict[str, Any], **envelope: Any) -> bytes:
    obj = {"id": envelope.pop("id", "f-1"), "type": kind, "at": envelope.pop("at", AT)}
    obj.update(fields)
    obj.update(envelope)
    return orjson.dumps(obj)


@st.composite
def invalid_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(sorted(BASES)))
    fields = dict(BASES[kind])
    fact_id = draw(st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True))
    fault = draw(
        st.sampled_from(
            [
                "not json",
                "wrong type",
                "huge string",
                "control character",
                "unknown enum",
                "no offset",
                "missing field",
                "unknown reference",
                "unknown type",
                "huge line",
            ]
        )
    )
    if fault == "not json":
        raw = draw(st.binary(min_size=1, max_size=300) | st.text(min_size=1).map(str.encode))
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError:
            decoded = None
        if isinstance(decoded, dict) or not raw.strip():
            raw = b"{" + raw  # an object never closed
        return raw.replace(b"\n", b" ").replace(b"\r", b" ") or b"{"
    if fault == "wrong type":
        name = draw(st.sampled_from(["id", "type", "at", *TEXT_FIELDS[kind]]))
        value = draw(NOT_TEXT)
        if name in ("id", "type", "at"):
            return _line(kind, fields, **{"id": fact_id, name: value})
        fields[name] = value
    elif fault == "huge string":
        fields[draw(st.sampled_from(TEXT_FIELDS[kind]))] = "x" * draw(st.integers(501, 20_000))
    elif fault == "control character":
        name = draw(st.sampled_from(TEXT_FIELDS[kind]))
        at = draw(st.integers(0, len(fields[name])))
        fields[name] = fields[name][:at] + draw(CONTROL) + fields[name][at:]
    elif fault == "unknown enum":
        name = draw(st.sampled_from(ENUM_FIELDS.get(kind, ["channel"])))
        nonsense = draw(st.text(min_size=1, max_size=30).filter(lambda t: t not in _KNOWN))
        fields[name] = [nonsense] if name == "categories" else nonsense
        if kind not in ENUM_FIELDS:  # no enum of its own: give it an unknown channel instead
            kind, fields = "consent.given", {**BASES["consent.given"], "channel": nonsense}
    elif fault == "no offset":
        return _line(kind, fields, id=fact_id, at=draw(st.sampled_from(_NO_OFFSET)))
    elif fault == "missing field":
        del fields[draw(st.sampled_from(sorted(fields)))]
        if kind == "customer.updated" and "customer" in fields:
            del fields["customer"]
    elif fault == "unknown type":
        kind = draw(st.text(min_size=1, max_size=30).filter(lambda t: t not in BASES))
    elif fault == "huge line":
        fields["padding"] = "p" * 70_000  # beyond the 64 KiB a line may have
    return _line(kind, fields, id=fact_id)


_KNOWN = {
    "marketing",
    "email",
    "post",
    "web",
    "pass",
    "fail",
    "refer",
    "electoral_roll",
    "credit_reference",
    "name",
    "phone",
    "postal_address",
    "card",
    "order_details",
}
_NO_OFFSET = ["2025-03-01T10:00:00", "2025-03-01", "yesterday", "", "2025-13-45T99:00:00Z"]


def _nothing_recorded(ledger: Any) -> None:
    with ledger.database.reading() as conn:
        for table in (tables.events, tables.facts, tables.customers, tables.orders):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0


def _refused_line_by_line(ledger: Any, lines: Iterator[bytes] | list[bytes], count: int) -> None:
    with pytest.raises(InvalidFeedError) as refused:
        ledger.import_lines(lines)
    errors = refused.value.errors
    assert [error.line for error in errors] == list(range(1, count + 1))
    for error in errors:
        assert "\n" not in error.reason and len(error.reason) < 300, error.reason
        assert "xxxxxxxxxx" not in error.reason and "ppppp" not in error.reason
    assert refused.value.accepted == 0


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(lines=st.lists(invalid_lines(), min_size=1, max_size=40))
def test_every_invalid_line_is_refused_with_its_number_and_nothing_recorded(
    ledger: Any, lines: list[bytes]
) -> None:
    _refused_line_by_line(ledger, lines, len(lines))
    _nothing_recorded(ledger)


def _stream(count: int, every: int, make: Callable[[int], bytes]) -> Iterator[bytes]:
    """`count` invalid lines, made one at a time: a stream never held whole in memory."""
    for number in range(1, count + 1):
        yield make(number) if number % every == 0 else _small_invalid(number)


def _small_invalid(number: int) -> bytes:
    return _line("consent.given", {**BASES["consent.given"], "channel": "fax"}, id=f"s{number}")


def _large_invalid(number: int) -> bytes:
    name = "x" * 60_000  # a line just under the 64 KiB limit, refused for its long field
    return _line("customer.updated", {"customer": "C-unknown", "name": name}, id=f"l{number}")


def test_a_large_stream_of_invalid_lines_is_refused_in_bounded_memory(ledger: Any) -> None:
    # Given a stream of 8,000 invalid lines, about 120 MB: one in four of them is 60 KB long
    count, every = 8_000, 4
    stream_bytes = (count // every) * len(_large_invalid(0))
    # When it is imported (traced, so every Python allocation counts)
    tracemalloc.start()
    try:
        _refused_line_by_line(ledger, _stream(count, every, _large_invalid), count)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then the import never held more than a small fraction of the stream
    assert peak < stream_bytes / 10, (peak, stream_bytes)
    _nothing_recorded(ledger)


def test_the_command_reports_each_bad_line_and_exits_1(
    ledger: Any, ledger_url: str, tmp_path: Path
) -> None:
    lines = [_small_invalid(1), b"not json", _large_invalid(3), b"[1, 2]"]
    feed = tmp_path / "bad.jsonl"
    feed.write_bytes(b"\n".join(lines) + b"\n")
    document = run_json(ledger_url, "import", str(feed), code=1)
    assert document["accepted"] == 0 and document["rejected"] == 4
    assert [error["line"] for error in document["errors"]] == [1, 2, 3, 4]
    _nothing_recorded(ledger)
