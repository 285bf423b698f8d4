"""The manifest of a due-diligence export, and its verification: pure, no database.

An export folder holds data files, `summary.json` and `MANIFEST.json`. The manifest lists
every other file with its SHA-256, size and row count, carries the ledger's latest signed
checkpoint and `verify` head, the export's parameters and time, and is itself signed with the
ledger's Ed25519 key (the key that signs its checkpoints). `verify_export_dir` is what an
acquirer runs on their side, with the folder and (ideally) the ledger's public key obtained
from the seller out of band; it needs nothing else:

- the manifest's signature over its canonical body (sorted keys, no whitespace, the
  `signature` member left out) catches a forged or edited manifest;
- the checkpoint's signature (same key) ties the export to a state of the ledger an auditor
  can check with `verify` and the checkpoint proofs;
- each listed file's size and SHA-256 catch a changed byte or a removed file, and a walk of
  the folder catches a file added to it.

Without a pinned key the signature proves only that manifest and checkpoint come from the
same key; the report names the key id so the acquirer can compare it with the seller's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ledger.integrity import (
    CheckpointFormatError,
    key_id,
    load_public_key,
    public_key_pem,
    verify_checkpoint,
)

MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = "consent-ledger due-diligence export"
MANIFEST_VERSION = 1
SIGNATURE_ALGORITHM = "ed25519"


@dataclass(frozen=True)
class FileEntry:
    """One file of the export: its path inside the folder (POSIX), size, hash, rows."""

    path: str
    sha256: str
    bytes: int
    rows: int | None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes, "rows": self.rows}


def file_entry(folder: Path, relative: str, rows: int | None) -> FileEntry:
    digest, size = sha256_file(folder / relative)
    return FileEntry(relative, digest, size, rows)


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and size of a file, read in blocks."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
        size = handle.tell()
    return digest.hexdigest(), size


def build_manifest(
    *,
    export_id: str,
    created_at: str,
    parameters: dict[str, Any],
    files: Iterable[FileEntry],
    ledger: dict[str, Any],
    pseudonyms: dict[str, Any],
) -> dict[str, Any]:
    """The unsigned manifest (sign it with `sign_manifest`)."""
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "export_id": export_id,
        "created_at": created_at,
        "parameters": parameters,
        "pseudonyms": pseudonyms,
        "files": [f.to_json() for f in sorted(files, key=lambda f: f.path)],
        "ledger": ledger,
    }


def signed_body(manifest: dict[str, Any]) -> bytes:
    """The bytes the signature covers: canonical JSON of everything but `signature`."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign_manifest(manifest: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    public = private_key.public_key()
    return {
        **manifest,
        "signature": {
            "algorithm": SIGNATURE_ALGORITHM,
            "key_id": key_id(public),
            "public_key": public_key_pem(public),
            "value": base64.b64encode(private_key.sign(signed_body(manifest))).decode(),
        },
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """MANIFEST.json as written: indented for people, sorted for diffs."""
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def manifest_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportProblem:
    file: str
    kind: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "kind": self.kind, "message": self.message}


@dataclass
class ExportVerification:
    """What `export verify` found: ok when there is no problem."""

    folder: str
    export_id: str | None = None
    key_id: str | None = None
    key_pinned: bool = False
    files_checked: int = 0
    manifest_sha256: str | None = None
    checkpoint: dict[str, Any] | None = None
    problems: list[ExportProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file: str, kind: str, message: str) -> None:
        self.problems.append(ExportProblem(file, kind, message))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "folder": self.folder,
            "export_id": self.export_id,
            "key_id": self.key_id,
            "key_pinned": self.key_pinned,
            "files": self.files_checked,
            "manifest_sha256": self.manifest_sha256,
            "checkpoint": self.checkpoint,
            "problems": [p.to_json() for p in self.problems],
        }

    def summary(self) -> str:
        """One line naming the files at fault (for the error message)."""
        names = sorted({p.file for p in self.problems})
        return f"export {self.folder} failed verification: {'; '.join(names)} " + (
            f"({self.problems[0].message})" if len(self.problems) == 1 else "(see problems)"
        )


