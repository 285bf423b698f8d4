"""The answers of SPEC §5, built from a customer's events: pure functions, no I/O.

The CLI renders these dictionaries as JSON or as tables; read models and exports reuse them,
so a question has one answer whichever way it is asked.

The events are either the domain's (`ledger.domainmodel`) or `StoredFact`s: a customer's
recorded events as stored, decoded without the domain model, so that a query process
(`customer trail`, `consent show`) need not import eventsourcing and the domain (most of
such a process's time). Both carry the same fields in `__dict__`; the answers below read
only those and the event's class name (`event_name`), so each answer has one implementation.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from ledger.errors import IntegrityFailure, UnreadableEventError
from ledger.feed import iso
from ledger.free_text import rows_withheld
from ledger.persistence.stored_state import aware_time, decode_state
from ledger.vocabulary import PURPOSE_CHANNELS

if TYPE_CHECKING:
    from ledger.domainmodel import Customer

_E = TypeVar("_E")

_PURPOSE_CHANNEL_ORDER = {
    (purpose, channel): index
    for index, (purpose, channel) in enumerate(
        (p, c) for p, channels in PURPOSE_CHANNELS.items() for c in sorted(channels)
    )
}

# Recorded event classes are named by their stored topic ("ledger.domainmodel:<name>"),
# which never changes once an event is recorded.
_TOPIC_PREFIX = "ledger.domainmodel:"
_CONSENT_STATUS = {"Customer.ConsentGiven": "given", "Customer.ConsentWithdrawn": "withdrawn"}


class StoredFact:
    """A recorded event as stored: its decoded state as `__dict__` (the fields of the domain
    event it records, `originator_version` included) and its class name."""

    __slots__ = ("__dict__", "event_name")

    at: datetime
    timestamp: datetime
    originator_version: int
    fact_id: str

    def __init__(self, event_name: str, state: dict[str, Any]) -> None:
        self.event_name = event_name
        self.__dict__ = state


def stored_facts(rows: Iterable[Sequence[Any]]) -> list[StoredFact] | None:
    """A stream's rows (version, topic, state), in version order, as `StoredFact`s; None if
    an event needs the domain model to be read (an upcast: its state has a class version)."""
    facts = []
    for version, topic, state in rows:
        decoded = decode_state(state)
        if "class_version" in decoded or not topic.startswith(_TOPIC_PREFIX):
            return None
        decoded["originator_version"] = version
        facts.append(StoredFact(topic[len(_TOPIC_PREFIX) :], decoded))
    return facts


def check_stream(ref: str, facts: Sequence[StoredFact]) -> None:
    """The stream the customer index found for `ref` must begin with that customer's
    registration (an altered index row would otherwise answer with another customer's
    facts), and hold every version from 1 on (a deleted event would silently drop out of
    the answer)."""
    first = facts[0]
    if first.event_name != "Customer.Registered" or first.__dict__.get("ref") != ref:
        raise IntegrityFailure(
            f"the customer index does not lead to the registration of customer {ref!r}: it "
            "was altered outside consent-ledger; 'consent-ledger verify' names what changed"
        )
    for expected, fact in enumerate(facts, start=1):
        if fact.originator_version != expected:
            raise IntegrityFailure(
                f"event {expected} of customer {ref!r}'s stream is missing: the ledger was "
                "altered outside consent-ledger; 'consent-ledger verify' names what changed"
            )


def event_name(event: Any) -> str:
    """The event's class, as named in its stored topic (e.g. `Customer.ConsentGiven`)."""
    return event.event_name if type(event) is StoredFact else type(event).__qualname__


def is_disclosure(event: Any) -> bool:
    """A disclosure of personal data (a `DisclosureEvent`): every disclosure event, and only
    those, records its recipient's kind (`tests/unit/test_views.py` checks every class)."""
    return "recipient_kind" in event.__dict__


