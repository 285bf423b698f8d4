"""The application service: record facts, answer questions.

`ConsentLedger` is an eventsourcing `Application` whose recorder writes into the ambient
transaction of `Database`. Recording goes through `Recording`, one atomic write in which
facts are validated against the ledger and the file so far, turned into events by the
aggregates, and saved in batches; if any fact is invalid, or on a dry run, the whole
transaction is rolled back, so a file is recorded entirely or not at all.
"""

from __future__ import annotations

import gc
import heapq
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import InfrastructureFactory, IntegrityError

from ledger import privacy
from ledger.domainmodel import (
    Acquirer,
    Customer,
    FactEvent,
    acquirer_id,
    customer_id,
    replay,
)
from ledger.errors import (
    ConcurrencyError,
    CustomerErasedError,
    CustomerNotFoundError,
    DataKeyMissingError,
    DuplicateFactError,
    InputError,
    InvalidFactError,
    InvalidFeedError,
    LedgerError,
    MasterKeyError,
    OrderNotFoundError,
    RuleViolationError,
    UnknownReferenceError,
)
from ledger.feed import Fact, iso, parse_line, validate
from ledger.free_text import fields_shaped_like_personal_data
from ledger.iterables import batched
from ledger.persistence.database import Database, WriteTransaction
from ledger.persistence.recorder import (
    EventDecoder,
    LedgerEventStore,
    LedgerInfrastructure,
    LedgerRecorder,
)
from ledger.rules import (
    JUDGED_TYPES,
    InitiationCheck,
    Initiations,
    Judged,
    Violation,
    audit_customer,
    broken_rules,
)
from ledger.vocabulary import PERSONAL_FIELDS

if TYPE_CHECKING:
    from ledger.crypto import DataKey
    from ledger.persistence.keys import KeyStore, Rotation
    from projections.runner import LedgerFigures, ReadModels

# The persistence modules written on SQLAlchemy (indexes, personal, tables, keys) are imported
# where they are used: a query on SQLite reads without loading SQLAlchemy (see
# ledger/persistence/sqlite_reads.py), most of a query command's start-up.

CHUNK = 2000
# Facts of one import that may wait, in memory, for a customer or order registered later in
# the file; beyond it, such a fact is refused as naming an unknown customer or order.
_WAITING_LIMIT = 50_000


_BOM = b"\xef\xbb\xbf"
_SHAPED_LINES_KEPT = 10


@dataclass
class ImportSummary:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[InvalidFactError] = field(default_factory=list)
    dry_run: bool = False
    # Lines whose free-text fields hold what is shaped like an email or phone number
    # (`ledger.free_text`): how many, and the first few (line, fields), for a warning.
    shaped: int = 0
    shaped_lines: list[tuple[int, list[str]]] = field(default_factory=list)

    def note_shaped(self, number: int, fact: Fact) -> None:
        fields = fields_shaped_like_personal_data(fact.type, fact.data)
        if fields:
            self.shaped += 1
            if len(self.shaped_lines) < _SHAPED_LINES_KEPT:
                self.shaped_lines.append((number, fields))

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "errors": [{"line": e.line, "error": e.reason} for e in self.errors],
        }


