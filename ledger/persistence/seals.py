"""Sealing the event log: Merkle nodes and signed checkpoints in the database, keys outside it.

Every write transaction that records events extends the tree (`Sealer`, attached to the
transaction by the recorder) and, just before it commits, signs a checkpoint of the new tree
size and root, in the same transaction: a committed event is always covered by a checkpoint.
The sealer starts from the stored frontier (the complete subtrees of the current size), so
sealing costs a hash or two per event whatever the size of the ledger.

`ledger_tree_nodes` holds every leaf hash (level 0) and every complete subtree hash from
level 4 (16 leaves) up, so a proof needs O(log n) rows and the levels in between are rehashed
from at most 8 leaves. It is an index for proofs and for naming the altered event: `verify`
never trusts it, it recomputes the tree from the events and holds it against the signed
checkpoints. Both tables, like the events, refuse UPDATE and DELETE (migration 0003).

The Ed25519 signing key lives in the key folder (`signing.key`, mode 0600) beside its public
half (`signing.pub`), created by `db upgrade`; `verify` needs only the public key.

The API other parts of the ledger use: `latest_checkpoint(app)`, `verify_ledger(app)` and,
pure, `ledger.integrity.verify_checkpoint(checkpoint, public_key)`.
"""

from __future__ import annotations

import binascii
import contextlib
import gc
import hmac
import multiprocessing
import os
import pickle
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from weakref import WeakKeyDictionary

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sqlalchemy.engine import Connection

from ledger import integrity, temporaries
from ledger.errors import (
    ConfigurationError,
    FactNotFoundError,
    InputError,
    IntegrityFailure,
    UnreadableRowError,
    WorkerLostError,
)
from ledger.integrity import Checkpoint, Frontier, LogAudit, LogAuditor, Problem
from ledger.persistence import tables
from ledger.persistence.database import (
    Database,
    default_key_dir,
    fetch_rows,
    signals_held,
    stream_rows,
)
from ledger.persistence.index_audit import (
    Counts,
    FactDigest,
    IndexDigests,
    Indexed,
    IndexRows,
    audit_fact_index,
    audit_indexes,
    facts_of_another_kind,
)
from ledger.persistence.keys import write_key_file
from ledger.persistence.sealing import (
    SIGNING_KEY_ID,
    Fetch,
    _foreign_key_message,
    _missing_key_message,
    _nodes_from,
    latest_key_id,
    load_frontier,
    load_signing_key,
    seal_inserted,
    seal_pending,
    signing_key_path,
    stored_size,
)

__all__ = ["load_signing_key", "seal_inserted", "seal_pending", "signing_key_path"]

PUBLIC_KEY_FILE = "signing.pub"
_BATCH = 20_000
# Rows fetched at once from SQLite or a worker's result: a few hundred stay in the CPU's
# caches while they are hashed (~10 % less CPU than 20,000). From a PostgreSQL server-side
# cursor each fetch is a round trip: _BATCH.
_SMALL_BATCH = 256
_MMAP_SIZE = 1 << 30  # a worker's SQLite reads map the file instead of copying each page
_LISTED = 50  # altered events named one by one; beyond this, counted
_BLOCK_LEVEL = 15  # parallel verification hashes blocks of 32,768 events
_MAX_WORKERS = 4  # verification processes by default: one per CPU, at most this

tree_nodes = sa.Table(
    "ledger_tree_nodes",
    tables.metadata,
    sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
)

