"""The merger due-diligence export (SPEC §5 `export due-diligence`).

What an acquirer's analysts get, per customer, and how:

- Every customer appears under a **pseudonym**: HMAC-SHA256 of the customer reference with a
  fresh random secret per export (the first 128 bits, hex). The secret is kept by the ledger
  (wrapped by the master key), so the seller alone can re-identify; two exports cannot be
  joined on pseudonyms. Order references are pseudonymised the same way (another domain).
- **Nothing that identifies**, unless `identified`: no name, email, phone or address, no
  customer or order reference, no fact id (the shop's fact ids embed customer references),
  no tracking number, no free text from the feed. Recipient names (Visa, DPD, Offspring…),
  purposes, bases, categories, times, totals and outcomes are kept: they are the point.
- Five tables, the same in every format (`jsonl`, `csv`, optional `parquet`): `customers`,
  `consents` (current, per purpose and channel), `consent_history`, `orders`, `disclosures`,
  each keyed by the customer pseudonym; `summary.json` with the headline figures; and
  `MANIFEST.json` (see `ledger.manifest`), signed with the ledger's checkpoint key.
- **Consistent**: the ledger is verified first (an export of a ledger that fails `verify` is
  refused); the rows are read in one scan of events 1..N where N is the verified, signed tree
  size named in the manifest, whatever is recorded meanwhile. `as_of` limits the rows to
  facts at or before that business time; `erased` is always today's truth (the data is gone).
- **Streaming**: one customer in memory at a time, rows written as they are built.
- **Recorded**: the export is itself a disclosure, `Acquirer.DueDiligenceExported` (recipient
  kind acquirer, the categories actually exported, purpose business_transfer, basis
  legitimate_interests, the manifest's SHA-256), written only once every file is complete,
  with the secret, in one transaction; the folder appears (renamed from a staging folder)
  only after that commits. It is not a feed fact, so no rule judges it: a pseudonymous
  data-room export before `transfer.initiated` is legitimate due diligence.
- **Identified** exports need a `transfer.initiated` for the acquirer at or before now
  (else `RuleViolationError`, exit 3), add personal data of customers not erased (never of an
  erased one) and record a `transfer.disclosure` fact on each customer they name, so each
  customer's trail shows the transfer.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import importlib
import multiprocessing
import os
import pickle
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, DivisionByZero, InvalidOperation
from itertools import pairwise
from multiprocessing.connection import Connection, wait
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import IO, Any, Protocol
from uuid import UUID, uuid4

import orjson
from eventsourcing.application import AggregateNotFoundError

from ledger import manifest as manifests
from ledger import privacy, temporaries
from ledger.application import ConsentLedger
from ledger.domainmodel import (
    Acquirer,
    Customer,
    DisclosureEvent,
    FactEvent,
    acquirer_id,
    replay,
)
from ledger.errors import (
    ConcurrencyError,
    ConfigurationError,
    DataKeyMissingError,
    InputError,
    IntegrityFailure,
    RuleViolationError,
    UnreadableEventError,
    WorkerLostError,
)
from ledger.feed import iso, text_field
from ledger.free_text import WITHHELD, withheld_if_shaped
from ledger.integrity import public_key_pem
from ledger.persistence import export_store, seals
from ledger.persistence.database import signals_held
from ledger.persistence.keys import load_master_key
from ledger.persistence.stored_state import aware_time
from ledger.rules import JUDGED_TYPES, RULED_TYPES, Initiations, Judged, broken_rules
from ledger.views import decoded_exports, export_held, export_read, export_rows, exports_of
from ledger.vocabulary import PURPOSE_CHANNELS, RULES

FORMATS = ("jsonl", "csv", "parquet")
SECRET_BYTES = 32
PSEUDONYM_HEX = 32  # 128 bits: no collision in any customer base, short enough to read
SUMMARY_NAME = "summary.json"
# The summary's order totals per currency are added in this context, not Decimal's default
# (28 digits, exponents to 999999), which rounded a sum of 29 digits or more (the feed takes
# totals of up to 40 digits before and after the point; an earlier version recorded any
# decimal string, and events are forever): exact to 100 digits, beyond them rounded. Earlier
# versions took totals such as "1E+999999999" too, up to 9E+999999999999999999 (Decimal's
# largest exponent): their sums failed the export with Overflow ("unexpected Overflow") on
# every run; such a sum is "Infinity" (Overflow not trapped), the others as they are.
TOTALS_CONTEXT = Context(
    prec=100, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[InvalidOperation, DivisionByZero]
)
# A large export's scan is shared by one process per CPU, at most this many.
MAX_WORKERS = 4
PARALLEL_MIN_CUSTOMERS = 2000  # below this, starting processes costs more than it saves

ADDRESS_COLUMNS = ("address_line1", "address_city", "address_postcode", "address_country")
IDENTIFIED_COLUMNS = ("ref", "name", "email", "phone", *ADDRESS_COLUMNS)
TABLES: dict[str, tuple[str, ...]] = {
    "customers": (
        "customer",
        "registered_at",
        "erased",
        "orders",
        "disclosures",
        "consents_given",
    ),
    "consents": ("customer", "purpose", "channel", "status", "since"),
    "consent_history": (
        "customer",
        "at",
        "purpose",
        "channel",
        "status",
        "method",
        "policy_version",
    ),
    "orders": (
        "customer",
        "order",
        "placed_at",
        "total",
        "currency",
        "status",
        "payment",
        "identity_check",
    ),
    "disclosures": (
        "customer",
        "at",
        "recipient",
        "recipient_kind",
        "purpose",
        "basis",
        "categories",
        "order",
    ),
}
_BOOLEAN = frozenset({"erased"})
_INTEGER = frozenset({"orders", "disclosures", "consents_given"})
_LISTS = frozenset({"categories"})


@dataclass(frozen=True)
class ExportRequest:
    acquirer: str
    out: Path
    as_of: datetime | None = None
    identified: bool = False
    format: str = "jsonl"


@dataclass
class ExportResult:
    export_id: str
    fact_id: str
    folder: Path
    manifest_sha256: str
    customers: int
    identified_customers: int
    files: list[manifests.FileEntry]
    categories: list[str]
    tree_size: int
    verify_head: str

    def to_json(self) -> dict[str, Any]:
        return {
            "export_id": self.export_id,
            "fact_id": self.fact_id,
            "folder": str(self.folder),
            "manifest_sha256": self.manifest_sha256,
            "customers": self.customers,
            "identified_customers": self.identified_customers,
            "categories": self.categories,
            "ledger": {"tree_size": self.tree_size, "verify_head": self.verify_head},
            "files": [f.to_json() for f in self.files],
        }


Progress = Callable[[int], None]


def pseudonym(secret: bytes, kind: str, ref: str) -> str:
    """HMAC-SHA256 of `kind` 0x00 `ref` under the export's secret, first 128 bits in hex."""
    return Pseudonyms(secret)(kind, ref)


