"""Data subjects' rights, derived from a customer's events: pure functions, no I/O.

- Art. 15 (access): `access_pack` gathers what the ledger holds about a customer: their
  details (or that they are erased), consents with their history, orders, every disclosure
  with the named recipient, and the notifications sent on their behalf; `access_pack_markdown`
  renders it for a person to read.
- Art. 19 (notification): on erasure or rectification, every recipient that received the
  affected data before it must be told. `notifications` derives those from the trail; a
  `RecipientNotified` event answers them; `notification_violations` reports the ones still
  outstanding after `NOTIFICATION_DEADLINE` as the audit rule `recipient_not_notified`.
- Art. 21 (objection to direct marketing): `normalise_email` is the form of an email whose
  keyed hash the suppression list keeps (the hashing and the list are persistence's).
"""

from __future__ import annotations

import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter, itemgetter
from typing import Any, Final

from ledger import views
from ledger.domainmodel import Customer, DisclosureEvent, FactEvent, add_in_time_order
from ledger.feed import iso
from ledger.free_text import rows_withheld
from ledger.rules import Violation

NOTIFICATION_DEADLINE: Final = timedelta(days=30)
_LATEST: Final = datetime.max.replace(tzinfo=UTC)
NOTIFICATION_RULE: Final = "recipient_not_notified"
# A rectified detail, and the data category a recipient received it under.
FIELD_CATEGORY: Final = {
    "name": "name",
    "email": "email",
    "phone": "phone",
    "address": "postal_address",
}


def normalise_email(email: str) -> str:
    """One form per mailbox as people type it: Unicode-normalised, trimmed, case-folded."""
    return unicodedata.normalize("NFKC", email).strip().casefold()


class EmailHistory:
    """The emails a customer has had, by (business time, version) of the registration or
    details update that gave each, kept in that order: the email at a moment is found by
    bisection, not by sorting the history for each question (a recording asks at every
    marketing consent fact, and a customer may have thousands)."""

    __slots__ = ("_entries",)

    def __init__(self, details: Iterable[tuple[datetime, int, dict[str, Any]]] = ()) -> None:
        """From opened details facts: (business time, version, fields)."""
        self._entries = sorted(
            (at, version, str(fields["email"]))
            for at, version, fields in details
            if "email" in fields
        )

    def add(self, at: datetime, version: int, email: str) -> None:
        add_in_time_order(self._entries, (at, version, email))

    def at(self, moment: datetime) -> str | None:
        """The email at `moment`; the earliest known if none is that old."""
        if not self._entries:
            return None
        index = bisect_right(self._entries, moment, key=itemgetter(0))
        return self._entries[max(index - 1, 0)][2]

    def all(self) -> set[str]:
        return {email for _, _, email in self._entries if email}


# -- Art. 19 -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotificationDue:
    """A recipient to tell of an erasure or rectification of one customer's data."""

    customer: str
    recipient: str
    recipient_kinds: tuple[str, ...]
    categories: tuple[str, ...]
    reason: str  # "erasure" or "rectification"
    fact_id: str  # the erasure or rectification
    at: datetime
    notified_at: datetime | None = None
    notified_fact_id: str | None = None
    # The recipient's last receipt of the data, when later than the fact (a disclosure after
    # the erasure): the notice is due from then, and only one sent since answers it.
    received_since: datetime | None = None

    @property
    def due_from(self) -> datetime:
        return self.received_since or self.at

    @property
    def due_by(self) -> datetime:
        """`NOTIFICATION_DEADLINE` after it is due; the last moment a time can name, for one
        due within the deadline of the year 9999's end (still a valid feed time)."""
        if self.due_from > _LATEST - NOTIFICATION_DEADLINE:
            return _LATEST
        return self.due_from + NOTIFICATION_DEADLINE

    def to_json(self) -> dict[str, Any]:
        return {
            "customer": self.customer,
            "recipient": self.recipient,
            "recipient_kinds": list(self.recipient_kinds),
            "categories": list(self.categories),
            "reason": self.reason,
            "fact_id": self.fact_id,
            "at": iso(self.at),
            "due_by": iso(self.due_by),
            "notified_at": iso(self.notified_at) if self.notified_at else None,
            "notified_fact_id": self.notified_fact_id,
        }


