"""Streams folded straight from stored event rows: what every read model is derived from.

A rebuild reads every event of the log. Building the library's domain event objects and
replaying them on aggregates cost most of a rebuild's time, so the read models fold the
stored rows themselves: the state is decoded by orjson, the topic picks what the event
changes, and each stream yields one `Stream` with the facts the models need (rows of the
business-time timelines, consents, orders, recipient links, the contacts and disclosures to
judge). What the rules and Art. 19 judge is still judged by their one implementation
(`ledger.rules.broken_rules` over a `Customer` holding the folded state, and
`ledger.privacy.notifications` over domain events for the few streams that call for it).

An event class with a `class_version` (or a state carrying one), a mapper with a cipher or
compressor, goes through the library's mapper, so upcasting is never skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic

from ledger.domainmodel import Acquirer, Customer, OrderState, add_in_time_order
from ledger.errors import UnreadableEventError
from ledger.persistence.stored_state import aware_time
from ledger.rules import JUDGED_TYPES
from projections.base import stamp

# What an event does to the folded stream (one code per event class; the order of the codes
# is the fold's order of tests: a registration and consents, disclosures, the rest).
(
    REGISTERED,
    CONSENT_GIVEN,
    CONSENT_WITHDRAWN,
    DISCLOSURE,
    PAYMENT,
    IDENTITY,
    DISPATCHED,
    TRANSFER,
    CONTACT,
    ORDER_PLACED,
    ORDER_STATUS,
    ERASED,
    UPDATED,
    NOTIFIED,
    NOTHING,
    NAMED,
    INITIATED,
) = range(17)

EVENT_CODES: dict[type[Any], int] = {
    Customer.Registered: REGISTERED,
    Customer.DetailsUpdated: UPDATED,
    Customer.ConsentGiven: CONSENT_GIVEN,
    Customer.ConsentWithdrawn: CONSENT_WITHDRAWN,
    Customer.OrderPlaced: ORDER_PLACED,
    Customer.ConfirmationSent: CONTACT,
    Customer.VerificationContacted: CONTACT,
    Customer.PaymentAuthorisationRecorded: PAYMENT,
    Customer.IdentityChecked: IDENTITY,
    Customer.CreditReferenceDisclosed: DISCLOSURE,
    Customer.OrderDispatched: DISPATCHED,
    Customer.OrderDelivered: ORDER_STATUS,
    Customer.OrderCancelled: ORDER_STATUS,
    Customer.AffiliateDisclosed: DISCLOSURE,
    Customer.MarketingContacted: CONTACT,
    Customer.ResearchContacted: CONTACT,
    Customer.TransferDisclosed: TRANSFER,
    Customer.AccessRequested: NOTHING,
    Customer.Erased: ERASED,
    Customer.RecipientNotified: NOTIFIED,
    Acquirer.Named: NAMED,
    Acquirer.TransferInitiated: INITIATED,
    Acquirer.DueDiligenceExported: NOTHING,
}
_ORDER_STATUS = {Customer.OrderDelivered: "delivered", Customer.OrderCancelled: "cancelled"}
# Events Art. 19's `privacy.notifications` looks at (it ignores every other kind).
_NOTICE_CODES = frozenset({PAYMENT, IDENTITY, DISPATCHED, DISCLOSURE, TRANSFER, ERASED, UPDATED})
_NOTICE_CODES |= {NOTIFIED}

Row = tuple[Any, ...]


class Figures:
    """A customer's disclosures to one recipient (of one kind)."""

    __slots__ = ("bases", "categories", "disclosures", "first_at", "last_at", "purposes")

    def __init__(self) -> None:
        self.disclosures = 0
        self.first_at = "9999"
        self.last_at = ""
        self.categories: set[str] = set()
        self.purposes: set[str] = set()
        self.bases: set[str] = set()