class Pseudonyms:
    """`pseudonym` for one secret, keyed once (HMAC's key schedule copied, not redone)."""

    def __init__(self, secret: bytes) -> None:
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)

    def __call__(self, kind: str, ref: str) -> str:
        mac = self._keyed.copy()
        mac.update(f"{kind}\x00{ref}".encode())
        return mac.hexdigest()[:PSEUDONYM_HEX]


# -- writing tables --------------------------------------------------------------------------


# (path, columns, header): `header` False for the second and later parts of a file written
# in parts (a CSV's header row).
MakeWriter = Callable[[Path, tuple[str, ...], bool], "TableWriter"]


class TableWriter(Protocol):
    rows: int

    def write(self, row: dict[str, Any]) -> None: ...

    def write_rows(self, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    def __init__(self, path: Path, columns: tuple[str, ...], header: bool = True) -> None:
        self.handle: IO[bytes] = open(path, "wb", buffering=1 << 20)  # noqa: SIM115
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self.write_rows([row])

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        write = self.handle.write
        dumps = orjson.dumps
        for row in rows:
            write(dumps(row, option=orjson.OPT_APPEND_NEWLINE))
        self.rows += len(rows)

    def close(self) -> None:
        self.handle.close()


class CsvWriter:
    def __init__(self, path: Path, columns: tuple[str, ...], header: bool = True) -> None:
        self.handle = open(path, "w", newline="", encoding="utf-8", buffering=1 << 20)  # noqa: SIM115
        self.columns = columns
        self.writer = csv.writer(self.handle)
        if header:
            self.writer.writerow(columns)
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self.write_rows([row])

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        columns = self.columns
        self.writer.writerows(
            [
                # Text as it is (most cells), anything else by `_csv_cell`.
                [v if type(v) is str else _csv_cell(v) for v in map(row.get, columns)]
                for row in rows
            ]
        )
        self.rows += len(rows)

    def close(self) -> None:
        self.handle.close()


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(value)
    return value


class ParquetWriter:
    """Rows buffered per column and written in row groups (pyarrow, optional)."""

    GROUP = 50_000

    def __init__(self, path: Path, columns: tuple[str, ...], header: bool = True) -> None:
        # Imported by name: pyarrow is optional (the `parquet` extra) and untyped.
        pa: Any = importlib.import_module("pyarrow")
        pq: Any = importlib.import_module("pyarrow.parquet")
        self.pa = pa
        fields = [pa.field(name, _arrow_type(pa, name)) for name in columns]
        self.schema = pa.schema(fields)
        self.writer = pq.ParquetWriter(str(path), self.schema)
        self.columns = columns
        self.buffer: dict[str, list[Any]] = {c: [] for c in columns}
        self.pending = 0
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        for name in self.columns:
            self.buffer[name].append(row.get(name))
        self.pending += 1
        self.rows += 1
        if self.pending >= self.GROUP:
            self._flush()

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.write(row)

    def _flush(self) -> None:
        if self.pending:
            table = self.pa.Table.from_pydict(self.buffer, schema=self.schema)
            self.writer.write_table(table)
            self.buffer = {c: [] for c in self.columns}
            self.pending = 0

    def close(self) -> None:
        self._flush()
        self.writer.close()


def _arrow_type(pa: Any, name: str) -> Any:
    if name in _BOOLEAN:
        return pa.bool_()
    if name in _INTEGER:
        return pa.int64()
    if name in _LISTS:
        return pa.list_(pa.string())
    return pa.string()


_WRITERS: dict[str, MakeWriter] = {
    "jsonl": JsonlWriter,
    "csv": CsvWriter,
    "parquet": ParquetWriter,
}


def parquet_available() -> bool:
    try:
        importlib.import_module("pyarrow.parquet")
    except ImportError:
        return False
    return True


# -- the figures of summary.json --------------------------------------------------------------


@dataclass
class Summary:
    customers: int = 0
    erased: int = 0
    identified: int = 0
    consents: Counter[tuple[str, str]] = field(default_factory=Counter)
    affiliate_consenting: int = 0
    affiliate_customers: int = 0
    affiliate_disclosures: int = 0
    affiliates: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    disclosures: Counter[str] = field(default_factory=Counter)
    disclosed_customers: Counter[str] = field(default_factory=Counter)
    orders: Counter[str] = field(default_factory=Counter)
    totals: dict[str, Decimal] = field(default_factory=dict)

    def merge(self, other: Summary) -> None:
        """Add the figures of another part of the customers."""
        for name in ("customers", "erased", "identified"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("affiliate_consenting", "affiliate_customers", "affiliate_disclosures"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for counter in ("consents", "affiliates", "violations", "disclosures"):
            getattr(self, counter).update(getattr(other, counter))
        self.disclosed_customers.update(other.disclosed_customers)
        self.orders.update(other.orders)
        for currency, total in other.totals.items():
            self.totals[currency] = TOTALS_CONTEXT.add(self.totals.get(currency, Decimal(0)), total)

    def to_json(self) -> dict[str, Any]:
        def rate(count: int) -> float:
            return round(count / self.customers, 4) if self.customers else 0.0

        return {
            "customers": self.customers,
            "erased_customers": self.erased,
            "identified_customers": self.identified,
            "opt_in": {
                purpose: {
                    channel: {
                        "given": self.consents[(purpose, channel)],
                        "rate": rate(self.consents[(purpose, channel)]),
                    }
                    for channel in sorted(channels)
                }
                for purpose, channels in PURPOSE_CHANNELS.items()
            },
            "affiliate_sharing": {
                "customers_consenting": self.affiliate_consenting,
                "consent_rate": rate(self.affiliate_consenting),
                "customers_shared": self.affiliate_customers,
                "disclosures": self.affiliate_disclosures,
                "by_affiliate": dict(sorted(self.affiliates.items())),
                "without_consent": self.violations["affiliate_without_consent"],
            },
            "open_violations": {
                "total": sum(self.violations.values()),
                "by_rule": {rule: self.violations[rule] for rule in RULES}
                | dict(sorted((r, n) for r, n in self.violations.items() if r not in RULES)),
            },
            "disclosures_by_recipient_kind": {
                kind: {"disclosures": count, "customers": self.disclosed_customers[kind]}
                for kind, count in sorted(self.disclosures.items())
            },
            "orders": {
                "count": sum(self.orders.values()),
                "by_status": dict(sorted(self.orders.items())),
                "totals": {c: str(t) for c, t in sorted(self.totals.items())},
            },
        }


# -- one customer's rows ------------------------------------------------------------------------


@dataclass
class CustomerRows:
    customer: dict[str, Any]
    consents: list[dict[str, Any]]
    consent_history: list[dict[str, Any]]
    orders: list[dict[str, Any]]
    disclosures: list[dict[str, Any]]
    personal: bool = False


def state_as_of(events: list[FactEvent], as_of: datetime | None) -> Customer:
    """The customer's state from the facts at or before `as_of` (all if None), by replaying
    the events' `apply` in recording order (state changes only, never rules). A fact of an
    order that was not placed by `as_of` (dated before its placing, which is valid: it was
    recorded after it) is left out of the state, as that order is."""
    first = events[0]
    customer: Any = first.mutate(None)
    placed = Customer.OrderPlaced
    for event in events[1:]:
        if as_of is None or event.at <= as_of:
            order = event.__dict__.get("order")
            if order is not None and order not in customer.orders and type(event) is not placed:
                continue
            event.apply(customer)
    assert isinstance(customer, Customer)
    return customer


def _as_given(value: Any) -> Any:
    return value


def customer_rows(
    customer: Customer,
    events: list[FactEvent],
    pseudonyms: Pseudonyms,
    as_of: datetime | None,
    personal: dict[str, Any] | None,
    held: Sequence[tuple[datetime, int, dict[str, Any]]] = (),
    positions: Sequence[int] = (),
) -> CustomerRows:
    """The export's rows for one customer: the answers of `consent show`, `customer trail`
    and `customer show` (views), keyed by pseudonym, without fact ids or references.

    The views' answers in one pass over the facts (`events` in recording order): one sort
    into business order serves them all, where the views sort once each and build rows
    with fact ids only to drop them. `tests/integration/test_export.py` holds every row to
    the views' answers.

    `held`: the earlier due-diligence exports that held the customer, as `views.export_rows`
    gives them (time, position, trail row), dated by `as_of` if given; they are among the
    disclosures as on the trail, placed by time and then by position (`positions`: each
    event's position in the log, given with `held`)."""
    alias = pseudonyms("customer", customer.ref)
    # Pseudonymous rows (or an erased customer's) withhold a free-text value shaped like an
    # email or phone number: a shifted column in the feed, not the shop's word.
    shown = _as_given if personal is not None else withheld_if_shaped
    state = customer if as_of is None else state_as_of(events, as_of)
    # Business order: `at`, ties by recording order (`events` is in recording order and the
    # sort is stable), as `views.business_order`.
    consent_facts: dict[tuple[str, str], list[Any]] = {}
    disclosure_facts: list[Any] = []
    kinds = _KINDS
    for event in sorted(events, key=_AT):
        kind = kinds.get(type(event))
        if kind is None:
            kind = _kind(type(event))
        if kind == _CONSENT:
            facts = event.__dict__
            key = (facts["purpose"], facts["channel"])
            entries = consent_facts.get(key)
            if entries is None:
                consent_facts[key] = [event]
            else:
                entries.append(event)
        elif kind == _DISCLOSURE:
            disclosure_facts.append(event)
    consents = []
    history: list[tuple[tuple[datetime, int], dict[str, Any]]] = []
    given_class = Customer.ConsentGiven
    for (purpose, channel), entries in sorted(
        consent_facts.items(), key=lambda kv: _PURPOSE_CHANNEL_ORDER[kv[0]]
    ):
        times = [_iso(entry.at) for entry in entries]  # each once: `since` is one of them
        statuses = [isinstance(entry, given_class) for entry in entries]
        given = statuses[-1]
        # Since the first of the latest run of entries with the current status.
        first = len(entries) - 1
        while first and statuses[first - 1] is given:
            first -= 1
        consents.append(
            {
                "customer": alias,
                "purpose": purpose,
                "channel": channel,
                "status": "given" if given else "withdrawn",
                "since": times[first],
            }
        )
        for entry, at, status in zip(entries, times, statuses, strict=True):
            facts = entry.__dict__
            row = {
                "customer": alias,
                "at": at,
                "purpose": purpose,
                "channel": channel,
                "status": "given" if status else "withdrawn",
                "method": shown(facts["method"]),
                "policy_version": shown(facts.get("policy_version")),
            }
            history.append(((entry.at, entry.originator_version), row))
    # Business order across purposes and channels: by time (not its text, where ".5Z" sorts
    # before "Z"), ties by recording order, as `views.consent_history_rows`.
    history.sort(key=_FIRST)
    order_alias = {ref: pseudonyms("order", ref) for ref in state.orders}
    orders = [
        {
            "customer": alias,
            "order": order_alias[ref],
            "placed_at": _iso(order.placed_at),
            "total": str(order.total),
            "currency": order.currency,
            "status": order.status,
            "payment": _latest(order.payments),
            "identity_check": _latest(order.identity_checks),
        }
        for ref, order in sorted(state.orders.items(), key=lambda kv: (kv[1].placed_at, kv[0]))
    ]
    disclosures = []
    for event in disclosure_facts:
        order = event.__dict__.get("order")
        disclosures.append(
            {
                "customer": alias,
                "at": _iso(event.at),
                "recipient": shown(event.recipient),
                "recipient_kind": event.recipient_kind,
                "purpose": event.purpose,
                "basis": event.basis,
                "categories": sorted(event.categories),
                "order": order_alias.get(order) or pseudonyms("order", order) if order else None,
            }
        )
    if held:
        disclosures = _with_exports(
            alias, shown, disclosure_facts, disclosures, held, events, positions
        )
    summary: dict[str, Any] = {
        "customer": alias,
        "registered_at": _iso(customer.registered_at),
        "erased": customer.erased,
        "orders": len(orders),
        "disclosures": len(disclosures),
        "consents_given": sum(1 for c in consents if c["status"] == "given"),
    }
    if personal is not None:
        address = personal.get("address") or {}
        summary.update(
            ref=customer.ref,
            name=personal.get("name"),
            email=personal.get("email"),
            phone=personal.get("phone"),
            address_line1=address.get("line1"),
            address_city=address.get("city"),
            address_postcode=address.get("postcode"),
            address_country=address.get("country"),
        )
    rows = [row for _, row in history]
    return CustomerRows(summary, consents, rows, orders, disclosures, personal is not None)


def _with_exports(
    alias: str,
    shown: Callable[[Any], Any],
    facts: list[Any],
    rows: list[dict[str, Any]],
    held: Sequence[tuple[datetime, int, dict[str, Any]]],
    events: list[FactEvent],
    positions: Sequence[int],
) -> list[dict[str, Any]]:
    """The disclosure `rows` (of `facts`, in business order) with the rows of the exports
    that held the customer, as `views.trail_rows` orders them: by time, then position."""
    where = {id(event): position for event, position in zip(events, positions, strict=True)}
    keyed = [((fact.at, where[id(fact)]), row) for fact, row in zip(facts, rows, strict=True)]
    for at, position, row in held:
        keyed.append(
            (
                (at, position),
                {
                    "customer": alias,
                    "at": row["at"],
                    "recipient": shown(row["recipient"]),
                    "recipient_kind": row["recipient_kind"],
                    "purpose": row["purpose"],
                    "basis": row["basis"],
                    "categories": row["categories"],
                    "order": None,
                },
            )
        )
    keyed.sort(key=_FIRST)
    return [row for _, row in keyed]


def _iso(moment: datetime) -> str:
    """`ledger.feed.iso`, by orjson when the moment is in UTC already (as every decoded
    event's is): the same text (RFC 3339, microseconds when there are any, `Z`) at a third
    of the cost of `isoformat`, which is most of the cost of a row."""
    if moment.tzinfo is UTC:
        return orjson.dumps(moment, option=orjson.OPT_UTC_Z)[1:-1].decode()
    return iso(moment)


_AT = attrgetter("at")
_FIRST = itemgetter(0)
_PURPOSE_CHANNEL_ORDER = {
    (purpose, channel): index
    for index, (purpose, channel) in enumerate(
        (p, c) for p, channels in PURPOSE_CHANNELS.items() for c in sorted(channels)
    )
}  # as `views.consent_history` orders them

_TRIGGERS = (Customer.Erased, Customer.DetailsUpdated)  # what calls for notifications
_TRIGGER_TYPES = frozenset(cls.FACT_TYPE for cls in _TRIGGERS)


def _may_notify(events: list[FactEvent]) -> bool:
    """False when no notification can be due, so `privacy.notifications` need not run: a
    recipient is owed one for anything it received, whenever, once the customer is erased,
    and for a category a rectification changed if it received that before (by business
    time, ties either way). Most rectifications precede the disclosures of what they
    change, if any."""
    first: dict[str, datetime] = {}  # category -> its earliest disclosure (business time)
    for event in events:
        if isinstance(event, DisclosureEvent):
            for category in event.categories:
                if category not in first or event.at < first[category]:
                    first[category] = event.at
    if not first:
        return False
    categories = privacy.FIELD_CATEGORY
    for event in events:
        if isinstance(event, Customer.Erased):
            return True
        if isinstance(event, Customer.DetailsUpdated):
            at = event.at
            for name in event.fields_updated:
                since = first.get(categories.get(name, ""))
                if since is not None and since <= at:
                    return True
    return False


# What the one pass needs to know of an event's class (memoised per class).
_OTHER, _CONSENT, _DISCLOSURE = range(3)
_KINDS: dict[type, int] = {}


def _kind(cls: type) -> int:
    if issubclass(cls, (Customer.ConsentGiven, Customer.ConsentWithdrawn)):
        kind = _CONSENT
    elif issubclass(cls, DisclosureEvent):
        kind = _DISCLOSURE
    else:
        kind = _OTHER
    _KINDS[cls] = kind
    return kind


def _latest(results: list[tuple[datetime, int, str]]) -> str | None:
    """The result of an order's latest payment or identity check (business time, then
    recording order), as `order show` orders its facts."""
    return max(results)[2] if results else None


def identified_categories(personal: dict[str, Any], orders: int) -> list[str]:
    """The data categories an identified export hands over for one customer."""
    categories = ["name"]
    categories += [c for c in ("email", "phone") if personal.get(c)]
    if personal.get("address"):
        categories.append("postal_address")
    if orders:
        categories.append("order_details")
    return sorted(categories)


# -- the export --------------------------------------------------------------------------------


class Exporter:
    """One due-diligence export: check, verify, stream, manifest, record, publish."""

    def __init__(
        self,
        app: ConsentLedger,
        request: ExportRequest,
        *,
        progress: Progress | None = None,
        now: datetime | None = None,
    ) -> None:
        self.app = app
        self.request = request
        self.progress = progress
        self.now = now or datetime.now(UTC)
        self.export_id = uuid4()
        self.fact_id = f"export-{self.export_id}"
        self.secret = os.urandom(SECRET_BYTES)
        self.pseudonyms = Pseudonyms(self.secret)
        self.summary = Summary()
        self.categories: set[str] = set()
        self.initiations = Initiations()
        # The exports recorded before this one, (position, stored state): an erasure of a
        # customer one held calls for notifying its acquirer (`privacy.notifications`).
        self.recorded_exports: list[tuple[int, Any]] = []
        # Each customer given a disclosure line (`_disclosure_line`): its reference and its
        # stream's version as read, at the export's tree size (`_record`).
        self.heads: dict[UUID, tuple[str, int]] = {}
        out = request.out
        # Named with this process's id: a later export removes what a killed one left.
        mark = f"{self.export_id.hex[:12]}-{temporaries.process_mark()}"
        base = temporaries.fitted(out.name, f"..disclosures-{mark}")  # (the longest tail)
        self.staging = out.parent / f".{base}.partial-{mark}"
        self.disclosure_feed = out.parent / f".{base}.disclosures-{mark}"

    # -- checks before anything is written --------------------------------------------------

    def check(self) -> None:
        request = self.request
        if request.format not in FORMATS:
            raise InputError(f"unknown format {request.format!r}: use one of {', '.join(FORMATS)}")
        if request.format == "parquet" and not parquet_available():
            raise ConfigurationError(
                "the parquet format needs pyarrow: install it into the environment "
                "consent-ledger runs in (pip install pyarrow, or the 'parquet' extra)"
            )
        if not request.acquirer.strip():
            raise InputError("the acquirer's name is empty")
        # Named as a feed's acquirer is (and as the disclosures it records will name it).
        text_field("acquirer", request.acquirer)
        out = request.out
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise InputError(f"{out} already exists and is not an empty folder")
        if not out.parent.is_dir():
            raise InputError(f"folder {out.parent} does not exist")
        temporaries.remove_abandoned(out.parent, temporaries.EXPORT_TEMPORARY)
        if request.identified:
            initiated = self.app.transfers_initiated()
            if not initiated(request.acquirer, self.now, None):
                raise RuleViolationError(
                    ["transfer_without_initiation"],
                    self.fact_id,
                    f"an identified export to acquirer {request.acquirer!r} needs a "
                    "transfer.initiated for that acquirer first (a pseudonymous export "
                    "does not)",
                )

    # -- the whole export ---------------------------------------------------------------------

    def run(self) -> ExportResult:
        self.check()
        # The events, their tree and the customer and order indexes; not the fact index
        # (which keeps facts from being recorded twice, and finds them for proofs), which
        # an export never reads: `verify` checks it.
        verified = seals.verify_ledger(self.app, fact_index=False)
        if not verified.ok:
            raise IntegrityFailure(
                f"the ledger fails verification ({len(verified.problems)} problems): no "
                "export of an unverified ledger; run 'consent-ledger verify'"
            )
        if verified.events == 0:
            raise InputError("the ledger is empty: nothing to export")
        signing_key = seals.load_signing_key(self.app.database)
        checkpoint = seals.checkpoint_by_size(self.app, verified.events)
        checkpoint["public_key"] = public_key_pem(signing_key.public_key())
        # As of the verified events the export reads, not of whatever is recorded meanwhile.
        self.read_upto = verified.events
        self.initiations = self.app.transfers_initiated(verified.events)
        with self.app.database.reading() as conn:
            self.recorded_exports = decoded_exports(
                export_store.exports_recorded(conn, verified.events)
            )
        try:
            # An identified export holds names, emails, phones and addresses: its folder and
            # files are the owner's alone (as a subject-access pack is). A pseudonymous one
            # is made to be shared, with the usual permissions.
            self.staging.mkdir(mode=0o700 if self.request.identified else 0o777)
            files = self._write_tables(verified.events)
            summary_path = self.staging / SUMMARY_NAME
            summary_path.write_bytes(
                orjson.dumps(self._summary_document(), option=orjson.OPT_INDENT_2) + b"\n"
            )
            files.append(manifests.file_entry(self.staging, SUMMARY_NAME, None))
            manifest = manifests.sign_manifest(
                manifests.build_manifest(
                    export_id=str(self.export_id),
                    created_at=iso(self.now),
                    parameters=self._parameters(),
                    files=files,
                    ledger={
                        "tree_size": verified.events,
                        "facts": verified.facts,
                        "verify_head": verified.head,
                        "checkpoint": checkpoint,
                    },
                    pseudonyms=_PSEUDONYMS,
                ),
                signing_key,
            )
            data = manifests.manifest_bytes(manifest)
            (self.staging / manifests.MANIFEST_NAME).write_bytes(data)
            digest = manifests.manifest_sha256(data)
            # Ctrl-C or SIGTERM held off from the record's commit until the folder is in
            # place (not while it waits for the writer's lock): a recorded export is never
            # left as a temporary for the next one to remove.
            with contextlib.ExitStack() as held:
                self._record(digest, verified.events, held)
                self._publish()
        except OSError as error:
            raise InputError(
                f"cannot write the export beside {self.request.out}: {error.strerror}; "
                "nothing was recorded"
            ) from None
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.disclosure_feed.unlink(missing_ok=True)
        return ExportResult(
            export_id=str(self.export_id),
            fact_id=self.fact_id,
            folder=self.request.out,
            manifest_sha256=digest,
            customers=self.summary.customers,
            identified_customers=self.summary.identified,
            files=files,
            categories=sorted(self.categories),
            tree_size=verified.events,
            verify_head=verified.head,
        )

    def _publish(self) -> None:
        """Move the finished folder into place: the export is recorded by now, so a failure
        here keeps the files where they are and says so."""
        if self.request.identified:
            for path in self.staging.rglob("*"):
                path.chmod(0o700 if path.is_dir() else 0o600)
        try:
            self.staging.replace(self.request.out)
        except OSError as error:
            kept = self.staging.with_name(self.staging.name.replace(".partial-", ".export-"))
            self.staging.replace(kept)
            raise InputError(
                f"export {self.fact_id} was recorded but could not be moved to "
                f"{self.request.out} ({error.strerror}): its files are in {kept}"
            ) from None

    def _parameters(self) -> dict[str, Any]:
        request = self.request
        return {
            "acquirer": request.acquirer,
            "as_of": iso(request.as_of) if request.as_of is not None else None,
            "identified": request.identified,
            "format": request.format,
        }

    def _summary_document(self) -> dict[str, Any]:
        return {
            "export_id": str(self.export_id),
            "created_at": iso(self.now),
            **self._parameters(),
            **self.summary.to_json(),
        }

    # -- streaming the rows -------------------------------------------------------------------

    def _columns(self) -> dict[str, tuple[str, ...]]:
        columns = dict(TABLES)
        if self.request.identified:
            columns["customers"] = (*columns["customers"], *IDENTIFIED_COLUMNS)
        return columns

    def _write_tables(self, upto: int) -> list[manifests.FileEntry]:
        columns = self._columns()
        names = {name: f"{name}.{self.request.format}" for name in columns}
        customers = export_store.registered_count(self.app.database, upto)
        workers = self._workers(customers)
        if workers > 1:
            rows = self._write_parallel(upto, names, workers, customers)
        else:
            scan = export_store.customer_event_rows(
                self.app.database, upto, order_secret=self.secret
            )
            # Closed however the writing ends: a scan left open on a failure (a customer
            # erased meanwhile) kept its read transaction open until collected.
            with contextlib.closing(scan):
                rows = self._write_part(scan, self.staging, header=True, progress=self.progress)
        # Hashed side by side: hashlib lets go of the GIL while it hashes a block. Its
        # threads are started with Ctrl-C and SIGTERM blocked, for life: a signal given to
        # one of them is handled at once, though the export's commit holds it off
        # (`database.signals_held`).
        with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
            with signals_held():
                hashed = [
                    pool.submit(manifests.file_entry, self.staging, names[name], rows[name])
                    for name in columns
                ]
            return [entry.result() for entry in hashed]

    def _workers(self, customers: int) -> int:
        """How many processes share the scan: one per CPU (up to `MAX_WORKERS`) for a
        large pseudonymous jsonl or csv export; else the scan runs here. (An identified
        export opens personal data with this process's keys; parquet files are not simply
        concatenated.)"""
        request = self.request
        wanted = min(os.cpu_count() or 1, MAX_WORKERS)
        if wanted < 2 or request.identified or request.format == "parquet":
            return 1
        if customers < PARALLEL_MIN_CUSTOMERS:
            return 1
        return wanted

    def _write_part(
        self,
        scan: Iterable[tuple[UUID, list[export_store.EventRow]]],
        folder: Path,
        *,
        header: bool,
        progress: Progress | None,
    ) -> dict[str, int]:
        """Write the rows of the customers `scan` yields into `folder`; the row counts."""
        request = self.request
        columns = self._columns()
        make = _WRITERS[request.format]
        writers = {
            name: make(folder / f"{name}.{request.format}", columns[name], header)
            for name in columns
        }
        feed: IO[bytes] | None = None
        if request.identified:
            # It names customers (their references): the owner's alone, as the export is.
            descriptor = os.open(self.disclosure_feed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            feed = os.fdopen(descriptor, "wb")
        decode = self.app.decoder.stream
        registered = Customer.Registered
        write_customer = writers["customers"].write
        tables = [
            (attrgetter(name), writers[name].write_rows)
            for name in ("consents", "consent_history", "orders", "disclosures")
        ]
        try:
            for ident, stored in scan:
                events = decode(ident, stored)
                if not isinstance(events[0], registered):
                    continue
                customer = state_as_of(events, None)
                rows = self._customer(customer, events, [row[4] for row in stored])
                if progress is not None:
                    progress(1)
                if rows is None:
                    continue
                write_customer(rows.customer)
                for table, write in tables:
                    write(table(rows))
                if feed is not None and rows.personal:
                    feed.write(self._disclosure_line(customer, rows))
                    self.heads[ident] = (customer.ref, stored[-1][1])
        finally:
            for writer in writers.values():
                writer.close()
            if feed is not None:
                feed.close()
        return {name: writer.rows for name, writer in writers.items()}

    def _write_parallel(
        self, upto: int, names: dict[str, str], workers: int, customers: int
    ) -> dict[str, int]:
        """The customers' keyed order split among `workers` forked processes, each writing
        its slice of every table; the parts, concatenated in that order, are byte for byte
        what one process writes (`test_a_parallel_export_writes_what_one_process_writes`)."""
        context = multiprocessing.get_context("fork")
        parts = self.staging.with_name(self.staging.name.replace(".partial-", ".parts-"))
        done = context.Array("q", workers, lock=False)  # customers done, per worker
        processes: list[Any] = []
        readers: list[Connection] = []
        # A forked worker flushes the standard streams as it ends: nothing buffered may be
        # written twice.
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            parts.mkdir()
            for index, bounds in enumerate(_rank_ranges(customers, workers)):
                folder = parts / str(index)
                folder.mkdir()
                reader, writer = context.Pipe(duplex=False)
                process = context.Process(
                    target=self._work,
                    args=(index, upto, bounds, folder, done, writer),
                    name=f"consent-ledger-export-{index}",
                    daemon=True,
                )
                with signals_held():  # (until its own handlers are set: stopped in `finally`)
                    process.start()
                    processes.append(process)
                writer.close()
                readers.append(reader)
            rows = dict.fromkeys(names, 0)
            for counts, summary, categories in self._collect(readers, done):
                for name, count in counts.items():
                    rows[name] += count
                self.summary.merge(summary)
                self.categories |= categories
            for file in names.values():
                target = self.staging / file
                (parts / "0" / file).replace(target)
                with open(target, "r+b") as out:
                    for index in range(1, workers):
                        _append(parts / str(index) / file, out)
            return rows
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()
                process.join()
            shutil.rmtree(parts, ignore_errors=True)

    def _work(
        self,
        index: int,
        upto: int,
        bounds: tuple[int, int],
        folder: Path,
        done: Any,
        pipe: Connection,
    ) -> None:
        """A worker process: its customers' rows into `folder`; sends back the row counts,
        its summary figures and categories, or the error that stopped it."""
        temporaries.leave_stopping_to_the_parent()
        try:

            def advance(count: int) -> None:
                done[index] += count

            scan = export_store.worker_event_rows(
                self.app.database, upto, order_secret=self.secret, ranks=bounds
            )
            rows = self._write_part(scan, folder, header=index == 0, progress=advance)
            pipe.send(("ok", (rows, self.summary, self.categories)))
        except SystemExit:  # stopped by its parent (`leave_stopping_to_the_parent`)
            raise
        except BaseException as error:  # handed to the parent, which raises it
            pipe.send(("error", _portable(error)))
        finally:
            pipe.close()

    def _collect(self, readers: list[Connection], done: Any) -> list[Any]:
        """Each worker's result (in worker order), reporting progress meanwhile; raises
        the first error a worker met."""
        results: list[Any] = [None] * len(readers)
        waiting = {reader: index for index, reader in enumerate(readers)}
        reported = 0
        while waiting:
            for ready in wait(list(waiting), timeout=0.2):
                assert isinstance(ready, Connection)
                index = waiting.pop(ready)
                try:
                    status, value = ready.recv()
                except EOFError:
                    raise WorkerLostError(
                        f"export worker {index}",
                        "the export was not made and nothing was recorded",
                    ) from None
                if status == "error":
                    raise value
                results[index] = value
            if self.progress is not None:
                total = sum(done)
                if total > reported:
                    self.progress(total - reported)
                    reported = total
        return results

    def _customer(
        self, customer: Customer, events: list[FactEvent], positions: list[int]
    ) -> CustomerRows | None:
        """`positions`: each event's position in the log."""
        as_of = self.request.as_of
        held = self._held(events, positions)
        every = (events, positions)  # (the notifications judge them all, as `audit` does)
        if as_of is not None:
            if customer.registered_at > as_of:
                return None
            kept = [i for i, event in enumerate(events) if event.at <= as_of]
            events, positions = [events[i] for i in kept], [positions[i] for i in kept]
            held = [holding for holding in held if holding[0] <= as_of]
        personal = None
        if self.request.identified and not customer.erased:
            personal = self._personal_data(customer, events)
        rows = customer_rows(customer, events, self.pseudonyms, as_of, personal, held, positions)
        self._count(customer, events, positions, rows, every)
        return rows

    def _personal_data(self, customer: Customer, events: list[FactEvent]) -> dict[str, Any] | None:
        """The customer's details, opened with their key (read now, not in the events'
        snapshot): a key gone though no erasure is among the events read is a customer
        erased since, as the export's record refuses them, not a key row deleted."""
        try:
            return self.app.personal_data(customer, events)
        except DataKeyMissingError:
            if customer.id in export_store.erased_after(self.app.database, self.read_upto):
                raise ConcurrencyError(_ERASED_MEANWHILE) from None
            raise

    def _held(
        self, events: list[FactEvent], positions: list[int]
    ) -> list[tuple[datetime, int, dict[str, Any]]]:
        """The earlier exports (recorded among the events this one reads) that held the
        customer, as their trail lists them (`views.export_rows`): each is a disclosure to
        its acquirer, so the data room's sharing history has them as `customer trail` does."""
        if not self.recorded_exports:
            return []
        versions = {e.originator_version: p for e, p in zip(events, positions, strict=True)}
        return export_rows(exports_of(versions, self.recorded_exports), events)

    def _count(
        self,
        customer: Customer,
        events: list[FactEvent],
        positions: list[int],
        rows: CustomerRows,
        every: tuple[list[FactEvent], list[int]] | None = None,
    ) -> None:
        """`every`: all the customer's events and their positions, when `events` are only
        those dated by the export's as-of (`_broken_rules`)."""
        summary = self.summary
        summary.customers += 1
        summary.erased += customer.erased
        if rows.personal:
            summary.identified += 1
            self.categories.update(identified_categories(_personal_of(rows), len(rows.orders)))
        for consent in rows.consents:
            if consent["status"] == "given":
                summary.consents[(consent["purpose"], consent["channel"])] += 1
        if any(
            c["purpose"] == "affiliate_sharing" and c["status"] == "given" for c in rows.consents
        ):
            summary.affiliate_consenting += 1
        kinds = set()
        affiliate = False
        for disclosure in rows.disclosures:
            kind = disclosure["recipient_kind"]
            summary.disclosures[kind] += 1
            kinds.add(kind)
            if kind == "affiliate":
                affiliate = True
                summary.affiliate_disclosures += 1
                summary.affiliates[disclosure["recipient"]] += 1
        summary.affiliate_customers += affiliate
        for kind in kinds:
            summary.disclosed_customers[kind] += 1
        for order in rows.orders:
            summary.orders[order["status"]] += 1
            currency = order["currency"]
            summary.totals[currency] = TOTALS_CONTEXT.add(
                summary.totals.get(currency, Decimal(0)), Decimal(order["total"])
            )
        if rows.orders:
            self.categories.add("order_details")
        violations = summary.violations
        for rule in self._broken_rules(customer, events, positions, every):
            violations[rule] += 1

    def _broken_rules(
        self,
        customer: Customer,
        events: list[FactEvent],
        positions: list[int],
        every: tuple[list[FactEvent], list[int]] | None = None,
    ) -> list[str]:
        """The rule each violation among the customer's facts breaks, as
        `ConsentLedger.audit_events` finds them (`tests/integration/test_export.py` holds
        the summary to `audit`): `rules.broken_rules` for each judged fact, and the
        notification rule only for a customer with an erasure or a rectification (no other
        fact calls for a notification), without building a `Violation` for each. The
        notification rule reads `every` event of the customer (if given: `events` are those
        dated by the as-of), as `audit_events` does: `privacy.notification_violations`
        takes the ones dated by the as-of itself, and judges from them all whether an
        export gave a detail's current value."""
        initiated = self.initiations
        found: list[str] = []
        # A customer never erased breaks only the rules of `RULED_TYPES` (no fact of another
        # type need be judged).
        judged_types = JUDGED_TYPES if customer.erased_at is not None else RULED_TYPES
        triggers = False
        for event, position in zip(events, positions, strict=True):
            fact_type = event.FACT_TYPE
            if fact_type in judged_types:
                facts = event.__dict__  # the fields broken_rules reads (channel, order, ...)
                judged = Judged(
                    fact_type,
                    facts["fact_id"],
                    facts["at"],
                    facts["originator_version"],
                    facts,
                    position,
                )
                found += broken_rules(customer, judged, initiated)
            elif fact_type in _TRIGGER_TYPES:
                triggers = True
        if triggers:
            if every is not None:
                events, positions = every
            held = privacy.held_exports(events, positions, self.recorded_exports)
            if held or _may_notify(events):
                as_of = self.request.as_of
                for violation in privacy.notification_violations(
                    customer.ref, events, self.now, as_of, held
                ):
                    found.append(violation.rule)
        return found

    def _disclosure_line(self, customer: Customer, rows: CustomerRows) -> bytes:
        fact = {
            "id": f"{self.fact_id}/{self.summary.identified:07d}",
            "type": "transfer.disclosure",
            "at": iso(self.now),
            "customer": customer.ref,
            "acquirer": self.request.acquirer,
            "categories": identified_categories(_personal_of(rows), len(rows.orders)),
        }
        return orjson.dumps(fact) + b"\n"

    # -- recording the export -------------------------------------------------------------------

    def _record(self, digest: str, upto: int, held: contextlib.ExitStack) -> None:
        app = self.app
        app.keys.source  # noqa: B018 (loads the master key and checks it is this ledger's)
        master, _ = load_master_key(app.database)
        wrapped = export_store.wrap_secret(master, self.export_id, self.secret)
        request = self.request
        with app.database.writing() as tx:
            # Nothing recorded since the events the export read (the writer's lock held from
            # here to the commit): each customer it names is still at the version it read,
            # and its disclosure is recorded without reading its stream back. Else they are
            # read back, as any import's customers.
            unchanged = tx.next_notification_id == upto + 1
            if request.identified and export_store.erased_after(app.database, upto):
                raise ConcurrencyError(_ERASED_MEANWHILE)
            export_store.store_export(
                tx,
                export_id=self.export_id,
                acquirer=request.acquirer,
                wrapped_secret=wrapped,
                created_at=self.now,
                manifest_sha256=digest,
                identified=request.identified,
                customers=self.summary.customers,
            )
            acquirer = _acquirer(app, request.acquirer)
            acquirer.record_due_diligence_export(
                self.fact_id,
                self.now,
                sorted(self.categories),
                export_id=str(self.export_id),
                customers=self.summary.customers,
                identified=request.identified,
                as_of=iso(request.as_of) if request.as_of is not None else None,
                export_format=request.format,
                manifest_sha256=digest,
                tree_size=upto,
            )
            for recording in app.save(acquirer):
                if isinstance(recording.domain_event, Acquirer.DueDiligenceExported):
                    export_store.record_export_fact(
                        tx, self.fact_id, recording.notification.id, acquirer.id
                    )
            if request.identified and self.summary.identified:
                with open(self.disclosure_feed, "rb") as lines:
                    app.import_lines(lines, heads=self.heads if unchanged else None)
            held.enter_context(signals_held())  # until the caller has published the folder


_ERASED_MEANWHILE = "customers were erased while the export ran; run the export again"


def _rank_ranges(customers: int, parts: int) -> list[tuple[int, int]]:
    """`parts` consecutive slices [start, stop) of the customers' keyed order."""
    cuts = [customers * i // parts for i in range(parts + 1)]
    return list(pairwise(cuts))


def _append(source: Path, out: IO[bytes]) -> None:
    """Append a file to `out` (copied in the kernel where it can be)."""
    out.flush()
    start = out.seek(0, os.SEEK_END)
    size = source.stat().st_size
    copied = 0
    with open(source, "rb") as part:
        try:
            while copied < size:
                step = os.copy_file_range(
                    part.fileno(), out.fileno(), size - copied, copied, start + copied
                )
                if step == 0:
                    break
                copied += step
        except OSError:
            pass  # not on this file system: copied by hand below
        part.seek(copied)
        out.seek(start + copied)
        shutil.copyfileobj(part, out, 1 << 20)


def _portable(error: BaseException) -> BaseException:
    """`error` if it survives pickling (to cross from a worker to the parent), else a
    RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"export worker failed: {type(error).__name__}: {error}")
    return error


def _personal_of(rows: CustomerRows) -> dict[str, Any]:
    row = rows.customer
    return {
        "email": row.get("email"),
        "phone": row.get("phone"),
        "address": row.get("address_line1") or row.get("address_postcode"),
    }


def _acquirer(app: ConsentLedger, name: str) -> Acquirer:
    try:
        found: Any = app.repository.get(acquirer_id(name), projector_func=replay)
    except AggregateNotFoundError:
        return Acquirer.create(name)
    assert isinstance(found, Acquirer)
    return found


_PSEUDONYMS = {
    "algorithm": "HMAC-SHA256",
    "length_hex": PSEUDONYM_HEX,
    "customer": "first 128 bits of HMAC-SHA256(secret, 'customer' 0x00 customer reference)",
    "order": "first 128 bits of HMAC-SHA256(secret, 'order' 0x00 order reference)",
    "secret": "random, one per export, kept by the seller's ledger: only the seller can "
    "re-identify; pseudonyms of two exports do not match",
    "omitted": "names, emails, phones, addresses, customer and order references, fact ids, "
    "tracking numbers (unless identified: then personal data of customers not erased); a "
    "consent's method or policy version, or a recipient's name, shaped like an email or "
    f"phone number (a shifted column in the feed) reads {WITHHELD!r} (unless identified, "
    "for a customer not erased)",
}


def export_due_diligence(
    app: ConsentLedger, request: ExportRequest, *, progress: Progress | None = None
) -> ExportResult:
    """Make a due-diligence export (see the module's documentation)."""
    return Exporter(app, request, progress=progress).run()


def export_secret(app: ConsentLedger, export_id: str) -> bytes:
    """The seller's side: an export's pseudonym secret, to re-identify its pseudonyms."""
    try:
        ident = UUID(export_id)
    except ValueError:
        raise InputError(f"{export_id!r} is not an export id") from None
    app.keys.source  # noqa: B018 (checks the master key)
    master, _ = load_master_key(app.database)
    secret = export_store.export_secret(app.database, master, ident)
    if secret is None:
        raise InputError(f"no export {export_id!r} in this ledger")
    return secret


def reidentify(app: ConsentLedger, export_id: str, alias: str) -> str:
    """The seller's side: the customer reference behind a pseudonym of an export (only the
    ledger holds the export's secret). Raises `InputError` if no customer has it."""
    pseudonyms = Pseudonyms(export_secret(app, export_id))
    wanted = alias.strip().lower()
    for ref in app.customer_refs():
        if hmac.compare_digest(pseudonyms("customer", ref), wanted):
            return ref
    raise InputError(f"no customer of this ledger has pseudonym {alias!r} in export {export_id}")


def _exported(
    app: ConsentLedger, upto: int | None
) -> list[tuple[Acquirer.DueDiligenceExported, int]]:
    """Every due-diligence export recorded (by event `upto`, if given), with its position in
    the log. An export missing from the fact index is an `IntegrityFailure`.

    Bounded by a position read before (a read model's), what this reads is the same
    whenever it is read: the log up to there is whole and never changes. Unbounded, it is
    the log as each of its statements finds it."""
    exported = [
        event
        for stream in export_store.exporting_streams(app.database)
        for event in app.events.get(stream)
        if isinstance(event, Acquirer.DueDiligenceExported)
    ]
    if not exported:
        return []
    positions = export_store.fact_positions(app.database, [e.fact_id for e in exported])
    found = []
    for event in exported:
        if event.fact_id not in positions:
            raise IntegrityFailure(
                f"the fact index has no row for {event.fact_id}: it was altered outside "
                "consent-ledger; 'consent-ledger verify' names what changed"
            )
        if upto is None or positions[event.fact_id] <= upto:
            found.append((event, positions[event.fact_id]))
    return found


def customers_held(app: ConsentLedger, upto: int | None = None) -> dict[str, int]:
    """For each acquirer that received due-diligence exports (recorded by event `upto`, if
    given), how many distinct customers they held between them (`ledger.views.export_held`,
    as the customers' trails list them). A registration time the ledger cannot have written
    is an `UnreadableEventError`; an export missing from the fact index, an
    `IntegrityFailure`."""
    plans: dict[str, list[tuple[int, int | None, datetime | None]]] = {}
    for event, position in _exported(app, upto):
        as_of = aware_time(event.as_of) if event.as_of is not None else None
        plans.setdefault(event.recipient, []).append((position, event.tree_size, as_of))
    if not plans:
        return {}
    dated = any(as_of is not None for plan in plans.values() for *_, as_of in plan)
    last = max(export_read(*export[:2]) for plan in plans.values() for export in plan)
    customers = []
    for position, at in export_store.registrations(app.database, last, with_times=dated):
        try:
            customers.append((position, aware_time(at) if at is not None else None))
        except (ValueError, TypeError):
            raise UnreadableEventError(f" (the registration at position {position})") from None
    return {
        name: sum(
            1
            for position, registered in customers
            if any(export_held(position, registered, *export) for export in plan)
        )
        for name, plan in plans.items()
    }


def recorded_exports(app: ConsentLedger, upto: int | None = None) -> list[dict[str, Any]]:
    """Every due-diligence export recorded (by event `upto`, if given: a read model's
    position, for a registry that counts the exports it lists as of there), oldest first,
    as the disclosure it is (for the auditor's report): when, to whom, what, how many
    customers, the manifest's hash."""
    found = []
    for event, _position in _exported(app, upto):
        found.append(
            (
                event.at,
                event.fact_id,
                {
                    "at": iso(event.at),
                    "fact_id": event.fact_id,
                    "export_id": event.export_id,
                    "recipient": event.recipient,
                    "recipient_kind": event.recipient_kind,
                    "purpose": event.purpose,
                    "basis": event.basis,
                    "categories": list(event.categories),
                    "customers": event.customers,
                    "identified": event.identified,
                    "as_of": event.as_of,
                    "format": event.export_format,
                    "manifest_sha256": event.manifest_sha256,
                },
            )
        )
    found.sort(key=lambda item: (item[0], item[1]))  # by time, not by its text
    return [row for _, _, row in found]
