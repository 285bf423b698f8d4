"""Helpers for the personal-data tests: the personal values of a feed, and a database's bytes.

`raw_database_bytes` reads what an attacker with the disk would read: the SQLite file and its
WAL, or PostgreSQL's relation files (after a CHECKPOINT, via `pg_read_binary_file`, which
needs a superuser: the test server's `postgres` is one). `table_bytes` reads every value of
every table through SQL, which also sees through PostgreSQL's TOAST compression.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from ledger.persistence.database import normalise_url
from ledger.vocabulary import PERSONAL_FIELDS

# Shorter values ("GB") would match by chance in binary data; every person in the test feeds
# has longer ones (name, email, phone, street, city, postcode).
MIN_LENGTH = 6


def personal_values(lines: Iterable[bytes | str], customers: set[str] | None = None) -> set[str]:
    """Every name, email, phone and address part in the feed's registrations and updates."""
    found: set[str] = set()
    for line in lines:
        if not line.strip():
            continue
        fact = orjson.loads(line)
        if fact.get("type") not in ("customer.registered", "customer.updated"):
            continue
        if customers is not None and fact.get("customer") not in customers:
            continue
        for name in PERSONAL_FIELDS:
            value = fact.get(name)
            parts = value.values() if isinstance(value, dict) else [value]
            found.update(p for p in parts if isinstance(p, str) and len(p) >= MIN_LENGTH)
    return found


def feed_values(path: Path, customers: set[str] | None = None) -> set[str]:
    with open(path, "rb") as handle:
        return personal_values(handle, customers)


def raw_database_bytes(url: str) -> bytes:
    engine = sa.create_engine(normalise_url(url))
    try:
        if engine.dialect.name == "sqlite":
            database = engine.url.database
            assert database
            path = Path(database)
            wal = Path(f"{database}-wal")
            return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("CHECKPOINT")
            paths = conn.exec_driver_sql(
                "SELECT pg_relation_filepath(c.oid) FROM pg_class c "
                "WHERE c.relnamespace = current_schema()::regnamespace "
                "AND c.relkind IN ('r', 'i') "
                "UNION SELECT pg_relation_filepath(c.reltoastrelid) FROM pg_class c "
                "WHERE c.relnamespace = current_schema()::regnamespace AND c.reltoastrelid <> 0"
            ).scalars()
            blobs = [
                conn.exec_driver_sql("SELECT pg_read_binary_file(%s)", (p,)).scalar()
                for p in paths
                if p
            ]
            return b"".join(bytes(b) for b in blobs if b)
    finally:
        engine.dispose()


def raw_bytes_once_pruned(url: str, needle: bytes, table: str = "ledger_data_keys") -> bytes:
    """`raw_database_bytes`, after PostgreSQL has pruned `needle`'s old row version if it can.

    PostgreSQL drops an old row version only once no open transaction (in any session on
    the database) can still see it: the ledger's own VACUUM FULL may come too early on a
    busy server (it then warns to run `keys shred`). This runs it again, for up to 40 s.
    """
    raw = raw_database_bytes(url)
    for _ in range(80):
        if needle not in raw or "postgresql" not in url:
            break
        time.sleep(0.5)
        engine = sa.create_engine(normalise_url(url))
        try:
            with engine.connect() as conn:
                autocommit = conn.execution_options(isolation_level="AUTOCOMMIT")
                # (as the ledger's `KeyStore.shred` does: a plain VACUUM leaves a pruned
                # row's bytes in the page's free space)
                autocommit.exec_driver_sql(f"VACUUM FULL {table}")
        finally:
            engine.dispose()
        raw = raw_database_bytes(url)
    return raw


def table_bytes(url: str) -> bytes:
    """Every value of every table, as bytes (text encoded, binary as is)."""
    engine = sa.create_engine(normalise_url(url))
    chunks: list[bytes] = []
    try:
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                for row in conn.execute(sa.text(f"SELECT * FROM {table}")):
                    chunks.extend(_as_bytes(value) for value in row)
    finally:
        engine.dispose()
    return b"\n".join(chunks)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode()


def found_in(blob: bytes, values: Iterable[str]) -> list[str]:
    """The values whose UTF-8 bytes occur in `blob` (JSON-escaped forms too)."""
    hits = []
    for value in values:
        forms = {value.encode(), orjson.dumps(value)[1:-1]}
        if any(form in blob for form in forms):
            hits.append(value)
    return sorted(hits)
