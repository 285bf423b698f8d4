"""The rules of SPEC §3, judged in business time against a customer's whole state.

One implementation serves both sides: `audit` judges every recorded contact and disclosure of
a customer against everything the ledger knows now (so a late withdrawal dated earlier turns an
earlier contact into a violation), and the preventive check judges a candidate fact against the
state it would join. Ties at the same `at` are broken by recording order: within a customer's
stream by the version, and between a transfer disclosure and its acquirer's initiations (two
streams) by the position in the event log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.domainmodel import Customer, FactEvent, add_in_time_order

# (acquirer name, business time, position in the log, None for a fact not recorded yet) ->
# was a transfer to that acquirer initiated before it?
InitiationCheck = Callable[[str, datetime, int | None], bool]

CONTACT_TYPES = frozenset(
    {
        "marketing.contact",
        "research.contact",
        "order.confirmation_sent",
        "order.verification_contact",
    }
)
DISCLOSURE_TYPES = frozenset(
    {
        "payment.authorisation",
        "identity.check",
        "cra.disclosure",
        "order.dispatched",
        "affiliate.disclosure",
        "transfer.disclosure",
    }
)
JUDGED_TYPES = CONTACT_TYPES | DISCLOSURE_TYPES
# The judged types with a rule of their own in `broken_rules`: a fact of any other judged
# type breaks only `after_erasure`, so it breaks nothing for a customer never erased.
RULED_TYPES = frozenset(
    {
        "affiliate.disclosure",
        "marketing.contact",
        "research.contact",
        "order.dispatched",
        "transfer.disclosure",
    }
)


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    customer: str
    fact_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Judged:
    """A contact or disclosure to judge: its type, time, position and fields."""

    fact_type: str
    fact_id: str
    at: datetime
    seq: int
    data: dict[str, Any]
    # The fact's position in the event log (recording order across streams); None for a
    # candidate not recorded yet, which would be recorded after everything recorded.
    position: int | None = None


def judged_from_event(event: FactEvent, position: int | None) -> Judged:
    return Judged(
        event.FACT_TYPE, event.fact_id, event.at, event.originator_version, event.fields(), position
    )


class Initiations:
    """Each acquirer's transfer initiations (business time, position in the log), as the
    `InitiationCheck` the rules call: an initiation counts for a disclosure if it is earlier
    in business time, or at the same `at` and recorded first (SPEC §1: ties are broken by
    recording order; a disclosure not recorded yet comes after every recorded initiation)."""

    def __init__(
        self,
        found: Iterable[tuple[str, Iterable[tuple[datetime, int]]]] = (),
        *,
        stream_ordered_until: int = 0,
    ) -> None:
        self.by_acquirer: dict[str, list[tuple[datetime, int]]] = {}
        # Up to this position (a ledger's events before migration 0006), an import stored a
        # chunk's events stream by stream: two facts both recorded by then and tied at the
        # same `at` are judged as they were then, the initiation counting.
        self.stream_ordered_until = stream_ordered_until
        for name, initiations in found:
            self.add(name, initiations)

    def add(self, name: str, initiations: Iterable[tuple[datetime, int]]) -> None:
        timeline = self.by_acquirer.setdefault(name, [])  # in (business time, position) order
        for initiation in initiations:
            add_in_time_order(timeline, initiation)

    def __call__(self, acquirer: str, moment: datetime, position: int | None) -> bool:
        timeline = self.by_acquirer.get(acquirer)
        if not timeline or timeline[0][0] > moment:
            return False
        if timeline[0][0] < moment:  # the earliest is earlier: no scan of the others
            return True
        legacy = self.stream_ordered_until
        for at, recorded in timeline:  # the ties at `moment`, which come first
            if at != moment:
                return False
            if position is None or recorded < position:
                return True
            if position <= legacy and recorded <= legacy:
                return True
        return False


def broken_rules(customer: Customer, item: Judged, initiated: InitiationCheck) -> list[str]:
    """The rules `item` breaks, judged against `customer`'s state."""
    rules: list[str] = []
    kind, at, seq = item.fact_type, item.at, item.seq
    if kind == "affiliate.disclosure":
        if not any(
            customer.consent_given_at("affiliate_sharing", ch, at, seq) for ch in _POST_EMAIL
        ):
            rules.append("affiliate_without_consent")
    elif kind == "marketing.contact":
        if not customer.consent_given_at("marketing", item.data["channel"], at, seq):
            rules.append("marketing_without_consent")
    elif kind == "research.contact":
        if not customer.consent_given_at("market_research", item.data["channel"], at, seq):
            rules.append("research_without_consent")
    elif kind == "order.dispatched":
        order = customer.orders.get(item.data["order"])
        key = (at, item.seq)
        if order is None or not order.authorised_before(key):
            rules.append("dispatch_without_payment")
        if order is not None and order.identity_check_before(key) == "fail":
            rules.append("dispatch_after_failed_verification")
    elif kind == "transfer.disclosure" and not initiated(item.data["acquirer"], at, item.position):
        rules.append("transfer_without_initiation")
    if customer.erased_at is not None and at >= customer.erased_at and kind in JUDGED_TYPES:
        rules.append("after_erasure")
    return rules


def audit_customer(
    customer: Customer,
    events: Iterable[FactEvent],
    positions: Iterable[int],
    initiated: InitiationCheck,
) -> list[Violation]:
    """Every violation among a customer's recorded contacts and disclosures (`positions`:
    each event's position in the log)."""
    found: list[Violation] = []
    for event, position in zip(events, positions, strict=True):
        if event.FACT_TYPE not in JUDGED_TYPES:
            continue
        item = judged_from_event(event, position)
        for rule in broken_rules(customer, item, initiated):
            found.append(Violation(rule, customer.ref, item.fact_id, item.at))
    return found


_POST_EMAIL = ("email", "post")
