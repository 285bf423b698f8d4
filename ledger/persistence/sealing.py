"""Sealing in the write path: the tree of a write transaction, extended as its events are
inserted and signed before it commits (`seals` has the rest: verification, proofs, keys).

Every statement runs on the write's driver connection (`WriteTransaction.fetch`,
`insert_many`), so a write that records one fact seals it without SQLAlchemy.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID
from weakref import WeakKeyDictionary

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import integrity
from ledger.errors import ConfigurationError, IntegrityFailure
from ledger.integrity import Checkpoint, Frontier
from ledger.iterables import batched
from ledger.persistence.database import Database, WriteTransaction, default_key_dir
from ledger.persistence.sqlite_reads import SELECT_META, checkpoint_time

SIGNING_KEY_FILE = "signing.key"
# The id of the key a ledger signs with, kept when `db upgrade` makes the key pair: another
# machine's `db upgrade` must not make a second one before the first checkpoint is signed.
SIGNING_KEY_ID = "signing_key_id"
_FIRST_STORED_LEVEL = 4  # leaves, then complete nodes of 16 leaves and up
_NODE_COLUMNS = ("level", "idx", "hash")
_CHECKPOINT_COLUMNS = ("tree_size", "root_hash", "signed_at", "key_id", "signature")
_ATTACHMENT = "integrity.sealer"

# A statement (`?` marks) and its parameters -> its rows.
Fetch = Callable[[str, tuple[Any, ...]], Sequence[Any]]
_STORED_SIZE = "SELECT max(idx) FROM ledger_tree_nodes WHERE level = 0"
_LATEST_KEY_ID = "SELECT key_id FROM ledger_checkpoints ORDER BY tree_size DESC LIMIT 1"


def signing_key_path(database: Database) -> Path:
    return default_key_dir(database) / SIGNING_KEY_FILE


def latest_key_id(fetch: Fetch) -> str | None:
    """The key id of the ledger's latest checkpoint, else the one kept when its key pair was
    made; None for a ledger that has neither."""
    rows = fetch(_LATEST_KEY_ID, ())
    if rows:
        return str(rows[0][0])
    kept = fetch(SELECT_META, (SIGNING_KEY_ID,))
    return str(kept[0][0]) if kept else None


def _missing_key_message(path: Path, signed_by: str) -> str:
    return (
        f"no signing key at {path}, and this ledger signs with key {signed_by}: "
        "copy its signing.key and signing.pub into that folder from where the ledger was "
        "created (or set CONSENT_LEDGER_KEY_DIR to that folder); a new key would make every "
        "checkpoint signed from now on fail verify"
    )


def load_signing_key(database: Database) -> Ed25519PrivateKey:
    path = signing_key_path(database)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigurationError(
            f"no signing key at {path}: recording needs it "
            "(run 'consent-ledger db upgrade' to create one for a new ledger)"
        ) from None
    except OSError as error:
        raise ConfigurationError(
            f"cannot read the signing key {path}: {error.strerror or error}"
        ) from None
    except ValueError as error:
        raise ConfigurationError(f"cannot read the signing key {path}: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"the signing key {path} is not an Ed25519 key")
    return key


def _now() -> str:
    return checkpoint_time(datetime.now(UTC))


def _uuid_bytes(value: Any) -> bytes:
    if isinstance(value, UUID):
        return value.bytes
    if isinstance(value, bytes):
        return value
    return UUID(str(value)).bytes


def _text_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class _TopicBytes(dict[str, bytes]):
    """A topic's UTF-8 bytes, encoded once: an import has a few dozen topics."""

    def __missing__(self, topic: str) -> bytes:
        value = self[topic] = topic.encode()
        return value


class _TopicParts(dict[str, bytes]):
    """A topic's length and UTF-8 bytes as a leaf holds them (`integrity.topic_part`)."""

    def __missing__(self, topic: str) -> bytes:
        value = self[topic] = integrity.topic_part(topic.encode())
        return value


_TOPIC_BYTES = _TopicBytes()
_TOPIC_PARTS = _TopicParts()
_LENGTH = integrity.LENGTH.pack
_SEAL_BATCH = 4096  # rows hashed at a time (a catch-up of old events streams through)


def _originator_bytes(value: Any) -> bytes:
    return value.bytes if type(value) is UUID else _uuid_bytes(value)


def _topic_bytes(value: Any) -> bytes:
    return _TOPIC_BYTES[value] if type(value) is str else _text_bytes(value)