checkpoints = sa.Table(
    "ledger_checkpoints",
    tables.metadata,
    sa.Column("tree_size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("root_hash", sa.LargeBinary, nullable=False),
    # The time exactly as signed (text), so the signature never depends on a type round trip.
    sa.Column("signed_at", sa.String(40), nullable=False),
    sa.Column("key_id", sa.String(16), nullable=False),
    sa.Column("signature", sa.LargeBinary, nullable=False),
)

_N = tree_nodes
_C = checkpoints


class HasDatabase(Protocol):
    """What the functions below need of the application: its database."""

    @property
    def database(self) -> Database: ...


# -- keys ------------------------------------------------------------------------------------


def public_key_path(database: Database) -> Path:
    return default_key_dir(database) / PUBLIC_KEY_FILE


def create_signing_key(database: Database) -> bool:
    """Create the key pair in the key folder unless it exists (`db upgrade`). True if new.

    Only for a ledger that has signed nothing yet: one whose checkpoints are signed by a key
    that is not in this key folder (another machine's, say) is refused, as a new key would
    make every checkpoint signed from now on fail `verify`, for good."""
    private_path, public_path = signing_key_path(database), public_key_path(database)
    if private_path.exists():
        key = load_signing_key(database)
        if not public_path.exists():
            _write_public_key(public_path, key.public_key())
        pinned = _latest_key_id(database)
        if pinned is None:  # a ledger from before the pin: pin it now
            database.set_meta(SIGNING_KEY_ID, integrity.key_id(key.public_key()))
        elif integrity.key_id(key.public_key()) != pinned:
            raise ConfigurationError(_foreign_key_message(database, key, pinned))
        return False
    signed_by = _latest_key_id(database)
    if signed_by is not None:
        # Another first command may have made the pair since the look above: it links its
        # key file into place before it keeps the key's id, so the file is there by now.
        if private_path.exists():
            return create_signing_key(database)
        raise ConfigurationError(_missing_key_message(private_path, signed_by))
    key = Ed25519PrivateKey.generate()
    try:
        write_key_file(
            private_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    except FileExistsError:  # another first command created it a moment ago: keep that one
        return create_signing_key(database)
    _write_public_key(public_path, key.public_key())
    database.set_meta(SIGNING_KEY_ID, integrity.key_id(key.public_key()))
    return True


def _latest_key_id(database: Database) -> str | None:
    """The key id of the ledger's latest checkpoint, else the one kept when its key pair was
    made; None for a ledger that has neither."""
    return latest_key_id(database.fetch_on_driver)


def _write_public_key(path: Path, key: Ed25519PublicKey) -> None:
    """Whole or not at all: a racing reader never sees half a key."""
    pending = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    pending.write_text(integrity.public_key_pem(key))
    os.replace(pending, path)


def load_public_key(database: Database, path: Path | None = None) -> Ed25519PublicKey:
    """The public key from `path`, else the key folder's `signing.pub`."""
    path = path or public_key_path(database)
    try:
        return integrity.load_public_key(path.read_bytes())
    except FileNotFoundError:
        raise ConfigurationError(
            f"no public key at {path}: give the ledger's signing.pub with --public-key"
        ) from None
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"cannot read the public key {path}: {error}") from None


# -- reading ---------------------------------------------------------------------------------


def _stored_size(conn: Connection) -> int:
    return stored_size(lambda sql, params: fetch_rows(conn, sql, params))


def _load_frontier(conn: Connection, size: int) -> Frontier:
    fetch: Fetch = lambda sql, params: fetch_rows(conn, sql, params)  # noqa: E731
    return load_frontier(fetch, size, postgres=conn.dialect.name == "postgresql")


def _fetch_nodes(conn: Connection, wanted: Iterable[tuple[int, int]]) -> integrity.NodeSource:
    """The nodes a proof or a frontier needs, in one query on `conn`."""
    return _nodes_from(
        lambda sql, params: fetch_rows(conn, sql, params),
        wanted,
        postgres=conn.dialect.name == "postgresql",
    )


def _proof_path(
    fetch: Fetch, ranges: Sequence[tuple[int, int]], *, postgres: bool = False
) -> list[bytes]:
    """The subtree hash of each leaf range of a proof, from the stored nodes (one query)."""
    nodes = [integrity.range_nodes(start, end) for start, end in ranges]
    node = _nodes_from(fetch, {wanted for each in nodes for wanted in each}, postgres=postgres)
    return [
        integrity.fold_subtrees([node(level, index) for level, index in each]) for each in nodes
    ]


_LATEST_CHECKPOINT = (
    "SELECT tree_size, root_hash, signed_at, key_id, signature FROM ledger_checkpoints "
    "ORDER BY tree_size DESC LIMIT 1"
)


def _checkpoint_of_values(
    size: int, root: bytes, signed_at: str, kid: str, signature: bytes
) -> Checkpoint:
    return Checkpoint(int(size), bytes(root), signed_at, kid, bytes(signature))


_PUBLIC_PEM: WeakKeyDictionary[Database, str] = WeakKeyDictionary()


def _public_key_pem(database: Database) -> str:
    """The key folder's public key, read once per database (proofs are made by the many)."""
    pem = _PUBLIC_PEM.get(database)
    if pem is None:
        pem = _PUBLIC_PEM[database] = integrity.public_key_pem(load_public_key(database))
    return pem


def _checkpoint_of(row: Any) -> Checkpoint:
    return Checkpoint(
        int(row.tree_size), bytes(row.root_hash), row.signed_at, row.key_id, bytes(row.signature)
    )


def _all_checkpoints(conn: Connection, min_size: int = 0) -> list[Checkpoint]:
    rows = conn.execute(sa.select(_C).where(_C.c.tree_size >= min_size).order_by(_C.c.tree_size))
    return [_checkpoint_of(row) for row in rows]


def _checkpoint_at(conn: Connection, size: int | None) -> Checkpoint | None:
    query = sa.select(_C)
    query = (
        query.order_by(_C.c.tree_size.desc()).limit(1)
        if size is None
        else query.where(_C.c.tree_size == size)
    )
    row = conn.execute(query).first()
    return None if row is None else _checkpoint_of(row)


# SQLite keeps any type in any column: a stream id or topic rewritten as a blob of its own
# text would cast to the same bytes, and hash as it was, yet no read by the stream finds
# the event (`customer trail` says an event is missing; `verify` said nothing). Only text
# is read as its bytes; anything else as none, which no event was sealed with.
_SQLITE_TEXT = "CASE typeof({0}) WHEN 'text' THEN CAST({0} AS BLOB) ELSE X'' END"
_EVENT_SQL = {
    # Bytes straight from the driver: no text decoding only to encode it again.
    "sqlite": f"SELECT notification_id, {_SQLITE_TEXT.format('originator_id')}, "
    f"originator_version, {_SQLITE_TEXT.format('topic')}, state FROM ledger_events "
    "WHERE notification_id >= ? AND notification_id <= ? ORDER BY notification_id",
    "postgresql": "SELECT notification_id, uuid_send(originator_id), originator_version, "
    "convert_to(topic, 'UTF8'), state FROM ledger_events "
    "WHERE notification_id >= %s AND notification_id <= %s ORDER BY notification_id",
}
_ORIGINATOR_BYTES: dict[str, Callable[[Any], bytes]] = {
    "sqlite": binascii.unhexlify,  # SQLAlchemy's Uuid keeps 32 hex digits on SQLite
    "postgresql": bytes,
}


def _event_batches(
    conn: Connection,
    database: Database,
    first: int,
    last: int | None = None,
    size: int | None = None,
) -> Iterator[Sequence[Any]]:
    """Event rows from `first` on, in batches straight off the driver's cursor (the
    verifier's hot path); `_ORIGINATOR_BYTES[backend]` turns a row's originator id into
    its 16 bytes."""
    params = (first, last if last is not None else 2**62)
    raw = conn.connection.dbapi_connection
    assert raw is not None
    # On PostgreSQL a server-side cursor: a million rows stream instead of landing in memory.
    # On PostgreSQL in binary: bytea arrives as is, not as hex text to decode (half the
    # client time).
    cursor = (
        raw.cursor()
        if database.is_sqlite
        else raw.cursor(name="consent_ledger_verify", binary=True)
    )
    try:
        cursor.execute(_EVENT_SQL[database.backend], params)
        size = size or (_SMALL_BATCH if database.is_sqlite else _BATCH)
        while batch := cursor.fetchmany(size):
            yield batch
    finally:
        cursor.close()


def _event_rows(
    conn: Connection, database: Database, first: int, last: int | None = None
) -> Iterator[tuple[int, bytes, int, bytes, bytes]]:
    """Event rows with the originator id as 16 bytes and the topic as UTF-8 bytes."""
    originator_bytes = _ORIGINATOR_BYTES[database.backend]
    for batch in _event_batches(conn, database, first, last):
        for nid, originator, version, topic, state in batch:
            yield nid, originator_bytes(originator), version, bytes(topic), bytes(state)


# -- the API: checkpoints, verification, proofs ----------------------------------------------


def latest_checkpoint(app: HasDatabase) -> dict[str, Any]:
    """The latest signed checkpoint, as JSON, with the ledger's public key (PEM) in
    `public_key`. Raises `InputError` when nothing has been recorded yet."""
    database = app.database
    with database.reading() as conn:
        checkpoint = _checkpoint_at(conn, None)
    if checkpoint is None:
        raise InputError("the ledger has no checkpoint yet: nothing has been recorded")
    return checkpoint.to_json(load_public_key(database))


@dataclass
class VerifyResult:
    """What `verify` found. `ok` iff `problems` is empty; `head` is the recomputed root."""

    facts: int
    head: str
    problems: list[dict[str, Any]] = field(default_factory=list)
    events: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "facts": self.facts, "head": self.head, "problems": self.problems}