def business_order(events: Iterable[_E]) -> list[_E]:
    """Business time, ties broken by recording order."""
    return sorted(events, key=lambda e: (e.at, e.originator_version))  # type: ignore[attr-defined]


def consent_status(event: Any) -> str:
    """`given` or `withdrawn`, for a consent event."""
    return _CONSENT_STATUS[event_name(event)]


def consent_history(
    events: Iterable[Any], as_of: datetime | None = None
) -> dict[tuple[str, str], list[Any]]:
    """Consent facts per (purpose, channel) at or before `as_of`, in business order."""
    history: dict[tuple[str, str], list[Any]] = {}
    for event in business_order(events):
        if event_name(event) in _CONSENT_STATUS and (as_of is None or event.at <= as_of):
            history.setdefault((event.purpose, event.channel), []).append(event)
    return dict(sorted(history.items(), key=lambda kv: _PURPOSE_CHANNEL_ORDER[kv[0]]))


def consent_rows(events: Iterable[Any], as_of: datetime | None = None) -> list[dict[str, Any]]:
    """One row per purpose and channel with any fact at or before `as_of`.

    `since` is when the current status began: a consent given twice is given since the first.
    """
    rows = []
    for (purpose, channel), entries in consent_history(events, as_of).items():
        status = consent_status(entries[-1])
        since = entries[-1].at
        for entry in reversed(entries):
            if consent_status(entry) != status:
                break
            since = entry.at
        rows.append({"purpose": purpose, "channel": channel, "status": status, "since": iso(since)})
    return rows


def consent_history_rows(events: Iterable[Any]) -> list[dict[str, Any]]:
    """Every consent fact with its method and policy version, in business order."""
    rows: list[tuple[tuple[datetime, int], dict[str, Any]]] = []
    for entries in consent_history(events).values():
        for event in entries:
            fields = event.__dict__
            rows.append(
                (
                    (event.at, event.originator_version),
                    {
                        "at": iso(event.at),
                        "purpose": fields["purpose"],
                        "channel": fields["channel"],
                        "status": consent_status(event),
                        "method": fields["method"],
                        "policy_version": fields.get("policy_version"),
                        "fact_id": event.fact_id,
                    },
                )
            )
    # By time, not by its text ("10:00:00.5Z" sorts before "10:00:00Z" as text); facts at
    # the same time in recording order, across purposes and channels too (SPEC §1).
    rows.sort(key=lambda row: row[0])
    return [row for _, row in rows]


def disclosure_row(event: Any) -> dict[str, Any]:
    if type(event.categories) is not list:  # (a text would be listed as its letters)
        raise TypeError("categories: not a list")
    return {
        "at": iso(event.at),
        "recipient": event.recipient,
        "recipient_kind": event.recipient_kind,
        "purpose": event.purpose,
        "basis": event.basis,
        "categories": sorted(event.categories),
        "order": event.__dict__.get("order"),
        "fact_id": event.fact_id,
    }


def trail_rows(
    events: Iterable[Any],
    as_of: datetime | None = None,
    erased: bool | None = None,
    exports: Sequence[Sequence[Any]] = (),
) -> list[dict[str, Any]]:
    """SPEC §5 `customer trail`: every disclosure (at or before `as_of`, if given), ordered
    by `at` (then recording order). An erased customer's rows withhold a recipient's name
    shaped like an email or phone number (`free_text.rows_withheld`): after the erasure no
    command shows their data, whatever time the question is asked for. `erased` is whether
    the customer is erased now (today's truth), given when `events` are only those known at
    an earlier recorded time (which may not hold the erasure); else read from `events`.

    `exports`: the due-diligence exports recorded after the customer's first event (rows of
    `sqlite_reads.customer_exports`); each that held the customer's data is on the trail
    too (`export_rows`), among the disclosures of the same time in recording order (SPEC
    §1: a disclosure recorded after an export, dated at its very time, comes after it)."""
    ordered = business_order(events)
    disclosures = [e for e in ordered if is_disclosure(e) and (as_of is None or e.at <= as_of)]
    if exports:
        positions: dict[int, int] = exports[0][3]
        dated = [
            ((event.at, positions.get(event.originator_version, 0)), disclosure_row(event))
            for event in disclosures
        ]
        dated += [
            ((at, position), row)
            for at, position, row in export_rows(exports, ordered)
            if as_of is None or at <= as_of
        ]
        dated.sort(key=lambda item: item[0])
        rows = [row for _, row in dated]
    else:
        rows = [disclosure_row(event) for event in disclosures]
    if erased is None:
        erased = any(event_name(event) == "Customer.Erased" for event in ordered)
    if rows and erased:
        return rows_withheld(rows)
    return rows


