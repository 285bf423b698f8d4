"""Aggregates and their events.

`Customer` is the consistency boundary: a customer's personal data (sealed), consents,
orders with their verification results, contacts and disclosures all live in one stream, so
the rules that relate them (consent before contact, payment before dispatch, nothing after
erasure) are judged on one aggregate. `Acquirer` records business-transfer initiations.

Every event carries the fact id it came from, its business time `at` (UTC) and, through the
library's `timestamp`, the time it was recorded. Personal data and a feed line's unknown
fields travel in `sealed`, ciphertext made by the application under the customer's data key:
the domain never sees plaintext personal data and needs no keys.

Commands (public methods) check and raise; event `apply` methods only change state, so a
replay never re-judges history. Events are explicit classes: `trigger_event` on a class is
several times cheaper than the `@event` method decorator, which matters at a million facts.
Once recorded, an event class is never reshaped without `class_version` and an upcaster.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from operator import itemgetter
from typing import Any, ClassVar, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, CanMutateAggregate
from eventsourcing.utils import get_topic

from ledger.errors import CustomerErasedError, InvalidFactError
from ledger.feed import Fact
from ledger.vocabulary import DISCLOSURES

_NAMESPACE = uuid5(NAMESPACE_URL, "https://consent-ledger.invalid/ids")


@lru_cache(maxsize=65536)
def customer_id(ref: str) -> UUID:
    return uuid5(_NAMESPACE, "customer/" + ref)


def acquirer_id(name: str) -> UUID:
    return uuid5(_NAMESPACE, "acquirer/" + name)


def replay(aggregate: Any, events: Iterable[Any]) -> Any:
    """An aggregate from its events, each applied in turn: the library's `project_aggregate`
    without its `isinstance` of a runtime protocol for each event, which took 43 % of the
    time of loading a customer (Python 3.11's protocol checks are slow)."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


class FactEvent(Aggregate.Event):
    """An event that records (part of) a feed fact."""

    fact_id: str
    at: datetime
    sealed: str | None

    FACT_TYPE: ClassVar[str] = ""

    def fields(self) -> dict[str, Any]:
        """The fact's own public fields (SPEC §2), without envelope or sealed data."""
        skip = _ENVELOPE_FIELDS
        if isinstance(self, DisclosureEvent):
            skip = skip | _DISCLOSURE_FIELDS
        return {k: v for k, v in self.__dict__.items() if k not in skip}


_ENVELOPE_FIELDS = frozenset(
    {"originator_id", "originator_version", "timestamp", "originator_topic"}
    | {"fact_id", "at", "sealed"}
)
_DISCLOSURE_FIELDS = frozenset({"recipient", "recipient_kind", "categories", "purpose", "basis"})


class DisclosureEvent(FactEvent):
    """A fact that discloses personal data to a third party."""

    recipient: str
    recipient_kind: str
    categories: list[str]
    purpose: str
    basis: str


@dataclass
class OrderState:
    ref: str
    placed_at: datetime
    total: Decimal
    currency: str
    # (at, version, result) of each payment authorisation and identity check, in business-time
    # order (`add_payment`, `add_identity_check`).
    payments: list[tuple[datetime, int, str]] = field(default_factory=list)
    identity_checks: list[tuple[datetime, int, str]] = field(default_factory=list)
    # (at, version, status) of each dispatch, delivery and cancellation.
    lifecycle: list[tuple[datetime, int, str]] = field(default_factory=list)
    # (at, version) of the earliest authorised payment, if any.
    first_authorised: tuple[datetime, int] | None = None

    @property
    def status(self) -> str:
        """The status its latest dispatch, delivery or cancellation gave it, in business time
        (ties by recording order), as every question is asked (SPEC §1): a dispatch reported
        late, dated before the delivery, leaves the order delivered. `placed` if none."""
        return max(self.lifecycle)[2] if self.lifecycle else "placed"

    def add_payment(self, at: datetime, version: int, result: str) -> None:
        add_in_time_order(self.payments, (at, version, result))
        if result == "authorised" and (
            self.first_authorised is None or (at, version) < self.first_authorised
        ):
            self.first_authorised = (at, version)

    def add_identity_check(self, at: datetime, version: int, result: str) -> None:
        add_in_time_order(self.identity_checks, (at, version, result))

    def authorised_before(self, moment: tuple[datetime, int]) -> bool:
        """Whether a payment was authorised before (business time, version) `moment`."""
        return self.first_authorised is not None and self.first_authorised < moment

    def identity_check_before(self, moment: tuple[datetime, int]) -> str | None:
        """The result of the latest identity check before (business time, version) `moment`."""
        index = bisect_left(self.identity_checks, moment)
        return self.identity_checks[index - 1][2] if index else None

    def advance(self, at: datetime, version: int, status: str) -> None:
        """A dispatch, delivery or cancellation at `at`, the stream's `version`th event."""
        self.lifecycle.append((at, version, status))


_Entry = TypeVar("_Entry", bound=tuple[Any, ...])


def add_in_time_order(timeline: list[_Entry], entry: _Entry) -> None:
    """Adds a fact's (at, version, ...) to a timeline kept in business-time order (a stream's
    version breaking a tie, so no two entries of a stream compare equal): the latest is last
    and a moment is found by bisection, not by a scan per fact judged, which made recording
    and auditing an entity with thousands of facts quadratic. A fact reported late is put
    in its place; the usual one, the latest, is appended."""
    if not timeline or entry[:2] > timeline[-1][:2]:
        timeline.append(entry)
    else:
        insort(timeline, entry)


class Customer(Aggregate):
    """A customer of the retailer, as far as the ledger is concerned."""

    class Registered(Aggregate.Created, FactEvent):
        FACT_TYPE = "customer.registered"
        ref: str

    class DetailsUpdated(FactEvent):
        FACT_TYPE = "customer.updated"
        fields_updated: list[str]

        def apply(self, aggregate: Aggregate) -> None:
            pass

    class ConsentGiven(FactEvent):
        FACT_TYPE = "consent.given"
        purpose: str
        channel: str
        method: str
        policy_version: str

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Customer)
            aggregate._consent(self, given=True)

    class ConsentWithdrawn(FactEvent):
        FACT_TYPE = "consent.withdrawn"
        purpose: str
        channel: str
        method: str

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Customer)
            aggregate._consent(self, given=False)

    class OrderPlaced(FactEvent):
        FACT_TYPE = "order.placed"
        order: str
        total: Decimal
        currency: str

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Customer)
            aggregate.orders[self.order] = OrderState(
                self.order, self.at, self.total, self.currency
            )

    class ConfirmationSent(FactEvent):
        FACT_TYPE = "order.confirmation_sent"
        order: str
        channel: str

        def apply(self, aggregate: Aggregate) -> None:
            pass

    class VerificationContacted(FactEvent):
        FACT_TYPE = "order.verification_contact"
        order: str
        channel: str

        def apply(self, aggregate: Aggregate) -> None:
            pass

    class PaymentAuthorisationRecorded(DisclosureEvent):
        FACT_TYPE = "payment.authorisation"
        order: str
        issuer: str
        result: str
        reason: str | None

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Customer)
            order = aggregate.orders[self.order]
            order.add_payment(self.at, self.originator_version, self.result)

    class IdentityChecked(DisclosureEvent):
        FACT_TYPE = "identity.check"
        order: str
        provider: str
        source: str
        result: str

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Customer)
            order = aggregate.orders[self.order]
            order.add_identity_check(self.at, self.originator_version, self.result)

    class CreditReferenceDisclosed(DisclosureEvent):
        FACT_TYPE = "cra.disclosure"
        order: str
        agency: str

        def apply(self, aggregate: Aggregate) -> None:
            pass

    class OrderDispatched(DisclosureEvent):
        FACT_TYPE = "order.dispatched"
        order: str
        carrier: str
        tracking: str

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Customer)
            aggregate.orders[self.order].advance(self.at, self.originator_version, "dispatched")

    class OrderDelivered(FactEvent):
        FACT_TYPE = "order.delivered"
        order: str

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Customer)
            aggregate.orders[self.order].advance(self.at, self.originator_version, "delivered")

    class OrderCancelled(FactEvent):
        FACT_TYPE = "order.cancelled"
        order: str
        reason: str

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Customer)
            aggregate.orders[self.order].advance(self.at, self.originator_version, "cancelled")

    class AffiliateDisclosed(DisclosureEvent):
        FACT_TYPE = "affiliate.disclosure"
        affiliate: str

        def apply(self, aggregate: Aggregate) -> None:
            pass

    class MarketingContacted(FactEvent):
        FACT_TYPE = "marketing.contact"
        channel: str
        campaign: str

        def apply(self, aggregate: Aggregate) -> None:
            pass

    class ResearchContacted(FactEvent):
        FACT_TYPE = "research.contact"
        channel: str

        def apply(self, aggregate: Aggregate) -> None:
            pass

    class TransferDisclosed(DisclosureEvent):
        FACT_TYPE = "transfer.disclosure"
        acquirer: str

        def apply(self, aggregate: Aggregate) -> None:
            pass

    class AccessRequested(FactEvent):
        FACT_TYPE = "subject.access_requested"

        def apply(self, aggregate: Aggregate) -> None:
            pass

    class Erased(FactEvent):
        FACT_TYPE = "subject.erased"

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Customer)
            if aggregate.erased_at is None or self.at < aggregate.erased_at:
                aggregate.erased_at = self.at
            aggregate.erased = True

    class RecipientNotified(FactEvent):
        """Art. 19: a recipient was told of the customer's erasure or rectification.

        Recorded by a command only (`recipients notified`), never from the feed, hence no
        FACT_TYPE: it is not a SPEC §2 fact type. `regarding` lists the fact ids of the
        erasure or rectifications it answers."""

        recipient: str
        regarding: list[str]

        def apply(self, aggregate: Aggregate) -> None:
            pass

    # True for a customer known by its stream's head alone (`at_head`).
    _head_only = False

    def __init__(self, ref: str, fact_id: str, at: datetime, sealed: str | None) -> None:
        self._set_up(ref, at)

    def _set_up(self, ref: str, at: datetime) -> None:
        self.ref = ref
        self.registered_at = at
        self.erased = False
        self.erased_at: datetime | None = None
        self.orders: dict[str, OrderState] = {}
        # (purpose, channel) -> [(at, version, given)] in business-time order (`add_in_time_order`)
        self.consents: dict[tuple[str, str], list[tuple[datetime, int, bool]]] = {}

    def _consent(self, event: FactEvent, *, given: bool) -> None:
        key = (event.__dict__["purpose"], event.__dict__["channel"])
        entry = (event.at, event.originator_version, given)
        add_in_time_order(self.consents.setdefault(key, []), entry)

    # -- queries over decision state -------------------------------------------------------

    def consent_given_at(
        self, purpose: str, channel: str, moment: datetime, before: int | None = None
    ) -> bool:
        """SPEC §3: the latest consent fact for purpose and channel at or before `moment`.

        `before` is the recording position (stream version) of the fact being judged: a
        consent fact at the same `at` counts only if it was recorded before that fact.
        """
        timeline = self.consents.get((purpose, channel))
        if not timeline:
            return False
        if before is None:  # after every fact at or before `moment`
            index = bisect_right(timeline, moment, key=itemgetter(0))
        else:  # after every fact earlier than (moment, before)
            index = bisect_left(timeline, (moment, before))
        return index > 0 and timeline[index - 1][2]

    def latest_consent(self, purpose: str, channel: str) -> tuple[datetime, int, bool]:
        """The (at, version, given) of the latest consent fact for purpose and channel in
        business time (recording order breaking a tie); KeyError when there is none."""
        return self.consents[(purpose, channel)][-1]

    # -- commands ----------------------------------------------------------------------------

    @classmethod
    def at_head(cls, ident: UUID, ref: str, version: int) -> Customer:
        """The customer whose stream's last event is its `version`th, known by that alone:
        it records only `HEAD_ONLY_FACTS`, whose events read nothing of the customer but
        its id and version (`record` makes no check of the customer for them, and their
        `apply` changes nothing), so the event is the one the replayed customer makes. It
        has no other state: any read of it raises. For a caller that has just read the
        stream up to the ledger's head, under the writer's lock (an identified export's own
        disclosures, `ConsentLedger.import_lines`' `heads`)."""
        customer = cls.__new__(cls)
        customer.__base_init__(ident, version, cls.Event.create_timestamp())
        customer.ref = ref
        customer._head_only = True
        return customer

    @classmethod
    def register(cls, fact: Fact, sealed: str | None) -> Customer:
        """The library's `_create` of a `Registered` event, as `_trigger` makes an event:
        its `__dict__` set at once, in the order of the event class's fields (the order its
        frozen `__init__` would set them in, and its state is stored in), and the customer
        made as the event's `mutate` makes it. The library's way took ~10 us a customer
        (inspecting `__init__`'s parameters, and that frozen `__init__`) where this takes
        ~3; the same event, field for field and in order, and the same customer."""
        ref = fact.customer
        assert ref is not None
        ident = customer_id(ref)
        registered = cls.Registered
        version = cls.INITIAL_VERSION
        timestamp = registered.create_timestamp()
        state = {
            "originator_id": ident,
            "originator_version": version,
            "timestamp": timestamp,
            "originator_topic": _CUSTOMER_TOPIC,
            "fact_id": fact.id,
            "at": fact.at,
            "sealed": sealed,
            "ref": ref,
        }
        event = object.__new__(registered)
        object.__setattr__(event, "__dict__", state)
        customer = cls.__new__(cls)
        customer.__base_init__(ident, version, timestamp)
        customer._set_up(ref, fact.at)
        event.apply(customer)
        customer._pending_events.append(event)
        return customer

    def record(self, fact: Fact, sealed: str | None) -> None:
        """Record one fact about this customer (any type but `customer.registered`)."""
        kind = fact.type
        if kind == "customer.registered":
            raise InvalidFactError(f"customer {self.ref!r} is already registered")
        if self._head_only and kind not in HEAD_ONLY_FACTS:
            raise AssertionError(f"{kind} recorded for customer {self.ref!r} at its head")
        if kind == "customer.updated" and self.erased:
            # SPEC §2: invalid, as there is no key left to seal the details with. Every other
            # fact is recorded, a consent given after the erasure or reported late included.
            raise CustomerErasedError(self.ref, "a details update")
        order_ref = fact.order
        if order_ref is not None:
            if kind != "order.placed":
                if order_ref not in self.orders:
                    raise InvalidFactError(
                        f"order {order_ref!r} does not belong to customer {self.ref!r}"
                    )
            elif order_ref in self.orders:
                raise InvalidFactError(f"order {order_ref!r} is already placed")
        event_class, names, rule = _RECORDED[kind]
        data = fact.data
        # The event's state as `_trigger` makes it, built in one dict: its fields are its
        # class's (`_FIELDS_CACHE`), so `_trigger`'s check of them is not repeated per fact.
        version = self._version + 1
        timestamp = event_class.create_timestamp()
        state: dict[str, Any] = {
            "originator_id": self._id,
            "originator_version": version,
            "timestamp": timestamp,
            "fact_id": fact.id,
            "at": fact.at,
            "sealed": sealed,
        }
        for name in names:
            state[name] = data.get(name)
        if kind == "customer.updated":
            state["fields_updated"] = sorted(k for k in data if k != "customer")
        elif kind == "order.placed":
            state["total"] = Decimal(data["total"])
        if rule is not None:
            categories = rule.categories
            state["recipient"] = data[rule.recipient_field]
            state["recipient_kind"] = rule.recipient_kind
            state["categories"] = list(categories) if categories is not None else data["categories"]
            state["purpose"] = rule.purpose
            state["basis"] = rule.basis
        _triggered(self, event_class, state)

    def record_notification(
        self, recipient: str, regarding: list[str], fact_id: str, at: datetime
    ) -> None:
        """Record that `recipient` was notified (Art. 19); the caller checked it was due."""
        self.trigger_event(
            self.RecipientNotified,
            fact_id=fact_id,
            at=at,
            sealed=None,
            recipient=recipient,
            regarding=regarding,
        )