_TRIGGERS = (Customer.Erased, Customer.DetailsUpdated)
# The details every registration gives (SPEC §2: a phone it may not), and what last changed
# one of a customer's details (`_latest_changes`).
REGISTERED_DETAILS: Final = ("name", "email", "address")
_Change = Customer.DetailsUpdated | Customer.Registered


@dataclass
class _Received:
    kinds: set[str] = field(default_factory=set)
    categories: set[str] = field(default_factory=set)
    exported: bool = False  # a due-diligence export held the customer's data


def notifications(
    ref: str,
    events: Sequence[FactEvent],
    exports: Sequence[Sequence[Any]] = (),
    until: datetime | None = None,
    changes: Sequence[FactEvent] | None = None,
) -> list[NotificationDue]:
    """Every notification the customer's erasure and rectifications call for, answered or not.

    An erasure concerns every recipient that received any of the customer's data, before it
    or after it (a disclosure after the erasure broke a rule, but that recipient holds the
    data all the same, and must be told too); a rectification, those that received a
    category it changed before it (by business time, ties by recording order: a later one
    received the details as changed). An identified export's own disclosure is not judged by
    its date but by what it gave: the details the ledger had recorded when it ran, dated by
    its as-of; its acquirer is due a notice of a rectification recorded after it, or dated
    after its as-of, for the details whose latest change it did not give (`_held_before`).
    A notification to a recipient answers each one due to it at or before the
    notification's time: for a recipient that received the data after the erasure, due
    from its last receipt (told before it, it got more since). Only the first erasure
    counts: there is nothing left to erase after it.

    The erasure concerns, too, the acquirer of each due-diligence export that held the
    customer (`exports`: as `views.trail_rows` takes them; those dated by `until`, if
    given) and did not show the erasure: pseudonymised, what it holds is still their
    personal data (GDPR Art. 4(5)), and its pseudonyms are its own, so no later export
    tells its acquirer which of its records to erase. One that showed the erasure (its
    customers table marks them erased) needs no notice. A rectification changes details
    no pseudonymous export holds: it concerns none.

    `changes`: every event of the customer known (default `events`), of which each detail's
    latest change is judged (`_outdated`) when `events` are only those dated by a time
    (`notification_violations`): an export gave the details the ledger had recorded, dated
    after that time or not, as `customer show` gives the current ones.
    """
    if not any(isinstance(e, _TRIGGERS) for e in events):
        return []  # the common case, kept cheap: audit asks this of every customer
    ordered = views.business_order(events)
    held = [
        export
        for export in (views.export_holdings(exports, ordered) if exports else ())
        if until is None or export.at <= until
    ]
    # An identified export's own disclosures (with its as-of): what it gave the acquirer is
    # what the ledger had recorded when it ran (dated by its as-of), whatever the business
    # time it is dated by (`_held_before`).
    own = views.export_disclosures(exports, events) if exports else {}
    sent: dict[str, list[Customer.RecipientNotified]] = {}  # by recipient, in business order
    for e in ordered:
        if isinstance(e, Customer.RecipientNotified):
            sent.setdefault(e.recipient, []).append(e)
    found: list[NotificationDue] = []
    ever = _receipts(e for e in ordered if isinstance(e, DisclosureEvent))  # whenever
    last_receipt = {e.recipient: e.at for e in ordered if isinstance(e, DisclosureEvent)}
    received: dict[str, _Received] = {}  # so far, in business order
    latest: dict[str, _Change] | None = None  # (`_latest_changes`, once a rectification asks)
    erased = False
    for event in ordered:
        if isinstance(event, DisclosureEvent):
            if event.fact_id not in own:
                _receive(received, event)
            continue
        if isinstance(event, Customer.Erased) and not erased:
            erased = True
            reason, changed, holders = "erasure", None, ever
            if held:
                holders = _with_exports(ever, last_receipt, held, ordered, exports[0][3])
        elif isinstance(event, Customer.DetailsUpdated):
            reason = "rectification"
            changed = {FIELD_CATEGORY[f] for f in event.fields_updated if f in FIELD_CATEGORY}
            if latest is None:
                latest = _latest_changes(
                    ordered if changes is None else views.business_order(changes)
                )
            holders, held_since = _held_before(
                received, own, ordered, event, changed, exports, latest
            )
        else:
            continue
        for recipient, entry in sorted(holders.items()):
            affected = entry.categories if changed is None else entry.categories & changed
            if not affected and not (changed is None and entry.exported):
                continue
            if changed is None:
                since = max(last_receipt[recipient], event.at)
            else:
                since = held_since.get(recipient, event.at)
            told = sent.get(recipient, ())  # the first one told at or after `since` answers
            index = bisect_left(told, since, key=attrgetter("at"))
            answer = told[index] if index < len(told) else None
            found.append(
                NotificationDue(
                    customer=ref,
                    recipient=recipient,
                    recipient_kinds=tuple(sorted(entry.kinds)),
                    categories=tuple(sorted(affected)),
                    reason=reason,
                    fact_id=event.fact_id,
                    at=event.at,
                    notified_at=answer.at if answer else None,
                    notified_fact_id=answer.fact_id if answer else None,
                    received_since=since if since > event.at else None,
                )
            )
    return found