_EXPORT_FACT_ID = re.compile(r"export-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")
_EXPORT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "at": datetime,
    "fact_id": str,
    "recipient": str,
    "recipient_kind": str,
    "purpose": str,
    "basis": str,
    "categories": list,
    "identified": bool,
    "as_of": (str, type(None)),
}


@dataclass(frozen=True)
class DecodedExport:
    """An export's stored state as `_export_state` reads it, read once for many customers
    (`decoded_exports`)."""

    state: dict[str, Any]
    tree_size: int | None
    as_of: datetime | None


def decoded_exports(exports: Iterable[tuple[int, Any]]) -> list[tuple[int, DecodedExport]]:
    """Every export recorded, (position, stored state), with its state decoded: what every
    function here that takes exports takes, for a reader of many customers (the
    due-diligence export) to decode each export once, not once a customer."""
    return [(position, DecodedExport(*_export_state(position, data))) for position, data in exports]


def _export_state(position: int, data: Any) -> tuple[dict[str, Any], int | None, datetime | None]:
    """An export's stored state, the last position it read (None: a version-1 export, which
    did not keep it) and its `as_of` as a time; a state of another shape than the ledger
    writes is an `UnreadableEventError`. (`data` may be a `DecodedExport` already.)"""
    if isinstance(data, DecodedExport):
        return data.state, data.tree_size, data.as_of
    where = f" (the export at position {position})"
    try:
        state = decode_state(data)
    except UnreadableEventError:
        raise UnreadableEventError(where) from None
    if any(not isinstance(state.get(k), t) for k, t in _EXPORT_FIELDS.items()):
        raise UnreadableEventError(where)
    version = state.get("class_version", 1)
    tree_size = state.get("tree_size")
    if version == 1 and "tree_size" not in state:
        tree_size = None
    elif version != 2 or type(tree_size) is not int or tree_size < 0:
        raise UnreadableEventError(where)
    try:  # (`decode_state` has read `at` so: a time with its offset)
        as_of = None if state["as_of"] is None else aware_time(state["as_of"])
    except ValueError:
        raise UnreadableEventError(where) from None
    return state, tree_size, as_of


def export_read(export_position: int, tree_size: int | None) -> int:
    """The last event a due-diligence export read: its `tree_size` (a version-1 export,
    None, did not keep it: every event before its own)."""
    return export_position - 1 if tree_size is None else tree_size


def erasures_unshown_after(position: int, data: Any) -> int:
    """The position after which an erasure may be one the export (its event at `position`,
    its stored state `data`) did not show (`ExportHolding.conveyed`): those recorded after
    what it read, whatever its `as_of` (its `erased` column is the truth of what it read)."""
    return export_read(position, _export_state(position, data)[1])


def export_held(
    customer_position: int,
    registered_at: datetime | None,
    export_position: int,
    tree_size: int | None,
    as_of: datetime | None,
) -> bool:
    """Whether a due-diligence export (its event at `export_position`, made `as_of` a time
    if given) held the customer registered at `customer_position`, at `registered_at`: it
    holds the customers registered among the events it read (`export_read`) and, made as
    of a time, registered by then. The one rule of the trails (`export_rows`) and
    of the registry's count (`ledger.exports.customers_held`)."""
    if customer_position > export_read(export_position, tree_size):
        return False
    return as_of is None or (registered_at is not None and registered_at <= as_of)