class Acquirer(Aggregate):
    """A prospective buyer of the business; transfers to it need an initiation first."""

    class Named(Aggregate.Created):
        name: str

    class TransferInitiated(FactEvent):
        FACT_TYPE = "transfer.initiated"
        scope: str
        # The line's unknown fields are sealed (`sealed`) under a data key of the acquirer's
        # stream; `extra` is empty. Events recorded before that kept them here, unsealed.
        extra: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Acquirer)
            aggregate.initiations.append(self.at)

    class DueDiligenceExported(DisclosureEvent):
        """A due-diligence export handed to this acquirer: a disclosure of the categories
        it holds, for business_transfer on legitimate interests. Not a feed fact (no
        FACT_TYPE), so it is judged by no rule: a pseudonymous data-room export before any
        `transfer.initiated` is legitimate due diligence. An identified export also records
        a `transfer.disclosure` on each customer it names. `fact_id` is `export-<id>`.

        Version 2 adds `tree_size`: the export holds events 1..`tree_size` (its manifest's
        signed checkpoint), so the customers it covers are those registered among them.
        Version 1 did not keep it (None: its customers are those registered before the
        export's own event, which counts any registered while it ran)."""

        class_version = 2

        export_id: str
        customers: int
        identified: bool
        as_of: str | None
        export_format: str
        manifest_sha256: str
        tree_size: int | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["tree_size"] = None

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Acquirer)
            aggregate.exports.append(self.fact_id)

    def __init__(self, name: str) -> None:
        self.name = name
        self.initiations: list[datetime] = []
        self.exports: list[str] = []

    @classmethod
    def create(cls, name: str) -> Acquirer:
        return cls._create(cls.Named, id=acquirer_id(name), name=name)

    def initiate_transfer(self, fact: Fact, sealed: str | None) -> None:
        """`sealed`: the line's unknown fields, sealed by the caller (domain code holds no
        keys)."""
        _trigger(
            self,
            self.TransferInitiated,
            {
                "fact_id": fact.id,
                "at": fact.at,
                "sealed": sealed,
                "scope": fact.data["scope"],
                "extra": {},
            },
        )

    def record_due_diligence_export(
        self, fact_id: str, at: datetime, categories: list[str], **export: Any
    ) -> None:
        """Record an export made for this acquirer (fields of `DueDiligenceExported`)."""
        rule = DISCLOSURES["transfer.disclosure"]
        self.trigger_event(
            self.DueDiligenceExported,
            fact_id=fact_id,
            at=at,
            sealed=None,
            recipient=self.name,
            recipient_kind=rule.recipient_kind,
            categories=categories,
            purpose=rule.purpose,
            basis=rule.basis,
            **export,
        )