def _held_before(
    received: dict[str, _Received],
    own: dict[str, tuple[datetime | None, int]],
    events: Sequence[FactEvent],
    rectification: Customer.DetailsUpdated,
    changed: set[str],
    exports: Sequence[Sequence[Any]],
    latest: dict[str, _Change],
) -> tuple[dict[str, _Received], dict[str, datetime]]:
    """The recipients that held details a rectification changed before it: those that
    `received` them before it in business time (the shop's disclosures: its platform had
    the change when it disclosed, if it was dated before), and the acquirer of each
    identified export (its own disclosures, `own`, with the export's as-of and the last
    event it read) that did not give the rectified details: it gave the details the ledger
    had recorded by the last event it read, dated by its as-of, so not a rectification
    recorded after that event (even one recorded while it ran, before its own disclosures),
    or dated after its as-of. Such a notice is due from the later of the export and the
    rectification (told before it, the acquirer got the old details again).

    Not for a detail whose latest change (by business time, ties by recording order) the
    export gave, though: the acquirer holds its current value, so the rectification (one
    dated before that change, recorded after the export) changes nothing it holds
    (`_outdated`; `latest`: each detail's latest change, `_latest_changes`)."""
    if not own:
        return received, {}
    # (`own` is not empty: `exports` is not, and each carries the customer's positions)
    positions = exports[0][3]
    position = positions.get(rectification.originator_version)
    at = rectification.at
    stale = [
        e
        for e in events
        if isinstance(e, DisclosureEvent)
        and e.fact_id in own
        and (_unread(position, own[e.fact_id][1]) or _after(at, own[e.fact_id][0]))
    ]
    if not stale:
        return received, {}
    holders = {name: _Received(set(r.kinds), set(r.categories)) for name, r in received.items()}
    since: dict[str, datetime] = {}
    for disclosure in stale:
        as_of, read = own[disclosure.fact_id]
        outdated = _outdated(rectification, latest, positions, read, as_of)
        categories = outdated.intersection(disclosure.categories)
        if not categories:
            continue
        entry = holders.setdefault(disclosure.recipient, _Received())
        entry.kinds.add(disclosure.recipient_kind)
        entry.categories.update(categories)
        if changed.intersection(categories):
            since[disclosure.recipient] = max(since.get(disclosure.recipient, at), disclosure.at)
    return holders, since


def _latest_changes(events: Sequence[FactEvent]) -> dict[str, _Change]:
    """The last change of each detail among `events` (in business order): a details update
    changes those it names; the registration gives `REGISTERED_DETAILS`, which every
    registration holds (SPEC §2), so a later value of theirs replaces one of an update
    dated before it."""
    latest: dict[str, _Change] = {}
    for e in events:
        if isinstance(e, Customer.DetailsUpdated):
            for name in e.fields_updated:
                latest[name] = e
        elif isinstance(e, Customer.Registered):
            for name in REGISTERED_DETAILS:
                latest[name] = e
    return latest