def verify_ledger(
    app: HasDatabase,
    *,
    since: dict[str, Any] | None = None,
    public_key: Ed25519PublicKey | None = None,
    workers: int | None = None,
    block_level: int = _BLOCK_LEVEL,
    fact_index: bool = True,
) -> VerifyResult:
    """`_verify_ledger`; a row beside the events that holds a value of a type the ledger
    never writes (text in a checkpoint's signature, say: SQLite keeps any type in any
    column) is an `UnreadableRowError` (an integrity failure), not an internal error.
    Event rows of any type are named as problems, as always."""
    try:
        return _verify_ledger(
            app,
            since=since,
            public_key=public_key,
            workers=workers,
            block_level=block_level,
            fact_index=fact_index,
        )
    except _WorkerFailed as failed:
        assert failed.__cause__ is not None
        raise failed.__cause__ from None  # a worker's own failure, as it was
    except (TypeError, ValueError, OverflowError) as error:
        raise UnreadableRowError(type(error).__name__) from None


class _WorkerFailed(Exception):
    """A hashing worker failed (its exception is the cause): raised as it was, not read as
    a row of another type."""


def _verify_ledger(
    app: HasDatabase,
    *,
    since: dict[str, Any] | None,
    public_key: Ed25519PublicKey | None,
    workers: int | None,
    block_level: int,
    fact_index: bool,
) -> VerifyResult:
    """Recompute the tree from the events and hold it against every signed checkpoint.

    With `since` (a checkpoint an auditor kept) only the growth after it is recomputed, from
    the stored frontier of that size, which must hash to the kept root. Never raises for
    what it finds: every problem is in the result.

    A large ledger (SQLite or PostgreSQL) is hashed by `workers` processes (default: one per
    CPU, at most 4), in blocks of 2**block_level events, each on its own connection; if that
    finds anything, the sequential pass runs to name it. Either way every event's leaf is
    recomputed from its stored row and the whole tree from the leaves (`Frontier`), and each
    signed checkpoint is held against the root of its size.

    `fact_index=False` leaves out the fact index's check (`index_audit.FactDigest`), for a
    caller that does not read that index (an export reads the events by stream).
    """
    if workers is None:
        workers = min(os.cpu_count() or 1, _MAX_WORKERS)
    database = app.database
    key = public_key or load_public_key(database)
    with database.reading() as conn, _small_cache(conn):
        problems: list[Problem] = []
        start: Frontier | None = None
        if since is not None:
            # A kept checkpoint that the ledger does not extend: named, and the whole log is
            # checked instead (which names what else is wrong, and gives the head as it is).
            start, problems = _trusted_start(conn, since, key)
        first = start.size if start is not None else 0
        stored = _all_checkpoints(conn, first)
        audit = None
        index: list[tuple[int, int]] = []  # the facts' count, read while workers hash
        # The customer, order and fact indexes' digests, and the events' (`index_audit`),
        # held against each other (a whole log only).
        index_digests = IndexDigests()
        indexed_facts = FactDigest()
        found = Indexed(facts=fact_index)
        index_problems: list[Problem] = []

        other_kinds: list[int] = []  # fact index rows of another type or stream

        def meanwhile() -> None:  # while the workers hash
            index.append(_fact_index(conn))
            if start is None:
                index_digests.read(conn)
            if fact_index:
                indexed_facts.read_index(conn)
                other_kinds.append(facts_of_another_kind(conn))

        if start is None and workers > 1:
            audit = _parallel_audit(
                conn, database, stored, key, workers, block_level, found, meanwhile=meanwhile
            )
        if audit is None:  # sequential: the reference, and the one that names problems
            auditor = LogAuditor(stored, key, start)
            found = Indexed(facts=fact_index)
            batches = _event_batches(conn, database, first + 1)
            if start is None:
                batches = found.take(batches)
            auditor.add_batches(batches, _ORIGINATOR_BYTES[database.backend])
            audit = auditor.finish()
        if start is None:
            if not index:
                meanwhile()
            if not index_digests.agree(found):  # read again, to name what disagrees
                rows, named = IndexRows(), Indexed(facts=False, keep=True)
                rows.read(conn)
                for _batch in named.take(_event_batches(conn, database, 1)):
                    pass
                index_problems = audit_indexes(rows, named)
            # Held against events the tree found whole: a removed or altered event is named
            # as such, not again as the index rows it leaves without their event.
            agree = found.facts.same(indexed_facts) and not any(other_kinds)
            if fact_index and not audit.problems and not agree:
                events = _event_batches(conn, database, 1)
                index_problems.extend(audit_fact_index(conn, events))
        problems.extend(audit.problems)
        if audit.problems:
            problems.extend(_locate(conn, database, first))
        elif not _stored_frontier_matches(conn, audit.size, audit.frontier):
            problems.append(
                Problem(
                    "seal_altered",
                    "the stored tree nodes disagree with the events: proofs from them fail",
                )
            )
        problems.extend(_before_first(conn))
        problems.extend(index_problems)
        if start is None:
            problems.extend(_keys_against_erasures(conn))
        facts, highest = index[0] if index else _fact_index(conn)
        last = _last_event(conn)
        if highest > last:
            problems.append(
                Problem(
                    "log_truncated",
                    f"a recorded fact points at event {highest} but the log ends at "
                    f"{last}: events were removed from its end",
                    highest,
                )
            )
        problems.extend(_traces_beyond(conn, last))
    return VerifyResult(facts, audit.head.hex(), [p.to_json() for p in problems], audit.size)


