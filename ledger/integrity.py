"""Tamper evidence, pure: RFC 9162 Merkle trees over the event log, and signed checkpoints.

Every recorded event is a leaf, in recording order (notification id 1 is leaf 0). The leaf is
a canonical encoding of the event row exactly as stored (`leaf_bytes`), so personal data is
covered as ciphertext and destroying a customer's key later changes nothing that is hashed.

    leaf hash  = SHA-256(0x00 || leaf bytes)
    node hash  = SHA-256(0x01 || left || right)
    root of n  = RFC 9162 §2.1.1 (the left subtree is the largest power of two below n)

A checkpoint states (tree size, root hash, time, key id) and is signed with Ed25519 over the
text `checkpoint_body`. Inclusion and consistency proofs are generated and verified exactly as
RFC 9162 §2.1.3 and §2.1.4 describe. Nothing here does I/O: the database side (storing nodes
and checkpoints, reading events) is `ledger.persistence.seals`.

Trees are addressed by complete subtrees: node (level, index) covers the leaves
[index * 2**level, (index + 1) * 2**level). A `NodeSource` returns the hash of such a node;
the store keeps every complete node, so any proof needs only O(log n) of them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import operator
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
CHECKPOINT_ORIGIN = "consent-ledger checkpoint v1"

NodeSource = Callable[[int, int], bytes]
_sha256 = hashlib.sha256
_HEAD = struct.Struct(">Q16sQI")
_LEAF_HEAD = struct.Struct(">xQ16sQI")  # the same, after the leaf prefix 0x00 (a pad byte)
_LEN = struct.Struct(">I")
# A leaf's bytes before its topic, after the leaf prefix (a pad byte): for a writer that
# keeps each topic's length and bytes made once (`topic_part`).
LEAF_HEAD_BEFORE_TOPIC = struct.Struct(">xQ16sQ")
LENGTH = _LEN
_FIRST_ID = operator.itemgetter(0)
_LEVELLED = 1 << 14  # leaves added to the tree at once by `LogAuditor.add_batches`


# -- leaves and nodes ------------------------------------------------------------------------


def leaf_bytes(
    notification_id: int,
    originator_id: bytes,
    originator_version: int,
    topic: bytes,
    state: bytes,
) -> bytes:
    """The canonical encoding of one stored event row (big-endian, length-prefixed):

    u64 notification_id | 16 bytes originator_id (UUID bytes) | u64 originator_version |
    u32 len(topic) | topic (UTF-8) | u32 len(state) | state (the stored bytes, as is)
    """
    return (
        _HEAD.pack(notification_id, originator_id, originator_version, len(topic))
        + topic
        + _LEN.pack(len(state))
        + state
    )


def leaf_hash(data: bytes) -> bytes:
    return _sha256(LEAF_PREFIX + data).digest()


def topic_part(topic: bytes) -> bytes:
    """A topic as `leaf_bytes` holds it (its length, then its bytes): for a leaf made as
    `LEAF_HEAD_BEFORE_TOPIC` + topic part + `LENGTH` of the state + state."""
    return _LEN.pack(len(topic)) + topic


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(NODE_PREFIX + left + right).digest()


def empty_root() -> bytes:
    return _sha256(b"").digest()


def event_leaf_hash(
    notification_id: int, originator_id: bytes, version: int, topic: bytes, state: bytes
) -> bytes:
    """The leaf hash of one event row (the hot path of `verify`: one concatenation, one hash)."""
    return _sha256(
        b"\x00"
        + _HEAD.pack(notification_id, originator_id, version, len(topic))
        + topic
        + _LEN.pack(len(state))
        + state
    ).digest()


# What hashing a stored row raises when its columns no longer hold what was recorded: text
# where bytes were stored (SQLite's `replace()` turns a blob into text), a version out of
# range, an originator id that is not 32 hex digits (`binascii.Error` is a ValueError).
MALFORMED = (TypeError, ValueError, OverflowError, struct.error)
_POSITION = struct.Struct(">Q")


def malformed_leaf(position: int) -> bytes:
    """The leaf of an event row that cannot be hashed as stored. Its prefix 0x02 is neither a
    leaf's (0x00) nor a node's (0x01), so it equals no event's leaf: the signed roots then
    disagree, and `verify` names the event as altered instead of failing on it."""
    return _sha256(b"\x02" + _POSITION.pack(position)).digest()


def stored_leaf_hash(
    row: tuple[int, Any, int, Any, Any], originator_bytes: Callable[[Any], bytes]
) -> bytes:
    """The leaf hash of one event row read back from the database, or `malformed_leaf`."""
    position, originator, version, topic, state = row
    try:
        return event_leaf_hash(position, originator_bytes(originator), version, topic, state)
    except MALFORMED:
        return malformed_leaf(position)


def stored_leaf_hashes(
    rows: Sequence[tuple[int, Any, int, Any, Any]], originator_bytes: Callable[[Any], bytes]
) -> list[bytes]:
    """`event_leaf_hashes` of rows read back from the database (`verify`), where a row an
    attacker changed may no longer hash at all: that row's leaf is `malformed_leaf`."""
    try:
        return event_leaf_hashes(rows, originator_bytes)
    except MALFORMED:
        return [stored_leaf_hash(row, originator_bytes) for row in rows]


