"""How an event's state is stored: orjson, with times as ISO 8601 text and totals as text.

`LedgerTranscoder` encodes and decodes events with these; `ledger.views.stored_facts` decodes
stored rows with them directly, without eventsourcing (a query process need not import it).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from ledger.errors import UnreadableEventError

DATETIME_FIELDS = frozenset({"timestamp", "at"})
DECIMAL_FIELDS = frozenset({"total"})


def aware_time(text: str) -> datetime:
    """A stored time: ISO 8601 text with its offset (the ledger writes every time with one;
    a naive time cannot be compared with the others). ValueError or TypeError otherwise."""
    moment = datetime.fromisoformat(text)
    if moment.utcoffset() is None:
        raise ValueError("a time without its offset")
    return moment


def decode_state(data: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    """A stored state as the event's fields (times as datetimes, totals as Decimals); a
    state the ledger cannot have written (text where it writes bytes, not JSON, not an
    object, a time that is not one, or has no offset) is an `UnreadableEventError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UnreadableEventError()  # e.g. SQLite text: the ledger stores a state as a blob
    try:
        state: dict[str, Any] = orjson.loads(data)
        if type(state) is not dict:
            raise TypeError("not an object")
        for name in DATETIME_FIELDS.intersection(state):
            state[name] = aware_time(state[name])
        for name in DECIMAL_FIELDS.intersection(state):
            state[name] = Decimal(state[name])
    except (ValueError, TypeError, ArithmeticError):  # (JSON, times and decimals)
        raise UnreadableEventError() from None
    return state