def verify_export_dir(
    folder: Path, public_key: Ed25519PublicKey | bytes | str | None = None
) -> ExportVerification:
    """Check an export folder against its manifest; every problem names its file."""
    report = ExportVerification(str(folder), key_pinned=public_key is not None)
    path = folder / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        report.add(MANIFEST_NAME, "missing", f"{MANIFEST_NAME} is missing")
        return report
    except OSError as error:
        report.add(MANIFEST_NAME, "unreadable", f"cannot read {MANIFEST_NAME}: {error.strerror}")
        return report
    report.manifest_sha256 = manifest_sha256(raw)
    try:
        manifest = orjson.loads(raw)
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError("not an export manifest")
        files = manifest["files"]
        if not isinstance(files, list):
            raise ValueError("'files' is not a list")
    except (orjson.JSONDecodeError, KeyError, ValueError) as error:
        report.add(MANIFEST_NAME, "malformed", f"{MANIFEST_NAME} is malformed: {error}")
        return report
    report.export_id = str(manifest.get("export_id"))
    if raw != manifest_bytes(manifest):
        # Same content, other bytes (reformatted): the SHA-256 the ledger recorded for this
        # manifest no longer matches it, so any change to any file is reported.
        report.add(
            MANIFEST_NAME,
            "rewritten",
            f"{MANIFEST_NAME}'s bytes are not as the export wrote them (reformatted or "
            "edited): its SHA-256 no longer matches the one the ledger recorded",
        )
    key = _check_signature(manifest, public_key, report)
    _check_checkpoint(manifest, key, report)
    listed = _check_files(folder, files, report)
    for extra in sorted(_folder_files(folder) - listed - {MANIFEST_NAME}):
        report.add(extra, "added", f"{extra} is not listed in the manifest (added)")
    return report


def _check_signature(
    manifest: dict[str, Any],
    pinned: Ed25519PublicKey | bytes | str | None,
    report: ExportVerification,
) -> Ed25519PublicKey | None:
    signature = manifest.get("signature")
    try:
        if not isinstance(signature, dict) or signature.get("algorithm") != SIGNATURE_ALGORITHM:
            raise ValueError("no Ed25519 signature")
        own = load_public_key(str(signature["public_key"]))
        value = base64.b64decode(str(signature["value"]), validate=True)
    except (KeyError, ValueError, binascii.Error, CheckpointFormatError) as error:
        report.add(MANIFEST_NAME, "unsigned", f"{MANIFEST_NAME} has no valid signature: {error}")
        return None
    key = own
    if pinned is not None:
        key = load_public_key(pinned)
        if key_id(key) != key_id(own):
            report.add(
                MANIFEST_NAME,
                "wrong_key",
                f"{MANIFEST_NAME} is signed by key {key_id(own)}, not by the ledger's key "
                f"{key_id(key)}",
            )
    report.key_id = key_id(key)
    try:
        key.verify(value, signed_body(manifest))
    except InvalidSignature:
        report.add(
            MANIFEST_NAME,
            "signature",
            f"{MANIFEST_NAME}'s signature does not match its content (forged or edited)",
        )
    return key


def _check_checkpoint(
    manifest: dict[str, Any], key: Ed25519PublicKey | None, report: ExportVerification
) -> None:
    ledger = manifest.get("ledger")
    checkpoint = ledger.get("checkpoint") if isinstance(ledger, dict) else None
    if not isinstance(checkpoint, dict):
        report.add(MANIFEST_NAME, "checkpoint", "the manifest carries no ledger checkpoint")
        return
    report.checkpoint = {k: checkpoint.get(k) for k in ("tree_size", "root_hash", "time")}
    if key is not None and not verify_checkpoint(checkpoint, key):
        report.add(
            MANIFEST_NAME,
            "checkpoint",
            f"the ledger checkpoint of tree size {checkpoint.get('tree_size')} is not signed "
            f"by key {key_id(key)}",
        )
    head = ledger.get("verify_head") if isinstance(ledger, dict) else None
    if (
        isinstance(ledger, dict)
        and head is not None
        and ledger.get("tree_size") == checkpoint.get("tree_size")
        and head != checkpoint.get("root_hash")
    ):
        report.add(
            MANIFEST_NAME,
            "checkpoint",
            "the ledger's verify head differs from the signed root of the same tree size",
        )


def _check_files(folder: Path, files: list[Any], report: ExportVerification) -> set[str]:
    listed: set[str] = set()
    for entry in files:
        if not isinstance(entry, dict) or not _safe_path(entry.get("path")):
            report.add(MANIFEST_NAME, "malformed", f"bad file entry in the manifest: {entry!r}")
            continue
        name = str(entry["path"])
        listed.add(name)
        report.files_checked += 1
        target = folder / name
        if not target.is_file():
            report.add(name, "removed", f"{name} is listed in the manifest but missing")
            continue
        digest, size = sha256_file(target)
        if size != entry.get("bytes"):
            report.add(
                name, "size", f"{name} has {size} bytes, the manifest says {entry.get('bytes')}"
            )
        elif not hmac.compare_digest(digest, str(entry.get("sha256"))):
            report.add(name, "sha256", f"{name}'s SHA-256 differs from the manifest (changed)")
    return listed


def _safe_path(value: Any) -> bool:
    if not isinstance(value, str) or not value or value == MANIFEST_NAME:
        return False
    parts = PurePosixPath(value).parts
    return not PurePosixPath(value).is_absolute() and ".." not in parts and "\\" not in value


def _folder_files(folder: Path) -> set[str]:
    """Every file and folder under `folder`, as POSIX paths (an empty folder counts too)."""
    found: set[str] = set()
    for item in folder.rglob("*"):
        relative = item.relative_to(folder).as_posix()
        if item.is_dir():
            if not any(item.iterdir()):
                found.add(relative + "/")
        else:
            found.add(relative)
    return found