def event_leaf_hashes(
    rows: Iterable[tuple[int, Any, int, Any, bytes]],
    originator_bytes: Callable[[Any], bytes] | None,
    topic_bytes: Callable[[Any], bytes] | None = None,
) -> list[bytes]:
    """The leaf hashes of event rows (notification id, originator id, version, topic, state)
    as `event_leaf_hash` computes each, in one comprehension: `verify`'s hot loop, and the
    sealer's. `originator_bytes` turns the driver's originator id into its 16 bytes (None:
    they are bytes already); `topic_bytes`, if given, a topic into its UTF-8 bytes (else
    topics are bytes already)."""
    sha, head, length = _sha256, _LEAF_HEAD.pack, _LEN.pack
    if topic_bytes is not None:
        rows = [(p, o, v, topic_bytes(t), s) for p, o, v, t, s in rows]
    if originator_bytes is None:
        return [
            sha(
                head(position, originator, version, len(topic)) + topic + length(len(state)) + state
            ).digest()
            for position, originator, version, topic, state in rows
        ]
    return [
        sha(
            head(position, originator_bytes(originator), version, len(topic))
            + topic
            + length(len(state))
            + state
        ).digest()
        for position, originator, version, topic, state in rows
    ]


def ids_follow(rows: Sequence[tuple[Any, ...]], first: int) -> bool:
    """True if the rows' first fields are first, first + 1, ... without a gap (checked in C)."""
    return list(map(_FIRST_ID, rows)) == list(range(first, first + len(rows)))


def _same(value: Any) -> Any:
    return value


def _split(n: int) -> int:
    """The largest power of two strictly below n (n > 1): the size of the left subtree."""
    return 1 << ((n - 1).bit_length() - 1)


# -- the right edge of a growing tree --------------------------------------------------------


