"""Where keys live: the master key outside the database, data keys wrapped inside it.

The master key comes from `CONSENT_LEDGER_MASTER_KEY` (base64 of 32 bytes) or from a key file
(`CONSENT_LEDGER_MASTER_KEY_FILE`, default `<key dir>/master.key`) created with mode 0600 by
`db upgrade`. A fingerprint of it is kept in `ledger_meta` so a wrong key is reported as
wrong instead of producing garbage. Data keys are wrapped under the master key, one row per
customer in `ledger_data_keys`; destroying a customer's key is the erasure.

Also wrapped by the master key: the suppression list's HMAC key (Art. 21: marketing
objections kept by keyed hash of the email, `ledger_suppressions`) and the due-diligence
exports' pseudonym secrets. `KeyStore.rotate` re-wraps all of them under a new master key;
no event changes, since the data keys themselves stay the same.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import stat
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ledger.crypto import DataKey, SealError, key_check, new_key, unwrap_key, wrap_key
from ledger.errors import DatabaseUnavailableError, DataKeyAlteredError, MasterKeyError
from ledger.persistence.database import (
    WRITE_LOCK_WAIT,
    Database,
    WriteTransaction,
    fetch_rows,
    master_key_path,
    signals_held,
)
from ledger.persistence.sqlite_reads import MASTER_KEY_CHECK_NAME, SELECT_META
from ledger.privacy import normalise_email

if TYPE_CHECKING:
    # SQLAlchemy only where a statement is built with it (a rotation, the suppression
    # query): the write of one fact runs its statements on the driver, without it.
    from sqlalchemy.engine import Connection

MASTER_KEY_ENV = "CONSENT_LEDGER_MASTER_KEY"
_CHECK = MASTER_KEY_CHECK_NAME
_SHRED_WAIT = 5.0  # seconds a clean-up of old key bytes waits for readers to finish
_KEYS = "ledger_data_keys"
_KEY_COLUMNS = ("customer_id", "wrapped_key", "created_at")
_ANY_KEY = f"SELECT 1 FROM {_KEYS} LIMIT 1"
_SELECT_KEY = f"SELECT wrapped_key FROM {_KEYS} WHERE customer_id = ?"
_SUPPRESSIONS = "ledger_suppressions"
_INSERT_META = "INSERT INTO ledger_meta (name, value) VALUES (?, ?)"
_SUPPRESSION_KEY = "suppression_key"
_SUPPRESSION_CONTEXT = b"suppression-list"
_PENDING_SUPPRESSIONS = "suppressions"
_SUPPRESSION_BATCH = 5000
_ROTATE_BATCH = 5000


def _now_text(database: Database) -> datetime | str:
    return _stored_time(database, datetime.now(UTC))


def _stored_time(database: Database, moment: datetime) -> datetime | str:
    # Raw statements bypass SQLAlchemy's types: give SQLite the text form its DateTime
    # writes and reads, "%Y-%m-%d %H:%M:%S.%f" (the wall time, any offset left out, as it
    # does; isoformat: ~10x strftime's speed). psycopg binds a datetime as it is.
    if not database.is_sqlite:
        return moment
    return moment.replace(tzinfo=None).isoformat(" ", "microseconds")


def _read_time(value: datetime | str | None) -> datetime | None:
    """A stored time as SQLAlchemy's DateTime reads it back (SQLite: naive, from its text)."""
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


def decode_master_key(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"the master key in {source} is not base64") from None
    if len(key) != 32:
        raise MasterKeyError(f"the master key in {source} must be 32 bytes, not {len(key)}")
    return key