def _parallel_audit(
    conn: Connection,
    database: Database,
    stored: list[Checkpoint],
    key: Ed25519PublicKey,
    workers: int,
    block_level: int,
    found: Indexed,
    meanwhile: Callable[[], None] = lambda: None,
) -> LogAudit | None:
    """The whole log hashed in aligned blocks by worker processes, each reading its blocks
    on its own connection (events never change, so every snapshot agrees on them; the blocks
    end at the last event this snapshot sees, committed). None when it does not apply (a
    small log, an in-memory database) or when a block has a gap or the audit a problem:
    the one pass then names what is wrong. `meanwhile` runs in this process while the
    workers hash (it would wait idle). `found` is given the digests of the registrations,
    placings and facts the events recorded (`index_audit.Indexed.counts`).

    Each block checks itself: its ids must run from its start to its end without a gap, so
    the log is whole without counting it first."""
    global _FORKED_DATABASE, _FORKED_STOP, _FORKED_FACTS, _FORKED_STARTED, _FORKED_SIZE
    if database.is_sqlite and database.sqlite_path is None:
        return None
    last = _last_event(conn)
    block = 1 << block_level
    if not last or last < 2 * block:
        return None
    if _stored_size(conn) != last:
        # The log's end is not the tree's (an event moved far past the end, say): the blocks
        # would span the gap, up to 2**63 ids; the one pass reads only the rows there are,
        # and names what is wrong. (The tree's size is one read of an index; a count of the
        # events would read the whole table into this process's cache before it forks.)
        return None
    sizes = [c.tree_size for c in stored]
    tasks = [
        (start, min(start + block, last), [s for s in sizes if start < s <= start + block])
        for start in range(0, last, block)
    ]
    auditor = LogAuditor(stored, key)
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    started = context.Value("i", 0)
    # The workers inherit these: a Database is not pickled.
    _FORKED_DATABASE, _FORKED_STOP, _FORKED_FACTS = database, stop, found.with_facts
    size = min(workers, len(tasks))
    _FORKED_STARTED, _FORKED_SIZE = started, size
    counts: list[Counts] = []
    whole, failure = True, None
    try:
        with contextlib.ExitStack() as stack:
            with signals_held():  # (until their own handlers are set; terminated on the way out)
                pool = stack.enter_context(context.Pool(size, initializer=_start_worker))
            hashed_blocks = pool.imap(_hash_block, tasks)
            meanwhile()
            # Every result is taken and the pool closed and joined before it is left: a
            # pool terminated with tasks in flight can hang (its task thread blocked on its
            # queue). Once a block fails, the blocks not begun are skipped by the workers.
            for result in _results(hashed_blocks, started, size):
                if isinstance(result, BaseException):
                    failure = failure or result
                    whole = False
                    stop.set()
                    continue
                hashed, matched = result
                if whole and hashed.gapless and hashed.count == min(block, last - hashed.start):
                    auditor.add_block(hashed, block_level)
                    counts.append(matched)
                    continue
                whole = False
                stop.set()
            pool.close()
            pool.join()
    finally:
        _FORKED_DATABASE, _FORKED_STOP = None, None
        _FORKED_STARTED = None
    if failure is not None:
        raise _WorkerFailed() from failure
    if not whole:
        return None
    for block_counts in counts:
        found.add_counts(block_counts)
    audit = auditor.finish()
    return None if audit.problems else audit