@dataclass
class Frontier:
    """The compact range [0, size): one hash per complete subtree of the binary decomposition
    of `size`, largest first. Appending a leaf costs one hash plus one per subtree it completes;
    the root of the tree so far is a fold of at most log2(size) hashes."""

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; return every complete node it creates, as (level, index, hash)."""
        index = self.size
        created = [(0, index, leaf)]
        stack = self.hashes
        stack.append(leaf)
        self.size = done = index + 1
        level = 0
        while not done & 1:
            right = stack.pop()
            merged = _sha256(b"\x01" + stack.pop() + right).digest()
            stack.append(merged)
            level += 1
            done >>= 1
            created.append((level, index >> level, merged))
        return created

    def append_subtree(self, root: bytes, level: int) -> None:
        """Add a complete subtree of 2**level leaves (the size must be a multiple of it)."""
        if self.size % (1 << level):
            raise ValueError(f"a subtree of level {level} cannot follow {self.size} leaves")
        stack = self.hashes
        stack.append(root)
        self.size += 1 << level
        done = self.size >> level
        while not done & 1:
            right = stack.pop()
            stack.append(node_hash(stack.pop(), right))
            done >>= 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Add many leaf hashes without reporting nodes (the verifier's loop)."""
        stack = self.hashes
        size = self.size
        for leaf in leaves:
            stack.append(leaf)
            size += 1
            done = size
            while not done & 1:
                right = stack.pop()
                stack.append(_sha256(b"\x01" + stack.pop() + right).digest())
                done >>= 1
        self.size = size

    def extend_leaves(self, leaves: Sequence[bytes], stops: Iterable[int] = ()) -> list[Frontier]:
        """Add many leaf hashes level by level (one comprehension per level of the tree: far
        fewer Python steps per hash than `extend`); return the frontier at each of `stops`,
        the sizes between the old size (excluded) and the new one (included), in order."""
        size, end = self.size, self.size + len(leaves)
        old = {
            level: digest
            for (level, _), digest in zip(frontier_nodes(size), self.hashes, strict=True)
        }
        sha = _sha256
        # levels[k] = (index of the first node, the complete nodes of level k from it to the
        # end): the new ones, after the old frontier's node of that level if it pairs with them.
        levels: list[tuple[int, Sequence[bytes]]] = []
        current: Sequence[bytes] = leaves
        first = size
        while current or first:
            if first & 1:
                current = [old[len(levels)], *current]
                first -= 1
            levels.append((first, current))
            pairs = iter(current)  # an odd node out is the new frontier's, of this level
            current = [
                sha(b"\x01" + left + right).digest()
                for left, right in zip(pairs, pairs, strict=False)
            ]
            first >>= 1

        def at(target: int) -> Frontier:
            hashes = []
            for level in range(target.bit_length() - 1, -1, -1):
                if target >> level & 1:
                    start, nodes = levels[level]
                    hashes.append(nodes[(target >> level) - 1 - start])
            return Frontier(target, hashes)

        snapshots = [at(stop) for stop in stops if size < stop <= end]
        self.size, self.hashes = end, at(end).hashes
        return snapshots

    def root(self) -> bytes:
        if not self.hashes:
            return empty_root()
        result = self.hashes[-1]
        for left in reversed(self.hashes[:-1]):
            result = node_hash(left, result)
        return result

    def copy(self) -> Frontier:
        return Frontier(self.size, list(self.hashes))

    @classmethod
    def load(cls, size: int, node: NodeSource) -> Frontier:
        return cls(size, [node(level, index) for level, index in frontier_nodes(size)])


def frontier_nodes(size: int) -> list[tuple[int, int]]:
    """The complete subtrees (level, index) making up [0, size), largest first."""
    return range_nodes(0, size)


def range_nodes(start: int, end: int) -> list[tuple[int, int]]:
    """The complete subtrees (level, index) making up [start, end), largest first, for the
    ranges RFC 9162's recursion produces (start aligned to the range's enclosing subtree)."""
    nodes = []
    position = start
    for level in range((end - start).bit_length() - 1, -1, -1):
        if (end - start) >> level & 1:
            if position % (1 << level):
                raise ValueError(f"range [{start}, {end}) is not a subtree of an RFC 9162 tree")
            nodes.append((level, position >> level))
            position += 1 << level
    return nodes


def range_hash(start: int, end: int, node: NodeSource) -> bytes:
    """MTH(D[start:end]) from complete nodes."""
    return fold_subtrees([node(level, index) for level, index in range_nodes(start, end)])


def fold_subtrees(hashes: Sequence[bytes]) -> bytes:
    """The root over consecutive complete subtrees, largest first (`range_nodes` order)."""
    if not hashes:
        return empty_root()
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def tree_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes (RFC 9162 §2.1.1)."""
    frontier = Frontier()
    frontier.extend(leaf_hashes)
    return frontier.root()


class MemoryTree:
    """Every complete node of a tree held in memory: for tests, small logs and proofs."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self.frontier = Frontier()
        self.nodes: dict[tuple[int, int], bytes] = {}
        for leaf in leaf_hashes:
            self.append(leaf)

    def append(self, leaf: bytes) -> None:
        for level, index, digest in self.frontier.append(leaf):
            self.nodes[level, index] = digest

    @property
    def size(self) -> int:
        return self.frontier.size

    def node(self, level: int, index: int) -> bytes:
        return self.nodes[level, index]

    def root(self, size: int | None = None) -> bytes:
        return range_hash(0, self.size if size is None else size, self.node)


