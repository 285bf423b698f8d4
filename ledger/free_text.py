"""Free-text feed fields that may hold personal data by mistake.

A feed's `method`, `policy_version`, `campaign` and `reason`, and the names of recipients,
are the shop's words, kept in clear: they are not SPEC §4's personal data, and the rules,
views and exports read them. A shifted column can still put a customer's email or phone
number there. Such a value cannot be told from a word by its meaning, only by its shape:
`shaped_like_personal_data` spots an email address or a phone number, so that an import can
say which lines hold one, and a pseudonymous export can withhold it. A name cannot be spotted
so (`Visa` and `Ada Lovelace` are both words).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Final

from ledger.feed import SCHEMAS

# The fields of SPEC §2 that carry the shop's own text.
FREE_TEXT_FIELDS: Final = (
    "method",
    "policy_version",
    "campaign",
    "reason",
    "scope",
    "issuer",
    "provider",
    "agency",
    "carrier",
    "affiliate",
    "acquirer",
)
# A carrier's tracking number: checked for an email only (it is often all digits, and never
# exported pseudonymously).
EMAIL_ONLY_FIELDS: Final[tuple[str, ...]] = ("tracking",)
WITHHELD: Final = "[withheld: shaped like an email or phone number]"

_EMAIL = re.compile(r"[^\s@<>()]+@[^\s@<>()]+\.[^\s@<>()]{2,}")
_PHONE = re.compile(r"\+?[\d\s().\-/]{7,}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@functools.lru_cache(maxsize=100_000)  # the shop's words repeat: each is checked once
def shaped_like_personal_data(value: str) -> bool:
    """Whether `value` holds an email address or a phone number (a run of digits with
    spaces, dashes, dots or brackets: 9 digits or more, or 7 or more after a `+`; not one
    that starts as a date), alone or among words ("phoned 07700 900555")."""
    if "@" in value and _EMAIL.search(value):
        return True
    return any(_phone_shaped(run.group().strip()) for run in _PHONE.finditer(value))


def _phone_shaped(text: str) -> bool:
    if _DATE.match(text):
        return False
    digits = sum(character.isdigit() for character in text)
    return digits >= 9 or (text.startswith("+") and digits >= 7)


def holds_an_email(value: str) -> bool:
    return "@" in value and _EMAIL.search(value) is not None


def withheld_if_shaped(value: Any) -> Any:
    """`value`, or `WITHHELD` if it is text shaped like personal data (a pseudonymous
    export's rows)."""
    return WITHHELD if type(value) is str and shaped_like_personal_data(value) else value


def fields_shaped_like_personal_data(fact_type: str, data: Mapping[str, Any]) -> list[str]:
    """The free-text fields of a fact (its type and `data`) whose value is shaped like
    personal data (run on every line of an import)."""
    shaped: list[str] = []
    for name in _FIELDS_OF_TYPE.get(fact_type, ()):
        value = data.get(name)
        if type(value) is str and shaped_like_personal_data(value):
            shaped.append(name)
    for email_only in EMAIL_ONLY_FIELDS:
        value = data.get(email_only)
        if type(value) is str and holds_an_email(value):
            shaped.append(email_only)
    return shaped


# What a view shows of the shop's words, by the keys of its rows (a recipient's name is
# `recipient` there).
SHOWN_FREE_TEXT: Final = frozenset((*FREE_TEXT_FIELDS, "recipient"))


def rows_withheld(rows: list[dict[str, Any]], *, erased: bool = True) -> list[dict[str, Any]]:
    """`rows` (a view's), with each free-text value shaped like personal data withheld if
    they are an `erased` customer's (as they are, if not)."""
    if not erased:
        return rows
    return [
        {k: withheld_if_shaped(v) if k in SHOWN_FREE_TEXT else v for k, v in row.items()}
        for row in rows
    ]


_FIELDS_OF_TYPE: Final = {
    fact_type: fields
    for fact_type, (required, optional) in SCHEMAS.items()
    if (fields := tuple(f for f in FREE_TEXT_FIELDS if f in required or f in optional))
}