@dataclass(frozen=True)
class ExportHolding:
    """A due-diligence export that held a customer's data (`export_holdings`): its trail
    row, with its time and position, and the last event it read."""

    at: datetime
    position: int
    read: int
    row: dict[str, Any]

    def conveyed(self, position: int) -> bool:
        """Whether the export showed the customer's erasure at `position` (its customers
        table says so): it read that event. Made as of a time or not: its `erased` column
        says whether the customer was erased among the events it read, whatever the
        erasure's business time (`ledger.exports`: "`erased` is always today's truth")."""
        return position <= self.read


def export_rows(
    exports: Iterable[Sequence[Any]], events: Sequence[Any]
) -> list[tuple[datetime, int, dict[str, Any]]]:
    """The due-diligence exports that held a customer's data, each as a trail row with its
    time and position: SPEC §5, an export "is itself recorded as a disclosure to the
    acquirer". See `export_holdings`."""
    return [(held.at, held.position, held.row) for held in export_holdings(exports, events)]


def export_holdings(exports: Iterable[Sequence[Any]], events: Sequence[Any]) -> list[ExportHolding]:
    """The due-diligence exports that held a customer's data, oldest first.

    `exports`: (the customer's first position, the export's position, its stored state, the
    position of each of the customer's events by stream version); `events`: the customer's,
    in business order. Which exports held the customer: `export_held`. An identified export
    names each customer it holds the personal data of with a `transfer.disclosure` of its
    own, fact id `export-<id>/<n>`, on their trail already: it is not listed again for them.
    The categories are those it holds pseudonymously: `order_details` if it read an order
    of the customer's (placed by its `as_of`, if it has one), as its `orders` table does: not
    one recorded after it, though dated before it. A stored state of the wrong shape is an
    `UnreadableEventError`."""
    registered = next((e.at for e in events if event_name(e) == "Customer.Registered"), None)
    disclosures = [e for e in events if is_disclosure(e)]
    placed = [
        (e.at, e.originator_version) for e in events if event_name(e) == "Customer.OrderPlaced"
    ]
    found = []
    for customer_position, position, data, positions in exports:
        state, tree_size, as_of = _export_state(position, data)
        fact_id = state["fact_id"]
        if (
            registered is None
            or not export_held(customer_position, registered, position, tree_size, as_of)
            or (state["identified"] and any(_own_disclosure(state, e) for e in disclosures))
        ):
            continue
        read = export_read(position, tree_size)
        ordered = any(
            positions.get(version, read + 1) <= read and (as_of is None or at <= as_of)
            for at, version in placed
        )
        row = {
            "at": _export_time(state["at"]),
            "recipient": state["recipient"],
            "recipient_kind": state["recipient_kind"],
            "purpose": state["purpose"],
            "basis": state["basis"],
            "categories": ["order_details"] if ordered else [],
            "order": None,
            "fact_id": fact_id,
        }
        found.append(ExportHolding(state["at"], position, read, row))
    return found


@functools.lru_cache(maxsize=256)
def _export_time(at: datetime) -> str:
    """An export's time as its trail rows give it: the same for each customer it held."""
    return iso(at)


def export_disclosures(
    exports: Iterable[Sequence[Any]], events: Iterable[Any]
) -> dict[str, tuple[datetime | None, int]]:
    """The disclosures among `events` that are an identified export's own
    `transfer.disclosure` (`_own_disclosure`), of the `exports` as `export_holdings` takes
    them, by fact id, with the export's `as_of` (None: not made as of a time) and the last
    event it read (`export_read`): what the ledger itself gave the acquirer, the details it
    had recorded by that event (dated by that time)."""
    identified = []
    for _, position, data, _ in exports:
        state, tree_size, as_of = _export_state(position, data)
        if state["identified"]:
            identified.append((state, as_of, export_read(position, tree_size)))
    found: dict[str, tuple[datetime | None, int]] = {}
    if identified:
        for e in events:
            if is_disclosure(e):
                for state, as_of, read in identified:
                    if _own_disclosure(state, e):
                        found[e.fact_id] = (as_of, read)
    return found