_FORKED_DATABASE: Database | None = None
_FORKED_STOP: Any = None  # a multiprocessing Event: set, the workers skip their blocks
_FORKED_FACTS = True  # whether the workers digest the facts the events recorded
_FORKED_STARTED: Any = None  # a multiprocessing Value: the workers started, replacements too
_FORKED_SIZE = 0  # the pool's size: a worker started beyond it replaces one killed outright


def _results(hashed_blocks: Any, started: Any, size: int) -> Iterator[Any]:
    """The pool's results in order. A worker killed outright (kill -9, the out-of-memory
    killer) takes its block with it, and the pool, which replaces the worker, would wait
    for that block for good: a replacement (more workers started than the pool's size) is
    a `WorkerLostError`, and the pool is terminated on the way out."""
    while True:
        try:
            yield hashed_blocks.next(timeout=0.2)
        except StopIteration:
            return
        except multiprocessing.TimeoutError:
            if started.value > size:
                raise WorkerLostError(
                    "a verify worker", "nothing was verified, and the ledger is unchanged"
                ) from None


def _start_worker() -> None:
    if _FORKED_STARTED is not None:
        with _FORKED_STARTED.get_lock():
            _FORKED_STARTED.value += 1
            number = _FORKED_STARTED.value
        if number > _FORKED_SIZE:
            # A replacement, forked by the pool's own thread while the parent's main thread
            # may hold a lock (SQLite's, mid-read): it could wait on that lock for good, out
            # of a signal's reach. It ends at once; the parent, seeing it, fails the command.
            os._exit(0)
    temporaries.leave_stopping_to_the_parent()
    # The worker allocates and frees a few objects per event and creates no cycles: the
    # collector would only walk the objects inherited from the parent (copying their pages).
    gc.disable()
    database = _FORKED_DATABASE
    if database is not None and not database.is_sqlite:
        # The pool's connections belong to the parent: this process opens its own.
        database.engine.dispose(close=False)


def _hash_block(
    task: tuple[int, int, list[int]],
) -> tuple[integrity.Block, Counts] | BaseException:
    """A worker's task: the block of events start + 1 to end hashed, or what went wrong
    (returned, not raised: the parent takes every result before it closes the pool)."""
    try:
        return _hash_block_of(*task)
    except Exception as error:  # handed to the parent, which raises it
        try:
            pickle.dumps(error)
        except Exception:  # an error that cannot cross to the parent
            return RuntimeError(f"{type(error).__name__}: {error}")
        return error


