"""`db copy`: a ledger copied, as stored, into a new database (SQLite or PostgreSQL).

For a shop that outgrows one machine (its SQLite ledger moved to PostgreSQL), or an auditor's
own file (with the public key alone). Every row of the ledger's own tables goes across as it
is stored: the events, the fact index, orders, customers, the wrapped data keys, meta, the
suppressions, the export secrets, the integrity tree's nodes and the signed checkpoints. They
are read in one snapshot of the source and written, with the schema, in one transaction of the
target: the copy verifies with the same head and the same signed checkpoints, an erased
customer stays erased (their key row is empty in the copy too), and a copy that fails leaves
the target as empty as it was (a new SQLite file it made, removed). The read models are not
copied: they are rebuilt from the copied events (`db copy` does, then verifies the copy). The
key files go along (`key_files`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ledger.crypto import key_check
from ledger.errors import ConfigurationError, InputError, UnreadableSourceRowError
from ledger.persistence import seals, tables
from ledger.persistence.database import (
    _UPGRADE_LOCK,
    Database,
    bulk_insert,
    default_key_dir,
    master_key_path,
    own_files,
    safe_url,
)
from ledger.persistence.keys import (
    MASTER_KEY_ENV,
    KeyStore,
    decode_master_key,
    load_master_key,
    write_key_file,
)

# Every table of the ledger's own, in an order any reader of the copy could follow.
TABLES = (
    tables.events,
    tables.facts,
    tables.orders,
    tables.customers,
    tables.data_keys,
    tables.meta,
    tables.suppressions,
    tables.export_secrets,
    seals.tree_nodes,
    seals.checkpoints,
)
_CHUNK = 5000  # rows read and written at a time: memory stays flat in the ledger's size


@dataclass
class Copied:
    rows: dict[str, int]
    key_files: list[Path] = field(default_factory=list)  # written for the target


def key_files(
    source: Database, target: Database, *, public_only: bool = False
) -> list[tuple[Path, bytes]]:
    """The key files the target needs and does not have: (where, content). The master key
    (unless `CONSENT_LEDGER_MASTER_KEY` gives it to both) wraps the copied data keys; the
    signing key signed the copied checkpoints and signs the copy's next ones. None where both
    ledgers find their keys in one place (`CONSENT_LEDGER_KEY_DIR`, a master key file).
    `public_only`: the public key alone (an auditor's copy: it verifies and answers, but
    opens no personal data and records nothing). Refuses a target folder that holds other
    keys: the copy would not open with them."""
    load_master_key(source, in_use=True)  # there, and the ledger's (a clear error if not)
    if public_only and default_key_dir(source).absolute() == default_key_dir(target).absolute():
        raise ConfigurationError(
            f"the copy's key folder would be the ledger's own, {default_key_dir(source)} "
            "(CONSENT_LEDGER_KEY_DIR names one for both), where the master and signing keys "
            "are: unset it, so that the copy has a folder of its own with the public key alone"
        )
    pairs = [(seals.public_key_path(source), seals.public_key_path(target))]
    if not public_only:
        pairs.insert(0, (seals.signing_key_path(source), seals.signing_key_path(target)))
    if not public_only and not os.environ.get(MASTER_KEY_ENV):
        pairs.insert(0, (master_key_path(source), master_key_path(target)))
    needed: list[tuple[Path, bytes]] = []
    for mine, theirs in pairs:
        if mine.absolute() == theirs.absolute() or not mine.exists():
            continue
        content = mine.read_bytes()
        if theirs.exists():
            if theirs.read_bytes() != content:
                raise ConfigurationError(
                    f"{theirs} holds another key than this ledger's {mine}: the copy would "
                    f"not open with it; give the copy a key folder of its own "
                    "(CONSENT_LEDGER_KEY_DIR names one for both ledgers)"
                )
            continue
        needed.append((theirs, content))
    return needed


def copy_ledger(
    source: Database,
    target: Database,
    progress: Callable[[int], None] | None = None,
    *,
    public_only: bool = False,
) -> Copied:
    """Copy `source` (at the current schema) into `target`, which must hold no table yet.
    `progress` is told of each chunk of rows written; `public_only`: see `key_files`."""
    if target.is_sqlite and target.sqlite_path is None:
        raise InputError(
            f"{safe_url(target.url)} is an in-memory database: the copy would be gone when "
            "the command ends (and its keys left behind); give a new SQLite file"
        )
    if not target.is_sqlite:
        target.refuse_unless_utf8()  # as `db upgrade`
    path = target.sqlite_path
    if path is not None:
        for own in own_files(source):  # its file, journals and key folder
            if path.resolve() == own.resolve() or own.resolve() in path.resolve().parents:
                raise InputError(
                    f"cannot copy the ledger into {path}: it is one of the ledger's own files "
                    "(its database, a journal of it, or its key folder)"
                )
    if not target.is_fresh():
        raise InputError(_NOT_EMPTY.format(url=safe_url(target.url)))
    # The source's master key, checked against its fingerprint (a key file left behind by an
    # interrupted 'keys rotate', or any wrong key, is refused with KeyStore's own words).
    _ = KeyStore(source).source
    # A folder holding other keys is refused before anything is written.
    key_files(source, target, public_only=public_only)
    new_file = path is not None and not path.exists()
    try:
        return _copy_rows(source, target, progress or (lambda _n: None), public_only)
    except BaseException:
        if new_file and path is not None and target.is_fresh():  # the file the copy made
            target.dispose()
            for end in ("", "-wal", "-shm", "-journal"):
                Path(f"{path}{end}").unlink(missing_ok=True)
        raise


_NOT_EMPTY = (
    "{url} already holds tables (a ledger made by 'db upgrade'?): 'db copy' makes the ledger "
    "there itself; give a new SQLite file, or an empty PostgreSQL database or schema (another "
    "'db copy' into it may have got there first)"
)


def row_counts(database: Database) -> dict[str, int]:
    with database.reading() as conn:
        return {
            str(table.name): int(
                conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            )
            for table in TABLES
        }


def _copy_rows(
    source: Database, target: Database, progress: Callable[[int], None], public_only: bool
) -> Copied:
    from migrations import upgrade_connection

    counts: dict[str, int] = {}
    written: list[Path] = []
    folders: set[Path] = set()
    committed = False
    try:
        with source.reading() as reading, target.connect() as base:
            writing = base.execution_options(sqlite_begin="IMMEDIATE")
            with writing.begin():
                if not target.is_sqlite:  # as `db upgrade`: one schema made at a time
                    writing.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK})")
                # Checked again under the target's lock: another copy (or `db upgrade`) that
                # got there first is refused here, before this one writes a key file, so that
                # this one's clean-up never removes the keys the other's copy opens with.
                if sa.inspect(writing).get_table_names():
                    raise InputError(_NOT_EMPTY.format(url=safe_url(target.url)))
                needed = key_files(source, target, public_only=public_only)
                folders = {path.parent for path, _ in needed if not path.parent.exists()}
                # The master key the copy will open with, as read before the snapshot.
                master = load_master_key(source, in_use=True)[0]
                for path, content in needed:
                    if path == master_key_path(target):
                        master = decode_master_key(content.decode(), str(path))
                for path, content in needed:
                    write_key_file(path, content)
                    written.append(path)
                upgrade_connection(writing)
                # What the migrations put in meta of a new ledger (a marker of 0007's), the
                # source has as it stands.
                writing.execute(tables.meta.delete())
                driver = writing.connection.dbapi_connection
                for table in TABLES:
                    name = str(table.name)
                    columns = [column.name for column in table.columns]
                    moments = [
                        i for i, c in enumerate(table.columns) if isinstance(c.type, sa.DateTime)
                    ]
                    query = sa.select(table).order_by(*table.primary_key.columns)
                    result = reading.execute(query.execution_options(yield_per=_CHUNK))
                    counts[name] = 0
                    for rows in _stored_chunks(result, name, moments, target.is_sqlite):
                        if table is tables.meta:
                            _same_master_key(rows, master)
                        # The driver's own bulk insert (SQLite's executemany, PostgreSQL's
                        # COPY): five times SQLAlchemy's insert of dicts here.
                        bulk_insert(driver, target.is_sqlite, name, columns, rows)
                        counts[name] += len(rows)
                        progress(len(rows))
            # Committed: whatever fails now (the source's read transaction ending, a
            # connection's close) leaves a copy that needs its keys.
            committed = True
            Database.commits += 1
    except BaseException:
        if not committed:
            for path in written:  # no copy, no copy of its keys
                path.unlink(missing_ok=True)
            for folder in folders:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
    return Copied(counts, written)


def _stored_chunks(
    result: Any, name: str, moments: list[int], to_sqlite: bool
) -> Iterator[list[tuple[Any, ...]]]:
    """The source's rows of table `name`, chunk by chunk, as the target stores them. A value
    the ledger never writes there (SQLite keeps any type in any column: an id that is not a
    UUID, a time that is not one) is an `UnreadableSourceRowError` (exit 4), not an
    unexpected error: nothing is copied."""
    chunks = iter(result.partitions())
    while True:
        try:
            chunk = next(chunks, None)
            if chunk is None:
                return
            rows = [_as_stored(row, moments, to_sqlite) for row in chunk]
        except (ValueError, TypeError, OverflowError):
            raise UnreadableSourceRowError(name) from None
        yield rows


def _same_master_key(meta_rows: Sequence[Sequence[Any]], master: bytes) -> None:
    """The snapshot's data keys are wrapped by the master key the copy takes along (a
    'keys rotate' of the source between the read of its key file and the snapshot would
    leave the copy with a key that opens none of them)."""
    for name, value in meta_rows:
        if name == "master_key_check" and value != key_check(master):
            raise ConfigurationError(
                "the source's master key changed while it was being copied (a 'keys "
                "rotate'?): nothing was copied; run 'db copy' again"
            )


def _as_stored(row: Sequence[Any], moments: Sequence[int], to_sqlite: bool) -> tuple[Any, ...]:
    """A row as the target stores it. A time is UTC whatever the session's time zone: SQLite
    gives it back naive (the ledger writes UTC there), PostgreSQL in its session's zone;
    SQLite stores it naive, in SQLAlchemy's text form."""
    if not moments:
        return tuple(row)
    values = list(row)
    for i in moments:
        moment = values[i]
        if moment is None:
            continue
        utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        values[i] = utc.replace(tzinfo=None).isoformat(" ", "microseconds") if to_sqlite else utc
    return tuple(values)
