"""How an event's state is stored: orjson, with times as ISO 8601 text and totals as text.

`LedgerTranscoder` encodes and decodes events with these; `ledger.views.stored_facts` decodes
stored rows with them directly, without eventsourcing (a query process need not import it).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

DATETIME_FIELDS = frozenset({"timestamp", "at"})
DECIMAL_FIELDS = frozenset({"total"})


def decode_state(data: bytes) -> dict[str, Any]:
    """A stored state as the event's fields (times as datetimes, totals as Decimals)."""
    state: dict[str, Any] = orjson.loads(data)
    for name in DATETIME_FIELDS.intersection(state):
        state[name] = datetime.fromisoformat(state[name])
    for name in DECIMAL_FIELDS.intersection(state):
        state[name] = Decimal(state[name])
    return state