def _hash_block_of(start: int, end: int, stops: list[int]) -> tuple[integrity.Block, Counts]:
    """Hash the events of ids start + 1 to end, read in binary: on SQLite on a read-only
    stdlib connection of its own, memory-mapped; on PostgreSQL on a new connection, as one
    client-side result of at most a block. With it, the digests of the block's registrations,
    placings and facts (`index_audit.Indexed.counts`)."""
    database = _FORKED_DATABASE
    assert database is not None
    indexed = Indexed(facts=_FORKED_FACTS)
    if _FORKED_STOP is not None and _FORKED_STOP.is_set():
        return integrity.Block(start, gapless=False), (0, 0, 0, 0, 0, 0)  # another failed
    if database.is_sqlite:
        connection = sqlite3.connect(f"file:{database.sqlite_path}?mode=ro", uri=True)
        try:
            connection.execute(f"PRAGMA mmap_size = {_MMAP_SIZE}")
            cursor = connection.execute(_EVENT_SQL["sqlite"], (start + 1, end))
            batches = indexed.take(iter(lambda: cursor.fetchmany(_SMALL_BATCH), []))
            block = integrity.hash_block(batches, binascii.unhexlify, start, stops)
            return block, indexed.counts()
        finally:
            connection.close()
    raw = database.engine.raw_connection()
    try:
        cursor = raw.driver_connection.cursor(binary=True)  # type: ignore[union-attr]
        # In id order straight off the primary key: a planner misled by statistics not yet
        # gathered after a large import would sort the block instead, spilling it to disk.
        # (This transaction's own setting; the connection is the worker's.)
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute(_EVENT_SQL["postgresql"], (start + 1, end))
        batches = indexed.take(iter(lambda: cursor.fetchmany(_SMALL_BATCH), []))
        block = integrity.hash_block(batches, bytes, start, stops)
        return block, indexed.counts()
    finally:
        raw.close()


def _last_event(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.max(tables.events.c.notification_id))).scalar() or 0)


def _keys_against_erasures(conn: Connection) -> list[Problem]:
    """Each customer's data key against their erasure (`key_altered`): a key destroyed, or
    gone, with no erasure recorded would make them read as erased though they never were
    (and their data unreadable for good); a key whole again after their erasure would make
    their data read again. Names the customer reference (an identifier)."""
    with _small_cache(conn):  # a scan of the fact index: not kept in this process's memory
        erased = {str(ident) for (ident,) in fetch_rows(conn, _ERASED_SQL, ())}
    problems = [
        Problem(
            "key_altered",
            f"customer {ref!r} has no data key, or a destroyed one, but no erasure of theirs "
            "is recorded: they would read as erased though they never were"
            if destroyed
            else f"customer {ref!r} was erased, but has a whole data key again (put back, as "
            "from a backup): their personal data would read again",
        )
        for rows in stream_rows(conn, _KEY_STATE_SQL)
        for ref, ident, destroyed in rows
        if bool(destroyed) != (str(ident) in erased)
    ]
    if len(problems) > _LISTED_KEYS:
        more = len(problems) - _LISTED_KEYS
        problems = [*problems[:_LISTED_KEYS], Problem("key_altered", f"{more} more such")]
    return problems


_LISTED_KEYS = 10


@contextmanager
def _small_cache(conn: Connection) -> Iterator[None]:
    """SQLite's page cache at its default (2 MiB) for a scan: at the ledger's 64 MiB, a scan
    of a large table stays in the process's memory, and in its forked workers' (an export
    of 1M facts peaked 47 MiB higher)."""
    if conn.dialect.name != "sqlite":
        yield
        return
    size = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql("PRAGMA cache_size = -2000")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size = {int(size or -2000)}")


# (Stream ids as the driver gives them, the same on both sides: compared as text.)
_ERASED_SQL = "SELECT originator_id FROM ledger_facts WHERE fact_type = 'subject.erased'"
_KEY_STATE_SQL = (
    "SELECT c.customer_ref, c.customer_id, k.wrapped_key IS NULL FROM ledger_customers c "
    "LEFT JOIN ledger_data_keys k ON k.customer_id = c.customer_id ORDER BY c.notification_id"
)


def _before_first(conn: Connection) -> list[Problem]:
    """Events stored at ids below 1, where no position of the log is (its positions count
    from 1): every other read would take them for recorded facts, and the tree never hashes
    them. One range read of the primary key."""
    ids = tables.events.c.notification_id
    count, lowest, highest = conn.execute(
        sa.select(sa.func.count(), sa.func.min(ids), sa.func.max(ids)).where(ids < 1)
    ).one()
    if not count:
        return []
    which = f"id {lowest}" if count == 1 else f"{count} events, ids {lowest} to {highest},"
    return [
        Problem(
            "event_inserted",
            f"{which} stored before event 1, outside the log's positions: inserted behind the "
            "ledger's back, and covered by no signed checkpoint",
            int(lowest),
        )
    ]


def _traces_beyond(conn: Connection, last: int) -> list[Problem]:
    """What a longer log left behind when its end was cut off along with its checkpoints:
    leaves of the tree, or a read model's position, past the log's last event. (One who
    knew to remove those too would go unseen here: a head kept elsewhere, `verify --since`,
    or an export's manifest, is what catches that.)"""
    problems: list[Problem] = []
    leaves = _stored_size(conn)
    if leaves > last:
        problems.append(
            Problem(
                "log_truncated",
                f"the integrity tree holds a leaf for event {leaves} but the log ends at "
                f"{last}: events were removed from its end",
                leaves,
            )
        )
    if "rm_tracking" in sa.inspect(conn).get_table_names():
        name, position = conn.execute(
            sa.text("SELECT name, position FROM rm_tracking ORDER BY position DESC LIMIT 1")
        ).one_or_none() or (None, 0)
        if int(position or 0) > last:
            problems.append(
                Problem(
                    "log_truncated",
                    f"the read model {name} has applied events up to {int(position)} but the "
                    f"log ends at {last}: events were removed from its end",
                    int(position),
                )
            )
    return problems


