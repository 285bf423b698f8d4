"""Where keys live: the master key outside the database, data keys wrapped inside it.

The master key comes from `CONSENT_LEDGER_MASTER_KEY` (base64 of 32 bytes) or from a key file
(`CONSENT_LEDGER_MASTER_KEY_FILE`, default `<key dir>/master.key`) created with mode 0600 by
`db upgrade`. A fingerprint of it is kept in `ledger_meta` so a wrong key is reported as
wrong instead of producing garbage. Data keys are wrapped under the master key, one row per
customer in `ledger_data_keys`; destroying a customer's key is the erasure.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import sqlalchemy as sa

from ledger.crypto import DataKey, SealError, key_check, new_key, unwrap_key, wrap_key
from ledger.errors import MasterKeyError
from ledger.persistence import tables
from ledger.persistence.database import Database, default_key_dir

MASTER_KEY_ENV = "CONSENT_LEDGER_MASTER_KEY"
MASTER_KEY_FILE_ENV = "CONSENT_LEDGER_MASTER_KEY_FILE"
_CHECK = "master_key_check"
_K = tables.data_keys
_KEY_COLUMNS = ("customer_id", "wrapped_key", "created_at")


def _now_text(database: Database) -> datetime | str:
    # Raw inserts bypass SQLAlchemy's types: give SQLite the text form its DateTime reads.
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%d %H:%M:%S.%f") if database.is_sqlite else now


def master_key_path(database: Database) -> Path:
    configured = os.environ.get(MASTER_KEY_FILE_ENV)
    return Path(configured) if configured else default_key_dir(database) / "master.key"


def decode_master_key(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"the master key in {source} is not base64") from None
    if len(key) != 32:
        raise MasterKeyError(f"the master key in {source} must be 32 bytes, not {len(key)}")
    return key


def write_key_file(path: Path, content: bytes) -> None:
    """Create a secret file readable by its owner only (never overwrite one)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)


def load_master_key(database: Database, *, create: bool = False) -> tuple[bytes, str]:
    """The master key and a description of where it came from (never the key itself)."""
    from_env = os.environ.get(MASTER_KEY_ENV)
    if from_env:
        return decode_master_key(from_env, MASTER_KEY_ENV), MASTER_KEY_ENV
    path = master_key_path(database)
    if not path.exists():
        if not create:
            raise MasterKeyError(
                f"no master key: set {MASTER_KEY_ENV} or provide the key file {path} "
                "(run 'consent-ledger db upgrade' to create one for a new ledger)"
            )
        write_key_file(path, base64.b64encode(new_key()) + b"\n")
    try:
        text = path.read_text()
    except OSError as error:
        raise MasterKeyError(f"cannot read the master key file {path}: {error.strerror}") from None
    return decode_master_key(text, str(path)), str(path)


class KeyStore:
    """Per-customer data keys, wrapped by the master key, with a small cache of open keys."""

    CACHE_SIZE = 20_000

    def __init__(self, database: Database, *, create: bool = False) -> None:
        self.database = database
        self._create = create
        self._loaded: tuple[bytes, str] | None = None
        self._cache: OrderedDict[UUID, DataKey | None] = OrderedDict()

    def _load(self) -> tuple[bytes, str]:
        # Loaded on first use: commands that never open personal data (verify, audit) do not
        # need the master key at all, so an auditor can run them without it.
        if self._loaded is None:
            self._loaded = load_master_key(self.database, create=self._create)
            self._check(self._loaded[0], self._loaded[1])
        return self._loaded

    @property
    def _master(self) -> bytes:
        return self._load()[0]

    @property
    def source(self) -> str:
        return self._load()[1]

    # -- the master key's fingerprint ------------------------------------------------------

    def _check(self, master: bytes, source: str) -> None:
        """Refuse a master key that is not the one this ledger's data keys are wrapped with."""
        with self.database.reading() as conn:
            stored = conn.execute(
                sa.select(tables.meta.c.value).where(tables.meta.c.name == _CHECK)
            ).scalar()
        if stored is not None and stored != key_check(master):
            raise MasterKeyError(f"the master key from {source} is not this ledger's master key")

    def record_master_key(self) -> None:
        """Store the fingerprint on a new ledger (called by `db upgrade`)."""
        with self.database.writing() as tx:
            exists = tx.connection.execute(
                sa.select(tables.meta.c.value).where(tables.meta.c.name == _CHECK)
            ).scalar()
            if exists is None:
                tx.insert(tables.meta, [{"name": _CHECK, "value": key_check(self._master)}])

    # -- data keys ---------------------------------------------------------------------------

    def create(self, customer_id: UUID) -> DataKey:
        """A new data key for a new customer, stored in the ambient write transaction."""
        raw = new_key()
        wrapped = wrap_key(self._master, raw, customer_id.bytes)
        with self.database.writing() as tx:
            tx.defer(_K, _KEY_COLUMNS, (customer_id, wrapped, _now_text(self.database)))
        key = DataKey(raw, customer_id.bytes)
        self._remember(customer_id, key)
        return key

    def get(self, customer_id: UUID) -> DataKey | None:
        """The customer's data key, or None once it has been destroyed (or never existed)."""
        if customer_id in self._cache:
            self._cache.move_to_end(customer_id)
            return self._cache[customer_id]
        with self.database.reading() as conn:
            wrapped = conn.execute(
                sa.select(_K.c.wrapped_key).where(_K.c.customer_id == customer_id)
            ).scalar()
        key = None
        if wrapped is not None:
            try:
                key = DataKey(
                    unwrap_key(self._master, wrapped, customer_id.bytes), customer_id.bytes
                )
            except SealError:
                raise MasterKeyError(
                    f"the master key from {self.source} does not open this ledger's data keys"
                ) from None
        self._remember(customer_id, key)
        return key

    def destroy(self, customer_id: UUID) -> bool:
        """Crypto-shred: overwrite the wrapped key. True if there was a key to destroy."""
        with self.database.writing() as tx:
            # A key created in this transaction may still be queued: insert it first, or
            # the update finds nothing and the queued key is inserted alive after it.
            tx.flush_deferred()
            result = tx.connection.execute(
                _K.update()
                .where(_K.c.customer_id == customer_id, _K.c.wrapped_key.is_not(None))
                .values(wrapped_key=None, destroyed_at=datetime.now(UTC))
            )
            tx.after_commit.append(self._after_destroy)
        self._cache.pop(customer_id, None)
        self._cache[customer_id] = None
        return bool(result.rowcount)

    def _after_destroy(self) -> None:
        # Make SQLite drop the old page from the WAL too (secure_delete zeroes it in the file).
        if self.database.is_sqlite:
            with self.database.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def forget_cache(self) -> None:
        self._cache.clear()

    def _remember(self, customer_id: UUID, key: DataKey | None) -> None:
        self._cache[customer_id] = key
        if len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)