def _outdated(
    rectification: Customer.DetailsUpdated,
    latest: dict[str, _Change],
    positions: dict[int, int],
    read: int,
    as_of: datetime | None,
) -> set[str]:
    """The categories of the details a rectification changed whose current value an
    identified export (the last event it read, the time it was made as of) may not have
    given: those whose latest change it did not read. Where it read the latest change of a
    detail, it gave the current value: the export's value and the current one are both
    that change's. The registration is the latest change of a detail every registration
    holds, where no update of it is dated after it: read by every export that holds the
    customer (registered by its as-of), so a rectification dated before it changes nothing
    the acquirer holds. A phone, which a registration may hold or not (sealed, so not known
    here), is judged by its updates alone: the export's value and the current one are both
    the later of its latest update and the registration's. Any other detail counts as
    outdated (a notice too many, never one too few)."""
    found = set()
    for name in rectification.fields_updated:
        category = FIELD_CATEGORY.get(name)
        if category is None:
            continue
        change = latest.get(name, rectification)
        if _unread(positions.get(change.originator_version), read) or _after(change.at, as_of):
            found.add(category)
    return found


def _unread(position: int | None, read: int) -> bool:
    """Whether the event at `position` (None: not known, so not read) came after `read`."""
    return position is None or position > read


def _after(at: datetime, as_of: datetime | None) -> bool:
    return as_of is not None and at > as_of


def _receive(received: dict[str, _Received], disclosure: DisclosureEvent) -> None:
    entry = received.setdefault(disclosure.recipient, _Received())
    entry.kinds.add(disclosure.recipient_kind)
    entry.categories.update(disclosure.categories)


def _with_exports(
    ever: dict[str, _Received],
    last_receipt: dict[str, datetime],
    held: list[views.ExportHolding],
    events: Sequence[FactEvent],
    positions: dict[int, int],
) -> dict[str, _Received]:
    """The recipients an erasure concerns: those of `ever` and the acquirers of the exports
    `held` that did not show it (`last_receipt` gains their times). An export shows the
    customer erased if it read any of their erasures (of `events`): the first recorded,
    which need not be the first in business time that `notifications` counts (a second
    erasure, dated earlier, may be recorded after an export that showed the first)."""
    position = min(
        (
            positions[e.originator_version]
            for e in events
            if isinstance(e, Customer.Erased) and e.originator_version in positions
        ),
        default=None,
    )
    holders = {name: _Received(set(r.kinds), set(r.categories)) for name, r in ever.items()}
    for export in held:
        if position is not None and export.conveyed(position):
            continue
        row = export.row
        entry = holders.setdefault(row["recipient"], _Received())
        entry.kinds.add(row["recipient_kind"])
        entry.categories.update(row["categories"])
        entry.exported = True
        last = last_receipt.get(row["recipient"])
        last_receipt[row["recipient"]] = export.at if last is None else max(last, export.at)
    return holders


def held_exports(
    events: Sequence[FactEvent],
    positions: Sequence[int],
    exports: Sequence[tuple[int, Any]],
) -> list[tuple[int, int, Any, dict[int, int]]]:
    """The exports `notifications` takes for a customer, from every export recorded,
    (position, stored state), and the position of each of `events`: those that may hold
    them if `exports_concern` them, else none."""
    if not exports or not exports_concern(events):
        return []
    versions = {event.originator_version: p for event, p in zip(events, positions, strict=True)}
    return views.exports_of(versions, exports)


def exports_concern(events: Sequence[FactEvent]) -> bool:
    """Whether the notifications a customer's facts call for may concern a due-diligence
    export (`notifications`), told without reading any: they are erased, or
    `rectified_and_export_shaped`."""
    return any(isinstance(e, Customer.Erased) for e in events) or rectified_and_export_shaped(
        events
    )