def write_key_file(path: Path, content: bytes) -> None:
    """Create a secret file readable by its owner only (never overwrite one).

    Written aside, then linked into place: the key appears whole or not at all, so two
    first commands racing on a new ledger never read a half-written key. FileExistsError
    if the file exists already.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    aside = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(aside, path)
    except OSError as error:
        # A write to the descriptor (no file named), or the link (the file aside named, as
        # when the key exists already): name the file it was for. (The errno keeps the
        # error's class: FileExistsError stays one.)
        if error.filename is None or error.filename == str(aside):
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    finally:
        aside.unlink(missing_ok=True)


def load_master_key(
    database: Database, *, create: bool = False, in_use: bool = False
) -> tuple[bytes, str]:
    """The master key and a description of where it came from (never the key itself).
    `in_use`: the ledger already keeps data under a master key (a new one cannot be made)."""
    from_env = os.environ.get(MASTER_KEY_ENV)
    if from_env:
        return decode_master_key(from_env, MASTER_KEY_ENV), MASTER_KEY_ENV
    path = master_key_path(database)
    if path.parent.exists() and not path.parent.is_dir():
        raise MasterKeyError(
            f"the key folder {path.parent} is not a folder (something else is in its place), "
            f"so the master key {path} cannot be read: put the ledger's key folder back there"
        )
    if not path.exists():
        if in_use:
            where = ""
            if database.sqlite_path is None and "CONSENT_LEDGER_KEY_DIR" not in os.environ:
                where = (
                    "; the key folder is found by the URL as written (user, host, port and "
                    "database), so a URL written otherwise than when the ledger was made "
                    "needs CONSENT_LEDGER_KEY_DIR set to the ledger's folder"
                )
            raise MasterKeyError(
                f"no master key: this ledger's data keys are sealed under a master key that "
                f"is neither in {MASTER_KEY_ENV} nor at {path}: restore that key (a new one "
                f"cannot open them){where}"
            )
        if not create:
            raise MasterKeyError(
                f"no master key: set {MASTER_KEY_ENV} or provide the key file {path} "
                "(run 'consent-ledger db upgrade' to create one for a new ledger)"
            )
        # Another process may have created it a moment ago: that is the ledger's key.
        with contextlib.suppress(FileExistsError):
            write_key_file(path, base64.b64encode(new_key()) + b"\n")
    try:
        text = path.read_text()
    except OSError as error:
        raise MasterKeyError(f"cannot read the master key file {path}: {error.strerror}") from None
    return decode_master_key(text, str(path)), str(path)


def _open_to_others(source: str) -> tuple[str, int] | None:
    """The key file `source` (not the environment) and its permission bits, if its group or
    other users may read or write it: it opens every customer's personal data."""
    if source == MASTER_KEY_ENV:
        return None
    try:
        mode = stat.S_IMODE(os.stat(source).st_mode)
    except OSError:
        return None
    return (source, mode) if mode & 0o077 else None