class Stream:
    """One stream (a customer's or an acquirer's) folded for the read models."""

    __slots__ = (
        "acquirer",
        "acquirers",
        "consents",
        "customer",
        "events",
        "facts",
        "history",
        "id",
        "initiations",
        "judged",
        "key",
        "links",
        "notices",
        "placed",
        "trail",
    )

    def __init__(self, ident: UUID, key: str) -> None:
        self.id = ident
        self.key = key
        self.events = 0  # how many events were folded
        # With `Folder(keep_facts=True)`: the domain events Art. 19 reads (disclosures,
        # erasures, rectifications, notifications sent), in recording order.
        self.facts: list[Any] = []
        # A customer's state as the rules read it (consents, orders, erasure), else None.
        self.customer: Customer | None = None
        # Rows of the timelines: consent facts and disclosures, in recording order.
        self.history: list[Row] = []
        self.trail: list[Row] = []
        # (purpose, channel) -> [(stamp of at, version, given)] in recording order.
        self.consents: dict[tuple[str, str], list[tuple[str, int, bool]]] = {}
        self.placed: dict[str, str] = {}  # order ref -> stamp of its placing
        self.links: dict[tuple[str, str], Figures] = {}
        # Contacts and disclosures to judge: (fact type, fact id, at, version, state, `at` as
        # stored, position in the log).
        self.judged: list[tuple[str, str, datetime, int, dict[str, Any], str, int]] = []
        self.acquirers: set[str] = set()  # acquirers the customer's data was transferred to
        self.notices = False  # an erasure or rectification calls for notifying recipients
        self.acquirer: str | None = None  # an acquirer's name
        self.initiations: list[tuple[datetime, int]] = []  # (at, position in the log)

    @property
    def ref(self) -> str:
        assert self.customer is not None
        return self.customer.ref


def fast_stamp(raw: str) -> str:
    """`stamp` of a time as the ledger's transcoder stores it (UTC, `+00:00`), by slicing."""
    if raw.endswith("+00:00"):
        size = len(raw)
        if size == 25:
            return raw[:19] + ".000000Z"
        if size == 32:
            return raw[:26] + "Z"
    return stamp(datetime.fromisoformat(raw))