def _fact_index(conn: Connection) -> tuple[int, int]:
    row = conn.execute(
        sa.select(sa.func.count(), sa.func.max(tables.facts.c.notification_id))
    ).one()
    return int(row[0]), int(row[1] or 0)


def _trusted_start(
    conn: Connection, since: dict[str, Any], key: Ed25519PublicKey
) -> tuple[Frontier | None, list[Problem]]:
    try:
        kept = Checkpoint.from_json(since)
    except integrity.CheckpointFormatError as error:
        raise InputError(f"the checkpoint given to --since is malformed: {error}") from None
    if not integrity.checkpoint_signed(kept, key):
        return None, [
            Problem(
                "checkpoint_signature",
                f"the kept checkpoint of tree size {kept.tree_size} is not signed by this "
                "ledger's key",
                tree_size=kept.tree_size,
            )
        ]
    size = _stored_size(conn)
    if size < kept.tree_size:
        return None, [
            Problem(
                "log_truncated",
                f"the kept checkpoint covers {kept.tree_size} events but the log's seals "
                f"cover only {size}: the log was cut back",
                size + 1,
                kept.tree_size,
            )
        ]
    try:
        start = _load_frontier(conn, kept.tree_size)
    except IntegrityFailure as error:
        return None, [Problem("seal_altered", str(error))]
    if not hmac.compare_digest(start.root(), kept.root_hash):
        return None, [
            Problem(
                "checkpoint_mismatch",
                f"the ledger is not an extension of the kept checkpoint of tree size "
                f"{kept.tree_size}: its first {kept.tree_size} events were rewritten",
                tree_size=kept.tree_size,
            )
        ]
    return start, []


def _stored_frontier_matches(conn: Connection, size: int, frontier: Frontier) -> bool:
    wanted = integrity.frontier_nodes(size)
    try:
        node = _fetch_nodes(conn, wanted)
        return [node(level, index) for level, index in wanted] == frontier.hashes
    except IntegrityFailure:
        return False


def _content(
    originator_bytes: Callable[[Any], bytes], originator: Any, version: Any, topic: Any, state: Any
) -> tuple[bytes, int, bytes, bytes] | None:
    """An event row's hashed fields, or None if they no longer hold the recorded types (an
    originator id of 16 bytes, a version in range, bytes for the topic and state)."""
    if not isinstance(topic, bytes | memoryview) or not isinstance(state, bytes | memoryview):
        return None
    if not isinstance(version, int) or not 0 <= version < 2**64:
        return None
    try:
        ident = originator_bytes(originator)
    except integrity.MALFORMED:
        return None
    if len(ident) != 16:
        return None
    return ident, version, bytes(topic), bytes(state)


def _locate(conn: Connection, database: Database, first: int) -> list[Problem]:
    """Name the events whose recomputed leaf differs from the leaf sealed when recorded, and
    recognise two events that traded places."""
    altered: dict[int, tuple[bytes, int, bytes, bytes] | None] = {}
    sealed: dict[int, bytes] = {}
    more = 0
    originator_bytes = _ORIGINATOR_BYTES[database.backend]
    # Memory: one batch at a time; one query of sealed leaves per batch.
    for batch in _event_batches(conn, database, first + 1, size=_BATCH):
        query = sa.select(_N.c.idx, _N.c.hash).where(
            _N.c.level == 0, _N.c.idx.between(batch[0][0] - 1, batch[-1][0] - 1)
        )
        leaves = {int(idx): bytes(digest) for idx, digest in conn.execute(query)}
        for nid, originator, version, topic, state in batch:
            expected = leaves.get(nid - 1)
            if expected is None:
                continue
            content = _content(originator_bytes, originator, version, topic, state)
            if content is None:  # no longer of the recorded types: altered, not moved
                leaf = integrity.malformed_leaf(nid)
            else:
                leaf = integrity.event_leaf_hash(nid, *content)
            if expected != leaf:
                if len(altered) < _LISTED * 2:
                    altered[nid], sealed[nid] = content, expected
                else:
                    more += 1
    problems: list[Problem] = []
    moved: set[int] = set()
    candidates = list(altered)

    def sealed_as(content_of: int, position: int) -> bool:
        content = altered[content_of]
        if content is None:
            return False
        return integrity.event_leaf_hash(position, *content) == sealed[position]

    for here in candidates:
        for there in candidates:
            if here < there and sealed_as(here, there) and sealed_as(there, here):
                moved.update((here, there))
                problems.append(
                    Problem("events_reordered", f"events {here} and {there} traded places", here)
                )
    for here in candidates:
        for there in candidates:
            if here != there and here not in moved and sealed_as(here, there):
                moved.add(here)
                problems.append(
                    Problem(
                        "events_reordered",
                        f"the event recorded as {there} now sits at position {here}",
                        here,
                    )
                )
    changed = [nid for nid in altered if nid not in moved]
    for nid in changed[:_LISTED]:
        problems.append(Problem("event_altered", f"event {nid}'s stored bytes were changed", nid))
    more += max(0, len(changed) - _LISTED)
    if more:
        problems.append(Problem("event_altered", f"{more} more events' stored bytes were changed"))
    return problems