# -- proofs (RFC 9162 §2.1.3, §2.1.4) --------------------------------------------------------


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose subtree hashes form PATH(index, D[0:size]), in proof order."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    ranges: list[tuple[int, int]] = []
    start, end, m = 0, size, index
    while end - start > 1:
        k = _split(end - start)
        if m < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m = start + k, m - k
    ranges.reverse()
    return ranges


def consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose subtree hashes form PROOF(old_size, D[0:new_size]), in order."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    ranges: list[tuple[int, int]] = []
    start, end, m, complete = 0, new_size, old_size, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m, complete = start + k, m - k, False
    if not complete:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def proof_nodes(ranges: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """Every complete node a proof over these ranges needs (to fetch them in one query)."""
    return {node for start, end in ranges for node in range_nodes(start, end)}


def inclusion_proof(index: int, size: int, node: NodeSource) -> list[bytes]:
    return [range_hash(start, end, node) for start, end in inclusion_ranges(index, size)]


def consistency_proof(old_size: int, new_size: int, node: NodeSource) -> list[bytes]:
    return [range_hash(start, end, node) for start, end in consistency_ranges(old_size, new_size)]


def _hashes_ok(*hashes: bytes) -> bool:
    return all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in hashes)


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: is `leaf` (a leaf hash) at `index` in the tree of `size` with `root`?"""
    if not _hashes_ok(leaf, root, *path) or not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: is the tree (new_size, new_root) an extension of (old_size, old_root)?

    Every element of the path is used: a padded, truncated or reordered path fails, and so do
    sizes that do not match the proof (the lesson of GHSA-672p-m5jq-mrh8).
    """
    if not _hashes_ok(old_root, new_root, *path) or not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not path and hmac.compare_digest(old_root, new_root)
    if old_size == 0:
        return not path and hmac.compare_digest(old_root, empty_root())
    if not path:
        return False
    proof = list(path)
    if old_size & (old_size - 1) == 0:
        proof.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(fr, old_root) and hmac.compare_digest(sr, new_root)


# -- signed checkpoints ----------------------------------------------------------------------


class CheckpointFormatError(ValueError):
    """A checkpoint or proof document is malformed (missing field, bad hex or base64)."""


