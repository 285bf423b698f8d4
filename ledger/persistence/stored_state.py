"""How an event's state is stored: orjson, with times as ISO 8601 text and totals as text.

`LedgerTranscoder` encodes and decodes events with these; `ledger.views.stored_facts` decodes
stored rows with them directly, without eventsourcing (a query process need not import it).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from operator import itemgetter
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
            if type(state[name]) is not str:  # (the ledger writes a total as text)
                raise TypeError("not text")
            state[name] = Decimal(state[name])
    except (ValueError, TypeError, ArithmeticError):  # (JSON, times and decimals)
        raise UnreadableEventError() from None
    return state


# The fields of each event class as stored (class version 1; `tests/data/event_shapes.json`
# locks them, and `tests/unit/test_event_shapes.py` holds this table to it) and the types of
# their values once `decode_state` has read them. `list` is a list of texts.
_TEXT: tuple[type, ...] = (str,)
_OPTIONAL_TEXT: tuple[type, ...] = (str, type(None))
_TIME: tuple[type, ...] = (datetime,)
_TEXTS: tuple[type, ...] = (list,)
_FACT = {"timestamp": _TIME, "fact_id": _TEXT, "at": _TIME, "sealed": _OPTIONAL_TEXT}
_DISCLOSURE = {
    **_FACT,
    **dict.fromkeys(("recipient", "recipient_kind", "purpose", "basis"), _TEXT),
    "categories": _TEXTS,
}


def _texts(*names: str) -> dict[str, tuple[type, ...]]:
    return dict.fromkeys(names, _TEXT)


SHAPES: dict[str, dict[str, tuple[type, ...]]] = {
    "Acquirer.DueDiligenceExported": {
        **_DISCLOSURE,
        **_texts("export_id", "export_format", "manifest_sha256"),
        "customers": (int,),
        "identified": (bool,),
        "as_of": _OPTIONAL_TEXT,
    },
    "Acquirer.Named": {"timestamp": _TIME, **_texts("originator_topic", "name")},
    "Acquirer.TransferInitiated": {**_FACT, "scope": _TEXT, "extra": (dict,)},
    "Customer.AccessRequested": _FACT,
    "Customer.AffiliateDisclosed": {**_DISCLOSURE, **_texts("affiliate")},
    "Customer.ConfirmationSent": {**_FACT, **_texts("order", "channel")},
    "Customer.ConsentGiven": {**_FACT, **_texts("purpose", "channel", "method", "policy_version")},
    "Customer.ConsentWithdrawn": {**_FACT, **_texts("purpose", "channel", "method")},
    "Customer.CreditReferenceDisclosed": {**_DISCLOSURE, **_texts("order", "agency")},
    "Customer.DetailsUpdated": {**_FACT, "fields_updated": _TEXTS},
    "Customer.Erased": _FACT,
    "Customer.IdentityChecked": {**_DISCLOSURE, **_texts("order", "provider", "source", "result")},
    "Customer.MarketingContacted": {**_FACT, **_texts("channel", "campaign")},
    "Customer.OrderCancelled": {**_FACT, **_texts("order", "reason")},
    "Customer.OrderDelivered": {**_FACT, **_texts("order")},
    "Customer.OrderDispatched": {**_DISCLOSURE, **_texts("order", "carrier", "tracking")},
    "Customer.OrderPlaced": {**_FACT, **_texts("order", "currency"), "total": (Decimal,)},
    "Customer.PaymentAuthorisationRecorded": {
        **_DISCLOSURE,
        **_texts("order", "issuer", "result"),
        "reason": _OPTIONAL_TEXT,
    },
    "Customer.RecipientNotified": {**_FACT, "recipient": _TEXT, "regarding": _TEXTS},
    "Customer.Registered": {**_FACT, **_texts("originator_topic", "ref")},
    "Customer.ResearchContacted": {**_FACT, **_texts("channel")},
    "Customer.TransferDisclosed": {**_DISCLOSURE, **_texts("acquirer")},
    "Customer.VerificationContacted": {**_FACT, **_texts("order", "channel")},
}


def _checks(name: str, shape: dict[str, tuple[type, ...]]) -> tuple[Any, ...]:
    """What `misshapen` compares a state of class `name` with: its field count, a getter of
    the fields whose type it checks (not the times and totals, which `decode_state` has
    read as such, or failed on), the types they usually hold, the types each may hold, and
    which are lists of texts."""
    checked = {f: kinds for f, kinds in shape.items() if kinds is not _TIME and f != "total"}
    usual = tuple(
        type(None) if f == "reason" or (f == "sealed" and name != "Customer.Registered") else k[0]
        for f, k in checked.items()
    )
    lists = tuple(f for f, kinds in checked.items() if kinds is _TEXTS)
    return len(shape), itemgetter(*checked), usual, tuple(checked.values()), lists


_CHECKS = {name: _checks(name, shape) for name, shape in SHAPES.items()}
_join = "".join  # (of a list of texts only: TypeError if an item is anything else)


def misshapen(name: str, state: dict[str, Any], extra: int = 0) -> bool:
    """Whether the decoded state of an event of class `name` (as its topic names it, e.g.
    `Customer.ConsentGiven`) lacks a field of its class, has one it does not, or holds a
    value of another type than the ledger writes there: tampering that still decodes as
    JSON (`verify` names it). `extra`: how many fields the reader added (the originator's
    id and version). A class version above 1, or a class not listed, is not judged here.
    About a microsecond an event: one comparison of the usual types, in C."""
    checks = _CHECKS.get(name)
    if checks is None or "class_version" in state:
        return False
    count, fields, usual, allowed, lists = checks
    if len(state) != count + extra:
        return True
    try:
        found = tuple(map(type, fields(state)))
        if found != usual and any(t not in kinds for t, kinds in zip(found, allowed, strict=True)):
            return True
        for field in lists:
            _join(state[field])
    except (KeyError, TypeError):  # (a field missing; a list of something else than texts)
        return True
    return False