class KeyStore:
    """Per-customer data keys, wrapped by the master key, with a small cache of open keys."""

    CACHE_SIZE = 20_000

    def __init__(self, database: Database, *, create: bool = False) -> None:
        self.database = database
        self._create = create
        self._loaded: tuple[bytes, str] | None = None
        self._cache: OrderedDict[UUID, DataKey | None] = OrderedDict()
        self._checked_tx: WriteTransaction | None = None
        self._suppression_key: bytes | None = None
        # Set after a write that destroyed or re-wrapped keys: whether the database still
        # holds their old bytes (another session held the clean-up back; see `shred`).
        self.leftover = False
        # The master key's file, with its mode, if other users may read it (the CLI warns).
        self.loose_key_file: tuple[str, int] | None = None

    def _load(self) -> tuple[bytes, str]:
        # Loaded on first use: commands that never open personal data (verify, audit) do not
        # need the master key at all, so an auditor can run them without it.
        if self._loaded is None:
            # A key file is only ever created for a ledger that has no master key yet: a
            # lost key file must stay an error, not be silently replaced by a new key.
            in_use = self._stored_check() is not None or self._keeps_wrapped_keys()
            create = self._create and not in_use
            try:
                loaded = load_master_key(self.database, create=create, in_use=in_use)
                self._check(*loaded)
                self.loose_key_file = _open_to_others(loaded[1])
            except MasterKeyError:
                pending = self.interrupted_rotation() if in_use else None
                if pending is None:
                    raise
                if MASTER_KEY_ENV in os.environ:  # the handover of a rotation
                    raise MasterKeyError(
                        f"the master key from {MASTER_KEY_ENV} is not this ledger's master key: "
                        f"'keys rotate' left the new one in {pending}; set {MASTER_KEY_ENV} to "
                        "its content, then delete that file"
                    ) from None
                raise MasterKeyError(
                    "a 'keys rotate' committed a new master key that is not installed yet (it "
                    f"was cut off, or ran with the key in {MASTER_KEY_ENV}): this ledger's "
                    f"master key is now the one in {pending}; run 'consent-ledger keys rotate' "
                    "to install it (it rotates nothing more), or move it to "
                    f"{master_key_path(self.database)}"
                ) from None
            self._loaded = loaded
        return self._loaded

    @property
    def _master(self) -> bytes:
        return self._load()[0]

    @property
    def source(self) -> str:
        return self._load()[1]

    # -- the master key's fingerprint ------------------------------------------------------

    def _stored_check(self) -> str | None:
        return _meta_in(self.database.fetch_on_driver(SELECT_META, (_CHECK,)))

    def _keeps_wrapped_keys(self) -> bool:
        """Whether the ledger keeps keys wrapped by a master key (its suppression key, a
        customer's data key) though its fingerprint is gone: a master key is in use, and a
        new one would open none of them (`db upgrade` made one). Read only then."""
        fetch = self.database.fetch_on_driver
        return bool(fetch(SELECT_META, (_SUPPRESSION_KEY,)) or fetch(_ANY_KEY, ()))

    def _check(self, master: bytes, source: str) -> None:
        """Refuse a master key that is not the one this ledger's data keys are wrapped with."""
        stored = self._stored_check()
        if stored is not None and stored != key_check(master):
            raise MasterKeyError(
                f"the master key from {source} is not this ledger's master key "
                "(wrong key, or the keys were rotated: use the current key file)"
            )

    def _check_writer(self, tx: WriteTransaction) -> None:
        """Once per write transaction, under the writer's lock: the key may have been rotated
        by another process since we loaded it, and a data key wrapped under the old master
        key would be lost. Cheap (one indexed read per transaction)."""
        if self._checked_tx is tx:
            return
        master, source = self._load()
        stored = _meta_in(tx.fetch(SELECT_META, (_CHECK,)))
        if stored is not None and stored != key_check(master):
            raise MasterKeyError(
                f"the master key from {source} is no longer this ledger's master key "
                "(the keys were rotated meanwhile); run the command again"
            )
        self._checked_tx = tx

    @staticmethod
    def create_log_key(database: Database) -> None:
        """The key of the customer pseudonyms in logs, unless the ledger has one (`db
        upgrade`). Kept in the database, not the key folder: whoever can read the database
        reads the references themselves, and a query needs no key folder; whoever reads
        only the logs cannot recover a reference by trying references."""
        from ledger.persistence.sqlite_reads import LOG_KEY_NAME

        with database.writing() as tx:
            if _meta_in(tx.fetch(SELECT_META, (LOG_KEY_NAME,))) is None:
                value = base64.b64encode(os.urandom(32)).decode()
                tx.execute_on_driver(_INSERT_META, (LOG_KEY_NAME, value))

    def record_master_key(self) -> None:
        """Store the fingerprint on a new ledger (`config.make_keys`, in the write that makes
        the ledger's other keys)."""
        with self.database.writing() as tx:
            if _meta_in(tx.fetch(SELECT_META, (_CHECK,))) is None:
                tx.execute_on_driver(_INSERT_META, (_CHECK, key_check(self._master)))
        self._suppression_hmac_key()

    # -- data keys ---------------------------------------------------------------------------

    def create(self, customer_id: UUID) -> DataKey:
        """A new data key for a new customer, stored in the ambient write transaction."""
        raw = new_key()
        context = customer_id.bytes
        wrapped = wrap_key(self._master, raw, context)
        row = (customer_id, wrapped, _now_text(self.database))
        tx = self.database.current  # (joined without `writing()`'s context: once a customer)
        if tx is None:
            with self.database.writing() as tx:
                self._check_writer(tx)
                tx.defer(_KEYS, _KEY_COLUMNS, row)
        else:
            self._check_writer(tx)
            tx.defer(_KEYS, _KEY_COLUMNS, row)
        key = DataKey(raw, context)
        self._remember(customer_id, key)
        return key

    def get(self, customer_id: UUID) -> DataKey | None:
        """The customer's data key, or None once it has been destroyed (or never existed)."""
        if customer_id in self._cache:
            self._cache.move_to_end(customer_id)
            return self._cache[customer_id]
        # On the driver: an identified export reads one key per customer, and SQLAlchemy's
        # statement and transaction took 150 us each.
        param = customer_id.hex if self.database.is_sqlite else customer_id
        rows = self.database.fetch_on_driver(_SELECT_KEY, (param,))
        wrapped = rows[0][0] if rows else None
        if isinstance(wrapped, memoryview):  # (PostgreSQL's bytea; text, if altered, is
            wrapped = bytes(wrapped)  # refused by the cipher: a key row changed)
        key = None
        if wrapped is not None:
            try:
                key = DataKey(
                    unwrap_key(self._master, wrapped, customer_id.bytes), customer_id.bytes
                )
            except SealError:
                stored = self._stored_check()
                if stored is not None and stored != key_check(self._master):
                    raise MasterKeyError(
                        "the master key was rotated while this command ran; run it again"
                    ) from None
                if stored is not None:  # the master key is the ledger's: the row is not
                    raise DataKeyAlteredError() from None
                raise MasterKeyError(
                    f"the master key from {self.source} does not open this ledger's data keys"
                ) from None
        self._remember(customer_id, key)
        return key

    def whole(self, customer_id: UUID) -> bool:
        """Whether the customer's wrapped key is stored, not destroyed (read as stored, not
        unwrapped: a key put back under another master key is whole all the same)."""
        param = customer_id.hex if self.database.is_sqlite else customer_id
        rows = self.database.fetch_on_driver(_SELECT_KEY, (param,))
        return bool(rows) and rows[0][0] is not None

    def destroy(self, customer_id: UUID) -> None:
        """Crypto-shred: overwrite the wrapped key (in the ambient write, in order with an
        import's queued inserts)."""
        with self.database.writing() as tx:
            # A key created in this transaction may still be queued: insert it first, or
            # the update finds nothing and the queued key is inserted alive after it.
            tx.flush_deferred()
            # On the driver: an import may erase thousands of customers, and SQLAlchemy's
            # update statement cost ~1 ms each. The same values its DateTime would bind.
            tx.execute_later(
                f"UPDATE {_KEYS} SET wrapped_key = NULL, destroyed_at = ? "
                "WHERE customer_id = ? AND wrapped_key IS NOT NULL",
                (_now_text(self.database), customer_id),
            )
            if self._after_destroy not in tx.after_commit:  # once per transaction
                tx.after_commit.append(self._after_destroy)
        self._cache.pop(customer_id, None)
        self._cache[customer_id] = None

    def _after_destroy(self) -> None:
        self.leftover = not self.shred()

    def shred(self) -> bool:
        """Remove what the database still holds of destroyed (or re-wrapped) keys' old bytes;
        True if it could, False if another session holds it back (try again once it ends).

        SQLite: secure_delete zeroes an old key in the page, and a checkpoint copies that
        page over the file's and empties the WAL; a reader's snapshot older than the erasure
        keeps the checkpoint from finishing (waited for `_SHRED_WAIT` at most). PostgreSQL
        keeps the old row version until VACUUM FULL rewrites the table without it, which it
        cannot while a snapshot older than the erasure is open (or as a role that does not
        own the table): the dead row versions it leaves are counted. Its own WAL (pg_wal)
        and any backups still hold the old key: rotate the master key and destroy the old
        one to make those useless.
        """
        try:
            return self._shred()
        except (self.database.driver_module.Error, DatabaseUnavailableError):
            # A lock timeout, a full disk (the checkpoint), the server gone: the write is
            # committed anyway, and its command succeeded; the bytes wait for `keys shred`.
            return False

    def _shred(self) -> bool:
        with self.database.driver_connection() as driver:
            if self.database.is_sqlite:
                driver.execute(f"PRAGMA busy_timeout = {int(_SHRED_WAIT * 1000)}")
                try:
                    row = driver.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    driver.execute(f"PRAGMA busy_timeout = {WRITE_LOCK_WAIT * 1000}")
                return row is not None and row[0] == 0
            driver.autocommit = True
            # VACUUM waits for its lock on the table without end: a session holding it (a
            # `LOCK TABLE`, an index build) would hold a committed erasure's command with it.
            driver.execute(f"SET lock_timeout = {int(_SHRED_WAIT * 1000)}")
            try:
                # A plain VACUUM prunes a dead row version but leaves its bytes in the page's
                # free space, readable in the table's file (a wrapped key under the current
                # master key): VACUUM FULL writes the live rows to a new file and empties the
                # old one. The plain VACUUM after it counts what a reader's snapshot kept.
                driver.execute(f"VACUUM FULL {_KEYS}")
                driver.execute(f"VACUUM {_KEYS}")
            finally:
                driver.execute("RESET lock_timeout")
            dead = driver.execute(
                "SELECT n_dead_tup FROM pg_stat_user_tables "
                f"WHERE relid = CAST('{_KEYS}' AS regclass)"
            ).fetchone()
            return not (dead and dead[0])

    def forget_cache(self) -> None:
        self._cache.clear()

    def _remember(self, customer_id: UUID, key: DataKey | None) -> None:
        self._cache[customer_id] = key
        if len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)

    # -- Art. 21 suppression -----------------------------------------------------------------

    def _suppression_hmac_key(self) -> bytes:
        """The key of the suppression list's email hashes: random, made once per ledger and
        wrapped by the master key like a data key. Not derived from the master key itself, so
        rotating the master key keeps every stored hash valid."""
        if self._suppression_key is not None:
            return self._suppression_key
        stored = _meta_in(self.database.fetch_on_driver(SELECT_META, (_SUPPRESSION_KEY,)))
        if stored is None:
            with self.database.writing() as tx:
                self._check_writer(tx)
                stored = _meta_in(tx.fetch(SELECT_META, (_SUPPRESSION_KEY,)))
                if stored is None:
                    wrapped = wrap_key(self._master, new_key(), _SUPPRESSION_CONTEXT)
                    stored = base64.b64encode(wrapped).decode("ascii")
                    tx.execute_on_driver(_INSERT_META, (_SUPPRESSION_KEY, stored))
        try:
            key = unwrap_key(self._master, base64.b64decode(stored), _SUPPRESSION_CONTEXT)
        except SealError:
            raise MasterKeyError(
                f"the master key from {self.source} does not open this ledger's suppression key"
            ) from None
        self._suppression_key = key
        return key

    def email_hash(self, email: str) -> str:
        """HMAC-SHA256 of the normalised email: stable, and unreadable without the key."""
        return email_hash(self._suppression_hmac_key(), email)

    def update_suppression(
        self, email: str, channel: str, at: datetime, *, suppressed: bool
    ) -> None:
        """Suppress marketing on `channel` for this email from `at` on, or lift a suppression
        older than a fresh consent given at `at`: queued in the ambient write transaction and
        applied, in order, just before it commits (one read and a few writes per commit), or
        every `_SUPPRESSION_BATCH` changes, so a large import's memory stays flat."""
        self._queue_suppression((self.email_hash(email), channel, at, suppressed))

    def withhold_suppression_times(self, emails: Iterable[str]) -> None:
        """An erased customer's emails stay suppressed (Art. 21 outlives erasure), but no
        longer say since when: that time is a withdrawal's in their consent history, which
        stays, and would tie a guessed email back to them (SPEC §4: no command shows an
        erased customer's personal data). Queued as `update_suppression` is, in order."""
        for email in emails:
            self._queue_suppression((self.email_hash(email), "", None, None))

    def _queue_suppression(self, change: _SuppressionChange) -> None:
        tx = self.database.current  # (joined without `writing()`'s context: once a change)
        if tx is None:
            with self.database.writing() as tx:
                _queue_suppression_in(tx, change)
        else:
            _queue_suppression_in(tx, change)

    def suppression(self, email: str) -> tuple[str, dict[str, datetime | None]]:
        """The email's hash and, per suppressed marketing channel, since when (None: withheld,
        as its owner was erased)."""
        digest = self.email_hash(email)
        rows = self.database.fetch_on_driver(
            f"SELECT channel, since FROM {_SUPPRESSIONS} WHERE email_hash = ?", (digest,)
        )
        return digest, {str(channel): _maybe_aware(_read_time(t)) for channel, t in rows}

    # -- rotation ------------------------------------------------------------------------------

    def rotate(self) -> Rotation:
        """Re-wrap every data key, the suppression key and the export secrets under a new
        master key, in one write transaction.

        Events are not touched: the data keys stay the same, only their wrapping changes. The
        new key is written to `master.key.new` before the database changes, so a failure at
        any point leaves a key that opens the ledger: the old one until the commit, the new
        one after. That file is removed only if the ledger is seen still to hold the old key;
        the commit and the swap of the key files run with Ctrl-C and SIGTERM held off. A
        rotation cut off after its commit (kill -9, power) is finished by the next `keys
        rotate`, which installs that key instead of rotating again.
        """
        path = master_key_path(self.database)
        pending = _pending(path)
        with _one_rotation(path):
            if pending.exists():
                finished = self._finish_interrupted(path, pending)
                if finished is not None:
                    return finished
            return self._rotate(path, pending)

    def _rotate(self, path: Path, pending: Path) -> Rotation:
        old_master, source = self._load()
        self._suppression_hmac_key()  # make sure there is one to re-wrap
        master = new_key()
        try:
            write_key_file(pending, base64.b64encode(master) + b"\n")
        except FileExistsError:
            raise MasterKeyError(
                f"{pending} exists: another rotation is running; try again when it is done"
            ) from None
        installed: list[Rotation] = []
        try:
            self._rotate_held(path, pending, old_master, master, source, installed)
        except KeyboardInterrupt:
            # Held off during the commit and the swap, Ctrl-C or SIGTERM arrives as they
            # end: what it would stop is done. (The old wrappings are not shredded yet.)
            if not installed:
                raise
            self.leftover = True
            return installed[0]
        rotation = installed[0]
        try:
            # The old wrappings go the way of a destroyed key (WAL checkpoint, VACUUM).
            self.leftover = not self.shred()
        except KeyboardInterrupt:
            self.leftover = True
        return rotation

    def _rotate_held(
        self,
        path: Path,
        pending: Path,
        old_master: bytes,
        master: bytes,
        source: str,
        installed: list[Rotation],
    ) -> None:
        """The rotation itself; what it installed goes in `installed` before the signals
        held off during the commit and the swap are let through."""
        with contextlib.ExitStack() as held:
            try:
                with self.database.writing() as tx:
                    self._check_writer(tx)
                    count = self._rewrap(tx, old_master, master)
                    from ledger.persistence import tables
                    from ledger.persistence.export_store import rewrap_export_secrets

                    conn = tx.connection
                    rewrap_export_secrets(conn, old_master, master)
                    wrapped = base64.b64decode(_meta_value(conn, _SUPPRESSION_KEY) or "")
                    rewrapped = wrap_key(
                        master,
                        unwrap_key(old_master, wrapped, _SUPPRESSION_CONTEXT),
                        _SUPPRESSION_CONTEXT,
                    )
                    for name, value in (
                        (_SUPPRESSION_KEY, base64.b64encode(rewrapped).decode("ascii")),
                        (_CHECK, key_check(master)),
                    ):
                        conn.execute(
                            tables.meta.update()
                            .where(tables.meta.c.name == name)
                            .values(value=value)
                        )
                    # The commit and the key files' swap: not cut by Ctrl-C or SIGTERM.
                    held.enter_context(signals_held())
            except BaseException as error:
                committed = self._holds(master)
                if committed is False:  # not committed: the new key opens nothing
                    pending.unlink(missing_ok=True)
                    raise
                if committed is None:
                    raise MasterKeyError(
                        f"the rotation failed, and whether it committed cannot be told now: "
                        f"keep {pending}, which holds the new key, and run 'consent-ledger "
                        "keys rotate' again: it installs that key if it opens the ledger, "
                        "or removes it if not"
                    ) from error
                # Committed: what failed came after; the new key is the ledger's now.
            self._loaded = None
            self._checked_tx = None
            try:
                installed.append(self._install(path, pending, count, source == MASTER_KEY_ENV))
            except OSError as error:
                raise MasterKeyError(
                    f"the rotation committed, but its key could not be put in place "
                    f"({error.strerror}): this ledger's master key is now the one in {pending}; "
                    "keep that file, and run 'consent-ledger keys rotate' again to install it"
                ) from None

    def _install(self, path: Path, pending: Path, count: int, env: bool) -> Rotation:
        """Put the committed new key in place of the old one (kept beside it, 0600)."""
        if env:  # the environment's key: the new one is handed over in the pending file
            return Rotation(count, new_key_file=pending, backup=None, env=True)
        backup = None
        if path.exists():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            backup = path.with_name(f"{path.name}.{stamp}.old")
            os.replace(path, backup)
            os.chmod(backup, 0o600)
        os.replace(pending, path)
        return Rotation(count, new_key_file=path, backup=backup, env=False)

    def _holds(self, master: bytes) -> bool | None:
        """Whether the ledger's stored fingerprint is `master`'s; None if it cannot be read."""
        try:
            return self._stored_check() == key_check(master)
        except Exception:  # the database failed: cannot tell
            return None

    def _finish_interrupted(self, path: Path, pending: Path) -> Rotation | None:
        """A `master.key.new` left by a rotation cut off: if the ledger holds that key (it
        committed), install it and say so; if it holds the current key (it never
        committed), remove the file and go on. Neither: refuse, touching nothing."""
        waiting = _key_in(pending)
        from_env = os.environ.get(MASTER_KEY_ENV)
        if (
            waiting is not None
            and from_env
            and decode_master_key(from_env, MASTER_KEY_ENV) == waiting
            and self._holds(waiting)
        ):
            pending.unlink()  # handed over: the environment holds it now
            return None
        if waiting is not None and self._holds(waiting):
            rotation = self._install(path, pending, 0, MASTER_KEY_ENV in os.environ)
            self._loaded = None
            self._checked_tx = None
            return Rotation(
                0, rotation.new_key_file, rotation.backup, rotation.env, finished_earlier=True
            )
        try:
            self._load()  # the current key opens the ledger: the pending one never did
        except MasterKeyError:
            raise MasterKeyError(
                f"{pending} exists, and neither it nor the current master key opens this "
                "ledger: restore this ledger's master key; nothing was changed"
            ) from None
        pending.unlink(missing_ok=True)
        return None

    def interrupted_rotation(self) -> Path | None:
        """`master.key.new`, if it holds this ledger's master key (a rotation committed, and
        was cut off before it installed the key)."""
        pending = _pending(master_key_path(self.database))
        waiting = _key_in(pending)
        return pending if waiting is not None and self._holds(waiting) else None

    def _rewrap(self, tx: WriteTransaction, old: bytes, new: bytes) -> int:
        import sqlalchemy as sa

        from ledger.persistence import tables

        _K = tables.data_keys
        conn = tx.connection
        update = (
            _K.update()
            .where(_K.c.customer_id == sa.bindparam("ident"))
            .values(wrapped_key=sa.bindparam("wrapped"))
        )
        count = 0
        last: UUID | None = None
        while True:
            query = sa.select(_K.c.customer_id, _K.c.wrapped_key).where(
                _K.c.wrapped_key.is_not(None)
            )
            if last is not None:
                query = query.where(_K.c.customer_id > last)
            rows = conn.execute(query.order_by(_K.c.customer_id).limit(_ROTATE_BATCH)).all()
            if not rows:
                return count
            params = []
            for ident, wrapped in rows:
                try:
                    raw = unwrap_key(old, wrapped, ident.bytes)
                except SealError:
                    if _meta_value(conn, _CHECK) is not None:  # checked: the right key
                        raise DataKeyAlteredError("; nothing rotated") from None
                    raise MasterKeyError(
                        "a data key does not open with the current master key; nothing rotated"
                    ) from None
                params.append({"ident": ident, "wrapped": wrap_key(new, raw, ident.bytes)})
            conn.execute(update, params)
            count += len(params)
            last = rows[-1][0]