@dataclass(frozen=True)
class Checkpoint:
    tree_size: int
    root_hash: bytes
    time: str
    key_id: str
    signature: bytes

    def body(self) -> bytes:
        return checkpoint_body(self.tree_size, self.root_hash, self.time, self.key_id)

    def to_json(self, public_key: Ed25519PublicKey | None = None) -> dict[str, Any]:
        document: dict[str, Any] = {
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "time": self.time,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode(),
        }
        if public_key is not None:
            document["public_key"] = public_key_pem(public_key)
        return document

    @classmethod
    def from_json(cls, document: Any) -> Checkpoint:
        if not isinstance(document, dict):
            raise CheckpointFormatError("a checkpoint must be a JSON object")
        try:
            size = document["tree_size"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise CheckpointFormatError("checkpoint tree_size must be a whole number")
            return cls(
                tree_size=size,
                root_hash=_hex(document["root_hash"], "root_hash"),
                time=str(document["time"]),
                key_id=str(document["key_id"]),
                signature=base64.b64decode(str(document["signature"]), validate=True),
            )
        except KeyError as error:
            raise CheckpointFormatError(f"checkpoint lacks {error.args[0]!r}") from None
        except (binascii.Error, ValueError) as error:
            if isinstance(error, CheckpointFormatError):
                raise
            raise CheckpointFormatError("checkpoint signature is not base64") from None


def checkpoint_body(tree_size: int, root: bytes, time: str, key_id: str) -> bytes:
    """The signed text: five lines, each ending in a newline."""
    return f"{CHECKPOINT_ORIGIN}\n{tree_size}\n{root.hex()}\n{time}\n{key_id}\n".encode()


def _hex(value: Any, name: str) -> bytes:
    try:
        raw = bytes.fromhex(str(value))
    except ValueError:
        raise CheckpointFormatError(f"{name} is not hex") from None
    if len(raw) != HASH_SIZE:
        raise CheckpointFormatError(f"{name} must be {HASH_SIZE} bytes")
    return raw


def load_public_key(key: Ed25519PublicKey | bytes | str) -> Ed25519PublicKey:
    """A public key from PEM (bytes or text), raw 32 bytes, or base64 of the raw bytes."""
    if isinstance(key, Ed25519PublicKey):
        return key
    data = key.encode() if isinstance(key, str) else key
    if data.lstrip().startswith(b"-----BEGIN"):
        loaded = serialization.load_pem_public_key(data)
    else:
        if len(data) != 32:
            try:
                data = base64.b64decode(data, validate=True)
            except binascii.Error:
                raise CheckpointFormatError("the public key is not PEM, raw or base64") from None
        loaded = Ed25519PublicKey.from_public_bytes(data)
    if not isinstance(loaded, Ed25519PublicKey):
        raise CheckpointFormatError("the public key is not an Ed25519 key")
    return loaded


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id(key: Ed25519PublicKey) -> str:
    """The first 8 bytes (hex) of SHA-256 of the raw 32-byte public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _sha256(raw).hexdigest()[:16]


def sign_checkpoint(
    private_key: Ed25519PrivateKey, tree_size: int, root: bytes, time: str
) -> Checkpoint:
    kid = key_id(private_key.public_key())
    body = checkpoint_body(tree_size, root, time, kid)
    return Checkpoint(tree_size, root, time, kid, private_key.sign(body))


def checkpoint_signed(checkpoint: Checkpoint, key: Ed25519PublicKey) -> bool:
    if checkpoint.key_id != key_id(key):
        return False
    try:
        key.verify(checkpoint.signature, checkpoint.body())
    except InvalidSignature:
        return False
    return True


def verify_checkpoint(
    checkpoint: dict[str, Any] | Checkpoint, public_key: Ed25519PublicKey | bytes | str
) -> bool:
    """True if the checkpoint is well formed and signed by `public_key` (PEM, raw or base64).

    The key must come from somewhere the verifier trusts, never from the checkpoint itself.
    """
    try:
        parsed = (
            checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.from_json(checkpoint)
        )
        return checkpoint_signed(parsed, load_public_key(public_key))
    except (CheckpointFormatError, ValueError):
        return False


# -- verifying a whole log -------------------------------------------------------------------


@dataclass
class Problem:
    """One thing `verify` found wrong, named by `kind`."""

    kind: str
    message: str
    event: int | None = None  # the notification id (recording position) it concerns
    tree_size: int | None = None  # the checkpoint it concerns

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.event is not None:
            document["event"] = self.event
        if self.tree_size is not None:
            document["tree_size"] = self.tree_size
        return document


def fold_events(
    frontier: Frontier,
    batches: Iterable[Iterable[tuple[int, Any, int, bytes, bytes]]],
    originator_bytes: Callable[[Any], bytes],
    expected: int,
    stops: Sequence[int],
    on_stop: Callable[[], None],
    on_gap: Callable[[int, int], None],
) -> int:
    """Hash event rows (notification id, originator id, version, topic, state) as leaves onto
    `frontier`; call `on_stop` when its size reaches each of `stops` (ascending) and `on_gap`
    when a row's id is not the `expected` one. Returns the next expected id.

    A row whose originator id is None carries a ready leaf hash as its state. The loop is
    written out (no calls per leaf but the hashes) because `verify` runs it a million times.
    """
    stack = frontier.hashes
    size = frontier.size
    pending = [stop for stop in reversed(stops) if stop > size]
    stop = pending.pop() if pending else -1
    sha, head, length = _sha256, _HEAD.pack, _LEN.pack
    for batch in batches:
        for position, originator, version, topic, state in batch:
            if position != expected:
                on_gap(expected, position)
            expected = position + 1
            if originator is None:
                stack.append(state)
            else:
                try:
                    stack.append(
                        sha(
                            b"\x00"
                            + head(position, originator_bytes(originator), version, len(topic))
                            + topic
                            + length(len(state))
                            + state
                        ).digest()
                    )
                except MALFORMED:
                    stack.append(malformed_leaf(position))
            size += 1
            done = size
            while not done & 1:
                right = stack.pop()
                stack.append(sha(b"\x01" + stack.pop() + right).digest())
                done >>= 1
            if size == stop:
                frontier.size = size
                on_stop()
                stop = pending.pop() if pending else -1
    frontier.size = size
    return expected


@dataclass
class Block:
    """One aligned block of leaves hashed on its own: its subtrees at each requested size
    (absolute tree sizes) and at its end, and whether its ids ran without a gap."""

    start: int
    count: int = 0
    gapless: bool = True
    at_stops: dict[int, list[bytes]] = field(default_factory=dict)
    hashes: list[bytes] = field(default_factory=list)


def hash_block(
    batches: Iterable[Sequence[tuple[int, Any, int, bytes, bytes]]],
    originator_bytes: Callable[[Any], bytes],
    start: int,
    stops: Sequence[int],
) -> Block:
    """Hash the events of ids start + 1 ... of one block (see `LogAuditor.add_block`).
    A gap in the ids stops it: the block is not gapless, and the caller hashes the log in one
    pass instead, which names what is missing."""
    block = Block(start)
    leaves: list[bytes] = []
    for batch in batches:
        if not ids_follow(batch, start + 1 + len(leaves)):
            block.gapless = False
            break
        leaves += stored_leaf_hashes(batch, originator_bytes)
    local = Frontier()
    snapshots = local.extend_leaves(leaves, [stop - start for stop in stops])
    block.at_stops = {start + snapshot.size: snapshot.hashes for snapshot in snapshots}
    block.count, block.hashes = local.size, local.hashes
    return block


@dataclass
class LogAudit:
    """The outcome of recomputing a log against its checkpoints."""

    size: int
    head: bytes
    problems: list[Problem]
    mismatched: list[Checkpoint]
    frontier: Frontier

    @property
    def ok(self) -> bool:
        return not self.problems


class LogAuditor:
    """Recompute a log's tree from its leaves (in recording order) and hold it against
    every signed checkpoint. Leaves may start after a trusted frontier (`verify --since`).

    Feed it `add_rows` (position, leaf hash), `add_events` or `add_batches` (event rows) or
    `add_block` (blocks hashed elsewhere), in order; `finish()` names every problem:
    a gap (events removed), a checkpoint whose root differs (events altered, inserted or
    reordered before it), a checkpoint beyond the log (log truncated), a bad signature,
    events after the last checkpoint (inserted without the signing key).
    """

    def __init__(
        self,
        checkpoints: Iterable[Checkpoint],
        public_key: Ed25519PublicKey,
        start: Frontier | None = None,
    ) -> None:
        self.frontier = start.copy() if start is not None else Frontier()
        self.problems: list[Problem] = []
        self.mismatched: list[Checkpoint] = []
        self.signed: list[Checkpoint] = []
        for checkpoint in sorted(checkpoints, key=lambda c: c.tree_size):
            if checkpoint_signed(checkpoint, public_key):
                self.signed.append(checkpoint)
            else:
                self.problems.append(
                    Problem(
                        "checkpoint_signature",
                        f"the checkpoint of tree size {checkpoint.tree_size} is not signed "
                        f"by this ledger's key ({key_id(public_key)})",
                        tree_size=checkpoint.tree_size,
                    )
                )
        if any(c.tree_size == self.frontier.size for c in self.signed):
            self._pending = [c for c in self.signed if c.tree_size == self.frontier.size]
            self._check_pending()
        self._pending = [c for c in self.signed if c.tree_size > self.frontier.size]
        self._pending.reverse()
        self._next_position = self.frontier.size + 1

    def add_rows(self, rows: Iterable[tuple[int, bytes]]) -> None:
        """(position, leaf hash) pairs in position order; positions count from 1."""
        self.add_events((position, None, 0, b"", leaf) for position, leaf in rows)

    def add_events(self, rows: Iterable[tuple[int, bytes | None, int, bytes, bytes]]) -> None:
        """Event rows (notification id, originator id bytes, version, topic, state) in
        recording order, hashed as leaves here. A row whose originator id is None carries
        a ready leaf hash in its last field instead (`add_rows`)."""
        self._fold([rows], _same)

    def add_batches(
        self,
        batches: Iterable[Sequence[tuple[int, Any, int, bytes, bytes]]],
        originator_bytes: Callable[[Any], bytes],
    ) -> None:
        """Batches of event rows straight from a database cursor; `originator_bytes` turns
        the driver's originator id into its 16 bytes. A batch whose ids follow on without a
        gap is hashed level by level (`Frontier.extend_leaves`); any other row by row, which
        names what is missing or out of order."""
        leaves: list[bytes] = []
        for batch in batches:
            if ids_follow(batch, self._next_position + len(leaves)):
                leaves += stored_leaf_hashes(batch, originator_bytes)
                if len(leaves) < _LEVELLED:
                    continue
            else:
                self._add_leaves(leaves)
                leaves = []
                self._fold([batch], originator_bytes)
            self._add_leaves(leaves)
            leaves = []
        self._add_leaves(leaves)

    def _fold(
        self,
        batches: Iterable[Iterable[tuple[int, Any, int, bytes, bytes]]],
        originator_bytes: Callable[[Any], bytes],
    ) -> None:
        self._next_position = fold_events(
            self.frontier,
            batches,
            originator_bytes,
            self._next_position,
            [c.tree_size for c in reversed(self._pending)],
            self._check_pending,
            self._gap,
        )

    def _add_leaves(self, leaves: Sequence[bytes]) -> None:
        """Leaf hashes of the positions that follow the last one added."""
        stops = [c.tree_size for c in reversed(self._pending)]
        for snapshot in self.frontier.extend_leaves(leaves, stops):
            self._check_pending(snapshot)
        self._next_position += len(leaves)  # after a gap, positions run ahead of the size

    def add_block(self, block: Block, level: int) -> None:
        """A block hashed elsewhere (`hash_block`, in another process): it must start where
        the log so far ends, on a multiple of 2**level, and hold at most 2**level leaves."""
        frontier = self.frontier
        if block.start != frontier.size or block.start % (1 << level) or block.count > 1 << level:
            raise ValueError(f"block at {block.start} does not continue a log of {frontier.size}")
        for size, local in sorted(block.at_stops.items()):
            # The tree at `size` is the blocks so far followed by the block's own subtrees.
            self._check_pending(Frontier(size, frontier.hashes + local))
        if block.count == 1 << level:
            frontier.append_subtree(block.hashes[0], level)
        else:
            frontier.hashes.extend(block.hashes)
            frontier.size += block.count
        self._next_position = frontier.size + 1

    def _gap(self, expected: int, position: int) -> None:
        if position > expected:
            missing = f"{expected}" if position == expected + 1 else f"{expected} to {position - 1}"
            self.problems.append(
                Problem("event_removed", f"event {missing} is missing (removed)", expected)
            )
        else:
            self.problems.append(
                Problem("events_reordered", f"event {position} is out of order", position)
            )

    def _check_pending(self, frontier: Frontier | None = None) -> None:
        """Hold the checkpoints of the tree size reached against its root (`frontier`,
        default the log so far)."""
        if frontier is None:
            frontier = self.frontier
        if not self._pending or self._pending[-1].tree_size != frontier.size:
            return
        root = frontier.root()
        while self._pending and self._pending[-1].tree_size == frontier.size:
            checkpoint = self._pending.pop()
            if not hmac.compare_digest(checkpoint.root_hash, root):
                self.mismatched.append(checkpoint)

    def finish(self) -> LogAudit:
        size = self.frontier.size
        if self.mismatched:
            first, last = self.mismatched[0], self.mismatched[-1]
            more = (
                ""
                if len(self.mismatched) == 1
                else f" (and {len(self.mismatched) - 1} later checkpoints, to tree size "
                f"{last.tree_size})"
            )
            self.problems.append(
                Problem(
                    "checkpoint_mismatch",
                    f"the events do not hash to the signed root of tree size "
                    f"{first.tree_size}{more}: events before it were altered, inserted, "
                    "removed or reordered",
                    tree_size=first.tree_size,
                )
            )
        # After a gap, positions run ahead of the size: the log goes on to `end`.
        end = max(size, self._next_position - 1)
        if self._pending and self._pending[0].tree_size > end:
            beyond = self._pending[0]
            self.problems.append(
                Problem(
                    "log_truncated",
                    f"a signed checkpoint covers {beyond.tree_size} events but the log has "
                    f"only {size}: events were removed from its end",
                    size + 1,
                    beyond.tree_size,
                )
            )
        covered = max((c.tree_size for c in self.signed), default=0)
        if size > covered:
            which = f"{covered + 1}" if size == covered + 1 else f"{covered + 1} to {size}"
            self.problems.append(
                Problem(
                    "event_inserted",
                    f"event {which} is not covered by any signed checkpoint "
                    "(inserted without the signing key)",
                    covered + 1,
                )
            )
        return LogAudit(size, self.frontier.root(), self.problems, self.mismatched, self.frontier)


def audit_log(
    leaves: Iterable[tuple[int, bytes]],
    checkpoints: Iterable[Checkpoint],
    public_key: Ed25519PublicKey,
) -> LogAudit:
    """Verify a whole log given as (position, leaf bytes) pairs: the pure form of `verify`."""
    auditor = LogAuditor(checkpoints, public_key)
    auditor.add_rows((position, leaf_hash(data)) for position, data in leaves)
    return auditor.finish()


# -- proof documents an outsider verifies ----------------------------------------------------


def inclusion_document(
    leaf: bytes, index: int, path: Sequence[bytes], checkpoint: Checkpoint
) -> dict[str, Any]:
    return {
        "type": "inclusion",
        "leaf": base64.b64encode(leaf).decode(),
        "leaf_index": index,
        "path": [p.hex() for p in path],
        "checkpoint": checkpoint.to_json(),
    }


def consistency_document(old: Checkpoint, new: Checkpoint, path: Sequence[bytes]) -> dict[str, Any]:
    return {
        "type": "consistency",
        "old": old.to_json(),
        "new": new.to_json(),
        "path": [p.hex() for p in path],
    }


def verify_proof(document: Any, public_key: Ed25519PublicKey | bytes | str) -> list[str]:
    """Check an inclusion or consistency proof document offline; [] means it holds.

    Inclusion: leaf hash = SHA-256(0x00 || leaf), RFC 9162 §2.1.3.2 against the checkpoint's
    root and size, and the checkpoint's signature. Consistency: RFC 9162 §2.1.4.2 between the
    two checkpoints, and both signatures.
    """
    key = load_public_key(public_key)
    try:
        if not isinstance(document, dict):
            raise CheckpointFormatError("a proof must be a JSON object")
        path = [_hex(p, "path element") for p in document.get("path", [])]
        kind = document.get("type")
        if kind == "inclusion":
            checkpoint = Checkpoint.from_json(document.get("checkpoint"))
            leaf = base64.b64decode(str(document["leaf"]), validate=True)
            index = document["leaf_index"]
            problems = _signature_problems(key, checkpoint)
            if not isinstance(index, int) or not verify_inclusion(
                leaf_hash(leaf), index, checkpoint.tree_size, path, checkpoint.root_hash
            ):
                problems.append(
                    f"the leaf is not included at index {index} in the tree of size "
                    f"{checkpoint.tree_size}"
                )
            return problems
        if kind == "consistency":
            old = Checkpoint.from_json(document.get("old"))
            new = Checkpoint.from_json(document.get("new"))
            problems = _signature_problems(key, old, new)
            if not verify_consistency(
                old.tree_size, new.tree_size, old.root_hash, new.root_hash, path
            ):
                problems.append(
                    f"the tree of size {new.tree_size} is not an extension of the tree of "
                    f"size {old.tree_size}"
                )
            return problems
        raise CheckpointFormatError("a proof's type must be 'inclusion' or 'consistency'")
    except (CheckpointFormatError, KeyError, binascii.Error, ValueError) as error:
        return [f"malformed proof: {error}"]


def _signature_problems(key: Ed25519PublicKey, *checkpoints: Checkpoint) -> list[str]:
    return [
        f"the checkpoint of tree size {c.tree_size} is not signed by key {key_id(key)}"
        for c in checkpoints
        if not checkpoint_signed(c, key)
    ]