def rectified_and_export_shaped(events: Sequence[FactEvent]) -> bool:
    """Whether the customer was rectified and disclosed by a fact shaped like an identified
    export's own: whether such an export gave the details the rectification changed decides
    if its acquirer is due a notice (`_held_before`)."""
    return any(isinstance(e, Customer.DetailsUpdated) for e in events) and any(
        isinstance(e, DisclosureEvent) and views.may_be_export_disclosure(e) for e in events
    )


def _receipts(disclosures: Iterable[DisclosureEvent]) -> dict[str, _Received]:
    received: dict[str, _Received] = {}
    for disclosure in disclosures:
        _receive(received, disclosure)
    return received


def outstanding(dues: Iterable[NotificationDue]) -> list[NotificationDue]:
    return [due for due in dues if due.notified_at is None]


def notification_violations(
    ref: str,
    events: Sequence[FactEvent],
    now: datetime,
    as_of: datetime | None = None,
    exports: Sequence[Sequence[Any]] = (),
) -> list[Violation]:
    """Audit rule `recipient_not_notified`: an erasure or rectification with a recipient
    still not notified `NOTIFICATION_DEADLINE` after it (one violation per such fact),
    judged at `as_of` (facts and exports at or before it) or else `now`. `exports`: as
    `notifications` takes them. Whether an identified export gave a detail's current value
    is judged from every event (its latest change may be dated after that time: the export
    gave it all the same), as `recipients notifications` judges it."""
    moment = as_of if as_of is not None else now
    known = [e for e in events if e.at <= moment]
    late = {
        (due.fact_id, due.at)
        for due in outstanding(notifications(ref, known, exports, moment, changes=events))
        if due.due_by < moment
    }
    return [Violation(NOTIFICATION_RULE, ref, fact_id, at) for fact_id, at in sorted(late)]


# -- Art. 15 -----------------------------------------------------------------------------------


def access_pack(
    customer: Customer,
    events: Sequence[FactEvent],
    personal_data: dict[str, Any] | None,
    other_data: list[dict[str, Any]],
    generated_at: datetime,
    exports: Sequence[Sequence[Any]] = (),
) -> dict[str, Any]:
    """The subject-access pack: everything the ledger holds about the customer and whom it
    was given to. `personal_data` is None once erased; `other_data` holds the unknown feed
    fields kept (sealed) with their facts, as [{"fact_id", "fields"}]; `exports`: the
    due-diligence exports that may hold the customer (`views.trail_rows`).

    An erased customer's pack withholds each free-text value shaped like an email or phone
    number (a shifted column of the feed: their personal data), as an identified export
    does: after the erasure no command shows their personal data (SPEC §4)."""
    # (the views withhold so for an erased customer too)
    trail = views.trail_rows(events, exports=exports)
    erased = customer.erased
    return {
        "customer": customer.ref,
        "generated_at": iso(generated_at),
        "registered_at": iso(customer.registered_at),
        "erased": customer.erased,
        "erased_at": iso(customer.erased_at) if customer.erased_at else None,
        "personal_data": personal_data,
        "other_data": other_data,
        "consents": views.consent_rows(events),
        "consent_history": rows_withheld(views.consent_history_rows(events), erased=erased),
        "orders": views.order_rows(customer, events),
        "contacts": rows_withheld(_contact_rows(events), erased=erased),
        "recipients": _recipient_rows(trail),
        "disclosures": trail,
        "notifications": rows_withheld(
            [due.to_json() for due in notifications(customer.ref, events, exports)],
            erased=erased,
        ),
        "access_requests": [
            {"at": iso(e.at), "fact_id": e.fact_id}
            for e in views.business_order(events)
            if isinstance(e, Customer.AccessRequested)
        ],
    }


_CONTACTS = (Customer.MarketingContacted, Customer.ResearchContacted)


def _contact_rows(events: Iterable[FactEvent]) -> list[dict[str, Any]]:
    return [
        {"at": iso(e.at), "type": e.FACT_TYPE, "fact_id": e.fact_id, **e.fields()}
        for e in views.business_order(events)
        if isinstance(e, _CONTACTS)
    ]


