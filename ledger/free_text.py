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

# The fields of SPEC §2 that carry the shop's own text (a tracking number aside: it is a
# carrier's reference, never exported pseudonymously, and often all digits).
FREE_TEXT_FIELDS: Final = (
    "method",
    "policy_version",
    "campaign",
    "reason",
    "issuer",
    "provider",
    "agency",
    "carrier",
    "affiliate",
    "acquirer",
)
WITHHELD: Final = "[withheld: shaped like an email or phone number]"

_EMAIL = re.compile(r"[^\s@<>()]+@[^\s@<>()]+\.[^\s@<>()]{2,}")
_PHONE = re.compile(r"\+?[\d\s().\-/]{7,}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@functools.lru_cache(maxsize=100_000)  # the shop's words repeat: each is checked once
def shaped_like_personal_data(value: str) -> bool:
    """Whether `value` holds an email address, or is a phone number (digits with spaces,
    dashes, dots or brackets: 9 digits or more, or 7 or more after a `+`; not a date)."""
    if "@" in value and _EMAIL.search(value):
        return True
    text = value.strip()
    if not _PHONE.fullmatch(text) or _DATE.match(text):
        return False
    digits = sum(character.isdigit() for character in text)
    return digits >= 9 or (text.startswith("+") and digits >= 7)


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
    return shaped


_FIELDS_OF_TYPE: Final = {
    fact_type: fields
    for fact_type, (required, optional) in SCHEMAS.items()
    if (fields := tuple(f for f in FREE_TEXT_FIELDS if f in required or f in optional))
}
