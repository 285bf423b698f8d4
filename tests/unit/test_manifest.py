"""`verify_export_dir`: an export folder checked against its signed manifest, no database.

Given a folder written and signed as the exporter does, when a byte changes, a file goes or
comes, or the manifest is edited or re-signed by another key, then verification names the
file and fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import integrity
from ledger import manifest as m

ROOT = bytes.fromhex("ab" * 32)


def write_export(folder: Path, key: Ed25519PrivateKey) -> dict[str, Any]:
    folder.mkdir()
    (folder / "customers.jsonl").write_bytes(b'{"customer":"aa"}\n{"customer":"bb"}\n')
    (folder / "orders.jsonl").write_bytes(b'{"customer":"aa","total":"9.99"}\n')
    (folder / "summary.json").write_bytes(b'{"customers": 2}\n')
    checkpoint = integrity.sign_checkpoint(key, 42, ROOT, "2026-01-01T00:00:00Z").to_json(
        key.public_key()
    )
    files = [
        m.file_entry(folder, "customers.jsonl", 2),
        m.file_entry(folder, "orders.jsonl", 1),
        m.file_entry(folder, "summary.json", None),
    ]
    document = m.sign_manifest(
        m.build_manifest(
            export_id="e1",
            created_at="2026-01-02T00:00:00Z",
            parameters={"acquirer": "Northwind", "identified": False},
            files=files,
            ledger={"tree_size": 42, "verify_head": ROOT.hex(), "checkpoint": checkpoint},
            pseudonyms={"algorithm": "HMAC-SHA256"},
        ),
        key,
    )
    (folder / m.MANIFEST_NAME).write_bytes(m.manifest_bytes(document))
    return document


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def export(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    folder = tmp_path / "export"
    write_export(folder, key)
    return folder


def problems(folder: Path, key: Any = None) -> list[tuple[str, str]]:
    return [(p.file, p.kind) for p in m.verify_export_dir(folder, key).problems]


def test_an_untouched_export_verifies_with_and_without_the_pinned_key(
    export: Path, key: Ed25519PrivateKey
) -> None:
    report = m.verify_export_dir(export)
    assert report.ok and report.files_checked == 3 and not report.key_pinned
    pinned = m.verify_export_dir(export, integrity.public_key_pem(key.public_key()))
    assert pinned.ok and pinned.key_pinned
    assert pinned.key_id == integrity.key_id(key.public_key())


def test_a_changed_byte_is_named(export: Path) -> None:
    path = export / "customers.jsonl"
    data = bytearray(path.read_bytes())
    data[14] ^= 0x01  # same size, one bit
    path.write_bytes(bytes(data))
    assert problems(export) == [("customers.jsonl", "sha256")]


def test_a_removed_file_is_named(export: Path) -> None:
    (export / "orders.jsonl").unlink()
    assert problems(export) == [("orders.jsonl", "removed")]


def test_an_added_file_or_folder_is_named(export: Path) -> None:
    (export / "notes.txt").write_text("hello")
    (export / "more").mkdir()
    (export / "more" / "x.csv").write_text("a")
    assert problems(export) == [("more/x.csv", "added"), ("notes.txt", "added")]


def test_a_removed_manifest_is_named(export: Path) -> None:
    (export / m.MANIFEST_NAME).unlink()
    assert problems(export) == [(m.MANIFEST_NAME, "missing")]


@pytest.mark.parametrize(
    "rewrite",
    [lambda raw: raw + b" ", lambda raw: orjson.dumps(orjson.loads(raw))],
    ids=["a space added", "re-serialised compactly"],
)
def test_a_manifest_with_the_same_content_in_other_bytes_is_named(
    export: Path, rewrite: Any
) -> None:
    """The ledger records the manifest's SHA-256: any change to its bytes is a change."""
    path = export / m.MANIFEST_NAME
    path.write_bytes(rewrite(path.read_bytes()))
    assert problems(export) == [(m.MANIFEST_NAME, "rewritten")]


def test_a_manifest_edited_to_match_a_changed_file_fails_its_signature(export: Path) -> None:
    (export / "orders.jsonl").write_bytes(b'{"customer":"aa","total":"0.01"}\n')
    document = orjson.loads((export / m.MANIFEST_NAME).read_bytes())
    for entry in document["files"]:
        if entry["path"] == "orders.jsonl":
            entry["sha256"], entry["bytes"] = m.sha256_file(export / "orders.jsonl")
    (export / m.MANIFEST_NAME).write_bytes(m.manifest_bytes(document))
    assert problems(export) == [(m.MANIFEST_NAME, "signature")]


def test_a_manifest_re_signed_by_another_key_fails_against_the_pinned_key(
    export: Path, key: Ed25519PrivateKey
) -> None:
    forger = Ed25519PrivateKey.generate()
    document = orjson.loads((export / m.MANIFEST_NAME).read_bytes())
    document["parameters"]["identified"] = True
    forged = m.sign_manifest({k: v for k, v in document.items() if k != "signature"}, forger)
    (export / m.MANIFEST_NAME).write_bytes(m.manifest_bytes(forged))
    pinned = integrity.public_key_pem(key.public_key())
    found = problems(export, pinned)
    assert (m.MANIFEST_NAME, "wrong_key") in found
    assert (m.MANIFEST_NAME, "signature") in found
    # Unpinned, the forger's own key cannot sign the ledger's checkpoint either.
    assert problems(export) == [(m.MANIFEST_NAME, "checkpoint")]


def test_a_forged_checkpoint_is_named(export: Path, key: Ed25519PrivateKey) -> None:
    document = orjson.loads((export / m.MANIFEST_NAME).read_bytes())
    document["ledger"]["checkpoint"]["tree_size"] = 43
    resigned = m.sign_manifest({k: v for k, v in document.items() if k != "signature"}, key)
    (export / m.MANIFEST_NAME).write_bytes(m.manifest_bytes(resigned))
    assert problems(export) == [(m.MANIFEST_NAME, "checkpoint")]


def test_garbage_and_unsafe_paths_in_a_manifest_are_reported(export: Path) -> None:
    document = orjson.loads((export / m.MANIFEST_NAME).read_bytes())
    document["files"].append({"path": "../outside", "sha256": "00", "bytes": 1, "rows": 0})
    (export / m.MANIFEST_NAME).write_bytes(m.manifest_bytes(document))
    found = problems(export)
    assert (m.MANIFEST_NAME, "malformed") in found and (m.MANIFEST_NAME, "signature") in found
    (export / m.MANIFEST_NAME).write_bytes(b"not json")
    assert problems(export) == [(m.MANIFEST_NAME, "malformed")]


def test_the_report_summary_names_every_file_at_fault(export: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(export, copy)
    (copy / "orders.jsonl").unlink()
    (copy / "extra.bin").write_bytes(b"\0")
    report = m.verify_export_dir(copy)
    assert not report.ok
    assert "extra.bin" in report.summary() and "orders.jsonl" in report.summary()
    assert report.to_json()["ok"] is False