class ConsentLedger(Application[UUID]):
    name = "ConsentLedger"

    def __init__(self, database: Database, keys: KeyStore | None = None) -> None:
        self.database = database
        self._keys = keys
        self._decoder: EventDecoder | None = None
        super().__init__(env={})

    @property
    def keys(self) -> KeyStore:
        """The key store (by default the database's, made on first use)."""
        if self._keys is None:
            from ledger.persistence.keys import KeyStore

            self._keys = KeyStore(self.database)
        return self._keys

    def construct_factory(self, env: Any) -> InfrastructureFactory[Any]:
        return LedgerInfrastructure(env, self.database)

    @property
    def decoder(self) -> EventDecoder:
        """Stored rows to this ledger's events, without the library mapper's overheads."""
        if self._decoder is None:
            self._decoder = EventDecoder(self.mapper)
        return self._decoder

    @property
    def ledger_events(self) -> LedgerEventStore:
        assert isinstance(self.events, LedgerEventStore)
        return self.events

    @property
    def ledger_recorder(self) -> LedgerRecorder:
        assert isinstance(self.recorder, LedgerRecorder)
        return self.recorder

    # -- recording ---------------------------------------------------------------------------

    def import_lines(
        self,
        lines: Iterable[bytes | str],
        *,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
        heads: dict[UUID, tuple[str, int]] | None = None,
    ) -> ImportSummary:
        """Record a feed: all its facts or none. Raises `InvalidFeedError` if any line is bad.

        `heads`: recorded customers' references and stream versions, by stream id, each the
        version of its stream's last event as the caller knows it to be under this write's
        lock (an identified export that read the streams at the position the ledger's head
        is still at, `exports`). Such a customer is not read back but known by its head
        (`Customer.at_head`); every fact of the file about it must be one of
        `HEAD_ONLY_FACTS`. Each is taken from the mapping once the recording has the
        customer in hand."""
        summary = ImportSummary(dry_run=dry_run)

        def parsed() -> Iterator[tuple[int, Fact | InvalidFactError]]:
            for number, raw in enumerate(lines, start=1):
                if progress is not None:
                    progress(len(raw))
                if number == 1:  # a byte order mark, as some editors begin UTF-8 files
                    if isinstance(raw, bytes):
                        raw = raw.removeprefix(_BOM)
                    else:
                        raw = raw.removeprefix("\ufeff")
                if not raw.strip():
                    continue
                try:
                    fact = parse_line(raw, number)
                    summary.note_shaped(number, fact)
                    item: Fact | InvalidFactError = fact
                except InvalidFactError as error:
                    # The reason only: the raised error's traceback holds the line and its
                    # decoded fields, which a stream of bad lines must not accumulate.
                    item = InvalidFactError(error.reason, number)
                yield number, item

        self._record_items(parsed(), summary, preventive=False, dry_run=dry_run, heads=heads)
        if summary.errors:
            raise InvalidFeedError(summary.errors, summary.accepted, summary.duplicates)
        return summary

    def record_fact(self, obj: dict[str, Any], *, dry_run: bool = False) -> tuple[Fact, bool]:
        """Record one fact, applying the preventive rules. Returns (fact, newly recorded).

        An id already recorded makes the fact a duplicate, recorded no more, if it is that
        same fact, retried; an id that another fact has is refused (`DuplicateFactError`),
        lest the command report as done what was never recorded. (An import keeps SPEC §2 as
        written: a recorded id is a duplicate, whatever its line says.)"""
        fact, at_given = _command_fact(obj)
        summary = ImportSummary(dry_run=dry_run)
        self._record_items(iter([(1, fact)]), summary, preventive=True, dry_run=dry_run)
        if summary.errors:
            raise InvalidFactError(summary.errors[0].reason)
        if summary.duplicates:  # (what an id stands for never changes)
            self._refuse_another_fact(fact, at_given)
        return fact, summary.accepted == 1

    def _refuse_another_fact(self, fact: Fact, at_given: bool) -> None:
        """Refuse `fact` if the fact recorded under its id is another one: of another type,
        naming another customer, acquirer or order, with other values in its fields, or at
        another time if one was given (a retry without one is dated now, and matches)."""
        found = self._recorded(fact.id)
        if found is None:
            return
        fact_type, state, originator = found
        if fact.type == "transfer.initiated":
            names_the_same = originator == acquirer_id(fact.data["acquirer"])
        elif fact.customer is not None:
            names_the_same = originator == customer_id(fact.customer)
        else:
            names_the_same = state.get("order") == fact.data.get("order")
        says_the_same = all(
            _same_value(value, state[name])
            for name, value in fact.data.items()
            if name in state  # (personal data is sealed: not compared)
        )
        at_the_same_time = not at_given or state["at"] == fact.at
        if fact_type != fact.type or not (names_the_same and says_the_same and at_the_same_time):
            raise DuplicateFactError(fact.id, fact_type)
        if not self._seals_the_same(fact, state.get("sealed"), originator):
            raise DuplicateFactError(fact.id, fact_type)

    def _erased(self, originator: UUID) -> bool:
        """Whether the stream is an erased customer's (an acquirer's never is)."""
        try:
            aggregate: Any = self.repository.get(originator, projector_func=replay)
        except AggregateNotFoundError:
            return False
        return isinstance(aggregate, Customer) and aggregate.erased

    def _seals_the_same(self, fact: Fact, sealed: str | None, originator: UUID) -> bool:
        """Whether the fact's personal data and unknown fields are those sealed under its id
        (a retry sends them again; other ones are another fact). True where nothing can be
        compared: the customer was erased, and their key is gone."""
        given: dict[str, Any] = {}
        given.update((name, fact.data[name]) for name in PERSONAL_FIELDS if name in fact.data)
        if fact.extra:
            given["extra"] = fact.extra
        if not given and sealed is None:
            return True
        key = self.keys.get(originator)
        if key is None or self._erased(originator):
            # (an erased customer's key whole again, put back from a backup, is not opened
            # either: comparing told a right guess of their details from a wrong one)
            return True
        if sealed is None:
            return False
        opened = _open(key, sealed)
        recorded: dict[str, Any] = {}
        recorded.update((name, opened[name]) for name in PERSONAL_FIELDS if name in opened)
        if opened.get("extra"):
            recorded["extra"] = opened["extra"]
        return given == recorded

    def _record_items(
        self,
        items: Iterator[tuple[int, Fact | InvalidFactError]],
        summary: ImportSummary,
        *,
        preventive: bool,
        dry_run: bool,
        heads: dict[UUID, tuple[str, int]] | None = None,
    ) -> None:
        try:
            for _attempt in range(3):
                try:
                    with self.database.writing() as tx, _fewer_collections():
                        if not preventive:  # a file: insert each chunk while the next is made
                            tx.overlap_inserts()
                        recording = Recording(self, tx, summary, preventive=preventive)
                        if heads:
                            recording.heads = heads
                        recording.run(items)
                        tx.discard = dry_run or bool(summary.errors)
                    return
                except IntegrityError as error:
                    # Only a writer outside our lock could cause this; never retry a stream
                    # we have already consumed.
                    raise ConcurrencyError(
                        "another writer recorded the same facts at the same time; "
                        "run the command again (duplicates will be skipped)"
                    ) from error
        finally:
            if dry_run or summary.errors:
                self.keys.forget_cache()

    # -- reading -----------------------------------------------------------------------------

    def erase(
        self, ref: str, *, at: datetime | None = None, fact_id: str | None = None
    ) -> tuple[str, bool]:
        """Art. 17 (SPEC §4): record the customer's erasure; (its fact id, whether it was
        recorded now). A customer already erased is not erased again, unless the erasure
        given happened earlier than the one recorded (a late report of an earlier request
        moves the time the rules judge from): the recorded erasure's fact id is returned."""
        if at is not None and at > datetime.now(UTC) + _CLOCK_SKEW:
            # The key is destroyed now: an erasure dated later would let the rules judge
            # disclosures until then as made before it, of data already gone.
            raise InputError(
                f"an erasure cannot be dated in the future ({iso(at)}): it is carried out "
                "now; --at may say when it happened or was requested, up to now"
            )
        with self.database.writing():  # what is on record, read under the writer's lock
            try:
                customer, events = self.customer_with_events(ref)
            except CustomerNotFoundError:  # refused below as any fact naming them would be
                customer, events = None, []
            fact: dict[str, Any] = {"type": "subject.erased", "customer": ref}
            if at is not None:
                fact["at"] = iso(at)
            if fact_id is not None:
                fact["id"] = fact_id
                self._refuse_another_fact(*_command_fact(fact))  # only a retry of it
            erased_at = customer.erased_at if customer is not None else None
            if customer is not None and erased_at is not None and (at is None or at >= erased_at):
                if self.keys.whole(customer.id):
                    # Erased, yet their key is whole: put back (as from a backup; verify
                    # names it), or never destroyed by the first version's feed erasures.
                    # Nothing is recorded, but the key is destroyed as the erasure said.
                    self.keys.destroy(customer.id)
                erasures = (e for e in events if isinstance(e, Customer.Erased))
                return min(erasures, key=lambda e: e.at).fact_id, False
            recorded, fresh = self.record_fact(fact)
            return recorded.id, fresh

    def customer(self, ref: str) -> Customer:
        return self.customer_with_events(ref)[0]

    def customer_events(self, ref: str) -> list[FactEvent]:
        return self.customer_with_events(ref)[1]

    def customer_with_events(
        self, ref: str, known_at: datetime | None = None
    ) -> tuple[Customer, list[FactEvent]]:
        """The customer's aggregate and its events, read once (optionally only the events
        recorded by `known_at`: the ledger as it stood then)."""
        events: list[Any] = list(self.events.get(customer_id(ref)))
        if known_at is not None:  # the events of the writes committed by then
            last = self._version_at(ref, self.known_size(known_at))
            events = [e for e in events if e.originator_version <= last]
        if not events:
            raise CustomerNotFoundError(ref, known_at)
        aggregate: Any = None
        for event in events:
            aggregate = event.mutate(aggregate)
        assert isinstance(aggregate, Customer)
        return aggregate, [e for e in events if isinstance(e, FactEvent)]

    def recorded_fact(self, fact_id: str) -> tuple[str, datetime] | None:
        """(type, business time) of the fact recorded under `fact_id`, if any: what a
        duplicate id already stands for."""
        found = self._recorded(fact_id)
        if found is None:
            return None
        fact_type, state, _ = found
        at: datetime = state["at"]
        return fact_type, at

    def _recorded(self, fact_id: str) -> tuple[str, dict[str, Any], UUID] | None:
        """(type, decoded state, stream id) of the fact recorded under `fact_id`, if any."""
        from ledger.persistence.sqlite_reads import SELECT_RECORDED_FACT
        from ledger.persistence.stored_state import decode_state

        rows = self.database.fetch_on_driver(SELECT_RECORDED_FACT, (fact_id,))
        if not rows:
            return None
        fact_type, state, originator = rows[0]
        return str(fact_type), decode_state(state), UUID(str(originator))

    def known_size(self, known_at: datetime) -> int:
        """How much of the log the ledger knew at recorded time `known_at`: the events of
        every write committed by then (`sqlite_reads.SELECT_KNOWN_SIZE`)."""
        from ledger.persistence import sqlite_reads as reads

        rows = self.database.fetch_on_driver(
            reads.SELECT_KNOWN_SIZE, (reads.checkpoint_time(known_at),)
        )
        return int(rows[0][0] or 0)

    def _version_at(self, ref: str, size: int) -> int:
        """The last version of customer `ref`'s stream among the first `size` events."""
        from ledger.persistence.sqlite_reads import SELECT_LAST_VERSION

        ident = customer_id(ref)
        rows = self.database.fetch_on_driver(
            SELECT_LAST_VERSION, (ident.hex if self.database.is_sqlite else ident, size)
        )
        return int(rows[0][0] or 0)

    def customer_of_order(self, order_ref: str) -> str:
        from ledger.persistence import indexes

        with self.database.reading() as conn:
            ref = indexes.customer_ref_of_order(conn, order_ref)
        if ref is None:
            raise OrderNotFoundError(order_ref)
        return ref

    def customer_refs(self) -> Iterator[str]:
        """Every customer reference, in registration order (streamed)."""
        from ledger.persistence import indexes

        with self.database.reading() as conn:
            yield from indexes.customer_refs(conn)

    def personal_data(self, customer: Customer, events: list[FactEvent]) -> dict[str, Any] | None:
        """The customer's current details, or None once erased (their key destroyed). A key
        gone with no erasure recorded is a `DataKeyMissingError`, not an erasure. An erased
        customer's key whole again (put back from a backup: `verify` names it, and `customer
        erase` destroys it) is not opened: no command shows an erased customer's data."""
        if customer.erased:
            return None
        key = self.keys.get(customer.id)
        if key is None:
            raise DataKeyMissingError(customer.ref)
        details: dict[str, Any] = {}
        ordered = sorted(
            (e for e in events if isinstance(e, (Customer.Registered, Customer.DetailsUpdated))),
            key=lambda e: (e.at, e.originator_version),
        )
        for event in ordered:
            if event.sealed:
                opened = _open(key, event.sealed)
                details.update({k: v for k, v in opened.items() if k in PERSONAL_FIELDS})
        return details

    def extra_fields(
        self, aggregate: Customer | Acquirer, event: FactEvent
    ) -> dict[str, Any] | None:
        """A fact's unknown feed fields, kept sealed under the data key of its stream (a
        customer's, or an acquirer's for a transfer initiation); None once that key is gone.
        Transfer initiations recorded before they were sealed keep them in `extra`."""
        if not event.sealed:
            return dict(getattr(event, "extra", {}))
        if isinstance(aggregate, Customer) and aggregate.erased:
            return None  # (as `personal_data`: not opened with a key whole again)
        key = self.keys.get(aggregate.id)
        if key is None:
            return None
        extra = _open(key, event.sealed).get("extra", {})
        return extra if isinstance(extra, dict) else {}

    def transfers_initiated(self, upto: int | None = None) -> Initiations:
        """Each acquirer's transfer initiations, (business time, position in the log), as
        the rules' `InitiationCheck` (the acquirers found in the fact index, not by a scan of
        every event); only those recorded by event `upto`, if given. In a write, read on
        its connection (a disclosure's preventive check: no SQLAlchemy)."""
        from projections import replay

        sqlite = self.database.is_sqlite
        with self.database.snapshot() as fetch:
            head = replay.head(fetch) if upto is None else upto
            return replay.initiations(fetch, sqlite, self.mapper, head)

    @cached_property
    def read_models(self) -> ReadModels:
        from projections.runner import ReadModels

        return ReadModels(self)

    def audit(
        self, as_of: datetime | None = None, known_at: datetime | None = None
    ) -> list[Violation]:
        """Every violation among facts at or before `as_of` (all if None), judged against
        everything recorded (the violations read model, caught up first), or against only
        what was recorded by `known_at` (a direct fold of those events)."""
        if known_at is None:
            return self.read_models.violations(as_of)
        return self.read_models.judge(as_of, known_at)

    def audited_figures(
        self,
        now: datetime,
        step: Callable[[str], None] | None = None,
        *,
        compare: bool = True,
    ) -> tuple[LedgerFigures, dict[str, Any]]:
        """What the auditor's report shows, and what it can say of its own integrity: the
        read models' figures, the ledger verified (every event, and each signed checkpoint
        against it), and (if it verifies, and `compare`) every read model rebuilt from the
        events and compared with its rows (`ReadModels.check`): `verify` does not cover the
        read models, which any writer of the database can change. If the violations read
        model differs, the violations shown are judged again from the events, up to its
        position. A ledger that fails verification is not folded again (its events are in
        doubt): its figures are the read models', not compared. `step` is told of each
        stage."""
        from ledger.persistence.seals import checkpoint_by_size, verify_ledger
        from projections.runner import disagreements
        from projections.violations import Violations

        say = step or (lambda _: None)
        models = self.read_models
        figures = models.figures(now=now)
        upto = figures.positions[Violations.name]
        say("verifying the ledger")
        verified = verify_ledger(self)
        differing: int | None = None
        altered: dict[str, int] | None = None
        source = "read models"
        if verified.ok and compare:  # (else the events are in doubt, may be unreadable)
            say("rebuilding the read models from the events to compare them")
            altered = models.check()[1]
            differing = 0
            if Violations.name in altered:  # the violations shown: judged from the events
                say("judging the violations again from the events")
                judged = models.judged_upto(upto, None, now)
                differing = disagreements(figures.violations, judged)
                figures.violations = judged
                figures.violation_fact_types = models.fact_types([v.fact_id for v in judged])
                source = "events"
        try:
            checkpoint: dict[str, Any] | None = checkpoint_by_size(self, upto)
        except InputError:  # (an empty ledger has none)
            checkpoint = None
        integrity = {
            "ok": verified.ok,
            "facts": verified.facts,
            "head": verified.head,
            "problems": [f"{p['kind']}: {p['message']}" for p in verified.problems],
            "checkpoint": checkpoint,
            "violations_from": source,
            "read_models_agree": None if differing is None else differing == 0,
            "disagreements": differing or 0,
            # Each read model rebuilt from the events and compared: those that differ, with
            # the rows that do (None: not compared, the ledger failed verification).
            "read_models_differing": altered,
        }
        return figures, integrity

    @staticmethod
    def audit_events(
        customer: Customer,
        events: list[FactEvent],
        positions: list[int],
        initiated: InitiationCheck,
        as_of: datetime | None,
        now: datetime,
        exports: Sequence[tuple[int, Any]] = (),
    ) -> list[Violation]:
        """One customer's violations, as `audit` judges them (streaming readers such as the
        due-diligence export call this per customer instead of `audit`); `positions`: each
        event's position in the log; `exports`: every due-diligence export recorded, as
        (position, stored state), for the notifications an erasure or rectification calls
        for."""
        judged = [
            (event, position)
            for event, position in zip(events, positions, strict=True)
            if as_of is None or event.at <= as_of
        ]
        return [
            *audit_customer(customer, [e for e, _ in judged], [p for _, p in judged], initiated),
            *privacy.notification_violations(
                customer.ref,
                events,
                now,
                as_of,
                privacy.held_exports(events, positions, exports),
            ),
        ]

    # -- personal data: SPEC §4 and GDPR Art. 15, 19, 21 (see ledger/privacy.py) -------------

    def access_pack(
        self,
        ref: str,
        *,
        record_request: bool = True,
        deliver: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Art. 15: the subject-access pack. Answering is itself recorded, as the feed's
        `subject.access_requested`, so the ledger proves when each request was served.

        `deliver` hands the pack over (writes its files) inside the transaction that records
        the request: if it fails, the request is not recorded as served."""
        self.customer_with_events(ref)  # an unknown customer is an error before anything else
        # Read in one snapshot (the write's, if the request is recorded): an erasure
        # committed between the stream's read and the key's, or an export between the
        # stream's and the exports', would mix two moments in the pack.
        with self.database.writing() if record_request else self.database.one_snapshot():
            if record_request:
                self.record_fact({"type": "subject.access_requested", "customer": ref})
            customer, events = self.customer_with_events(ref)
            other = []
            for event in events:
                fields = self.extra_fields(customer, event) if event.sealed else None
                if fields:
                    other.append({"fact_id": event.fact_id, "fields": fields})
            details = self.personal_data(customer, events)
            exports = self.customer_exports(ref)
            pack = privacy.access_pack(customer, events, details, other, datetime.now(UTC), exports)
            if deliver is not None:
                deliver(pack)
        return pack

    def customer_exports(self, ref: str, known_at: datetime | None = None) -> list[Any]:
        """The due-diligence exports recorded after customer `ref`'s first event (by
        `known_at`, if given): what `views.trail_rows` lists those that held them from."""
        from ledger.persistence import sqlite_reads as reads

        return reads.customer_exports(self.database.fetch_on_driver, ref, known_at)

    def notifications(self) -> list[privacy.NotificationDue]:
        """Art. 19: every notification due for an erasure or rectification, answered or not
        (the customers that may have any are named by the violations read model, caught up
        first; `recipients notified --all-due` judges the same customers, and those with
        events the model has not applied, in its write: `record_notifications_due`)."""
        found = self.read_models.notifications()
        found.sort(key=lambda due: (due.at, due.customer, due.recipient))
        return found

    def _notification_streams(
        self, among: Collection[UUID] | None = None
    ) -> Iterator[tuple[list[Any], list[privacy.NotificationDue]]]:
        """The events of each customer with an erasure or rectification (or of each customer
        stream `among`, if given), and the notifications it makes due, answered or not."""
        triggers = ("customer.updated", "subject.erased")
        from ledger.persistence import export_store, personal

        exported = export_store.any_export(self.database)
        for _ident, stream in personal.streams_with_facts(self.database, triggers, among):
            events = [self.mapper.to_domain_event(stored) for stored in stream]
            registered = events[0]
            assert isinstance(registered, Customer.Registered)
            facts = [e for e in events if isinstance(e, FactEvent)]
            exports = self._held_exports(registered.ref, facts) if exported else []
            yield events, privacy.notifications(registered.ref, facts, exports)

    def _held_exports(self, ref: str, events: Sequence[FactEvent]) -> list[Any]:
        """The exports that may hold customer `ref` (`customer_exports`) if they concern
        their notifications (`privacy.exports_concern`): an erasure concerns the acquirers of
        exports too, and a rectification the acquirer of an identified export that gave the
        details before it was recorded (`privacy.notifications`)."""
        if not privacy.exports_concern(events):
            return []
        return self.customer_exports(ref)

    def record_notification(
        self, ref: str, recipient: str, at: datetime | None = None, fact_id: str | None = None
    ) -> tuple[str, list[privacy.NotificationDue]]:
        """Art. 19: record that `recipient` was told of customer `ref`'s erasure or
        rectifications (every one due at `at`); refused if none is due to that recipient."""
        at = at or datetime.now(UTC)
        fact_id = fact_id or f"cmd-{uuid4()}"
        from ledger.persistence import personal

        with self.database.writing() as tx:
            if personal.fact_recorded(self.database, fact_id):
                raise DuplicateFactError(fact_id)
            customer, events = self.customer_with_events(ref)
            exports = self._held_exports(ref, events)
            answered = [
                due
                for due in privacy.outstanding(privacy.notifications(ref, events, exports))
                if due.recipient == recipient and due.due_from <= at
            ]
            if not answered:
                raise InputError(
                    f"no notification to recipient {recipient!r} is due for customer {ref!r} "
                    "(see 'consent-ledger recipients notifications')"
                )
            regarding = sorted({due.fact_id for due in answered})
            customer.record_notification(recipient, regarding, fact_id, at)
            self._save_notified(tx, [customer])
        return fact_id, answered

    def _save_notified(self, tx: WriteTransaction, customers: list[Customer]) -> None:
        """Save customers whose new events are Art. 19 notifications, each indexed as a fact."""
        tx.insert_many(
            "ledger_facts",
            _FACT_COLUMNS,
            [
                (
                    r.domain_event.fact_id,
                    r.notification.id,
                    _NOTIFIED_TYPE,
                    r.domain_event.originator_id,
                )
                for r in self.save(*customers)
                if isinstance(r.domain_event, Customer.RecipientNotified)
            ],
        )

    def record_notifications_due(
        self, recipient: str, at: datetime | None = None
    ) -> list[tuple[str, str, list[privacy.NotificationDue]]]:
        """Art. 19, for every customer at once: record that `recipient` was told of each
        erasure and rectification due to it at `at` (a batch sent to a carrier, say). One
        notification fact per customer, with a new id, in one transaction: all or none.
        Refused if none is due to that recipient. Returns (customer, fact id, answered) of
        each, by customer.

        The customers judged, from their events read in the write, are those the violations
        read model names, caught up first (outside the write: a catch-up is a write of its
        own), with every customer who has an event it had not applied when the write began
        (`ReadModels.notice_candidates`); every customer with an erasure or a rectification
        if the model was never built."""
        at = at or datetime.now(UTC)

        done: list[tuple[str, str, list[privacy.NotificationDue]]] = []
        customers: list[Customer] = []
        caught_up = self.read_models.notices_caught_up()
        with self.database.writing() as tx:
            among = self.read_models.notice_candidates(tx.connection) if caught_up else None
            for events, dues in self._notification_streams(among):
                answered = [
                    due
                    for due in privacy.outstanding(dues)
                    if due.recipient == recipient and due.due_from <= at
                ]
                if not answered:
                    continue
                customer: Any = None
                for event in events:
                    customer = event.mutate(customer)
                assert isinstance(customer, Customer)
                fact_id = f"cmd-{uuid4()}"
                customer.record_notification(
                    recipient, sorted({due.fact_id for due in answered}), fact_id, at
                )
                customers.append(customer)
                done.append((customer.ref, fact_id, answered))
            if not done:
                raise InputError(
                    f"no notification to recipient {recipient!r} is due for any customer "
                    "(see 'consent-ledger recipients notifications')"
                )
            self._save_notified(tx, customers)
        done.sort(key=lambda row: row[0])
        return done

    def email_history(self, customer: Customer, key: DataKey) -> privacy.EmailHistory:
        """The emails the customer has had, from their saved and still pending details."""
        return privacy.EmailHistory(self._details(customer, key))

    def _details(
        self, customer: Customer, key: DataKey
    ) -> list[tuple[datetime, int, dict[str, Any]]]:
        """The customer's details, opened: (business time, version, fields) of each saved
        or still pending registration and details update."""
        from ledger.persistence import personal

        events: list[Any] = [
            self.mapper.to_domain_event(stored)
            for stored in personal.details_events(self.database, customer.id)
        ]
        saved = {e.originator_version for e in events}
        events.extend(
            e
            for e in customer.pending_events
            if isinstance(e, (Customer.Registered, Customer.DetailsUpdated))
            and e.originator_version not in saved
        )
        return [(e.at, e.originator_version, _open(key, e.sealed)) for e in events if e.sealed]

    def suppression(self, email: str) -> tuple[str, dict[str, datetime | None]]:
        """Art. 21: the email's keyed hash and its suppressed marketing channels, since when
        (None: withheld, its owner erased)."""
        return self.keys.suppression(email)

    def rotate_master_key(self) -> Rotation:
        """Re-wrap every data key under a new master key; no event changes."""
        return self.keys.rotate()


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run the cyclic garbage collector less often while recording.

    An import allocates millions of short-lived objects while it keeps up to 20,000
    customer aggregates; at the default threshold (a collection every 700 allocations) the
    collector spent a fifth of an import's time walking them, finding little: the garbage
    here is freed by reference counting. Collections stay on, a hundred times rarer.
    """
    before = gc.get_threshold()
    gc.set_threshold(70_000, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _open(key: DataKey, sealed: str) -> dict[str, Any]:
    from ledger.crypto import SealError  # where used: a query of events opens no data

    try:
        return key.open(sealed)
    except SealError:
        raise MasterKeyError("a customer's sealed data does not open with its data key") from None


class Recording:
    """One atomic recording of facts (a file or a command) inside a write transaction."""

    def __init__(
        self,
        app: ConsentLedger,
        tx: WriteTransaction,
        summary: ImportSummary,
        *,
        preventive: bool,
    ) -> None:
        self.app = app
        self.tx = tx
        self.summary = summary
        self.preventive = preventive
        self.customers: OrderedDict[UUID, Customer] = OrderedDict()
        self.acquirers: dict[UUID, Acquirer] = {}
        self.dirty: dict[UUID, Customer | Acquirer] = {}
        # The aggregate of each event triggered, in the order the facts were applied: the
        # events are recorded in that order across streams (`_flush`), so that positions in
        # the log, which break ties at the same `at` between streams, follow the feed's lines
        # (but for a fact that waited for a later line: it is recorded right after that line,
        # those that waited in their lines' order, `_release`).
        self.applied: list[UUID] = []
        self.chunk_ids: set[str] = set()
        self.new_orders: dict[str, UUID] = {}
        self.new_customers: dict[UUID, str] = {}
        self.recorded: dict[str, str] = {}
        # Facts waiting for the customer or order they name, by (kind, reference), with
        # their line numbers (`_attempt`).
        self.waiting: dict[tuple[str, str], list[tuple[int, Fact]]] = {}
        self.waiting_ids: set[str] = set()
        # Facts released by a registration or an order's placing, to apply by line number.
        self.released: list[tuple[int, str, Fact]] = []
        self.releasing = False
        # Whether the fact being applied is one that waited, was held or copies one that
        # waited (`_later`): the lookups of the chunk it is applied in cover only that
        # chunk's lines, not its own.
        self.later = False
        # By acquirer: the lines of its transfer facts that wait for their customer, and
        # its transfer facts held behind an earlier one that waits (`_behind`).
        self.transfer_waits: dict[str, set[int]] = {}
        self.held: dict[str, list[tuple[int, Fact]]] = {}
        self.copies: dict[str, list[tuple[int, Fact]]] = {}  # later lines with a waiting id
        self.known_customers: set[UUID] = set()
        self.order_owners: dict[str, UUID] = {}
        # Email histories of customers registered or read back in this recording (`_emails`):
        # the suppression list needs the email at a withdrawal without re-reading the stream.
        self.emails: OrderedDict[UUID, privacy.EmailHistory] = OrderedDict()
        # Recorded customers known by their stream's head, not read back
        # (`ConsentLedger.import_lines`' `heads`): each taken out once the recording has the
        # customer in hand by any way (`_remember`), so that one forgotten once saved is
        # read back as any other, never known by a head it has passed.
        self.heads: dict[UUID, tuple[str, int]] = {}

    # -- the loop ---------------------------------------------------------------------------

    def run(self, items: Iterator[tuple[int, Fact | InvalidFactError]]) -> None:
        """Apply the items chunk by chunk. A chunk's lookups run before the previous chunk
        is saved (they take its unsaved facts, customers and orders from memory), so that
        its inserts, queued on the transaction's worker by an import, run while this chunk
        is applied."""
        unsaved = False
        for chunk in batched(items, CHUNK):
            facts = [item for _, item in chunk if isinstance(item, Fact)]
            known = self._prefetch(facts)
            if unsaved:
                self._flush()
            self._chunk(chunk, known)
            unsaved = True
        if self.waiting:
            self._unreleased()
        if unsaved:
            self._flush()

    def _chunk(self, chunk: list[tuple[int, Fact | InvalidFactError]], known: set[str]) -> None:
        self.chunk_ids = set()
        for number, item in chunk:
            if isinstance(item, InvalidFactError):
                self._reject(item, number)
                continue
            if item.id in known or item.id in self.chunk_ids:
                self.summary.duplicates += 1
            elif item.id in self.waiting_ids:  # a duplicate only if the one waiting is recorded
                self.copies.setdefault(item.id, []).append((number, item))
            else:
                self._attempt(number, item)

    def _attempt(self, number: int, fact: Fact) -> bool:
        """Apply one fact; a fact of an import that names a customer or order not seen yet
        waits for its registration or placing later in the file (SPEC §2: "never seen, in
        the file or before"), and is applied right after it. A transfer fact also waits
        behind any earlier line of its acquirer's that waits (`_behind`)."""
        acquirer = None
        if fact.type in _TRANSFER_TYPES and not self.preventive:
            acquirer = fact.data["acquirer"]
            if self._behind(acquirer, number):
                return self._hold(acquirer, number, fact)
        outcome = self._try(number, fact)
        if acquirer is not None:
            if outcome is None:
                self.transfer_waits.setdefault(acquirer, set()).add(number)
            else:
                self._transfer_settled(acquirer, number)
        return outcome is True

    def _try(self, number: int, fact: Fact) -> bool | None:
        """`_attempt` of one fact: True if applied, False if refused, None if it waits."""
        try:
            self._apply(fact)
        except UnknownReferenceError as error:
            if self.preventive:
                self._reject(error, number)
                return False
            if len(self.waiting_ids) >= _WAITING_LIMIT:
                self._reject(_too_many_waiting(error.reason), number)
                return False
            self.waiting.setdefault((error.kind, error.ref), []).append((number, fact))
            self.waiting_ids.add(fact.id)
            return None
        except InvalidFactError as error:
            self._reject(error, number)
            return False
        except LedgerError as error:
            # A line's own fault (a details update of an erased customer, say) is reported
            # with its line; a key, a database or the ledger's integrity failing is not.
            if self.preventive or not isinstance(error, InputError):
                raise
            self._reject(InvalidFactError(str(error)), number)
            return False
        self.chunk_ids.add(fact.id)
        self.summary.accepted += 1
        if self.waiting:
            if fact.type == "customer.registered":
                self._release(("customer", str(fact.customer)))
            elif fact.type == "order.placed":
                self._release(("order", str(fact.data["order"])))
        return True

    def _release(self, key: tuple[str, str]) -> None:
        """Apply the facts that waited for `key`, and those they release in turn, in the
        order of their lines: a fact that waited for a fact that waited takes its place by
        its line, not right after the one it waited for (ties at the same `at` are broken
        by recording order, which must follow the file)."""
        for number, fact in self.waiting.pop(key, ()):
            self.waiting_ids.discard(fact.id)
            heapq.heappush(self.released, (number, fact.id, fact))
        self._drain()

    def _drain(self) -> None:
        """Apply the released facts by line number (those they release join them)."""
        if self.releasing:  # an outer `_drain` applies them, in line order with its own
            return
        self.releasing = True
        try:
            while self.released:
                number, _, fact = heapq.heappop(self.released)
                recorded = self._later(number, fact)
                if fact.id not in self.waiting_ids:  # not held again
                    self._settle_copies(fact.id, recorded)
        finally:
            self.releasing = False

    # The one rule that compares facts of two streams, `transfer_without_initiation`, breaks
    # a tie at the same `at` by recording order. So an acquirer's transfer facts (its
    # initiations, and disclosures to it) are recorded in the order of their lines: one
    # that comes after a disclosure waiting for its customer waits behind it. Otherwise a
    # verdict would depend on where that customer's registration sits in the file.

    def _behind(self, acquirer: str, number: int) -> bool:
        """Whether an earlier line of `acquirer`'s transfer facts waits or is held."""
        waits = self.transfer_waits.get(acquirer, ())
        held = self.held.get(acquirer, ())
        return any(line < number for line in waits) or any(line < number for line, _ in held)

    def _hold(self, acquirer: str, number: int, fact: Fact) -> bool:
        waits = self.transfer_waits.get(acquirer)
        if waits is not None and number in waits:  # it waited for its customer: now held
            waits.discard(number)
        elif len(self.waiting_ids) >= _WAITING_LIMIT:
            held = (
                f"{fact.type} for acquirer {acquirer!r} follows transfer facts of that "
                "acquirer that wait for their customers"
            )
            self._reject(_too_many_waiting(held), number)
            return False
        self.held.setdefault(acquirer, []).append((number, fact))
        self.waiting_ids.add(fact.id)
        return False

    def _transfer_settled(self, acquirer: str, number: int) -> None:
        """Line `number`, a transfer fact of `acquirer`, is recorded or refused: the facts
        held behind it that nothing earlier still holds are applied, in line order."""
        waits = self.transfer_waits.get(acquirer)
        if waits is not None:
            waits.discard(number)
            if not waits:
                del self.transfer_waits[acquirer]
        held = self.held.get(acquirer)
        if not held:
            return
        first = min(self.transfer_waits.get(acquirer, ()), default=None)
        freed = [(line, fact) for line, fact in held if first is None or line < first]
        if not freed:
            return
        still = [(line, fact) for line, fact in held if first is not None and line >= first]
        if still:
            self.held[acquirer] = still
        else:
            del self.held[acquirer]
        for line, fact in freed:
            self.waiting_ids.discard(fact.id)
            heapq.heappush(self.released, (line, fact.id, fact))
        self._drain()

    def _settle_copies(self, fact_id: str, recorded: bool) -> None:
        """Later lines with the id of a fact that waited: duplicates if it was recorded,
        else each is a fact of its own (as if the first had been refused at once)."""
        for number, copy in self.copies.pop(fact_id, ()):
            if recorded:
                self.summary.duplicates += 1
            else:
                recorded = self._later(number, copy)

    def _later(self, number: int, fact: Fact) -> bool:
        """`_attempt` of a fact of an earlier line than the chunk's, perhaps of an earlier
        chunk: the customers and orders that chunk knew (`_prefetch`) are not in this one's,
        and the customer it read may have left memory since (`_remember`). So what it names
        and this chunk's lookups miss is looked up on its own (`_load_customer`,
        `_order_owner`); else a fact held behind another, naming a customer recorded by an
        earlier file, was refused as naming a customer never seen."""
        outer, self.later = self.later, True
        try:
            return self._attempt(number, fact)
        finally:
            self.later = outer

    def _unreleased(self) -> None:
        """The end of the file: what still waits names a customer or order never seen."""
        while self.waiting:
            waiting, self.waiting = self.waiting, {}
            self.waiting_ids.clear()
            for (kind, ref), facts in waiting.items():
                for number, fact in facts:
                    self._reject(UnknownReferenceError(kind, ref), number)
                    if fact.type in _TRANSFER_TYPES:  # those held behind it are judged now
                        self._transfer_settled(fact.data["acquirer"], number)
                    self._settle_copies(fact.id, recorded=False)
        self.summary.errors.sort(key=lambda error: error.line or 0)

    def _reject(self, error: InvalidFactError, number: int) -> None:
        self.summary.rejected += 1
        self.summary.errors.append(InvalidFactError(error.reason, number))

    def _prefetch(self, facts: list[Fact]) -> set[str]:
        """One query per kind for the chunk: recorded fact ids, known customers and orders."""
        from ledger.persistence import indexes

        tx = self.tx
        ids = [f.id for f in facts]
        known = indexes.recorded_fact_ids(tx, ids)
        refs = {f.customer for f in facts if f.customer is not None}
        self.known_customers = indexes.customer_ids(tx, refs)
        orders = {f.order for f in facts if f.order is not None}
        self.order_owners = indexes.order_owners(tx, orders)
        self._load_customers(self.known_customers.union(self.order_owners.values()))
        # What the previous chunk recorded and has not saved yet (see `run`).
        known.update(self.chunk_ids.intersection(ids))
        self.known_customers.update(self.new_customers)
        for order in orders & self.new_orders.keys():
            self.order_owners[order] = self.new_orders[order]
        # A fact may name only an order: its owner is a known customer too.
        self.known_customers.update(self.order_owners.values())
        return known

    # -- one fact ----------------------------------------------------------------------------

    def _apply(self, fact: Fact) -> None:
        kind = fact.type
        if kind == "customer.registered":
            self._register(fact)
        elif kind == "transfer.initiated":
            acquirer = self._acquirer(fact.data["acquirer"])
            acquirer.initiate_transfer(fact, self._seal_acquirer_extra(acquirer, fact))
            self.dirty[acquirer.id] = acquirer
            self.applied.append(acquirer.id)
        else:
            customer = self._customer_for(fact)
            if kind == "order.placed":
                order = fact.data["order"]
                if self._order_owner(order) is not None:
                    raise InvalidFactError(f"order {order!r} is already placed")
            if self.preventive and kind in JUDGED_TYPES:
                self._prevent(customer, fact)
            marketing = kind in _CONSENT_TYPES and fact.data["purpose"] == "marketing"
            # The customer's data key only where the fact needs it (sealing, the Art. 21
            # list, an erasure): one read and unwrap per customer not in the key cache, which
            # an export's disclosures of more customers than it holds missed for every one.
            # None for an erased customer, even with their key whole again (put back from a
            # backup): as with it destroyed, their email is not opened to change the Art. 21
            # list, nor new fields sealed under it (a further erasure destroys it). (A
            # customer known by its head alone, `Customer.at_head`, has no state to say.)
            key = (
                self.app.keys.get(customer.id)
                if (fact.extra or marketing or kind in _KEYED)
                and not getattr(customer, "erased", False)
                else None
            )
            # (`_seal` seals nothing without a key, but refuses a details update then)
            sealed = (
                self._seal(key, fact) if key is not None or kind == "customer.updated" else None
            )
            customer.record(fact, sealed)
            self.applied.append(customer.id)
            if marketing:
                self._keep_suppression(customer, fact, key)
            elif kind == "customer.updated" and "email" in fact.data and customer.id in self.emails:
                self.emails[customer.id].add(fact.at, customer.version, str(fact.data["email"]))
            if kind == "order.placed":
                self.new_orders[fact.data["order"]] = customer.id
            elif kind == "subject.erased":
                if key is not None:  # (not erased already)
                    self.app.keys.withhold_suppression_times(self._emails_of(customer, key))
                self.app.keys.destroy(customer.id)
            self.dirty[customer.id] = customer
        self.recorded[fact.id] = kind

    def _register(self, fact: Fact) -> None:
        ref = fact.customer
        assert ref is not None
        ident = customer_id(ref)
        if ident in self.new_customers or self._load_customer(ident) is not None:
            raise InvalidFactError(f"customer {ref!r} is already registered")
        key = self.app.keys.create(ident)
        personal: dict[str, Any] = {
            name: fact.data[name] for name in PERSONAL_FIELDS if name in fact.data
        }
        sealed = key.seal({**personal, "extra": fact.extra})
        customer = Customer.register(fact, sealed)
        self.applied.append(ident)
        self._remember(customer)
        self.new_customers[ident] = ref
        self.dirty[ident] = customer
        history = self.emails[ident] = privacy.EmailHistory()
        history.add(fact.at, customer.version, str(fact.data["email"]))
        if len(self.emails) > _CUSTOMER_CACHE:  # forgotten ones are read back when needed
            self.emails.popitem(last=False)

    def _seal_acquirer_extra(self, acquirer: Acquirer, fact: Fact) -> str | None:
        """A transfer initiation's unknown fields, sealed under a data key of the acquirer's
        stream (there is no customer whose key could hold them; they may name people)."""
        if not fact.extra:
            return None
        keys = self.app.keys
        key = keys.get(acquirer.id) or keys.create(acquirer.id)
        return key.seal({"extra": fact.extra})

    def _seal(self, key: DataKey | None, fact: Fact) -> str | None:
        if fact.type == "customer.updated":
            if key is None:  # the customer was erased: no key to seal new details under
                raise CustomerErasedError(str(fact.customer), "a details update")
            personal: dict[str, Any] = {
                name: fact.data[name] for name in PERSONAL_FIELDS if name in fact.data
            }
            return key.seal({**personal, "extra": fact.extra})
        return _seal_extra(key, fact)

    def _keep_suppression(self, customer: Customer, fact: Fact, key: DataKey | None) -> None:
        """Art. 21: a marketing withdrawal (an objection) is also kept against a keyed hash of
        the customer's email then, which outlives their erasure; a fresh consent lifts it. Only
        a fact that is now the channel's latest (business time) changes the list."""
        if key is None:  # erased: no email left to key it by (their consents still say no)
            return
        channel = fact.data["channel"]
        latest = customer.latest_consent("marketing", channel)
        withdrawn = fact.type == "consent.withdrawn"
        if latest[2] == withdrawn:  # a late fact that does not change the current state
            return
        email = self._emails(customer, key).at(fact.at)
        if email is not None:
            self.app.keys.update_suppression(email, channel, fact.at, suppressed=withdrawn)

    def _emails_of(self, customer: Customer, key: DataKey) -> set[str]:
        return self._emails(customer, key).all()

    def _emails(self, customer: Customer, key: DataKey) -> privacy.EmailHistory:
        """The customer's email history: kept from their registration in this recording, or
        read back once (the stream's saved and pending details), then kept up to date: a
        read per fact made recording for a customer with a long history quadratic."""
        history = self.emails.get(customer.id)
        if history is None:
            history = self.emails[customer.id] = self.app.email_history(customer, key)
            if len(self.emails) > _CUSTOMER_CACHE:
                self.emails.popitem(last=False)
        return history

    def _prevent(self, customer: Customer, fact: Fact) -> None:
        """The candidate is judged as if recorded now: after every initiation recorded,
        those earlier in this recording included (their position, not known yet, is given
        as 0: a candidate's is None, after every position)."""
        initiated = self.app.transfers_initiated()
        for acquirer in self.acquirers.values():
            initiated.add(acquirer.name, [(at, 0) for at in acquirer.initiations])
        item = Judged(fact.type, fact.id, fact.at, customer.version + 1, fact.data, None)
        rules = broken_rules(customer, item, initiated)
        if rules:
            raise RuleViolationError(rules, fact.id, f"{fact.type} for customer {customer.ref!r}")

    # -- aggregates ----------------------------------------------------------------------------

    def _customer_for(self, fact: Fact) -> Customer:
        ref = fact.customer
        if ref is not None:
            customer = self._load_customer(customer_id(ref))
            if customer is None:
                raise UnknownReferenceError("customer", ref)
            return customer
        order = fact.order
        assert order is not None
        owner = self._order_owner(order)
        if owner is None:
            raise UnknownReferenceError("order", order)
        customer = self._load_customer(owner)
        if customer is None:  # an order row without its customer: the index is damaged
            raise InvalidFactError(f"order {order!r} has no customer in the ledger")
        return customer

    def _order_owner(self, order: str) -> UUID | None:
        owner = self.new_orders.get(order) or self.order_owners.get(order)
        if owner is None and self.later:
            from ledger.persistence import indexes

            owner = indexes.order_owners(self.tx, [order]).get(order)
        return owner

    def _load_customer(self, ident: UUID) -> Customer | None:
        cached = self.customers.get(ident)
        if cached is not None:
            self.customers.move_to_end(ident)
            return cached
        if ident not in self.known_customers and not self.later:
            return None
        try:
            aggregate: Any = self.app.repository.get(ident, projector_func=replay)
        except AggregateNotFoundError:
            return None
        assert isinstance(aggregate, Customer)
        self._remember(aggregate)
        return aggregate

    def _load_customers(self, idents: Iterable[UUID]) -> None:
        """The recorded customers a chunk names that are not in memory, read in one
        statement before its facts are applied. Its facts would read them one by one, each
        read waiting for the inserts queued on the worker thread: a file of facts about
        customers recorded before it took twice as long (`bench_incremental.py`). Those the
        previous chunk changed are in memory (a changed aggregate is kept until saved)."""
        wanted = [ident for ident in idents if ident not in self.customers]
        heads = self.heads
        if heads:
            read = []
            for ident in wanted:
                head = heads.pop(ident, None)
                if head is None:
                    read.append(ident)
                else:
                    self._remember(Customer.at_head(ident, *head))
            wanted = read
        if not wanted:
            return
        decode = self.app.decoder.stream
        for ident, rows in self.app.ledger_recorder.select_streams(wanted).items():
            aggregate = replay(None, decode(ident, rows))
            if isinstance(aggregate, Customer):  # (else `_load_customer` says what is wrong)
                self._remember(aggregate)

    def _remember(self, customer: Customer) -> None:
        if self.heads:  # known in this recording now: its head may be passed
            self.heads.pop(customer.id, None)
        self.customers[customer.id] = customer
        if len(self.customers) > _CUSTOMER_CACHE:
            # Only evict what has been saved: a dirty aggregate holds unsaved events.
            for ident in list(self.customers)[: len(self.customers) // 4]:
                if ident not in self.dirty:
                    del self.customers[ident]

    def _acquirer(self, name: str) -> Acquirer:
        ident = acquirer_id(name)
        acquirer = self.acquirers.get(ident)
        if acquirer is None:
            try:
                loaded: Any = self.app.repository.get(ident, projector_func=replay)
                assert isinstance(loaded, Acquirer)
                acquirer = loaded
            except AggregateNotFoundError:
                acquirer = Acquirer.create(name)
                self.applied.append(ident)
                self.dirty[ident] = acquirer
            self.acquirers[ident] = acquirer
        return acquirer

    # -- saving ------------------------------------------------------------------------------

    def _flush(self) -> None:
        if self.summary.errors:
            # The transaction will be rolled back; keep validating, stop writing.
            self.dirty.clear()
            self.recorded.clear()
            self.applied.clear()
            return
        if not self.dirty:
            return
        # What `Application.save` does for these aggregates (no snapshots, no cache here),
        # without a `Recording` per event: an import only needs each event's position. The
        # events go in the order they were triggered, across streams (see `applied`).
        pending = {ident: aggregate.collect_events() for ident, aggregate in self.dirty.items()}
        if sum(map(len, pending.values())) != len(self.applied):
            raise AssertionError("an event was triggered without being ordered for recording")
        streams = {ident: iter(events) for ident, events in pending.items()}
        events = [next(streams[ident]) for ident in self.applied]
        self.applied.clear()
        first = self.app.ledger_events.record(events)
        fact_rows = []
        customer_rows = []
        recorded = self.recorded
        for position, event in enumerate(events, first):
            if type(event) is Customer.Registered:
                customer_rows.append((event.originator_id, event.ref, position))
            fact_id: str | None = event.__dict__.get("fact_id")  # none on Acquirer.Named
            kind = recorded.pop(fact_id, None) if fact_id is not None else None
            if kind is not None:
                fact_rows.append((fact_id, position, kind, event.originator_id))
        tx = self.tx
        tx.insert_many("ledger_facts", _FACT_COLUMNS, fact_rows)
        tx.insert_many("ledger_customers", _CUSTOMER_COLUMNS, customer_rows)
        tx.insert_many("ledger_orders", _ORDER_COLUMNS, list(self.new_orders.items()))
        tx.flush_deferred()
        self.new_orders.clear()
        self.new_customers.clear()
        self.dirty.clear()


_CUSTOMER_CACHE = 20_000
_KEYED = frozenset({"customer.updated", "subject.erased"})  # facts that use the data key
# How far ahead of this machine's clock a command's time may be (another machine's clock).
_CLOCK_SKEW = timedelta(minutes=5)
_CONSENT_TYPES = frozenset({"consent.given", "consent.withdrawn"})
_TRANSFER_TYPES = frozenset({"transfer.initiated", "transfer.disclosure"})
_NOTIFIED_TYPE = "recipient.notified"  # ledger_facts type of a command-only Art. 19 record
_FACT_COLUMNS = ("fact_id", "notification_id", "fact_type", "originator_id")
_CUSTOMER_COLUMNS = ("customer_id", "customer_ref", "notification_id")
_ORDER_COLUMNS = ("order_ref", "customer_id")


def _command_fact(obj: dict[str, Any]) -> tuple[Fact, bool]:
    """A command's fact, its `id` and `at` defaulting to a new id and now; and whether `at`
    was given."""
    obj = dict(obj)
    obj.setdefault("id", f"cmd-{uuid4()}")
    at_given = "at" in obj
    obj.setdefault("at", iso(datetime.now(UTC)))
    return validate(obj), at_given


def _same_value(given: Any, recorded: Any) -> bool:
    """A fact's field as given and as recorded (a list of categories in any order; a total,
    a Decimal given, as its text)."""
    if isinstance(given, list) and isinstance(recorded, list):
        return sorted(map(str, given)) == sorted(map(str, recorded))
    return bool(given == recorded) or str(given) == str(recorded)


def _too_many_waiting(why: str) -> InvalidFactError:
    """The reason for a fact that could not wait for its customer or order, or an initiation
    that could not wait behind the transfer disclosures before it (`why` it would wait): not
    that they are unknown (they may come later in the file), but that too many facts already
    wait."""
    return InvalidFactError(
        f"{why} so far, and {_WAITING_LIMIT:,} facts of this file already wait for "
        "a customer or order that comes later in it (the most an import keeps): put the "
        "registrations and orders first, or import the file in parts"
    )


def _seal_extra(key: DataKey | None, fact: Fact) -> str | None:
    """Unknown fields may be personal: kept sealed under the customer's key.

    An erased customer's facts drop them, as there is no key left to seal them with.
    """
    if not fact.extra or key is None:
        return None
    return key.seal({"extra": fact.extra})
