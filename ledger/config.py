"""The one place that builds the ledger from configuration. Nothing connects at import."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ledger.errors import LedgerNotFoundError, MasterKeyError
from ledger.persistence.database import Database

if TYPE_CHECKING:  # imported where a ledger is opened: a stored-facts query needs none
    from ledger.application import ConsentLedger

DEFAULT_DB = "sqlite:///consent-ledger.db"
DB_ENV = "CONSENT_LEDGER_DB"
# Where a ledger's keys come from, when not from the folder beside its file.
KEY_SETTINGS = (
    "CONSENT_LEDGER_KEY_DIR",
    "CONSENT_LEDGER_MASTER_KEY",
    "CONSENT_LEDGER_MASTER_KEY_FILE",
)


def database_url(option: str | None = None) -> str:
    return option or os.environ.get(DB_ENV) or DEFAULT_DB


@contextmanager
def keys_beside(keys: Path) -> Iterator[None]:
    """A ledger of the tool's own (the demo's, a dry run's scratch ledger) keeps its keys in
    `keys`, whatever key folder or master key the environment names for your ledgers: a sample
    or a scratch ledger must not be sealed or signed with them, nor add keys beside them."""
    saved = {name: os.environ.pop(name, None) for name in KEY_SETTINGS}
    os.environ["CONSENT_LEDGER_KEY_DIR"] = str(keys)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class UpgradeResult:
    before: str | None
    after: str
    key_source: str


def upgrade(database: Database) -> UpgradeResult:
    """Create or migrate the schema and the keys a new ledger needs."""
    before, after = database.upgrade()
    return UpgradeResult(before, after, make_keys(database, upgraded=(before, after)))


def make_keys(database: Database, *, upgraded: tuple[str | None, str] | None = None) -> str:
    """Make the keys a ledger at the current schema needs, those it lacks (`db upgrade`, a
    new SQLite ledger's first command): the master key (its file, unless the environment
    gives it) and its fingerprint, the suppression list's key, the log pseudonyms' key, the
    signing key pair; and seal any events recorded before sealing existed. Where the master
    key comes from (never the key).

    One write: another command sees all of these keys or none (a command that starts while
    the first command on a new file makes them waits for the writer's lock, then finds them
    all). Each is made only if missing, and a key file that exists is the ledger's (another
    command, or one cut off before its commit, made it), so running this again, or in two
    processes at once, makes nothing twice. `upgraded`: the migrations just committed (from,
    to), which a master key error names."""
    from ledger.persistence.keys import KeyStore
    from ledger.persistence.seals import create_signing_key, seal_pending

    with database.writing():
        keys = KeyStore(database, create=True)
        try:
            keys.record_master_key()
        except MasterKeyError as error:
            if upgraded is None or upgraded[0] == upgraded[1]:
                raise
            # The migrations are committed: say so, or the error reads as if nothing was done.
            before, after = upgraded
            raise MasterKeyError(
                f"the schema was upgraded from {before or 'nothing'} to {after}, but {error}"
            ) from None
        KeyStore.create_log_key(database)
        create_signing_key(database)
        seal_pending(database)
    return keys.source


def keys_unmade(database: Database) -> bool:
    """Whether a ledger at the current schema never had its keys made: no master key
    fingerprint (`make_keys` records it with the others), and nothing recorded. Such is a new
    SQLite file whose first command committed its migrations and was cut off (kill -9, power
    loss) before its keys, or is making them now. One indexed read of `ledger_meta`, on the
    driver (a query loads no SQLAlchemy for it); a ledger that has recorded anything is left
    as it is (its master key is never replaced by a new one)."""
    from ledger.persistence import sqlite_reads as reads

    rows = database.fetch_on_driver(reads.SELECT_META, (reads.MASTER_KEY_CHECK_NAME,))
    if rows and rows[0][0] is not None:
        return False
    return not database.fetch_on_driver(reads.SELECT_ANY_EVENT, ())


def no_ledger_file(path: Path) -> bool:
    """An SQLite ledger's file that does not exist yet, or is empty: no ledger either way."""
    return not path.exists() or path.stat().st_size == 0


def open_database(
    url: str,
    *,
    auto_upgrade: bool = True,
    on_lock_wait: Callable[[], None] | None = None,
    create: bool = True,
) -> Database:
    """The database at `url`. A brand-new SQLite file is created on first use (unless not
    `create`: then a missing file is `LedgerNotFoundError`), and one whose first command was
    cut off between its schema and its keys gets its keys (`keys_unmade`); any other
    database must be at the current schema (else: run `consent-ledger db upgrade`).
    `on_lock_wait`: see `Database.on_lock_wait`."""
    database = Database(url)
    path = database.sqlite_path
    if not create and path is not None and no_ledger_file(path):
        from ledger.persistence.database import safe_url

        database.dispose()
        raise LedgerNotFoundError(safe_url(url), str(path), empty=path.exists())
    database.on_lock_wait = on_lock_wait
    if auto_upgrade and database.is_sqlite and database.is_fresh():
        upgrade(database)
    else:
        database.require_current_schema()
        if auto_upgrade and database.is_sqlite and keys_unmade(database):
            # The first command's migrations are committed, its keys not (yet): make them
            # as it does (the same write; it may be making them now: then waited for).
            make_keys(database)
    return database


def open_ledger(url: str, *, auto_upgrade: bool = True) -> ConsentLedger:
    """The ledger at `url` (see `open_database`)."""
    from ledger.application import ConsentLedger

    # The key store is made on first use (a query of events needs no key).
    return ConsentLedger(open_database(url, auto_upgrade=auto_upgrade))