def _pending(path: Path) -> Path:
    """Where a rotation writes the new key before the database changes."""
    return path.with_name(path.name + ".new")


def _key_in(path: Path) -> bytes | None:
    """The master key a file holds; None if it cannot be read as one."""
    try:
        return decode_master_key(path.read_text(), str(path))
    except (OSError, MasterKeyError):
        return None


@contextlib.contextmanager
def _one_rotation(path: Path) -> Iterator[None]:
    """One `keys rotate` at a time per key file (an exclusive lock on a file beside it, let
    go when the process ends, however it ends): a second one would take the first one's
    `master.key.new` for a leftover and remove it, or have its own installed by the first."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path.with_name(path.name + ".rotating"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MasterKeyError(
                "another 'keys rotate' of this ledger's master key is running; try again "
                "when it is done"
            ) from None
        yield
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class Rotation:
    """What `keys rotate` did: how many data keys, and where the new key (and the old) are."""

    data_keys: int
    new_key_file: Path
    backup: Path | None
    env: bool
    finished_earlier: bool = False  # installed the key of a rotation that was cut off


# (email hash, channel, business time, suppressed): a withdrawal (True) or a consent (False)
# on a channel; ("<hash>", "", None, None): withhold the times of that email's suppressions.
_SuppressionChange = tuple[str, str, datetime | None, bool | None]


def _apply_suppressions(tx: WriteTransaction, changes: list[_SuppressionChange]) -> None:
    """Apply queued changes in order. A suppression whose time is withheld (None) holds
    until a consent lifts it; a later withdrawal keeps it withheld."""
    hashes = sorted({change[0] for change in changes})
    stored: dict[tuple[str, str], datetime | None] = {}
    for start in range(0, len(hashes), 500):
        chunk = hashes[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        rows = tx.fetch(
            f"SELECT email_hash, channel, since FROM {_SUPPRESSIONS} WHERE email_hash IN ({marks})",
            chunk,
        )
        stored.update({(r[0], r[1]): _maybe_aware(_read_time(r[2])) for r in rows})
    state = dict(stored)
    for digest, channel, at, suppressed in changes:
        if suppressed is None:
            for entry in [entry for entry in state if entry[0] == digest]:
                state[entry] = None
            continue
        assert at is not None
        held = (digest, channel) in state
        since = state.get((digest, channel))
        if suppressed and (not held or (since is not None and since > at)):
            state[(digest, channel)] = at
        elif not suppressed and held and (since is None or since < at):
            del state[(digest, channel)]
    database = tx.database

    def time_of(moment: datetime | None) -> datetime | str | None:
        return None if moment is None else _stored_time(database, moment)

    gone = [(h, c) for (h, c) in stored if (h, c) not in state]
    new = [(h, c, time_of(t)) for (h, c), t in state.items() if (h, c) not in stored]
    moved = [
        (time_of(t), h, c)
        for (h, c), t in state.items()
        if (h, c) in stored and stored[(h, c)] != t
    ]
    match = "WHERE email_hash = ? AND channel = ?"
    tx.execute_many(f"DELETE FROM {_SUPPRESSIONS} {match}", gone)
    tx.execute_many(f"UPDATE {_SUPPRESSIONS} SET since = ? {match}", moved)
    tx.execute_many(
        f"INSERT INTO {_SUPPRESSIONS} (email_hash, channel, since) VALUES (?, ?, ?)", new
    )
    changes.clear()


def _queue_suppression_in(tx: WriteTransaction, change: _SuppressionChange) -> None:
    pending = tx.attachments.get(_PENDING_SUPPRESSIONS)
    if pending is None:
        pending = tx.attachments[_PENDING_SUPPRESSIONS] = []
        tx.before_commit.append(lambda: _apply_suppressions(tx, pending))
    pending.append(change)
    if len(pending) >= _SUPPRESSION_BATCH:
        _apply_suppressions(tx, pending)  # in order, as at the commit
        pending.clear()


def email_hash(key: bytes, email: str) -> str:
    return hmac.new(key, normalise_email(email).encode(), hashlib.sha256).hexdigest()


def _meta_value(conn: Connection, name: str) -> str | None:
    return _meta_in(fetch_rows(conn, SELECT_META, (name,)))


def _meta_in(rows: list[Any]) -> str | None:
    """The value of `SELECT_META`'s rows (None: no such row)."""
    return None if not rows or rows[0][0] is None else str(rows[0][0])


def _maybe_aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else _aware(moment)


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes for DateTime(timezone=True) columns; they are UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
