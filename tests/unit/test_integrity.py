"""The pure integrity layer: RFC 9162 trees and proofs, signed checkpoints, log audits.

Known answers are the Certificate Transparency reference vectors (RFC 6962 test data, as in
transparency-dev/merkle); a naive transcription of RFC 9162's recursive definitions is the
oracle for random trees. Adversarial cases follow GHSA-672p-m5jq-mrh8: a verifier must use
every element of a proof and the exact sizes, or it accepts forgeries.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import integrity
from ledger.integrity import (
    Checkpoint,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    sign_checkpoint,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION_0_OF_8 = [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
]
CONSISTENCY = {
    (1, 8): INCLUSION_0_OF_8,
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}
KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()


# -- an oracle: RFC 9162 §2.1.1-2.1.4 transcribed literally ----------------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return leaf_hash(d[0])
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


def tree_of(leaves: list[bytes]) -> MemoryTree:
    return MemoryTree(leaf_hash(leaf) for leaf in leaves)


def data(n: int) -> list[bytes]:
    return [f"leaf {i}".encode() for i in range(n)]


# -- known answers -------------------------------------------------------------------------


def test_roots_match_the_rfc_6962_reference_vectors() -> None:
    tree = tree_of(LEAVES)
    assert [tree.root(n).hex() for n in range(1, 9)] == ROOTS
    assert integrity.tree_root([]) == hashlib.sha256(b"").digest()


def test_inclusion_proof_matches_the_reference_vector() -> None:
    assert [p.hex() for p in inclusion_proof(0, 8, tree_of(LEAVES).node)] == INCLUSION_0_OF_8


@pytest.mark.parametrize(("old", "new"), sorted(CONSISTENCY))
def test_consistency_proofs_match_the_reference_vectors(old: int, new: int) -> None:
    tree = tree_of(LEAVES)
    proof = consistency_proof(old, new, tree.node)
    assert [p.hex() for p in proof] == CONSISTENCY[old, new]
    assert verify_consistency(old, new, tree.root(old), tree.root(new), proof)


def test_leaf_bytes_layout_is_the_documented_one() -> None:
    encoded = integrity.leaf_bytes(7, bytes(range(16)), 3, b"t", b"state")
    assert encoded == (
        (7).to_bytes(8, "big")
        + bytes(range(16))
        + (3).to_bytes(8, "big")
        + (1).to_bytes(4, "big")
        + b"t"
        + (5).to_bytes(4, "big")
        + b"state"
    )
    assert integrity.event_leaf_hash(7, bytes(range(16)), 3, b"t", b"state") == leaf_hash(encoded)


# -- against the oracle ----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 70), st.data())
def test_proofs_equal_the_rfc_definitions_and_verify(n: int, draw: st.DataObject) -> None:
    leaves = data(n)
    tree = tree_of(leaves)
    assert tree.root() == mth(leaves)
    index = draw.draw(st.integers(0, n - 1))
    proof = inclusion_proof(index, n, tree.node)
    assert proof == path(index, leaves)
    assert verify_inclusion(leaf_hash(leaves[index]), index, n, proof, tree.root())
    old = draw.draw(st.integers(1, n))
    consistency = consistency_proof(old, n, tree.node)
    assert consistency == (subproof(old, leaves, True) if old < n else [])
    assert verify_consistency(old, n, tree.root(old), tree.root(), consistency)


# -- adversarial proofs (GHSA-672p-m5jq-mrh8) ------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 70), st.data())
def test_a_tampered_inclusion_proof_is_rejected(n: int, draw: st.DataObject) -> None:
    leaves = data(n)
    tree = tree_of(leaves)
    root = tree.root()
    index = draw.draw(st.integers(0, n - 1))
    leaf = leaf_hash(leaves[index])
    proof = inclusion_proof(index, n, tree.node)
    other = draw.draw(st.integers(0, n - 1).filter(lambda i: i != index))
    assert not verify_inclusion(leaf_hash(leaves[other]), index, n, proof, root)  # other leaf
    assert not verify_inclusion(leaf, other, n, proof, root)  # other index
    # A size whose path has another length cannot verify this path; a size of the same
    # shape is only ruled out by the signature over (size, root), tested below.
    wrong_size = draw.draw(st.integers(index + 1, 2 * n).filter(lambda s: s != n))
    if len(integrity.inclusion_ranges(index, wrong_size)) != len(proof):
        assert not verify_inclusion(leaf, index, wrong_size, proof, root)
    assert not verify_inclusion(leaf, index, n, [*proof, proof[0]], root)  # padded
    if proof:
        assert not verify_inclusion(leaf, index, n, proof[:-1], root)  # truncated
        flipped = bytes([proof[0][0] ^ 1]) + proof[0][1:]
        assert not verify_inclusion(leaf, index, n, [flipped, *proof[1:]], root)
    if len(proof) > 1 and proof[0] != proof[1]:
        swapped = [proof[1], proof[0], *proof[2:]]
        assert not verify_inclusion(leaf, index, n, swapped, root)  # swapped siblings
    assert not verify_inclusion(leaf, index, n, proof, tree.root(n - 1))  # another root
    assert not verify_inclusion(leaf, n, n, proof, root)  # index out of the tree


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 70), st.data())
def test_a_tampered_consistency_proof_is_rejected(n: int, draw: st.DataObject) -> None:
    leaves = data(n)
    tree = tree_of(leaves)
    old = draw.draw(st.integers(1, n - 1))
    old_root, root = tree.root(old), tree.root()
    proof = consistency_proof(old, n, tree.node)
    assert verify_consistency(old, n, old_root, root, proof)
    for wrong_old in {old - 1, old + 1} - {0, n}:
        assert not verify_consistency(wrong_old, n, old_root, root, proof)
    for wrong_new in {n - 1, n + 1, 2 * n} - {old}:
        if len(integrity.consistency_ranges(old, wrong_new)) != len(proof):
            assert not verify_consistency(old, wrong_new, old_root, root, proof)
    assert not verify_consistency(old, n, old_root, root, [*proof, proof[0]])  # padded
    assert not verify_consistency(old, n, old_root, root, proof[:-1])  # truncated
    assert not verify_consistency(old, n, old_root, root, [])  # the immudb hole: skipped
    if len(proof) > 1 and proof[0] != proof[1]:
        swapped = [proof[1], proof[0], *proof[2:]]
        assert not verify_consistency(old, n, old_root, root, swapped)
    forged = tree_of([*leaves[: old - 1], b"forged", *leaves[old:]])
    assert not verify_consistency(old, n, old_root, forged.root(), proof)  # history rewritten
    assert not verify_consistency(old, n, forged.root(old), root, proof)
    assert not verify_consistency(n, old, root, old_root, proof)  # shrinking


def test_consistency_edge_cases() -> None:
    tree = tree_of(data(5))
    assert verify_consistency(5, 5, tree.root(), tree.root(), [])
    assert not verify_consistency(5, 5, tree.root(), tree.root(4), [])
    assert not verify_consistency(5, 5, tree.root(), tree.root(), [tree.root()])
    assert verify_consistency(0, 5, integrity.empty_root(), tree.root(), [])
    assert not verify_consistency(0, 5, tree.root(), tree.root(), [])
    assert not verify_consistency(-1, 5, tree.root(), tree.root(), [])
    assert not verify_consistency(2, 5, b"short", tree.root(), [tree.root()])


# -- checkpoints ---------------------------------------------------------------------------


def test_a_signed_checkpoint_verifies_with_its_key_only() -> None:
    checkpoint = sign_checkpoint(KEY, 8, bytes.fromhex(ROOTS[7]), "2026-11-26T01:00:00Z")
    document = checkpoint.to_json(KEY.public_key())
    assert verify_checkpoint(document, document["public_key"])
    assert verify_checkpoint(checkpoint, KEY.public_key())
    assert not verify_checkpoint(document, OTHER_KEY.public_key())
    assert Checkpoint.from_json(document) == checkpoint


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tree_size", 9),
        ("root_hash", ROOTS[6]),
        ("time", "2026-11-26T01:00:01Z"),
        ("signature", "AAAA"),
        ("root_hash", "zz"),
        ("tree_size", -1),
    ],
)
def test_a_changed_or_malformed_checkpoint_fails(field: str, value: object) -> None:
    document = sign_checkpoint(KEY, 8, bytes.fromhex(ROOTS[7]), "2026-11-26T01:00:00Z").to_json()
    document[field] = value
    assert not verify_checkpoint(document, KEY.public_key())


def test_a_forged_signature_by_another_key_fails_even_with_the_right_key_id() -> None:
    genuine = sign_checkpoint(KEY, 8, bytes.fromhex(ROOTS[7]), "t")
    forged = sign_checkpoint(OTHER_KEY, 8, bytes.fromhex(ROOTS[7]), "t")
    impostor = Checkpoint(8, genuine.root_hash, "t", genuine.key_id, forged.signature)
    assert not verify_checkpoint(impostor, KEY.public_key())
    assert not verify_checkpoint(forged, KEY.public_key())


def test_public_keys_load_from_pem_raw_and_base64() -> None:
    public = KEY.public_key()
    pem = integrity.public_key_pem(public)
    raw = integrity.load_public_key(pem).public_bytes_raw()
    import base64

    for form in (pem, pem.encode(), raw, base64.b64encode(raw)):
        assert integrity.key_id(integrity.load_public_key(form)) == integrity.key_id(public)
    with pytest.raises(ValueError):
        integrity.load_public_key(b"not a key")


# -- proof documents -------------------------------------------------------------------------


def test_proof_documents_verify_offline_and_name_what_fails() -> None:
    leaves = data(13)
    tree = tree_of(leaves)
    checkpoint = sign_checkpoint(KEY, 13, tree.root(), "t")
    document = integrity.inclusion_document(
        leaves[5], 5, inclusion_proof(5, 13, tree.node), checkpoint
    )
    assert integrity.verify_proof(document, KEY.public_key()) == []
    assert integrity.verify_proof(document, OTHER_KEY.public_key()) == [
        f"the checkpoint of tree size 13 is not signed by key "
        f"{integrity.key_id(OTHER_KEY.public_key())}"
    ]
    other_leaf = {
        **document,
        "leaf": integrity.inclusion_document(leaves[6], 5, [], checkpoint)["leaf"],
    }
    assert integrity.verify_proof(other_leaf, KEY.public_key()) == [
        "the leaf is not included at index 5 in the tree of size 13"
    ]
    older = sign_checkpoint(KEY, 6, tree.root(6), "t")
    consistency = integrity.consistency_document(
        older, checkpoint, consistency_proof(6, 13, tree.node)
    )
    assert integrity.verify_proof(consistency, KEY.public_key()) == []
    consistency["path"] = consistency["path"][1:]
    assert integrity.verify_proof(consistency, KEY.public_key()) == [
        "the tree of size 13 is not an extension of the tree of size 6"
    ]
    assert integrity.verify_proof({"type": "inclusion"}, KEY.public_key())[0].startswith(
        "malformed proof"
    )


# -- a whole log: ok if and only if nothing was mutated ---------------------------------------

MUTATIONS = ["none", "flip", "delete", "insert", "swap", "truncate", "checkpoint", "unsign"]


def _signed_log(leaves: list[bytes], sizes: list[int]) -> list[Checkpoint]:
    tree = tree_of(leaves)
    return [sign_checkpoint(KEY, size, tree.root(size), f"t{size}") for size in sizes]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=0, max_size=12), min_size=1, max_size=40),
    st.data(),
    st.sampled_from(MUTATIONS),
)
def test_a_log_verifies_if_and_only_if_nothing_was_mutated(
    leaves: list[bytes], draw: st.DataObject, mutation: str
) -> None:
    n = len(leaves)
    # Every write ends with a checkpoint, so the last one covers the whole log.
    sizes = sorted({*draw.draw(st.lists(st.integers(1, n), max_size=5)), n})
    checkpoints = _signed_log(leaves, sizes)
    rows = list(enumerate(leaves, start=1))
    mutated = True
    i = draw.draw(st.integers(0, n - 1))
    if mutation == "none":
        mutated = False
    elif mutation == "flip":
        leaf = rows[i][1] or b"\x00"
        flipped = bytes([leaf[0] ^ (1 << draw.draw(st.integers(0, 7)))]) + leaf[1:]
        rows[i] = (rows[i][0], flipped if rows[i][1] else b"")
        mutated = rows[i][1] != leaves[i]
    elif mutation == "delete":
        del rows[i]
    elif mutation == "insert":
        rows.append((n + 1, draw.draw(st.binary(max_size=12))))
    elif mutation == "swap":
        j = draw.draw(st.integers(0, n - 1))
        rows[i], rows[j] = (rows[i][0], rows[j][1]), (rows[j][0], rows[i][1])
        mutated = leaves[i] != leaves[j]
    elif mutation == "truncate":
        rows = rows[:i]
    elif mutation == "checkpoint":
        c = draw.draw(st.sampled_from(checkpoints))
        index = checkpoints.index(c)
        other = sign_checkpoint(OTHER_KEY, c.tree_size, c.root_hash, c.time)
        forged = Checkpoint(c.tree_size, c.root_hash, c.time, c.key_id, other.signature)
        checkpoints[index] = forged
    elif mutation == "unsign":  # the latest checkpoint removed: its events are unsealed
        checkpoints.pop()
        mutated = bool(checkpoints) or n > 0
    audit = integrity.audit_log(rows, checkpoints, KEY.public_key())
    assert audit.ok == (not mutated), (mutation, audit.problems)
    if not mutated:
        assert audit.head == mth(leaves)


def test_each_mutation_is_named() -> None:
    leaves = data(10)
    checkpoints = _signed_log(leaves, [4, 10])
    key = KEY.public_key()

    def kinds(rows: list[tuple[int, bytes]], cps: list[Checkpoint] = checkpoints) -> set[str]:
        return {p.kind for p in integrity.audit_log(rows, cps, key).problems}

    rows = list(enumerate(leaves, start=1))
    assert kinds(rows) == set()
    assert kinds([*rows[:3], (4, b"changed"), *rows[4:]]) == {"checkpoint_mismatch"}
    # A removed event is named as removed; the log's end is still there, so it is not
    # said to be truncated.
    assert kinds(rows[:5] + rows[6:]) == {"event_removed"}
    assert kinds(rows[:2] + rows[3:]) == {"event_removed", "checkpoint_mismatch"}
    assert kinds([*rows, (11, b"forged")]) == {"event_inserted"}
    assert kinds(rows[:7]) == {"log_truncated"}
    # Two events traded places: the tree names the checkpoint; the database layer, with the
    # leaves sealed at recording, names the two events (tests/integration/test_tamper.py).
    assert kinds([*rows[:5], (6, leaves[6]), (7, leaves[5]), *rows[7:]]) == {"checkpoint_mismatch"}
    assert kinds([*rows[:5], (7, leaves[6]), (6, leaves[5]), *rows[7:]]) >= {"events_reordered"}
    forged = sign_checkpoint(OTHER_KEY, 10, checkpoints[1].root_hash, "t")
    assert kinds(rows, [checkpoints[0], forged]) == {"checkpoint_signature", "event_inserted"}


# -- the README's verifier, run as an outsider would ------------------------------------------


def test_the_readme_verifier_accepts_our_proofs_and_rejects_tampered_ones() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("**Checking a proof without this software.**") :]
    code = section[section.index("```python") + len("```python") : section.index("```\n", 10)]
    outsider: dict[str, Any] = {"sha256": hashlib.sha256}
    exec(code, outsider)
    included, consistent = outsider["included"], outsider["consistent"]
    leaves = data(21)
    tree = tree_of(leaves)
    for index in (0, 7, 20):
        proof = inclusion_proof(index, 21, tree.node)
        assert included(leaves[index], index, 21, proof, tree.root())
        assert not included(leaves[index], index, 21, proof[:-1], tree.root())
        assert not included(leaves[index], index, 21, [*proof, proof[0]], tree.root())
    for old in (1, 8, 13):
        proof = consistency_proof(old, 21, tree.node)
        assert consistent(old, 21, tree.root(old), tree.root(), proof)
        assert not consistent(old, 21, tree.root(old), tree.root(), [*proof, proof[-1]])
        assert not consistent(old, 21, tree.root(old), tree.root(), proof[1:])
    assert consistent(21, 21, tree.root(), tree.root(), [])


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 80), st.integers(0, 4), st.data())
def test_blocks_hashed_apart_give_the_same_audit_as_one_pass(
    n: int, level: int, draw: st.DataObject
) -> None:
    rows = [(i, bytes(16), 1, b"topic", f"state {i}".encode()) for i in range(1, n + 1)]
    sizes = sorted({*draw.draw(st.lists(st.integers(1, n), max_size=6)), n})
    tree = MemoryTree(integrity.event_leaf_hash(*row) for row in rows)
    checkpoints = [sign_checkpoint(KEY, s, tree.root(s), "t") for s in sizes]
    whole = integrity.LogAuditor(checkpoints, KEY.public_key())
    whole.add_events(rows)
    blocks = integrity.LogAuditor(checkpoints, KEY.public_key())
    width = 1 << level
    for start in range(0, n, width):
        stops = [s for s in sizes if start < s <= start + width]
        block = integrity.hash_block([rows[start : start + width]], bytes, start, stops)
        blocks.add_block(block, level)
    one, other = whole.finish(), blocks.finish()
    assert one.ok and other.ok
    assert (other.size, other.head) == (one.size, one.head) == (n, tree.root())


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 70), st.integers(0, 70), st.data())
def test_leaves_added_level_by_level_give_the_frontier_of_one_at_a_time(
    before: int, added: int, draw: st.DataObject
) -> None:
    leaves = [leaf_hash(leaf) for leaf in data(before + added)]
    stops = draw.draw(st.lists(st.integers(0, before + added + 2), max_size=6))
    levelled = integrity.Frontier()
    levelled.extend(leaves[:before])
    snapshots = levelled.extend_leaves(leaves[before:], sorted(stops))
    expected = [s for s in sorted(stops) if before < s <= before + added]
    assert [s.size for s in snapshots] == expected
    for snapshot in snapshots:
        one = integrity.Frontier()
        one.extend(leaves[: snapshot.size])
        assert snapshot == one
        assert snapshot.root() == mth(data(snapshot.size))
    one = integrity.Frontier()
    one.extend(leaves)
    assert levelled == one
    assert levelled.root() == mth(data(before + added))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 60),
    st.sampled_from(["none", "gap", "swap", "duplicate"]),
    st.integers(1, 16),
    st.data(),
)
def test_event_batches_audit_as_the_row_by_row_reference(
    n: int, mutation: str, width: int, draw: st.DataObject
) -> None:
    # `add_batches` hashes a batch whose ids follow on level by level and any other row by
    # row; both must find what the row-by-row reference (`add_events`) finds.
    rows = [(i, bytes([i]) * 16, i % 3, b"topic", f"state {i}".encode()) for i in range(1, n + 1)]
    sizes = sorted({*draw.draw(st.lists(st.integers(1, n), max_size=5)), n})
    tree = MemoryTree(integrity.event_leaf_hash(*row) for row in rows)
    checkpoints = [sign_checkpoint(KEY, s, tree.root(s), "t") for s in sizes]
    i, j = draw.draw(st.integers(0, n - 1)), draw.draw(st.integers(0, n - 1))
    if mutation == "gap":
        del rows[i]
    elif mutation == "swap":
        rows[i], rows[j] = rows[j], rows[i]
    elif mutation == "duplicate":
        rows.insert(i, rows[j])
    reference = integrity.LogAuditor(checkpoints, KEY.public_key())
    reference.add_events(rows)
    batched = integrity.LogAuditor(checkpoints, KEY.public_key())
    levelled = draw.draw(st.integers(1, 40))  # leaves gathered before they join the tree
    with patch.object(integrity, "_LEVELLED", levelled):
        batched.add_batches([rows[k : k + width] for k in range(0, len(rows), width)], bytes)
    one, other = reference.finish(), batched.finish()
    assert (other.size, other.head, other.problems) == (one.size, one.head, one.problems)
    assert one.ok == (mutation == "none" or (mutation == "swap" and i == j))


def test_a_block_with_a_gap_is_not_gapless() -> None:
    rows = [(i, bytes(16), 1, b"topic", b"state") for i in (1, 2, 4, 5)]
    assert not integrity.hash_block([rows[:2], rows[2:]], bytes, 0, []).gapless
    assert integrity.hash_block([rows[:2]], bytes, 0, []).gapless


def test_the_fact_index_types_verify_expects_are_the_domain_models() -> None:
    """`verify` holds each fact index row's type to its event's class without loading the
    domain model: its table must say what the classes and the recorders say."""
    from eventsourcing.utils import get_topic

    from ledger.application import _NOTIFIED_TYPE
    from ledger.domainmodel import EVENT_FOR_FACT, Acquirer, Customer
    from ledger.persistence.export_store import EXPORT_FACT_TYPE
    from ledger.persistence.index_audit import _TOPIC_TYPES

    expected = {get_topic(cls).encode(): fact_type for fact_type, cls in EVENT_FOR_FACT.items()}
    expected[get_topic(Customer.RecipientNotified).encode()] = _NOTIFIED_TYPE
    expected[get_topic(Acquirer.DueDiligenceExported).encode()] = EXPORT_FACT_TYPE
    assert expected == _TOPIC_TYPES