class Sealer:
    """The tree of one write transaction: extended as events are inserted, signed before
    the transaction commits."""

    def __init__(self, tx: WriteTransaction) -> None:
        self.tx = tx
        fetch = tx.fetch
        self.key = _ledgers_signing_key(tx.database, fetch)
        size = stored_size(fetch)
        self.frontier = load_frontier(fetch, size, postgres=not tx.database.is_sqlite)
        self.first = size
        recorded = tx.next_notification_id - 1
        if size > recorded:
            raise IntegrityFailure(
                f"the event log has {recorded} events but its seals cover {size}: "
                "events were removed; run 'consent-ledger verify'"
            )
        if size < recorded:  # events recorded before sealing existed: seal them now
            from ledger.persistence.seals import _event_rows  # (a ledger from before sealing)

            self.add(_event_rows(tx.connection, tx.database, size + 1, recorded))

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        """Event rows (notification id, originator id, version, topic, state) just inserted.

        Stores each leaf hash and the complete nodes from level `_FIRST_STORED_LEVEL` up
        (1.07 rows per event instead of 2; the levels between are rehashed from at most
        2**(_FIRST_STORED_LEVEL - 1) leaves when a proof needs them)."""
        for batch in batched(rows, _SEAL_BATCH):
            self._add_batch(batch)

    def _add_batch(self, batch: list[Sequence[Any]]) -> None:
        frontier = self.frontier
        stack, size = frontier.hashes, frontier.size
        rows = cast("list[tuple[int, Any, int, Any, bytes]]", batch)
        if not integrity.ids_follow(rows, size + 1):
            for offset, row in enumerate(rows):
                if row[0] != size + 1 + offset:
                    raise IntegrityFailure(
                        f"event {row[0]} does not follow the sealed log of {size + offset} events"
                    )
        sha = hashlib.sha256
        head, parts, length = integrity.LEAF_HEAD_BEFORE_TOPIC.pack, _TOPIC_PARTS, _LENGTH
        try:  # rows as the recorder gives them (UUIDs, text topics): `event_leaf_hashes`
            # inline, each topic's length and bytes made once, without a list in between
            leaves = [
                sha(head(p, o.int.to_bytes(16), v) + parts[t] + length(len(s)) + s).digest()
                for p, o, v, t, s in rows
            ]
        except (AttributeError, TypeError):
            ready = [(p, _originator_bytes(o), v, _topic_bytes(t), s) for p, o, v, t, s in rows]
            leaves = integrity.event_leaf_hashes(ready, None)
        nodes = [(0, index, leaf) for index, leaf in enumerate(leaves, size)]
        # `integrity.node_hash`, inline.
        prefix, first_stored = integrity.NODE_PREFIX, _FIRST_STORED_LEVEL
        for leaf in leaves:
            stack.append(leaf)
            size += 1
            done, level = size, 0
            while not done & 1:
                right = stack.pop()
                merged = sha(prefix + stack.pop() + right).digest()
                stack.append(merged)
                done >>= 1
                level += 1
                if level >= first_stored:
                    nodes.append((level, (size - 1) >> level, merged))
        frontier.size = size
        self.tx.insert_many("ledger_tree_nodes", _NODE_COLUMNS, nodes)

    def sign(self) -> None:
        if self.frontier.size == self.first:
            return
        checkpoint = integrity.sign_checkpoint(
            self.key, self.frontier.size, self.frontier.root(), _now()
        )
        self.tx.insert_many(
            "ledger_checkpoints", _CHECKPOINT_COLUMNS, [_checkpoint_row(checkpoint)]
        )


_KEYS: WeakKeyDictionary[Database, Ed25519PrivateKey] = WeakKeyDictionary()


def _signing_key(database: Database) -> Ed25519PrivateKey:
    key = _KEYS.get(database)
    if key is None:
        key = _KEYS[database] = load_signing_key(database)
    return key


def _ledgers_signing_key(database: Database, fetch: Fetch) -> Ed25519PrivateKey:
    """The key folder's signing key, if it is the one this ledger's checkpoints are signed
    by (checked in each write, under the writer's lock: one indexed read). A key of another
    ledger, or one made anew on another machine, would sign checkpoints that never verify."""
    signed_by = latest_key_id(fetch)
    try:
        key = _signing_key(database)
    except ConfigurationError:
        if signed_by is None or os.path.lexists(signing_key_path(database)):
            raise  # (there, but unreadable: not to be copied in from elsewhere)
        raise ConfigurationError(
            _missing_key_message(signing_key_path(database), signed_by)
        ) from None
    if signed_by is not None and integrity.key_id(key.public_key()) != signed_by:
        raise ConfigurationError(_foreign_key_message(database, key, signed_by))
    return key


def _foreign_key_message(database: Database, key: Ed25519PrivateKey, signed_by: str) -> str:
    return (
        f"the signing key at {signing_key_path(database)} (key "
        f"{integrity.key_id(key.public_key())}) is not this ledger's, which signs with "
        f"key {signed_by}; use that key's signing.key (CONSENT_LEDGER_KEY_DIR "
        "names the folder), as checkpoints signed by another never verify"
    )


