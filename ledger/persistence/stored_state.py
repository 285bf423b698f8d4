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


def decode_state(data: bytes) -> dict[str, Any]:
    """A stored state as the event's fields (times as datetimes, totals as Decimals); a
    state the ledger cannot have written is an `UnreadableEventError`."""
    try:
        state: dict[str, Any] = orjson.loads(data)
        for name in DATETIME_FIELDS.intersection(state):
            state[name] = datetime.fromisoformat(state[name])
        for name in DECIMAL_FIELDS.intersection(state):
            state[name] = Decimal(state[name])
    except (ValueError, TypeError, ArithmeticError):  # (JSON, times and decimals)
        raise UnreadableEventError() from None
    return state
