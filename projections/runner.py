"""Runs the read models: catch-up on demand, rebuild beside then swap, status, follow.

Tracking (eventsourcing's pattern): each model's row in `rm_tracking` holds the last
notification id applied and the slot queries read; it is updated in the same transaction as
the rows, so a crash leaves a model at its last committed position and nothing is applied
twice (and as models replace a stream's rows, applying again would change nothing anyway).

A catch-up holds the model's writer lock (SQLite: the database write lock; PostgreSQL: the
tracking rows `FOR UPDATE`, never the event table's lock, so imports carry on), reads the head
once and derives everything from events up to that head. Queries call `snapshot()`, which
costs one indexed query when the models are already at the head.

A pass from event zero over a large SQLite log (a rebuild, or a model caught up from zero) is
folded by worker processes, one per core (`projections.parallel`); this process writes what
they derive, in the same one transaction.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger import privacy, views
from ledger.domainmodel import Customer
from ledger.errors import (
    DatabaseUnavailableError,
    InputError,
    IntegrityFailure,
    LedgerError,
    ReadModelWorkerError,
    UnreadableEventError,
)
from ledger.feed import iso, unknown_value
from ledger.iterables import batched
from ledger.persistence import export_store
from ledger.persistence import tables as ledger_tables
from ledger.persistence.database import NOTIFY_CHANNEL, fetch_rows, first_line
from ledger.persistence.postgres_reads import CONNECT_ARGS
from ledger.persistence.recorder import (
    LedgerMapper,
    LedgerTranscoder,
    misshapen_event,
)
from ledger.rules import Initiations, Violation
from projections import parallel, replay
from projections.base import (
    STREAMS_PER_BATCH,
    DigestWriter,
    Pass,
    ReadModel,
    Writer,
    row_sum,
    stamp_to_iso,
    tracking,
)
from projections.consent_history import ConsentHistory, consent_changes_by_month
from projections.current_consent import CurrentConsent, consent_totals
from projections.disclosure_trail import (
    DisclosureTrail,
    disclosures_by_month,
    purposes_of_disclosure,
)
from projections.fold import Folder, Stream
from projections.order_status import OrderStatus, order_totals
from projections.parallel import Workers, worker_count
from projections.recipient_registry import RecipientRegistry, registry
from projections.replay import Replayed
from projections.violations import (
    Violations,
    audit_order,
    notice_streams,
    transfer_initiations,
    violations_as_of,
)

if TYPE_CHECKING:
    from ledger.application import ConsentLedger

MODELS: tuple[type[ReadModel], ...] = (
    CurrentConsent,
    ConsentHistory,
    DisclosureTrail,
    OrderStatus,
    RecipientRegistry,
    Violations,
)
NAMES = tuple(model.name for model in MODELS)

_E = ledger_tables.events
_ACQUIRER_TOPIC_PREFIX = "ledger.domainmodel:Acquirer"
# The stream id as the driver gives it (SQLite: hex text), converted once per stream.
_STREAM_COLUMNS = (
    sa.type_coerce(_E.c.originator_id, sa.String).label("originator_id"),
    _E.c.originator_version,
    _E.c.topic,
    _E.c.state,
    _E.c.notification_id,  # recording order across streams (`ledger.rules.Initiations`)
)
_FETCH = 10_000
_REBUILD_CACHE_KIB = 256 * 1024

Progress = Callable[[int], None]


class UnknownReadModelError(InputError):
    pass


@dataclass(frozen=True)
class ModelStatus:
    name: str
    description: str
    position: int
    head: int
    slot: str
    rebuilt_at: str | None

    @property
    def lag(self) -> int:
        return self.head - self.position

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "position": self.position,
            "head": self.head,
            "lag": self.lag,
            "slot": self.slot,
            "rebuilt_at": self.rebuilt_at,
        }


@dataclass(frozen=True)
class Rebuilt:
    names: tuple[str, ...]
    events: int
    streams: int
    seconds: float


@dataclass
class LedgerFigures:
    """The ledger in figures, from the read models (no personal data)."""

    head: int
    customers: int
    erased_customers: int
    facts_by_type: dict[str, int]
    violations: list[Violation]
    violation_fact_types: dict[str, str]
    consent_now: list[tuple[str, str, str, int]]
    consent_by_month: list[tuple[str, str, str, str, int]]
    disclosures_by_month: list[tuple[str, str, int]]
    disclosure_purposes: list[dict[str, Any]]
    orders_by_status: list[tuple[str, int]]
    recipients: list[dict[str, Any]]
    initiations: dict[str, list[str]]
    # Each read model's position (the last event it applied) in the snapshot read.
    positions: dict[str, int] = field(default_factory=dict)

    @property
    def facts(self) -> int:
        return sum(self.facts_by_type.values())

    @property
    def disclosures(self) -> int:
        return sum(r["disclosures"] for r in self.recipients)


def disagreements(ours: Iterable[Violation], theirs: Iterable[Violation]) -> int:
    """How many violations are in one list and not in the other, each row counted (a row
    copied in the read model is a violation `audit check` lists twice)."""

    def keys(violations: Iterable[Violation]) -> Counter[tuple[str, str, str, datetime]]:
        return Counter((v.rule, v.customer, v.fact_id, v.at) for v in violations)

    mine, other = keys(ours), keys(theirs)
    return (mine - other).total() + (other - mine).total()


@dataclass
class _Target:
    model: ReadModel
    slot: str
    position: int


class ReadModels:
    """The ledger's read models over one application."""

    def __init__(self, app: ConsentLedger) -> None:
        self.app = app
        self.database = app.database
        self.mapper = app.mapper
        self.models: dict[str, ReadModel] = {model.name: model() for model in MODELS}

    def model(self, name: str) -> ReadModel:
        try:
            return self.models[name]
        except KeyError:
            raise UnknownReadModelError(unknown_value("read model", name, NAMES)) from None

    # -- queries ---------------------------------------------------------------------------

    @contextmanager
    def snapshot(self, *names: str) -> Iterator[tuple[Connection, dict[str, str]]]:
        """A consistent snapshot in which `names` are at least at the head as of the call,
        with each model's slot. Costs one indexed query when nothing is new."""
        wanted = names or NAMES
        with self.database.reading() as conn:
            slots, behind = self._tracking(conn, wanted)
            if not behind:
                yield conn, slots
                return
        self.catch_up(wanted)
        with self.database.reading() as conn:
            slots, _behind = self._tracking(conn, wanted)
            yield conn, slots

    def violations(self, as_of: datetime | None = None) -> list[Violation]:
        """`audit check`: the rules of SPEC §3 from the read model, plus the notifications
        (Art. 19) late at `as_of` or now, judged for the customers who have any due."""
        with self.snapshot(Violations.name) as (conn, slots):
            return self._violations(conn, slots[Violations.name], as_of, datetime.now(UTC))

    def _violations(
        self, conn: Connection, slot: str, as_of: datetime | None, now: datetime
    ) -> list[Violation]:
        found = violations_as_of(conn, slot, as_of)
        for ref, events, exports in self._notice_streams(conn, slot):
            found.extend(privacy.notification_violations(ref, events, now, as_of, exports))
        return audit_order(found)

    def notifications(self) -> list[privacy.NotificationDue]:
        """Art. 19: every notification due for an erasure or rectification, answered or not,
        judged for the customers the violations read model names (`_notice_streams`)."""
        with self.snapshot(Violations.name) as (conn, slots):
            return [
                due
                for ref, events, exports in self._notice_streams(conn, slots[Violations.name])
                for due in privacy.notifications(ref, events, exports)
            ]

    def _notice_streams(
        self, conn: Connection, slot: str
    ) -> Iterator[tuple[str, list[Any], list[Any]]]:
        """The customers whose erasure or rectifications may call for notifying anyone:
        (reference, the events `privacy.notifications` reads, the exports it takes).

        Folded up to the violations model's own position, not the log's head: a write that
        landed after the catch-up (a concurrent import) is in neither the model's rows nor,
        so, its notifications (and the report's judged violations, `judged_upto` that
        position, then agree with them). An erasure concerns the acquirers of the exports
        that held the customer and did not show it too, and a rectification the acquirer of
        an identified export that gave the details before it was recorded: the customers
        erased by a fact no export may have shown, or rectified after such an export, are
        read from their replayed events (which give what `views.export_holdings` reads:
        their registration, orders and the positions of their events)."""
        head = min(self._head(conn), _position(conn, Violations.name))
        exports, held, noticed = self._noticed(conn, slot, head)
        folder = Folder(self.mapper, timelines=False, links=False, stamps=False, keep_facts=True)
        for stream in self._folded(folder, conn, noticed, head):
            if exports and privacy.rectified_and_export_shaped(stream.facts):
                held.add(stream.id)  # (an export may have given the details a rectification
                continue  # changed, or not: replayed, with the positions exports are read by)
            yield stream.ref, stream.facts, []
        for replayed in self._load(conn, held, head):
            customer, events = replayed.aggregate, replayed.events
            if isinstance(customer, Customer):
                held_by = privacy.held_exports(events, replayed.positions, exports)
                yield customer.ref, events, held_by

    def _noticed(
        self, conn: Connection, slot: str, head: int
    ) -> tuple[list[tuple[int, Any]], set[UUID], list[UUID]]:
        """The exports recorded by `head`; the customers erased by a fact one of them may not
        have shown, or rectified after an identified one read them (recorded by `head`); the
        other customers the violations model names (its `notices` in `slot`, as `conn`
        reads them)."""
        exports = export_store.exports_recorded(conn, head)
        held: set[UUID] = set()
        if exports:
            since = min(views.erasures_unshown_after(*export) for export in exports)
            held = export_store.erased_streams(conn, since, head)
            identified = views.identified_exports(exports)
            held |= export_store.rectified_after_disclosing(conn, identified, head)
        noticed = [ident for ident in notice_streams(conn, slot) if ident not in held]
        return exports, held, noticed

    def notices_caught_up(self) -> bool:
        """Before a write that takes `notice_candidates`: the violations model brought up to
        the head (so the events it has not applied, read in the write, are few). False if it
        was never built (no tracking row, or at event 0): catching it up would be a rebuild,
        slower than the caller reading every customer with an erasure or a rectification.
        False too inside a write (an ambient one): a catch-up could not commit before it."""
        if self.database.current is not None:
            return False
        with self.database.reading() as conn:
            position = conn.execute(
                sa.select(tracking.c.position).where(tracking.c.name == Violations.name)
            ).scalar()
        if not position:
            return False
        self.catch_up([Violations.name])
        return True

    def notice_candidates(self, conn: Connection) -> set[UUID] | None:
        """Inside a write (`conn` its connection, the writer's lock held, so the head does
        not move): every customer whose erasure or rectifications may call for notifying
        anyone, now or at any time, answered or not. Those `_notice_streams` names from
        the violations model at its position P (`notices` holds each customer with any
        notification due, answered or not, whatever the time: `Stream.notices`), with the
        exports and erasures up to the head, and every customer with an event recorded
        after P (which the model has not judged). None if the model was never built.

        P is read before the model's rows. On SQLite nothing can change them while the
        write holds the lock. On PostgreSQL (read committed: each statement sees what was
        committed before it) a catch-up may commit in between, its rows and its position
        together: the rows read are then those of a later position, judged from the same
        events for every customer with none after P (and those are read anyway). A rebuild
        commits a full slot and its position together, and leaves the old slot as it was."""
        row = conn.execute(
            sa.select(tracking.c.slot, tracking.c.position).where(
                tracking.c.name == Violations.name
            )
        ).first()
        if row is None or not row.position:
            return None
        head = self._head(conn)
        _exports, held, noticed = self._noticed(conn, row.slot, head)
        later, _acquirers = self._changed_streams(conn, int(row.position), head)
        return held | later | set(noticed)

    def judge(self, as_of: datetime | None, known_at: datetime) -> list[Violation]:
        """Violations as the ledger knew them at recorded time `known_at`: a direct fold of
        the events recorded by then (the read model holds only what is known now), judged
        as `ConsentLedger.audit_events` judges one customer, with `known_at` as now."""
        return self.judged_upto(self.app.known_size(known_at), as_of, known_at)

    def judged_upto(self, size: int, as_of: datetime | None, now: datetime) -> list[Violation]:
        """Violations among the first `size` events of the log, judged from the events
        themselves by a direct fold (not read from the violations read model), with `now`
        as the time the notifications due are judged at."""
        found: list[Violation] = []
        with self.database.reading() as conn, _without_cyclic_gc():
            head = min(self._head(conn), size)
            initiated = self._initiations(conn, head)
            exports = export_store.exports_recorded(conn, head)
            for stream in self._scan_replayed(conn, head):
                if isinstance(stream.aggregate, Customer):
                    found.extend(
                        self.app.audit_events(
                            stream.aggregate,
                            stream.events,
                            stream.positions,
                            initiated,
                            as_of,
                            now,
                            exports,
                        )
                    )
        return audit_order(found)

    def _initiations(self, conn: Connection, head: int) -> Initiations:
        return replay.initiations(_fetch(conn), self.database.is_sqlite, self.mapper, head)

    def recipients(self, kind: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """The recipient registry (SPEC §1), by kind then name, with each recipient's counts
        (optionally of one kind); and the event it stands at (the head as of the call, or
        later)."""
        name = RecipientRegistry.name
        with self.snapshot(name) as (conn, slots):
            return _position(conn, name), registry(conn, slots[name], kind)

    def figures(
        self, *, with_violations: bool = True, now: datetime | None = None
    ) -> LedgerFigures:
        """What the auditor's report and the records of processing are made of, from every
        read model in one snapshot (the violations too, with the notifications due judged
        at `now`), with each model's position in it."""
        with self.snapshot(*NAMES) as (conn, slots):
            violations = (
                self._violations(conn, slots[Violations.name], None, now or datetime.now(UTC))
                if with_violations
                else []
            )
            positions = {
                str(name): int(position)
                for name, position in conn.execute(
                    sa.select(tracking.c.name, tracking.c.position).where(
                        tracking.c.name.in_(NAMES)
                    )
                )
            }
            facts = ledger_tables.facts
            fact_counts: dict[Any, Any] = dict(
                conn.execute(
                    sa.select(facts.c.fact_type, sa.func.count()).group_by(facts.c.fact_type)
                ).all()
            )
            erased = conn.execute(
                sa.select(sa.func.count(sa.distinct(facts.c.originator_id))).where(
                    facts.c.fact_type == "subject.erased"
                )
            ).scalar()
            customers = conn.execute(
                sa.select(sa.func.count()).select_from(ledger_tables.customers)
            ).scalar()
            fact_types = self._fact_types(conn, [v.fact_id for v in violations])
            initiations: dict[str, list[str]] = {}
            table = transfer_initiations[slots[Violations.name]]
            for name, at in conn.execute(
                sa.select(table.c.acquirer, table.c.at).order_by(table.c.acquirer, table.c.at)
            ):
                initiations.setdefault(name, []).append(stamp_to_iso(at))
            return LedgerFigures(
                head=self._head(conn),
                customers=int(customers or 0),
                erased_customers=int(erased or 0),
                facts_by_type={str(k): int(v) for k, v in fact_counts.items()},
                violations=violations,
                violation_fact_types=fact_types,
                consent_now=consent_totals(conn, slots[CurrentConsent.name]),
                consent_by_month=consent_changes_by_month(conn, slots[ConsentHistory.name]),
                disclosures_by_month=disclosures_by_month(conn, slots[DisclosureTrail.name]),
                disclosure_purposes=purposes_of_disclosure(conn, slots[DisclosureTrail.name]),
                orders_by_status=order_totals(conn, slots[OrderStatus.name]),
                recipients=registry(conn, slots[RecipientRegistry.name]),
                initiations=initiations,
                positions=positions,
            )

    def fact_types(self, fact_ids: Sequence[str]) -> dict[str, str]:
        """The type of each fact named (from the fact index)."""
        with self.database.reading() as conn:
            return self._fact_types(conn, fact_ids)

    def _fact_types(self, conn: Connection, fact_ids: Sequence[str]) -> dict[str, str]:
        facts = ledger_tables.facts
        found: dict[str, str] = {}
        for chunk in batched(sorted(set(fact_ids)), 500):
            query = sa.select(facts.c.fact_id, facts.c.fact_type).where(facts.c.fact_id.in_(chunk))
            found.update({str(a): str(b) for a, b in conn.execute(query)})
        return found

    # -- status ----------------------------------------------------------------------------

    def status(self) -> list[ModelStatus]:
        self._ensure_tracking()
        with self.database.reading() as conn:
            head = self._head(conn)
            rows = {row.name: row for row in conn.execute(sa.select(tracking))}
        return [
            ModelStatus(
                name,
                self.models[name].description,
                int(rows[name].position),
                head,
                rows[name].slot,
                rows[name].rebuilt_at,
            )
            for name in NAMES
        ]

    # -- catch-up --------------------------------------------------------------------------

    def catch_up(self, names: Sequence[str] = NAMES) -> int:
        """Bring `names` up to the head of the log. Returns how many events were applied."""
        for name in names:
            self.model(name)
        self._ensure_tracking()
        with self._write() as conn:
            rows = self._lock_tracking(conn, names)
            head = self._head(conn)
            targets = [
                _Target(self.models[name], rows[name].slot, int(rows[name].position))
                for name in names
                if int(rows[name].position) < head
            ]
            if not targets:
                return 0
            fresh = [t for t in targets if t.position == 0]
            behind = [t for t in targets if t.position > 0]
            if fresh:
                self._pass(conn, fresh, head, since=0)
            if behind:
                self._pass(conn, behind, head, since=min(t.position for t in behind))
            for target in targets:
                conn.execute(
                    tracking.update()
                    .where(tracking.c.name == target.model.name)
                    .values(position=head)
                )
            return head - min(t.position for t in targets)

    # -- rebuild ---------------------------------------------------------------------------

    def rebuild(self, names: Sequence[str] = NAMES, progress: Progress | None = None) -> Rebuilt:
        """Rebuild `names` from event zero into their other slot, then swap in one commit.

        Until that commit, queries answer from the slot they already use; a rebuild that dies
        halfway leaves nothing visible. Returns what was rebuilt and how fast."""
        for name in names:
            self.model(name)
        self._ensure_tracking()
        started = time.perf_counter()
        with self._write(rebuild=True) as conn:
            rows = {row.name: row for row in conn.execute(sa.select(tracking))}
            head = self._head(conn)
            targets = [_Target(self.models[name], _other(rows[name].slot), 0) for name in names]
            streams = self._pass(conn, targets, head, since=0, progress=progress)
            self._lock_tracking(conn, names)
            now = iso(datetime.now(UTC))
            for target in targets:
                conn.execute(
                    tracking.update()
                    .where(tracking.c.name == target.model.name)
                    .values(position=head, slot=target.slot, rebuilt_at=now)
                )
        return Rebuilt(tuple(names), head, streams, time.perf_counter() - started)

    def check(
        self, names: Sequence[str] = NAMES, progress: Progress | None = None
    ) -> tuple[int, dict[str, int]]:
        """Each read model held against the events: rebuilt from event zero and compared
        row for row with the slot it answers from. Returns (a head, {name: rows in one slot
        and not the other} for the models that differ): a read model's rows changed outside
        consent-ledger, which `verify` alone does not see (an incrementally kept model
        equals a rebuilt one: `test_projections_properties`).

        In three steps, so that writers carry on while it runs (SQLite's write lock is
        held only by the first, short as any command's catch-up, and by the third, only
        for a model that differs):
        1. the models behind the head are brought up to it and committed, as a query's
           catch-up does (`_catch_up_to_check`);
        2. in one read transaction (a snapshot, taking no lock a writer waits for), each
           model's live slot is held against a pass from event zero up to the model's own
           position there, the pass's rows digested as they are made (a `DigestWriter`,
           the digest `_digest` reads from a table; nothing written): a model behind
           because a write landed after step 1 is checked where it stands
           (`_digests_differing`);
        3. only the models whose digests differ are checked again under the writer's
           lock, as the check always was: brought to the head and rebuilt into their spare
           slot in a transaction rolled back at the end, their rows counted
           (`_count_differing`). The head returned is this step's, else step 2's."""
        for name in names:
            self.model(name)
        self._ensure_tracking()
        differing = self._catch_up_to_check(names)
        head, suspect = self._digests_differing(
            [name for name in names if name not in differing], differing, progress
        )
        if suspect:
            head, counted = self._count_differing(suspect)
            differing.update(counted)
        return head, differing

    def _catch_up_to_check(self, names: Sequence[str]) -> dict[str, int]:
        """The check's first step: every model whose tracking row the ledger can have
        written and that is behind the head, brought up to it in a committed catch-up (no
        write at all if none is behind). Returns {name: 1} for each model whose rows a
        catch-up fails on (`_bring_up`: an altered read model, left as it was)."""
        with self.database.reading() as conn:
            rows = {row.name: row for row in conn.execute(sa.select(tracking))}
            head = self._head(conn)
        if not any(t.position < head for t in self._live(rows, names, head, {})):
            return {}
        failed: dict[str, int] = {}
        with self._write() as conn:
            rows = self._lock_tracking(conn, names)
            head = self._head(conn)
            behind = [t for t in self._live(rows, names, head, {}) if t.position < head]
            for target in self._bring_up_each(conn, behind, head, failed):
                conn.execute(
                    tracking.update()
                    .where(tracking.c.name == target.model.name)
                    .values(position=head)
                )
        return failed

    def _digests_differing(
        self, names: Sequence[str], differing: dict[str, int], progress: Progress | None
    ) -> tuple[int, list[str]]:
        """The check's second step, in one read transaction (`_read_only`): each live
        model's tables digested and held against a pass from event zero up to the model's
        position in that snapshot (one pass for the models at each position). Returns
        (the snapshot's head, the models whose digests differ); a tracking row the ledger
        cannot have written is put in `differing` (1 row)."""
        with self._read_only() as conn:
            rows = {row.name: row for row in conn.execute(sa.select(tracking))}
            head = self._head(conn)
            at: dict[int, list[_Target]] = {}
            for target in self._live(rows, names, head, differing):
                at.setdefault(target.position, []).append(target)
            suspect: list[str] = []
            for position, live in sorted(at.items()):
                digests: dict[str, list[int]] = {}
                self._pass(
                    conn,
                    [_Target(t.model, _other(t.slot), 0) for t in live],
                    position,
                    since=0,
                    progress=progress,
                    writer=_digesting(digests),
                )
                suspect.extend(
                    t.model.name
                    for t in live
                    if any(
                        _digest(conn, table[t.slot])
                        != _masked(*digests.get(table[_other(t.slot)].name, (0, 0)))
                        for table in t.model.all_tables()
                    )
                )
            return head, suspect

    def _count_differing(self, names: Sequence[str]) -> tuple[int, dict[str, int]]:
        """The check's third step, for the models whose digests differed: under the
        writer's lock (PostgreSQL: the tracking rows, and serialised with rebuilds), in a
        transaction rolled back at the end (nothing changes), each brought to the head and
        rebuilt from event zero into its spare slot, and the rows in one slot and not the
        other counted (`_rows_differing`). Returns (that head, {name: rows} for the models
        that differ). A row altered in a stream that a catch-up derived again since the
        snapshot (a write landed for it) is mended by then, and not counted: as if the
        check had begun after that catch-up."""
        with self.database.connect() as base:
            conn = base.execution_options(sqlite_begin="IMMEDIATE")
            transaction = conn.begin()
            try:
                if not self.database.is_sqlite:  # (serialised with rebuilds)
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('rm_rebuild'))"))
                rows = self._lock_tracking(conn, names)
                head = self._head(conn)
                differing: dict[str, int] = {}
                live = self._live(rows, names, head, differing)
                behind = [t for t in live if t.position < head]
                self._bring_up_each(conn, behind, head, differing)  # (rolled back too)
                live = [t for t in live if t.model.name not in differing]
                if live:
                    self._pass(
                        conn, [_Target(t.model, _other(t.slot), 0) for t in live], head, since=0
                    )
                for target in live:
                    count = sum(
                        _rows_differing(conn, table[target.slot], table[_other(target.slot)])
                        for table in target.model.all_tables()
                    )
                    if count:
                        differing[target.model.name] = count
                return head, differing
            finally:
                transaction.rollback()

    def _live(
        self, rows: dict[str, Any], names: Sequence[str], head: int, differing: dict[str, int]
    ) -> list[_Target]:
        """The live slot of each of `names` and its position, from its tracking row. A row
        the ledger cannot have written (none, a slot other than a or b, a position that is
        not a number or beyond the head) is an altered read model, not a failure of the
        check: put in `differing` (1 row), not returned."""
        live = []
        for name in names:
            row = rows.get(name)
            position = getattr(row, "position", None)
            if (
                row is None
                or row.slot not in ("a", "b")
                or type(position) is not int
                or not 0 <= position <= head
            ):
                differing[name] = 1
                continue
            live.append(_Target(self.models[name], row.slot, position))
        return live

    def _bring_up_each(
        self, conn: Connection, targets: list[_Target], head: int, failed: dict[str, int]
    ) -> list[_Target]:
        """`targets` brought to `head` (`_bring_up`), together, or one by one if that fails:
        an altered row fails its own model, put in `failed` (1 row). Returns those brought."""
        if not targets or self._bring_up(conn, targets, head):
            return targets
        brought = []
        for target in targets:
            if self._bring_up(conn, [target], head):
                brought.append(target)
            else:
                failed[target.model.name] = 1
        return brought

    @contextmanager
    def _read_only(self) -> Iterator[Connection]:
        """A read transaction that sees one snapshot and cannot write, rolled back at the
        end: SQLite (in WAL mode, `ledger.persistence.database`) takes no write lock, so
        writers commit meanwhile, and `query_only` makes a write fail at once rather than
        take the lock; PostgreSQL, a read-only repeatable-read transaction (no advisory
        lock, no tracking row locked: writers and catch-ups carry on)."""
        with self.database.connect() as base:
            if self.database.is_sqlite:
                transaction = base.begin()
                base.exec_driver_sql("PRAGMA query_only = ON")
                try:
                    yield base
                finally:
                    transaction.rollback()
                    base.exec_driver_sql("PRAGMA query_only = OFF")
            else:
                conn = base.execution_options(isolation_level="REPEATABLE READ")
                transaction = conn.begin()
                try:
                    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                    yield conn
                finally:
                    transaction.rollback()

    def _bring_up(self, conn: Connection, targets: list[_Target], head: int) -> bool:
        """`targets` (live slots behind the head) brought to it in a savepoint, as `check`
        does: False, the savepoint rolled back, if a row of theirs the pass reads or updates
        is not one the ledger wrote (a value of another type: the pass fails on it)."""
        savepoint = conn.begin_nested()
        try:
            fresh = [t for t in targets if t.position == 0]
            if fresh:
                self._pass(conn, fresh, head, since=0)
            rest = [t for t in targets if t.position > 0]
            if rest:
                self._pass(conn, rest, head, since=min(t.position for t in rest))
        except (IntegrityFailure, ValueError, TypeError, KeyError, AttributeError, ArithmeticError):
            # (a row of another type, or an event unreadable: not a database gone away, which
            # is raised as it is)
            savepoint.rollback()
            return False
        savepoint.commit()
        return True

    # -- follow ----------------------------------------------------------------------------

    def follow(
        self,
        *,
        interval: float = 1.0,
        stop: Callable[[], bool] = lambda: False,
        applied: Callable[[int], None] | None = None,
        lost: Callable[[str, float], None] | None = None,
    ) -> None:
        """Keep every model at the head until `stop()`: PostgreSQL wakes on NOTIFY after each
        recording commits (polling every `interval` as a safety net); SQLite polls.

        The first catch-up fails as any command does (a wrong URL is not retried). After it, a
        lost connection (a server restart, a session ended by an administrator) or a lock not
        had in time is told to `lost(reason, seconds)` and tried again after `seconds`, 1 s
        doubling to `RETRY_LONGEST`: each catch-up commits its rows with the models' tracking
        rows, so a pass cut off is rolled back whole and the next one takes up from there."""
        count = self.catch_up()
        if count and applied is not None:
            applied(count)
        listener: Any = None
        wait = 0.0
        while not stop():
            try:
                if listener is None and not self.database.is_sqlite:
                    listener = self._listen()
                    self._notified(listener, 0)  # a recording that ended while away
                elif listener is None:
                    _sleep(interval, stop)
                else:
                    self._notified(listener, interval)
                if stop():
                    break
                count = self.catch_up()
                wait = 0.0
            except DatabaseUnavailableError as error:
                reason = str(error)
            except Exception as error:
                if not _listener_failed(error):
                    raise
                reason = f"the notifications' connection failed: {first_line(error)}"
            else:
                if count and applied is not None:
                    applied(count)
                continue
            if listener is not None:
                _close_quietly(listener)
                listener = None
            wait = min(max(1.0, wait * 2), RETRY_LONGEST)
            if lost is not None:
                lost(reason, wait)
            _sleep(wait, stop)
        if listener is not None:
            _close_quietly(listener)

    @staticmethod
    def _notified(listener: Any, timeout: float) -> None:
        """Wait up to `timeout` for a recording's NOTIFY (0: take those already arrived)."""
        for _ in listener.notifies(timeout=timeout, stop_after=1):
            pass

    def _listen(self) -> Any:
        import psycopg

        url = self.database.url.set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        connection = psycopg.connect(dsn, autocommit=True, **CONNECT_ARGS)
        connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return connection

    # -- the pass: derive rows from streams ------------------------------------------------

    def _pass(
        self,
        conn: Connection,
        targets: list[_Target],
        head: int,
        *,
        since: int,
        progress: Progress | None = None,
        writer: Callable[[Connection, str], Writer] = Writer,
    ) -> int:
        """Replace, in each target's slot, the rows of every stream with events after `since`
        (all streams when `since` is 0, into emptied tables), with a `writer` made for each
        (a `DigestWriter` keeps a digest of the rows instead). Returns the streams derived.

        The fold reads each event's fields as fast as it can, without checking their types:
        an event altered to hold a value of another type makes the pass fail further on (in
        a model, in a worker, in the insert of its row). Then, and only then, the events are
        checked (`misshapen_event`): if one is not as the ledger wrote it, that is the
        failure (`UnreadableEventError`, exit 4); if none is, the error is raised as it is."""
        try:
            with _without_cyclic_gc(), self._large_cache(conn, since == 0):
                return self._derive(
                    conn, targets, head, since=since, progress=progress, writer=writer
                )
        except Exception as error:
            if isinstance(error, LedgerError) and not isinstance(error, ReadModelWorkerError):
                raise  # (the ledger's own finding, or a database gone away)
            where = misshapen_event(self.database, head)
            if where is None:
                raise
            raise UnreadableEventError(where) from None

    @contextmanager
    def _large_cache(self, conn: Connection, wanted: bool) -> Iterator[None]:
        """SQLite, a pass from event zero: keep more pages cached (every stream is read in
        stream order, through the index), and do not zero the pages of the emptied slot as
        they are freed (`secure_delete` is for personal data, and read models hold none:
        only references, ids, recipients, kinds and times); then give the connection back
        its own settings."""
        if not (wanted and self.database.is_sqlite):
            yield
            return
        cache = conn.exec_driver_sql("PRAGMA cache_size").scalar()
        secure = conn.exec_driver_sql("PRAGMA secure_delete").scalar()
        conn.exec_driver_sql(f"PRAGMA cache_size=-{_REBUILD_CACHE_KIB}")
        conn.exec_driver_sql("PRAGMA secure_delete=OFF")
        try:
            yield
        finally:
            conn.exec_driver_sql(f"PRAGMA secure_delete={int(secure or 0)}")
            conn.exec_driver_sql(f"PRAGMA cache_size={int(cache or -2000)}")

    def _workers(self, head: int) -> Workers | None:
        """Worker processes for a pass from event zero (`projections.parallel`): SQLite, a
        large log, two or more cores, and the ledger's own plain mapper (the workers make
        theirs)."""
        mapper = self.mapper
        path = self.database.sqlite_path
        count = worker_count()
        if path is None or head < parallel.MIN_EVENTS or count == 0:
            return None
        if type(mapper) is not LedgerMapper or type(mapper.transcoder) is not LedgerTranscoder:
            return None
        if mapper.cipher is not None or mapper.compressor is not None:
            return None
        return Workers(count)

    def _derive(
        self,
        conn: Connection,
        targets: list[_Target],
        head: int,
        *,
        since: int,
        progress: Progress | None,
        writer: Callable[[Connection, str], Writer],
    ) -> int:
        fresh = since == 0
        workers = self._workers(head) if fresh else None
        with workers or nullcontext():
            if fresh:
                acquirer_ids = self._acquirer_ids(conn, head)
                changed: set[UUID] = set()
            else:
                changed, acquirer_ids = self._changed_streams(conn, since, head)
            folder = Folder(
                self.mapper,
                timelines=any(t.model.uses_timelines for t in targets),
                links=any(t.model.uses_links for t in targets),
                stamps=any(t.model.uses_stamps for t in targets),
            )
            acquirers = self._folded(folder, conn, acquirer_ids, head)
            ordered = replay.stream_ordered_until(_fetch(conn))
            writers = {id(t): writer(conn, t.slot) for t in targets}
            extra: set[UUID] = set()
            dropped: list[sa.Index] = []
            for target in targets:
                slot_writer = writers[id(target)]
                if fresh:
                    for table in target.model.all_tables():
                        slot_writer.truncate(table)
                        # Filled from empty: indexes are built once at the end, not row by row.
                        dropped.extend(slot_writer.drop_indexes(table))
                extra |= target.model.begin(
                    Pass(slot_writer, acquirers, fresh=fresh, stream_ordered_until=ordered)
                )
                target.model.replace(slot_writer, acquirers, fresh=fresh)
            count = len(acquirers)
            if workers is not None:
                assert self.database.sqlite_path is not None
                count += workers.run(
                    self.database.sqlite_path,
                    head,
                    [t.model for t in targets],
                    [writers[id(t)] for t in targets],
                    {"timelines": folder.timelines, "links": folder.links, "stamps": folder.stamps},
                    acquirer_ids,
                    progress,
                )
                batches: Iterable[list[Stream]] = ()
            elif fresh:
                batches = self._scan(folder, conn, head, skip=acquirer_ids)
            else:
                batches = self._folded_batches(folder, conn, (changed | extra) - acquirer_ids, head)
            for batch in batches:
                for target in targets:
                    target.model.replace(writers[id(target)], batch, fresh=fresh)
                count += len(batch)
                if progress is not None:
                    progress(sum(s.events for s in batch))
            for target in targets:
                target.model.finish(writers[id(target)])
            for index in dropped:
                index.create(conn)
            return count

    def _changed_streams(
        self, conn: Connection, since: int, head: int
    ) -> tuple[set[UUID], set[UUID]]:
        query = (
            sa.select(_E.c.originator_id, _E.c.topic)
            .where(_E.c.notification_id > since, _E.c.notification_id <= head)
            .distinct()
        )
        changed: set[UUID] = set()
        acquirers: set[UUID] = set()
        for ident, topic in conn.execute(query):
            (acquirers if topic.startswith(_ACQUIRER_TOPIC_PREFIX) else changed).add(ident)
        return changed, acquirers

    def _acquirer_ids(self, conn: Connection, head: int) -> set[UUID]:
        return set(replay.initiating_acquirers(_fetch(conn), head))

    def _folded(
        self, folder: Folder, conn: Connection, ids: Iterable[UUID], head: int
    ) -> list[Stream]:
        return [s for batch in self._folded_batches(folder, conn, ids, head) for s in batch]

    def _folded_batches(
        self, folder: Folder, conn: Connection, ids: Iterable[UUID], head: int
    ) -> Iterator[list[Stream]]:
        for chunk in batched(sorted(ids), 500):
            yield list(folder.fold(self._stream_rows(conn, chunk, head)))

    def _stream_rows(self, conn: Connection, ids: list[UUID], head: int) -> Any:
        return replay.stream_rows(_fetch(conn), self.database.is_sqlite, ids, head)

    def _scan(
        self, folder: Folder, conn: Connection, head: int, *, skip: set[UUID]
    ) -> Iterator[list[Stream]]:
        """Every stream up to `head` (but `skip`), folded, in batches: read on the driver."""
        rows = self._all_rows(conn, head)
        try:
            streams = folder.fold(rows)
            yield from batched((s for s in streams if s.id not in skip), STREAMS_PER_BATCH)
        finally:  # its cursor closed now, while the connection is open, even on an error
            rows.close()

    def _all_rows(self, conn: Connection, head: int) -> Generator[tuple[Any, ...], None, None]:
        """(stream id, version, topic, state, position) of every event up to `head`, by
        stream then version, fetched in large batches on the driver (SQLite: a plain
        cursor; PostgreSQL: a server-side cursor, so memory stays flat)."""
        sql = (
            "SELECT originator_id, originator_version, topic, state, notification_id "
            f"FROM {_E.name} WHERE notification_id <= {{mark}} "
            "ORDER BY originator_id, originator_version"
        )
        driver: Any = conn.connection.dbapi_connection
        if self.database.is_sqlite:
            cursor = driver.cursor()
            cursor.execute(sql.format(mark="?"), (head,))
        else:
            cursor = driver.cursor(name="rm_scan")
            cursor.itersize = _FETCH
            cursor.execute(sql.format(mark="%s"), (head,))
        try:
            while rows := cursor.fetchmany(_FETCH):
                yield from rows
        finally:
            cursor.close()

    # -- direct folds on domain objects (Art. 19 now, and the ledger as known at a time) --

    def _load(self, conn: Connection, ids: Iterable[UUID], head: int) -> list[Replayed]:
        return replay.load(_fetch(conn), self.database.is_sqlite, self.mapper, ids, head)

    def _scan_replayed(self, conn: Connection, head: int) -> Iterator[Replayed]:
        query = (
            sa.select(*_STREAM_COLUMNS)
            .where(_E.c.notification_id <= head)
            .order_by(_E.c.originator_id, _E.c.originator_version)
        )
        rows = conn.execute(query.execution_options(yield_per=20_000))
        return self._replay(rows)

    def _replay(self, rows: Iterable[Any]) -> Iterator[Replayed]:
        """Rows ordered by stream then version -> one replayed aggregate per stream."""
        return replay.replay(rows, replay.decoder(self.mapper))

    # -- transactions and tracking ---------------------------------------------------------

    @contextmanager
    def _write(self, *, rebuild: bool = False) -> Iterator[Connection]:
        """A transaction for read-model writes: SQLite takes the write lock at BEGIN;
        PostgreSQL serialises rebuilds with an advisory lock (catch-ups lock tracking rows)."""
        with self.database.connect() as base:
            conn = base.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                if rebuild and not self.database.is_sqlite:
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('rm_rebuild'))"))
                yield conn

    def _lock_tracking(self, conn: Connection, names: Sequence[str]) -> dict[str, Any]:
        query = (
            sa.select(tracking).where(tracking.c.name.in_(list(names))).order_by(tracking.c.name)
        )
        if not self.database.is_sqlite:
            query = query.with_for_update()
        return {row.name: row for row in conn.execute(query)}

    def _tracking(self, conn: Connection, names: Sequence[str]) -> tuple[dict[str, str], bool]:
        """Each model's slot, and whether any is behind the head: one query."""
        head = sa.select(sa.func.coalesce(sa.func.max(_E.c.notification_id), 0)).scalar_subquery()
        query = sa.select(tracking.c.name, tracking.c.slot, tracking.c.position, head).where(
            tracking.c.name.in_(list(names))
        )
        slots: dict[str, str] = {}
        behind = False
        for name, slot, position, top in conn.execute(query):
            slots[name] = slot
            behind = behind or int(position) < int(top)
        return slots, behind or len(slots) < len(set(names))

    def _head(self, conn: Connection) -> int:
        value = conn.execute(sa.select(sa.func.max(_E.c.notification_id))).scalar()
        return int(value or 0)

    def _ensure_tracking(self) -> None:
        with self.database.reading() as conn:
            present = {row[0] for row in conn.execute(sa.select(tracking.c.name))}
        missing = [name for name in NAMES if name not in present]
        if not missing:
            return
        try:
            with self._write() as conn:
                conn.execute(
                    tracking.insert(),
                    [{"name": name, "position": 0, "slot": "a"} for name in missing],
                )
        except sa.exc.IntegrityError:
            pass  # another process added them first