def _recipient_rows(trail: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each named recipient once: what it received, why, on which basis, and when."""
    by_name: dict[str, dict[str, Any]] = {}
    for row in trail:
        entry = by_name.setdefault(
            row["recipient"],
            {
                "recipient": row["recipient"],
                "recipient_kinds": set(),
                "categories": set(),
                "purposes": set(),
                "bases": set(),
                "first": row["at"],
                "last": row["at"],
                "disclosures": 0,
            },
        )
        entry["recipient_kinds"].add(row["recipient_kind"])
        entry["categories"].update(row["categories"])
        entry["purposes"].add(row["purpose"])
        entry["bases"].add(row["basis"])
        entry["first"] = min(entry["first"], row["at"])
        entry["last"] = max(entry["last"], row["at"])
        entry["disclosures"] += 1
    return [
        {k: sorted(v) if isinstance(v, set) else v for k, v in entry.items()}
        for _, entry in sorted(by_name.items())
    ]


def access_pack_markdown(pack: dict[str, Any]) -> str:
    """The pack for a person to read (Markdown)."""
    out = [f"# Your data held by the consent ledger: customer {pack['customer']}", ""]
    out.append(f"Generated {pack['generated_at']}; registered {pack['registered_at']}.")
    out.append("")
    out.append("## Your personal data")
    out.append("")
    details = pack["personal_data"]
    if details is None:
        out.append(f"Erased on {pack['erased_at']}: the ledger can no longer read it.")
    else:
        address = details.get("address") or {}
        for label, value in (
            ("Name", details.get("name")),
            ("Email", details.get("email")),
            ("Phone", details.get("phone")),
            ("Address", ", ".join(str(v) for v in address.values()) if address else None),
        ):
            out.append(f"- **{label}**: {_md(value if value is not None else '-')}")
    for item in pack["other_data"]:
        out.append(f"- other data recorded with {_md(item['fact_id'])}: {_md(item['fields'])}")
    sections: list[tuple[str, str, list[dict[str, Any]], list[str]]] = [
        (
            "Consents now",
            "No consent recorded.",
            pack["consents"],
            ["purpose", "channel", "status", "since"],
        ),
        (
            "Consent history",
            "No consent recorded.",
            pack["consent_history"],
            ["at", "purpose", "channel", "status", "method", "policy_version"],
        ),
        (
            "Orders",
            "No orders.",
            pack["orders"],
            ["order", "placed_at", "total", "currency", "status"],
        ),
        (
            "Who received your data",
            "Nobody.",
            pack["recipients"],
            ["recipient", "recipient_kinds", "categories", "purposes", "bases", "first", "last"],
        ),
        (
            "Every disclosure",
            "None.",
            pack["disclosures"],
            ["at", "recipient", "recipient_kind", "categories", "purpose", "basis", "order"],
        ),
        ("Marketing and research contacts", "None.", pack["contacts"], ["at", "type", "channel"]),
        (
            "Recipients told of erasure or rectification",
            "None due.",
            pack["notifications"],
            ["recipient", "reason", "at", "notified_at"],
        ),
        ("Your access requests", "None recorded.", pack["access_requests"], ["at", "fact_id"]),
    ]
    for title, empty, rows, columns in sections:
        out.extend(["", f"## {title}", ""])
        out.extend(_md_table(rows, columns) if rows else [empty])
        if title == "Every disclosure" and any(views.is_export_row(row) for row in rows):
            out.extend(["", _EXPORT_NOTE])
    out.append("")
    return "\n".join(out)


_EXPORT_NOTE = (
    "A disclosure to an acquirer with no order was a due-diligence export to a prospective "
    "buyer of the business: it held your consents, your orders (if it lists order_details) "
    "and the disclosures recorded before it, under a pseudonym, not your name, email, phone "
    "or address (unless it also lists those categories)."
)


def _md_table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_md(row.get(c)) for c in columns) + " |")
    return lines


def _md(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    elif isinstance(value, dict):
        value = ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