class Folder:
    """Folds stored event rows (stream id, version, topic, state, position in the log),
    ordered by stream then version, into `Stream`s. `mapper` decodes what the fast path
    must not (see module)."""

    def __init__(
        self,
        mapper: Mapper[Any],
        *,
        timelines: bool = True,
        links: bool = True,
        stamps: bool = True,
        keep_facts: bool = False,
    ) -> None:
        self.mapper = mapper
        self.plain = mapper.cipher is None and mapper.compressor is None
        # Whether to make the timelines' rows and the recipient links (a pass whose models
        # use neither, such as `audit check` catching up the violations, skips them).
        self.timelines = timelines
        self.links = links
        # Whether times are stamped (`projections.base.stamp`) for the consents, orders,
        # timelines and links (a pass for the violations alone needs none of them).
        self.stamps = stamps or timelines or links
        self.keep_facts = keep_facts
        self.codes: dict[str, tuple[int, type[Any]]] = {}
        for cls, code in EVENT_CODES.items():
            if getattr(cls, "class_version", 1) == 1:
                self.codes[get_topic(cls)] = (code, cls)

    def _slow(
        self, ident: UUID, version: int, topic: str, state: bytes
    ) -> tuple[int, type[Any], dict[str, Any]]:
        """The mapper's event turned back into a state as stored (times and totals as text)."""
        event = self.mapper.to_domain_event(StoredEvent(ident, version, topic, bytes(state)))
        cls = type(event)
        if cls not in EVENT_CODES:
            raise TypeError(f"no read-model fold for event class {cls.__qualname__}")
        decoded = dict(event.__dict__)
        for name, value in decoded.items():
            if isinstance(value, datetime):
                decoded[name] = value.isoformat()
            elif isinstance(value, Decimal):
                decoded[name] = str(value)
        return EVENT_CODES[cls], cls, decoded

    def fold(self, rows: Iterable[Any]) -> Iterator[Stream]:
        """One `Stream` per stream id in `rows` (ordered by stream, then version). One loop
        over every event of a rebuild: the per-event work is kept to local lookups."""
        codes = self.codes if self.plain else {}
        timelines, with_links, stamps = self.timelines, self.links, self.stamps
        loads = orjson.loads
        parse = aware_time  # (a time without its offset is not one the ledger wrote)
        judged_types = JUDGED_TYPES
        notice_codes = _NOTICE_CODES
        current: Any = None
        stream: Stream | None = None
        kept: list[tuple[type[Any], int, dict[str, Any]]] = []
        triggered = False
        count = 0
        key = ref = ""
        customer: Any = None
        orders: dict[str, OrderState] = {}
        consents: dict[tuple[str, str], list[tuple[datetime, int, bool]]] = {}
        stamped: dict[tuple[str, str], list[tuple[str, int, bool]]] = {}
        history: list[Row] = []
        trail: list[Row] = []
        links: dict[tuple[str, str], Figures] = {}
        judged: list[tuple[str, str, datetime, int, dict[str, Any], str, int]] = []
        ident = UUID(int=0)
        version = 0
        try:  # (free when nothing is raised)
            for raw_id, version, topic, state, position in rows:
                if raw_id != current:
                    if stream is not None:
                        stream.events = count
                        self._close(stream, kept, triggered)
                        yield stream
                    current = raw_id
                    ident = raw_id if isinstance(raw_id, UUID) else UUID(hex=raw_id)
                    stream = Stream(ident, ident.hex)
                    key, ref, customer, count, triggered = stream.key, "", None, 0, False
                    kept = []
                    orders, consents = {}, {}
                    stamped, history, trail = stream.consents, stream.history, stream.trail
                    links, judged = stream.links, stream.judged
                count += 1
                found = codes.get(topic)
                if found is not None:
                    code, cls = found
                    data = loads(state)
                    if type(data) is not dict:
                        raise TypeError("not an object")
                    if "class_version" in data:
                        code, cls, data = self._slow(ident, version, topic, state)
                else:
                    code, cls, data = self._slow(ident, version, topic, state)
                if code >= NOTHING:
                    if code == NAMED:
                        stream.acquirer = data["name"]  # type: ignore[union-attr]
                    elif code == INITIATED:
                        stream.initiations.append(  # type: ignore[union-attr]
                            (parse(data["at"]), position)
                        )
                    continue
                raw_at = data["at"]
                if not stamps:  # no model of the pass reads them (the violations stamp their own)
                    at = raw_at
                elif raw_at[-6:] == "+00:00" and len(raw_at) == 25:
                    at = raw_at[:19] + ".000000Z"
                elif raw_at[-6:] == "+00:00" and len(raw_at) == 32:
                    at = raw_at[:26] + "Z"
                else:
                    at = stamp(parse(raw_at))
                if code in notice_codes:
                    kept.append((cls, version, data))
                if code <= CONSENT_WITHDRAWN:
                    if code == REGISTERED:
                        ref = data["ref"]
                        customer = object.__new__(Customer)
                        customer.__dict__.update(
                            ref=ref,
                            registered_at=parse(raw_at),
                            erased=False,
                            erased_at=None,
                            orders=orders,
                            consents=consents,
                        )
                        stream.customer = customer  # type: ignore[union-attr]
                        continue
                    given = code == CONSENT_GIVEN
                    purpose = data["purpose"]
                    channel = data["channel"]
                    if timelines:
                        history.append(
                            (
                                key,
                                ref,
                                at,
                                version,
                                purpose,
                                channel,
                                "given" if given else "withdrawn",
                                data["method"],
                                data.get("policy_version"),
                                data["fact_id"],
                                at[:7],
                            )
                        )
                    pair = (purpose, channel)
                    if pair in consents:
                        add_in_time_order(consents[pair], (parse(raw_at), version, given))
                        stamped[pair].append((at, version, given))
                    else:
                        consents[pair] = [(parse(raw_at), version, given)]
                        stamped[pair] = [(at, version, given)]
                    continue
                if code <= TRANSFER:  # a disclosure
                    recipient = data["recipient"]
                    kind = data["recipient_kind"]
                    categories = data["categories"]
                    if type(categories) is not list:  # (a text would fold as its letters)
                        raise TypeError("not a list")
                    purpose = data["purpose"]
                    basis = data["basis"]
                    if timelines:
                        trail.append(
                            (
                                key,
                                ref,
                                at,
                                version,
                                recipient,
                                kind,
                                purpose,
                                basis,
                                ",".join(sorted(categories)),
                                data.get("order"),
                                data["fact_id"],
                                at[:7],
                            )
                        )
                    if with_links:
                        figures = links.get((recipient, kind))
                        if figures is None:
                            figures = links[(recipient, kind)] = Figures()
                            figures.first_at = figures.last_at = at
                        elif at < figures.first_at:
                            figures.first_at = at
                        elif at > figures.last_at:
                            figures.last_at = at
                        figures.disclosures += 1
                        figures.categories.update(categories)
                        figures.purposes.add(purpose)
                        figures.bases.add(basis)
                    moment = parse(raw_at)
                    if code == PAYMENT:
                        orders[data["order"]].add_payment(moment, version, data["result"])
                    elif code == IDENTITY:
                        orders[data["order"]].add_identity_check(moment, version, data["result"])
                    elif code == DISPATCHED:
                        orders[data["order"]].advance(moment, version, "dispatched")
                    elif code == TRANSFER:
                        stream.acquirers.add(data["acquirer"])  # type: ignore[union-attr]
                elif code == CONTACT:
                    moment = parse(raw_at)
                elif code == ORDER_PLACED:
                    order = data["order"]
                    orders[order] = OrderState(
                        order, parse(raw_at), Decimal(data["total"]), data["currency"]
                    )
                    stream.placed[order] = at  # type: ignore[union-attr]
                    continue
                elif code == ORDER_STATUS:
                    orders[data["order"]].advance(parse(raw_at), version, _ORDER_STATUS[cls])
                    continue
                elif code == ERASED:
                    moment = parse(raw_at)
                    if customer.erased_at is None or moment < customer.erased_at:
                        customer.erased_at = moment
                    customer.erased = True
                    triggered = True
                    continue
                else:  # a rectification, or a notification sent (Art. 19)
                    triggered = triggered or code == UPDATED
                    continue
                fact_type = cls.FACT_TYPE
                if fact_type in judged_types:
                    fact_id = data["fact_id"]
                    judged.append((fact_type, fact_id, moment, version, data, raw_at, position))
        except (ValueError, TypeError, KeyError, AttributeError):
            # A state this loop cannot read (not JSON, not an object, a field missing or of
            # another kind, a time that is not one): not what the ledger wrote.
            raise UnreadableEventError(f" (stream {ident}, version {version})") from None
        if stream is not None:
            stream.events = count
            self._close(stream, kept, triggered)
            yield stream

    def _close(
        self, stream: Stream, kept: list[tuple[type[Any], int, dict[str, Any]]], triggered: bool
    ) -> None:
        """Art. 19: whether the stream's erasure or rectifications call for notifying any
        recipient, judged by `privacy.notifications` on the events it reads."""
        if stream.customer is None or not (triggered or self.keep_facts):
            return
        from ledger import privacy

        if triggered and not self.keep_facts and not stream.customer.erased:
            # Rectifications only: none calls for a notification unless a category it
            # changed was disclosed at some time (the usual case, decided without events).
            changed: set[str] = set()
            disclosed: set[str] = set()
            for cls, _version, data in kept:
                if cls is Customer.DetailsUpdated:
                    categories = privacy.FIELD_CATEGORY
                    changed.update(categories[f] for f in data["fields_updated"] if f in categories)
                elif "categories" in data:
                    disclosed.update(data["categories"])
            if not changed & disclosed:
                return
        events = [_domain_event(cls, stream.id, version, data) for cls, version, data in kept]
        if self.keep_facts:
            stream.facts = events
        if triggered:
            stream.notices = bool(privacy.notifications(stream.customer.ref, events))


def _domain_event(cls: type[Any], ident: UUID, version: int, data: dict[str, Any]) -> Any:
    """The domain event of a decoded state, as the ledger's transcoder would give it."""
    state = dict(data)
    try:
        state["at"] = aware_time(state["at"])
        state["timestamp"] = aware_time(state["timestamp"])
    except (ValueError, TypeError, KeyError):
        raise UnreadableEventError(f" (stream {ident}, version {version})") from None
    state["originator_id"] = ident
    state["originator_version"] = version
    event = object.__new__(cls)
    object.__setattr__(event, "__dict__", state)
    return event