@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Folding allocates millions of small objects and makes no reference cycles: the cyclic
    collector would only rescan them (about a fifth of a rebuild's CPU)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _digesting(digests: dict[str, list[int]]) -> Callable[[Connection, str], Writer]:
    """A pass's writers that digest its rows into `digests` (`DigestWriter`)."""
    return lambda conn, slot: DigestWriter(conn, slot, digests)


def _rows_differing(conn: Connection, ours: sa.Table, theirs: sa.Table) -> int:
    """How many rows are in one table and not the other, counted with their repeats (a
    row copied once is one row more, not its copies and the original). Each table is read
    once and summed as a multiset (`_digest`); only if they differ are the rows counted:
    every row of one table counted +1 and of the other -1, grouped by all their columns,
    and the groups' sums taken as they are (positive or negative)."""
    if _digest(conn, ours) == _digest(conn, theirs):
        return 0

    columns = [c.name for c in ours.c]

    def signed(table: sa.Table, sign: int) -> sa.Select[Any]:
        return sa.select(*(table.c[name] for name in columns), sa.literal(sign).label("n"))

    both = sa.union_all(signed(ours, 1), signed(theirs, -1)).subquery()
    grouped = (
        sa.select(sa.func.sum(both.c.n).label("d"))
        .group_by(*(both.c[name] for name in columns))
        .subquery()
    )
    return int(
        conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(sa.func.abs(grouped.c.d)), 0))
        ).scalar_one()
    )