def identified_exports(
    exports: Iterable[tuple[int, Any]],
) -> list[tuple[int, str, datetime | None]]:
    """The identified exports among every export recorded, (position, stored state): the
    last event each read (`export_read`), its fact id and the time it was made as of (None:
    not made as of a time)."""
    found = []
    for position, data in exports:
        state, tree_size, as_of = _export_state(position, data)
        if state["identified"]:
            found.append((export_read(position, tree_size), state["fact_id"], as_of))
    return found


def may_be_export_disclosure(event: Any) -> bool:
    """Whether a disclosure's fact id is shaped like an identified export's own
    (`<export fact id>/<n>`): the shape alone does not make it one (`export_disclosures`)."""
    return bool(_EXPORT_FACT_ID.fullmatch(event.fact_id.rpartition("/")[0]))


def _own_disclosure(state: dict[str, Any], event: Any) -> bool:
    """Whether a disclosure is an identified export's own (`state`, its stored state): the
    `transfer.disclosure` naming a customer it held, fact id `<its fact id>/<n>`, to its
    acquirer, dated to the moment it was made. Its id's shape alone does not make it one: a
    feed's fact id can be any string."""
    return bool(
        state["identified"]
        and event.fact_id.rpartition("/")[0] == state["fact_id"]
        and event.recipient == state["recipient"]
        and event.at == state["at"]
    )


def exports_of(
    positions: dict[int, int], exports: Iterable[tuple[int, Any]]
) -> list[tuple[int, int, Any, dict[int, int]]]:
    """The exports that may hold a customer, as `export_holdings` reads them (the rows of
    `sqlite_reads.customer_exports`), from the position of each of the customer's events
    by stream version and every export recorded, (position, stored state): those recorded
    after the customer's first event."""
    if not positions:
        return []
    first = positions[min(positions)]
    return [(first, position, state, positions) for position, state in exports if position > first]


def is_export_row(row: dict[str, Any]) -> bool:
    """Whether a trail row is a due-diligence export (`export_rows`): its fact id is
    `export-<uuid>`."""
    fact_id = row["fact_id"]
    return row["recipient_kind"] == "acquirer" and bool(_EXPORT_FACT_ID.fullmatch(fact_id))


def order_rows(customer: Customer, events: Iterable[Any]) -> list[dict[str, Any]]:
    """Each order with its status and its facts in business order."""
    facts: dict[str, list[dict[str, Any]]] = {ref: [] for ref in customer.orders}
    for event in business_order(events):
        ref = event.__dict__.get("order")
        if ref in facts:
            entry = {"at": iso(event.at), "type": event.FACT_TYPE, "fact_id": event.fact_id}
            entry.update(
                {k: v for k, v in event.fields().items() if k != "order" and v is not None}
            )
            facts[ref].append(entry)
    rows = []
    for ref, order in sorted(customer.orders.items(), key=lambda kv: (kv[1].placed_at, kv[0])):
        rows.append(
            {
                "order": ref,
                "placed_at": iso(order.placed_at),
                "total": str(order.total),
                "currency": order.currency,
                "status": order.status,
                # An erased customer's withhold free text shaped like an email or phone.
                "facts": rows_withheld([_jsonable(f) for f in facts[ref]], erased=customer.erased),
            }
        )
    return rows


def _jsonable(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (str(v) if not isinstance(v, (str, int, float, bool, list)) else v)
        for k, v in entry.items()
    }