def _trigger(aggregate: Aggregate, event_class: type[FactEvent], fields: dict[str, Any]) -> None:
    """`Aggregate.trigger_event`, without the frozen dataclass `__init__`.

    That `__init__` (one `object.__setattr__` per field) was the largest single cost of an
    import. The event is built the way the library's mapper rebuilds a stored one, its
    `__dict__` set at once, so a new event is exactly what a replay will see; a missing or
    unknown field is still refused, as the dataclass would refuse it.
    """
    if fields.keys() != _FIELD_NAMES[event_class]:
        wrong = sorted(fields.keys() ^ _FIELD_NAMES[event_class])
        raise TypeError(f"Can't construct event {event_class.__qualname__}: fields {wrong}")
    state = {
        "originator_id": aggregate._id,
        "originator_version": aggregate._version + 1,
        "timestamp": event_class.create_timestamp(),
        **fields,
    }
    _triggered(aggregate, event_class, state)


def _triggered(aggregate: Aggregate, event_class: type[FactEvent], state: dict[str, Any]) -> None:
    """The rest of `_trigger`: the event of `state` (every field of `event_class`, the
    aggregate's id and next version among them) made, applied and pending."""
    new_event = object.__new__(event_class)
    object.__setattr__(new_event, "__dict__", state)
    # What `mutate` does, less its checks that the event is this aggregate's next one (it
    # is: made here from the aggregate's id and version): apply, then version and time.
    new_event.apply(aggregate)
    aggregate._version = state["originator_version"]
    aggregate._modified_on = state["timestamp"]
    aggregate._pending_events.append(new_event)