def _digest(conn: Connection, table: sa.Table) -> tuple[int, int]:
    """(rows, their `row_sum`), as `_masked`: read on the driver, in batches (PostgreSQL:
    through a server-side cursor, in the caller's transaction)."""
    columns = ", ".join(f'"{c.name}"' for c in table.c)
    sql = f'SELECT {columns} FROM "{table.name}"'
    driver: Any = conn.connection.dbapi_connection
    cursor = driver.cursor() if conn.dialect.name == "sqlite" else driver.cursor(name="rm_check")
    count = total = 0
    try:
        cursor.execute(sql)
        while rows := cursor.fetchmany(_FETCH):
            count += len(rows)
            total += row_sum(rows)
    finally:
        cursor.close()
    return _masked(count, total)


def _masked(count: int, total: int) -> tuple[int, int]:
    """A table's digest: (rows, the sum of their hashes modulo 2**64)."""
    return count, total & 0xFFFF_FFFF_FFFF_FFFF


def _position(conn: Connection, name: str) -> int:
    """Read model `name`'s position (the last event it applied), as `conn` sees it."""
    return int(
        conn.execute(sa.select(tracking.c.position).where(tracking.c.name == name)).scalar_one()
    )


def _other(slot: str) -> str:
    return "b" if slot == "a" else "a"


def _fetch(conn: Connection) -> replay.Fetch:
    """The rows of one statement (`?` marks) on `conn`'s driver connection."""
    return lambda sql, params: fetch_rows(conn, sql, params)


RETRY_LONGEST = 30.0  # seconds: the longest wait of `follow` before trying again


def _sleep(seconds: float, stop: Callable[[], bool]) -> None:
    """Sleep `seconds`, ending early once `stop()` (a signal's handler sets it)."""
    until = time.monotonic() + seconds
    while not stop() and (left := until - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))


def _listener_failed(error: Exception) -> bool:
    """psycopg's own connection failing (the LISTEN connection, which SQLAlchemy does not
    wrap): the server went away or ended the session."""
    import psycopg

    return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)


def _close_quietly(connection: Any) -> None:
    with suppress(Exception):  # already broken: nothing to release but the socket
        connection.close()