_PROVE_SQL = {
    # The fact's position, its event and the latest checkpoint, in one statement: one
    # snapshot. The nodes follow in a second statement; they were committed with (or before)
    # the checkpoint, and nothing recorded is ever updated, so any later snapshot has them.
    backend: f"SELECT f.notification_id, e.notification_id, {columns}, c.tree_size, "
    "c.root_hash, c.signed_at, c.key_id, c.signature FROM ledger_facts f "
    "LEFT JOIN ledger_events e ON e.notification_id = f.notification_id "
    f"LEFT JOIN ({_LATEST_CHECKPOINT}) c ON 1 = 1 WHERE f.fact_id = ?"
    for backend, columns in (
        (
            "sqlite",
            "CAST(e.originator_id AS BLOB), e.originator_version, CAST(e.topic AS BLOB), e.state",
        ),
        (
            "postgresql",
            "uuid_send(e.originator_id), e.originator_version, "
            "convert_to(e.topic, 'UTF8'), e.state",
        ),
    )
}


@contextmanager
def _statements(database: Database) -> Iterator[Fetch]:
    """Run read statements (`?` marks) each seeing its own snapshot, on the driver: on
    SQLite through `Database.fetch_on_driver`, on PostgreSQL on one connection for all."""
    if database.is_sqlite:
        yield database.fetch_on_driver
        return
    with database.reading_statement() as conn:
        yield lambda sql, params: fetch_rows(conn, sql, params)


def prove_fact(app: HasDatabase, fact_id: str) -> dict[str, Any]:
    """An inclusion proof of the event recording `fact_id` against the latest checkpoint:
    the leaf bytes, its index, the RFC 9162 path and the signed checkpoint.

    Two statements on the driver itself (on SQLite, the stdlib connection `Database` keeps
    for reads; on PostgreSQL one connection outside a transaction): the fact with its event
    and the checkpoint, then the nodes of the path."""
    database = app.database
    with _statements(database) as fetch:
        found = fetch(_PROVE_SQL[database.backend], (fact_id,))
        if not found:
            raise FactNotFoundError(fact_id)
        position, recorded, originator, version, topic, state, *latest = found[0]
        position = int(position)
        checkpoint = _checkpoint_of_values(*latest) if latest[0] is not None else None
        if checkpoint is None or checkpoint.tree_size < position:
            raise IntegrityFailure(f"fact {fact_id!r} is not covered by a signed checkpoint")
        index = position - 1
        path = _proof_path(
            fetch,
            integrity.inclusion_ranges(index, checkpoint.tree_size),
            postgres=not database.is_sqlite,
        )
    if recorded is None:
        raise IntegrityFailure(f"the event of fact {fact_id!r} is missing from the log")
    leaf = integrity.leaf_bytes(
        position,
        _ORIGINATOR_BYTES[database.backend](originator),
        int(version),
        bytes(topic),
        bytes(state),
    )
    document = integrity.inclusion_document(leaf, index, path, checkpoint)
    document["checkpoint"]["public_key"] = _public_key_pem(database)
    return {"fact_id": fact_id, **document}


def checkpoint_by_size(app: HasDatabase, size: int) -> dict[str, Any]:
    with app.database.reading() as conn:
        checkpoint = _checkpoint_at(conn, size)
    if checkpoint is None:
        raise InputError(f"the ledger has no checkpoint of tree size {size}")
    return checkpoint.to_json()


def prove_consistency(
    app: HasDatabase, old: dict[str, Any], new: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A consistency proof that checkpoint `new` (default: the latest) extends `old`."""
    database = app.database
    try:
        first = Checkpoint.from_json(old)
        second = Checkpoint.from_json(new) if new is not None else None
    except integrity.CheckpointFormatError as error:
        raise InputError(f"malformed checkpoint: {error}") from None
    with database.reading() as conn:
        if second is None:
            second = _checkpoint_at(conn, None)
            if second is None:
                raise InputError("the ledger has no checkpoint yet: nothing has been recorded")
        if first.tree_size > second.tree_size:
            raise InputError(
                f"the old checkpoint (size {first.tree_size}) is newer than the new one "
                f"(size {second.tree_size})"
            )
        ranges = integrity.consistency_ranges(first.tree_size, second.tree_size)
        path = _proof_path(
            lambda sql, params: fetch_rows(conn, sql, params),
            ranges,
            postgres=not database.is_sqlite,
        )
    document = integrity.consistency_document(first, second, path)
    document["public_key"] = integrity.public_key_pem(load_public_key(database))
    return document