def seal_inserted(tx: WriteTransaction, rows: Sequence[Sequence[Any]]) -> None:
    """Extend the tree with events just inserted in `tx`; sign when `tx` is about to commit.
    Called by the recorder for every batch of events it inserts."""
    sealer = tx.attachments.get(_ATTACHMENT)
    if sealer is None:
        sealer = tx.attachments[_ATTACHMENT] = Sealer(tx)
        tx.before_commit.append(sealer.sign)
    sealer.add(rows)


def seal_pending(database: Database) -> int:
    """Seal any events recorded before sealing existed (`db upgrade`). Returns how many."""
    with database.writing() as tx:
        size = stored_size(tx.fetch)
        if tx.next_notification_id - 1 <= size:
            return 0
        sealer = Sealer(tx)
        sealer.sign()
        return sealer.frontier.size - size


def _checkpoint_row(checkpoint: Checkpoint) -> tuple[Any, ...]:
    return (
        checkpoint.tree_size,
        checkpoint.root_hash,
        checkpoint.time,
        checkpoint.key_id,
        checkpoint.signature,
    )


def stored_size(fetch: Fetch) -> int:
    """How many leaves the stored tree has."""
    last = fetch(_STORED_SIZE, ())[0][0]
    return 0 if last is None else int(last) + 1


def _stored_for(wanted: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """The stored nodes that give `wanted`: itself, or the leaves under an unstored level."""
    stored: set[tuple[int, int]] = set()
    for level, index in wanted:
        if level == 0 or level >= _FIRST_STORED_LEVEL:
            stored.add((level, index))
        else:
            stored.update((0, leaf) for leaf in range(index << level, (index + 1) << level))
    return stored


_NODE_POINT = "SELECT level, idx, hash FROM ledger_tree_nodes WHERE level = ? AND idx = ?"
_NODE_RANGE = (
    "SELECT level, idx, hash FROM ledger_tree_nodes WHERE level = ? AND idx BETWEEN ? AND ?"
)
_NODE_RUNS = (  # PostgreSQL: the runs as three arrays (levels, firsts, lasts)
    "SELECT n.level, n.idx, n.hash FROM unnest(?::smallint[], ?::bigint[], ?::bigint[]) "
    "AS r(level, first, last) JOIN ledger_tree_nodes n "
    "ON n.level = r.level AND n.idx BETWEEN r.first AND r.last"
)


def _nodes_from(
    fetch: Fetch, wanted: Iterable[tuple[int, int]], *, postgres: bool = False
) -> integrity.NodeSource:
    """The nodes in `wanted` (and below, to the stored levels) in one statement run by `fetch`
    (`?` marks), as a `NodeSource` that rehashes the levels not stored."""
    needed = _stored_for(wanted)
    found: dict[tuple[int, int], bytes] = {}
    if needed:
        # One indexed range per run of consecutive nodes of a level (the leaves under a
        # level not stored are such a run), in one raw statement: a row-value or long IN
        # list makes SQLite scan or sort, and building this in SQLAlchemy costs more than
        # running it. The text depends only on the shape of the path, so the driver's
        # statement cache serves most proofs of a tree size.
        runs: list[list[int]] = []
        for level, index in sorted(needed):
            run = runs[-1] if runs else None
            if run is not None and run[0] == level and run[2] == index - 1:
                run[2] = index
            else:
                runs.append([level, index, index])
        if postgres:  # one text for every proof: prepared once, never planned again
            sql = _NODE_RUNS
            params: tuple[Any, ...] = tuple(list(column) for column in zip(*runs, strict=True))
        else:
            sql = " UNION ALL ".join(
                _NODE_RANGE if first != last else _NODE_POINT for _, first, last in runs
            )
            params = tuple(
                value
                for level, first, last in runs
                for value in ((level, first, last) if first != last else (level, first))
            )
        # Both drivers give ints and bytes (a PostgreSQL bytea in either format).
        found = {(level, idx): digest for level, idx, digest in fetch(sql, params)}

    def node(level: int, index: int) -> bytes:
        digest = found.get((level, index))
        if digest is None:
            if not 0 < level < _FIRST_STORED_LEVEL:
                raise IntegrityFailure(f"the seal node ({level}, {index}) is missing")
            left, right = node(level - 1, 2 * index), node(level - 1, 2 * index + 1)
            digest = found[level, index] = integrity.node_hash(left, right)  # kept: reused
        return digest

    return node


def load_frontier(fetch: Fetch, size: int, *, postgres: bool) -> Frontier:
    """The stored tree's frontier at `size` leaves (one statement run by `fetch`)."""
    return Frontier.load(
        size, _nodes_from(fetch, integrity.frontier_nodes(size), postgres=postgres)
    )
