"""The feed (SPEC §2): one JSON object per line, parsed and validated into a `Fact`.

Validation here is everything that can be judged from the line alone: JSON, type, required
fields, enums, times. Whether the customer or order it names exists is judged by the
application, which knows the ledger. Error messages name fields, never their values, so a
feed line's personal data cannot leak into an error report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from itertools import islice
from typing import Any, Final, NamedTuple

import orjson

from ledger.errors import InvalidFactError
from ledger.vocabulary import (
    ADDRESS_FIELDS,
    CONSENT_CHANNELS,
    DATA_CATEGORIES,
    PERSONAL_FIELDS,
    PURPOSE_CHANNELS,
    PURPOSES,
)

MAX_LINE_BYTES: Final = 64 * 1024
MAX_TEXT: Final = 500
MAX_NESTING: Final = 200  # levels of objects and lists in an unknown field (JSON writes 254)
_SAFE_ECHO = re.compile(r"^[A-Za-z0-9_.\-]{1,40}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CURRENCY = re.compile(r"[A-Z]{3}")  # (fullmatch: "$" would let "GBP\n" through)
MAX_AMOUNT: Final = 40  # characters of a total


class Fact(NamedTuple):
    """One validated fact: the feed line's id, type, business time (UTC) and fields, with
    the customer and order it names (also in `data`) at hand.

    A named tuple: immutable, and built in one step (a frozen dataclass's `__init__` sets
    each field through `object.__setattr__`, a measurable share of an import)."""

    id: str
    type: str
    at: datetime
    data: dict[str, Any]
    extra: dict[str, Any]
    customer: str | None
    order: str | None

    def to_json(self) -> dict[str, Any]:
        """The fact as a feed line again (`at` in UTC)."""
        return {"id": self.id, "type": self.type, "at": iso(self.at), **self.data, **self.extra}


# A named tuple's own `__new__` is a Python function around this (~160 ns a fact).
_new_fact: Callable[[type[Fact], tuple[Any, ...]], Fact] = tuple.__new__


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, the one format the ledger prints."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# Every value a choice field accepts, and every fact type: words of the contract, which an
# error may repeat (a value given where one of them belongs may be anything else: a shifted
# column can put a phone number or a name there).
_WORDS: set[str] = set(DATA_CATEGORIES)


def unknown_value(kind: str, value: Any, allowed: Collection[str], *, hint: str = "") -> str:
    """The error for a value that is none of `allowed` (a feed field's, or a command's
    argument such as a read model's name). It repeats the value only if it is a
    word of the contract, or one slip away from an allowed one, a typo of it (said so);
    anything else, such as personal data in the wrong field, is not repeated."""
    expected = f" ({hint or 'expected one of ' + ', '.join(sorted(allowed))})"
    if not isinstance(value, str):
        return f"unknown {kind}: {_json_kind(value)}, not text{expected}"
    if value in _WORDS:
        return f"unknown {kind} {value!r}{expected}"
    close = [word for word in sorted(allowed) if _one_edit(value, word)]
    if close and _SAFE_ECHO.match(value):
        return f"unknown {kind} {value!r} (did you mean {close[0]!r}?)"
    return f"unknown {kind}{expected}"


def _one_edit(typed: str, word: str) -> bool:
    """Whether `typed` is `word` with one slip: a character left out, added or replaced, or
    two neighbours swapped (a typo, not another word)."""
    if typed == word or abs(len(typed) - len(word)) > 1:
        return False
    at = 0
    while at < min(len(typed), len(word)) and typed[at] == word[at]:
        at += 1
    if len(typed) > len(word):
        return typed[at + 1 :] == word[at:]
    if len(typed) < len(word):
        return typed[at:] == word[at + 1 :]
    swapped = typed[at : at + 2] == word[at : at + 2][::-1]
    return typed[at + 1 :] == word[at + 1 :] or (swapped and typed[at + 2 :] == word[at + 2 :])


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    return "a list" if isinstance(value, list) else "an object"


Validator = Callable[[str, Any], Any]


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidFactError(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value or value.isspace():
        raise InvalidFactError(f"field {name!r} must not be empty")
    if len(value) > MAX_TEXT:
        raise InvalidFactError(f"field {name!r} is longer than {MAX_TEXT} characters")
    # isprintable() is one C pass and true for almost every value; the regex decides the rest.
    if not value.isprintable() and _CONTROL.search(value):
        raise InvalidFactError(f"field {name!r} contains control characters")
    return value


def text_field(name: str, value: Any) -> str:
    """A command's text checked as a feed field's (a string, not blank, at most `MAX_TEXT`
    characters, no control characters): `InvalidFactError` naming the field if not."""
    return _text(name, value)


def _email(name: str, value: Any) -> str:
    text = _text(name, value)
    local, at, domain = text.partition("@")
    if not at or not local or "." not in domain:
        raise InvalidFactError(f"field {name!r} is not an email address")
    return text


def _one_of(*choices: str) -> Validator:
    allowed = frozenset(choices)
    _WORDS.update(allowed)

    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise InvalidFactError(unknown_value(name, value, allowed))
        return str(value)

    return check


def _enum(allowed: frozenset[str]) -> Validator:
    return _one_of(*allowed)


def _decimal(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidFactError(f'field {name!r} must be a decimal string such as "12.50"')
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise InvalidFactError(f"field {name!r} is not a decimal number") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidFactError(f"field {name!r} must be a finite amount of zero or more")
    # As stored, `str(amount)` may be a few characters longer than the line's text.
    if len(value) > MAX_AMOUNT - 8 and max(len(value), len(str(amount))) > MAX_AMOUNT:
        raise InvalidFactError(f"field {name!r} is longer than {MAX_AMOUNT} characters")
    if not _written_out_within_limit(amount):
        raise InvalidFactError(
            f"field {name!r} has more than {MAX_AMOUNT} digits before or after its point"
        )
    return value


def _written_out_within_limit(amount: Decimal) -> bool:
    """Whether an amount has at most `MAX_AMOUNT` digits before and after its point, written
    out: "1E+999999999" is short, but no amount of money, and sums of such totals outgrow
    any Decimal (an export's summary, `exports.TOTALS_CONTEXT`). Earlier versions took them
    (and ledgers keep them). A zero is zero, whatever its exponent."""
    exponent = int(amount.as_tuple().exponent)
    return not amount or (amount.adjusted() < MAX_AMOUNT and exponent >= -MAX_AMOUNT)


def _currency(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise InvalidFactError(f"field {name!r} must be a three-letter currency code")
    return value


def _categories(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise InvalidFactError(f"field {name!r} must be a non-empty list of data categories")
    for item in value:
        if not isinstance(item, str) or item not in DATA_CATEGORIES:
            raise InvalidFactError(unknown_value("data category", item, DATA_CATEGORIES))
    return sorted(set(value))


def _address(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidFactError(f"field {name!r} must be an object with {', '.join(ADDRESS_FIELDS)}")
    missing = [part for part in ADDRESS_FIELDS if part not in value]
    if missing:
        raise InvalidFactError(f"field {name!r} lacks {', '.join(missing)}")
    unknown = sorted(set(value) - set(ADDRESS_FIELDS))
    if unknown:
        raise InvalidFactError(
            f"field {name!r} has unknown parts {', '.join(map(_echo_name, unknown))}"
        )
    return {part: _text(f"{name}.{part}", value[part]) for part in ADDRESS_FIELDS}


_REF = _text
_CHANNEL = _enum(CONSENT_CHANNELS)

# type -> (required fields, optional fields)
SCHEMAS: Final[dict[str, tuple[dict[str, Validator], dict[str, Validator]]]] = {
    "customer.registered": (
        {"customer": _REF, "name": _text, "email": _email, "address": _address},
        {"phone": _text},
    ),
    "customer.updated": (
        {"customer": _REF},
        {"name": _text, "email": _email, "phone": _text, "address": _address},
    ),
    "consent.given": (
        {
            "customer": _REF,
            "purpose": _enum(PURPOSES),
            "channel": _CHANNEL,
            "method": _text,
            "policy_version": _text,
        },
        {},
    ),
    "consent.withdrawn": (
        {"customer": _REF, "purpose": _enum(PURPOSES), "channel": _CHANNEL, "method": _text},
        {},
    ),
    "order.placed": (
        {"order": _REF, "customer": _REF, "total": _decimal, "currency": _currency},
        {},
    ),
    "order.confirmation_sent": ({"order": _REF, "channel": _one_of("email")}, {}),
    "order.verification_contact": ({"order": _REF, "channel": _one_of("phone", "email")}, {}),
    "payment.authorisation": (
        {"order": _REF, "issuer": _text, "result": _one_of("authorised", "refused")},
        {"reason": _text},
    ),
    "identity.check": (
        {
            "order": _REF,
            "provider": _text,
            "source": _one_of("electoral_roll", "credit_reference"),
            "result": _one_of("pass", "fail", "refer"),
        },
        {},
    ),
    "cra.disclosure": ({"order": _REF, "agency": _text}, {}),
    "order.dispatched": ({"order": _REF, "carrier": _text, "tracking": _text}, {}),
    "order.delivered": ({"order": _REF}, {}),
    "order.cancelled": ({"order": _REF, "reason": _text}, {}),
    "affiliate.disclosure": (
        {"customer": _REF, "affiliate": _text, "categories": _categories},
        {},
    ),
    "marketing.contact": (
        {"customer": _REF, "channel": _enum(PURPOSE_CHANNELS["marketing"]), "campaign": _text},
        {},
    ),
    "research.contact": (
        {"customer": _REF, "channel": _enum(PURPOSE_CHANNELS["market_research"])},
        {},
    ),
    "transfer.initiated": ({"acquirer": _text, "scope": _text}, {}),
    "transfer.disclosure": (
        {"customer": _REF, "acquirer": _text, "categories": _categories},
        {},
    ),
    "subject.access_requested": ({"customer": _REF}, {}),
    "subject.erased": ({"customer": _REF}, {}),
}
FACT_TYPES: Final = frozenset(SCHEMAS)
_WORDS.update(FACT_TYPES)
# One lookup per field: every field's validator, required or optional.
_CHECKS: Final = {kind: {**optional, **required} for kind, (required, optional) in SCHEMAS.items()}
# By type, what `_validate` needs of it in one lookup: its required fields' names, its
# optional fields, every field's validator, and whether it is a consent fact.
_PLANS: Final = {
    kind: (required.keys(), optional, _CHECKS[kind], kind.startswith("consent."))
    for kind, (required, optional) in SCHEMAS.items()
}
_ENVELOPE: Final = frozenset({"id", "type", "at"})
_FIELD_NAMES: Final = _ENVELOPE.union(*(checks.keys() for checks in _CHECKS.values()))


def in_utc(moment: datetime) -> datetime:
    """`moment` (with an offset) in UTC; ValueError, saying why, if that leaves the years
    Python keeps (9999-12-31T23:59:59-05:00 is in the year 10000 in UTC)."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range: in UTC it must fall in the years 1 to 9999") from None


def parse_time(value: Any, name: str = "at") -> datetime:
    """An ISO 8601 time that carries a UTC offset, normalised to UTC."""
    if not isinstance(value, str):
        raise InvalidFactError(f"field {name!r} must be an ISO 8601 time string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidFactError(f"field {name!r} is not an ISO 8601 time") from None
    if moment.tzinfo is UTC:  # "Z" or "+00:00": already UTC, the common case
        return moment
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidFactError(f"field {name!r} has no UTC offset (add Z or +00:00)")
    try:
        return in_utc(moment)
    except ValueError as error:
        raise InvalidFactError(f"field {name!r} {error}") from None


def validate(obj: Mapping[str, Any]) -> Fact:
    """Check one decoded feed object against SPEC §2 and return it as a `Fact`."""
    try:
        return _validate(obj)
    except InvalidFactError as error:
        scrubbed = _scrub(error.reason, obj)
        if scrubbed == error.reason:
            raise
        raise InvalidFactError(scrubbed, error.line) from None


def _scrub(reason: str, obj: Mapping[str, Any]) -> str:
    """Errors echo short identifiers to help fix a typo; never one that is the line's
    personal data (a shifted column can put a name where a channel belongs)."""
    for value in _personal_words(obj):
        if value in _WORDS or value in _FIELD_NAMES:  # the contract's own words, not a person's
            continue  # (an email 'email' is no secret, and 'email' names a field in reasons)
        reason = reason.replace(repr(value), "the given value")
    return reason


def _personal_words(obj: Mapping[str, Any]) -> set[str]:
    values: list[Any] = [obj.get(name) for name in PERSONAL_FIELDS]
    address = obj.get("address")
    if isinstance(address, Mapping):
        values.extend(address.values())
    words: set[str] = set()
    for value in values:
        if isinstance(value, str):
            words.add(value)
            words.update(value.split())
    return words


def _validate(obj: Mapping[str, Any]) -> Fact:
    if "id" not in obj:
        raise InvalidFactError("missing required field 'id'")
    fact_id = _text("id", obj["id"])
    if "type" not in obj:
        raise InvalidFactError("missing required field 'type'")
    fact_type = obj["type"]
    plan = _PLANS.get(fact_type) if isinstance(fact_type, str) else None
    if plan is None:
        hint = f"none of the feed's {len(SCHEMAS)} types"
        raise InvalidFactError(unknown_value("type", fact_type, SCHEMAS, hint=hint))
    if "at" not in obj:
        raise InvalidFactError("missing required field 'at'")
    at = parse_time(obj["at"])
    required, optional, checks, consent = plan
    if not required <= obj.keys():
        missing = [name for name in required if name not in obj]
        raise InvalidFactError(f"{fact_type} lacks required field {', '.join(map(repr, missing))}")
    data: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in obj.items():
        check = checks.get(name)
        if check is not None:
            if value is None and name in optional:
                continue
            data[name] = check(name, value)
        elif name not in _ENVELOPE:
            if type(value) in (dict, list) and _too_deep(value):
                raise InvalidFactError(
                    f"field {_echo_name(name)} is nested more than {MAX_NESTING} levels deep"
                )
            extra[name] = value
    if fact_type == "customer.updated" and len(data) == 1:
        raise InvalidFactError("customer.updated names none of name, email, phone, address")
    if consent:
        purpose, channel = data["purpose"], data["channel"]
        if channel not in PURPOSE_CHANNELS[purpose]:
            raise InvalidFactError(f"purpose {purpose!r} has no channel {channel!r}")
    fields = (fact_id, str(fact_type), at, data, extra, data.get("customer"), data.get("order"))
    return _new_fact(Fact, fields)  # `Fact(*fields)`, without its `__new__` in Python


def _too_deep(value: Any) -> bool:
    """Whether an unknown field's value nests objects and lists more than `MAX_NESTING`
    levels (kept sealed as JSON, which has a depth limit of its own)."""
    nesting = (level for level in _levels([value]) if any(map(_is_container, level)))
    return next(islice(nesting, MAX_NESTING, None), None) is not None


def _levels(values: Iterable[Any]) -> Iterator[list[Any]]:
    """`values`, then the values inside their objects and lists, level by level (iterative:
    no recursion limit, however deep)."""
    level = list(values)
    while level:
        yield level
        level = [
            child
            for value in level
            if _is_container(value)
            for child in (value.values() if type(value) is dict else value)
        ]


def _is_container(value: Any) -> bool:
    return type(value) is dict or type(value) is list


def _echo_name(name: str) -> str:
    """An unknown field's name, if it is short and plain (a name is not data)."""
    return repr(name) if _SAFE_ECHO.match(name) else "an unknown field"


def parse_line(raw: str | bytes, line: int | None = None) -> Fact:
    """Parse one feed line; errors carry the line number."""
    try:
        if len(raw) > MAX_LINE_BYTES and _content_length(raw) > MAX_LINE_BYTES:
            raise InvalidFactError(f"line is longer than {MAX_LINE_BYTES} bytes")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidFactError("not valid JSON") from None
        if not isinstance(obj, dict):
            raise InvalidFactError("a feed line must be a JSON object")
        fact = validate(obj)
        if fact.extra and _leaves(fact.extra.values(), float):  # rare: only then read again
            _refuse_inexact_integers(raw, fact.extra)
        return fact
    except InvalidFactError as error:
        if line is None:
            raise
        raise InvalidFactError(error.reason, line) from None


# orjson keeps integers from -2**63 to 2**64 - 1 and reads any other as a float, rounded.
_INT_RANGE = range(-(2**63), 2**64)


def _content_length(raw: str | bytes) -> int:
    """A line's length without its line ending (the limit is on what it holds)."""
    return len(raw.rstrip(b"\r\n")) if isinstance(raw, bytes) else len(raw.rstrip("\r\n"))


def load_object(raw: str | bytes) -> Any:
    """A command's fact as JSON (`orjson.loads`), refused as a feed line would be if it holds
    an integer that orjson would round. JSONDecodeError as orjson raises it."""
    obj = orjson.loads(raw)
    if isinstance(obj, dict) and _leaves(obj.values(), float, MAX_NESTING + 2):
        _refuse_inexact_integers(raw, obj)
    return obj


def _refuse_inexact_integers(raw: str | bytes, fields: Mapping[str, Any]) -> None:
    """Refuse a line whose unknown `fields` hold an integer that orjson read as a float:
    such a field is kept as it was sent (SPEC §2), not approximately. The line is read again
    by the standard library's parser, which keeps integers exact (its depth was checked)."""
    import json

    try:
        exact = json.loads(raw)
    except (ValueError, RecursionError):  # what orjson read, or deeper than a fact may be
        return
    for name in fields:
        if _leaves([exact.get(name)], int, predicate=lambda v: v not in _INT_RANGE):
            raise InvalidFactError(
                f"field {_echo_name(name)} holds an integer of more than 64 bits, which is "
                "not kept exactly: send it as a string"
            )


def _leaves(
    values: Iterable[Any],
    kind: type,
    depth: int = MAX_NESTING + 1,
    predicate: Callable[[Any], bool] = lambda _: True,
) -> bool:
    """Whether any value of `kind` (exactly) for which `predicate` holds lies in `values`,
    or in their objects and lists down to `depth` levels."""
    return any(
        type(value) is kind and predicate(value)
        for level in islice(_levels(values), depth)
        for value in level
    )