def _event_fields(event_class: type[FactEvent]) -> tuple[str, ...]:
    """The fields a fact fills in (its envelope and sealed data aside), in class order."""
    return tuple(f.name for f in dataclasses.fields(event_class) if f.name not in _OMIT)


_OMIT = _ENVELOPE_FIELDS

EVENT_FOR_FACT: dict[str, type[FactEvent]] = {
    klass.FACT_TYPE: klass
    for klass in vars(Customer).values()
    if isinstance(klass, type) and issubclass(klass, FactEvent) and klass.FACT_TYPE
}
EVENT_FOR_FACT[Acquirer.TransferInitiated.FACT_TYPE] = Acquirer.TransferInitiated

# The facts a customer known by its head alone records (`Customer.at_head`): `record`
# checks nothing of the customer for them (no order named, not a details update) and their
# events' `apply` changes nothing, so their event is made of the customer's id and version.
HEAD_ONLY_FACTS = frozenset({"transfer.disclosure"})

# Precomputed per class: an event needs exactly the class's fields.
_FIELDS_CACHE = {klass: _event_fields(klass) for klass in EVENT_FOR_FACT.values()}
_FIELD_NAMES = {
    klass: frozenset({"fact_id", "at", "sealed", *names}) for klass, names in _FIELDS_CACHE.items()
}
_CUSTOMER_TOPIC = get_topic(Customer)
# What `Customer.record` makes of each fact type: its event class, the fields it fills in from
# the fact's data (in class order), and the disclosure it is, if any.
_RECORDED = {
    kind: (klass, _FIELDS_CACHE[klass], DISCLOSURES.get(kind))
    for kind, klass in EVENT_FOR_FACT.items()
}
# (`record` fills in a disclosure's fields, a details update's and an order's total itself:
# each must be a field of its class, as `_trigger` would check.)
if any(
    (rule is not None and not _DISCLOSURE_FIELDS.issubset(names))
    or (klass is Customer.DetailsUpdated and "fields_updated" not in names)
    or (klass is Customer.OrderPlaced and "total" not in names)
    for klass, names, rule in _RECORDED.values()
):
    raise TypeError("Customer.record fills in a field its event class does not have")
# `_trigger` does what the library's `mutate` does: no class it triggers may override that.
if any(
    klass.mutate is not CanMutateAggregate.mutate
    for klass in _FIELDS_CACHE
    if not issubclass(klass, Aggregate.Created)
):
    raise TypeError("an event class overrides mutate, which _trigger does not call")
