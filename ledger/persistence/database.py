"""The database: write transactions under the writer's lock, on the driver; snapshots.

Writes are serialised: SQLite takes its write lock at `BEGIN IMMEDIATE`, PostgreSQL takes an
EXCLUSIVE lock on the event table. Under that lock the next notification id is read once and
ids are assigned without gaps, so recording order is total and committed in order, which
the integrity tree and the read models' tracking rely on. Readers are never blocked: SQLite in
WAL mode and PostgreSQL both give a reader a consistent snapshot of committed transactions.

A write transaction is ambient (a context variable): everything that writes or reads inside
`Database.writing()` (the event recorder, the key store, the indexes) joins the same
connection, so one import is one atomic transaction and sees its own uncommitted events.
That connection is the driver's own (sqlite3's or psycopg's): a write runs its statements
without SQLAlchemy, which is loaded only for a statement built with it (`WriteTransaction.
connection`), for the reads outside a write that are not the driver's (`reading()`), and
for schema upgrades (Alembic).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from uuid import UUID

from ledger.errors import (
    ConfigurationError,
    DamagedDatabaseError,
    DatabaseUnavailableError,
    SchemaOutOfDateError,
    SchemaTooNewError,
)
from ledger.persistence import postgres_reads, sqlite_reads

if TYPE_CHECKING:
    # SQLAlchemy is imported where it is used: a query on SQLite reads through the stdlib
    # driver (`sqlite_reads`) and never loads it, most of such a command's start-up.
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.engine.url import URL

    from ledger.persistence.background import BackgroundInserts

# Recordings committed on PostgreSQL are announced here (read models listen).
NOTIFY_CHANNEL = "consent_ledger_events"

# Seconds a write waits for the writer's lock before `Database.on_lock_wait` is told.
LOCK_NOTICE_AFTER = 1.0
# How long a write waits for the writer's lock before it gives up (SQLite's busy timeout;
# PostgreSQL's lock_timeout for the table locks), in seconds.
WRITE_LOCK_WAIT = 120
# The tables beside `ledger_events` that a write changes: on PostgreSQL a write takes them
# with the writer's lock (`Database.writing`).
WRITTEN_TABLES = (
    "ledger_facts",
    "ledger_orders",
    "ledger_customers",
    "ledger_data_keys",
    "ledger_meta",
    "ledger_suppressions",
    "ledger_export_secrets",
    "ledger_tree_nodes",
    "ledger_checkpoints",
)

# The Alembic revision this code needs; a test checks it equals the migrations' head.
SCHEMA_HEAD = "0013"

_ambient: contextvars.ContextVar[WriteTransaction | None] = contextvars.ContextVar(
    "consent_ledger_write_transaction", default=None
)


def normalise_url(raw: str) -> URL:
    from sqlalchemy.engine import make_url

    url = make_url(raw)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


# The engines and drivers the ledger runs on, as `normalise_url` names them.
_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite", "postgresql+psycopg"})


def parse_url(raw: str) -> URL:
    """`normalise_url`, with a URL that does not parse as one plain error (the URL is not
    shown: it may hold a password)."""
    import sqlalchemy as sa

    try:
        return normalise_url(raw)
    except (sa.exc.ArgumentError, ValueError):
        raise DatabaseUnavailableError(
            "the database URL cannot be read (e.g. sqlite:///ledger.db or "
            "postgresql://USER@HOST:5432/DATABASE)"
        ) from None


def safe_url(url: URL | str) -> str:
    """The URL without its password, fit for messages and logs: the user's password and any
    query parameter that carries one (libpq's `?password=`, `?sslpassword=`)."""
    if isinstance(url, str):
        import sqlalchemy as sa

        try:
            url = sa.engine.make_url(url)
        except sa.exc.ArgumentError:
            return "<unparseable database URL>"
    spill = _password_spill(url)
    if spill is not None:  # where the URL is read, none of it can be trusted to be no secret
        return f"{url.drivername}://***@{spill}"
    hidden = {name: "***" for name in url.query if "password" in name.lower()}
    if not hidden:
        return url.render_as_string(hide_password=True)
    rendered = url.update_query_dict(hidden).render_as_string(hide_password=True)
    return rendered.replace("%2A%2A%2A", "***")  # as the user's password is shown


@dataclass
class WriteTransaction:
    """One atomic write: a driver connection (sqlite3's or psycopg's) holding the writer's
    lock, and the next recording id.

    Every statement of the write runs on that one connection. Code that builds its
    statements with SQLAlchemy (an import's read models, a key rotation, the integrity
    catch-ups) gets `connection`, SQLAlchemy's view of the same connection and transaction,
    made on first use: a write that never asks for it never loads SQLAlchemy.
    """

    database: Database
    _driver: Any
    next_notification_id: int
    discard: bool = False
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    # Run inside the transaction just before it commits (the integrity seal signs here).
    before_commit: list[Callable[[], None]] = field(default_factory=list)
    # Per-transaction state of the write path's helpers (e.g. the integrity sealer).
    attachments: dict[str, Any] = field(default_factory=dict)
    # Rows queued by table name and columns (`defer`).
    deferred: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]] = field(default_factory=dict)
    # PostgreSQL: the transaction's own `enable_seqscan`, put back after each lookup of
    # `select_in` (None until the first).
    _seqscan: str | None = None
    # SQLAlchemy's view of the connection (`connection`), once asked for.
    _view: Connection | None = None

    # Bulk inserts queued on a worker thread (an import's; see `overlap_inserts`).
    background: BackgroundInserts | None = None

    @property
    def driver(self) -> Any:
        """The transaction's driver connection, once every insert queued on it has run:
        whatever uses it sees all that was written before, in order."""
        if self.background is not None:
            self.background.settle()
        return self._driver

    @property
    def connection(self) -> Connection:
        """SQLAlchemy's view of the transaction (the same connection), for statements built
        with SQLAlchemy; made on first use (it loads SQLAlchemy)."""
        driver = self.driver
        if self._view is None:
            self._view = self.database.view_of(driver)
        return self._view

    def close_view(self) -> None:
        """Let go of SQLAlchemy's view, if one was made (after the commit or rollback: its
        close rolls back what it thinks open, and closes the driver connection)."""
        view, self._view = self._view, None
        if view is not None:
            view.close()

    def overlap_inserts(self) -> None:
        """From now on, `insert_many` queues its rows on a worker thread and returns (see
        `ledger.persistence.background`); an error surfaces at the next use of the
        connection, at the latest before commit."""
        if self.background is None and self.database.background_inserts_work(self._driver):
            from ledger.persistence.background import BackgroundInserts

            integrity_error = self.database.driver_module.IntegrityError
            self.background = BackgroundInserts(
                self._driver, self.database.is_sqlite, integrity_error
            )

    def end_background(self, *, settle: bool) -> None:
        """Stop the worker: after waiting for its inserts (raising their error) if `settle`;
        else only waiting (a rollback follows)."""
        background, self.background = self.background, None
        if background is None:
            return
        if settle:
            try:
                background.settle()
            finally:
                background.close()
        else:
            background.close()

    def defer(self, table: str, columns: tuple[str, ...], row: tuple[Any, ...]) -> None:
        """Queue a row to insert with others of its table (before commit at the latest)."""
        self.deferred.setdefault((table, columns), []).append(row)

    def flush_deferred(self) -> None:
        for (table, columns), rows in self.deferred.items():
            self.insert_many(table, columns, rows)
        self.deferred.clear()

    def select_in(self, sql: str, values: list[Any], *, binary: bool = False) -> list[Any]:
        """The rows of `sql` whose `{in_values}` is the list `values`, run on the driver: an
        import's per-chunk lookups, without SQLAlchemy compiling a 2,000-value IN list.
        (`binary`: PostgreSQL's results in binary, `run_on_driver`.)

        SQLite gets `IN (?, ?, ...)`. PostgreSQL gets `= ANY(%s)`, one array parameter, planned
        for each call (never prepared): a generic plan is made from the statistics of tables
        that this very import is filling, and chose badly (these lookups took twice as long
        prepared; `= ANY` unprepared took ~30 % less than a 2,000-value IN list).

        Planned afresh, it still chose a sequential scan while the planner had no statistics
        (`reltuples` -1: an import into a new ledger, or one that autovacuum has not analysed
        yet), reading the whole table for 2,000 keys: 45 ms a chunk at 300k facts, growing
        with the ledger, where the primary key answers in 6 ms. So these lookups are planned
        without sequential scans (`enable_seqscan` off for the statement, then put back as
        the transaction had it: another statement of the transaction, such as the scan of
        the fact index for transfer initiations that a preventive check makes, keeps the
        plan it would have had).
        """
        if not values:
            return []
        if self.database.is_sqlite:
            sql = sql.format(in_values=f"IN ({', '.join('?' * len(values))})")
            return run_on_driver(self.driver, True, sql, values, list)
        sql = sql.format(in_values="= ANY(?)")
        driver = self.driver
        if self._seqscan is None:
            self._seqscan = run_on_driver(driver, False, _SEQSCAN, (), _scalar)
        run_on_driver(driver, False, _SET_SEQSCAN, ("off",), list)
        rows = run_on_driver(driver, False, sql, (values,), list, unprepared=True, binary=binary)
        # (A failure of this ends the transaction.)
        run_on_driver(driver, False, _SET_SEQSCAN, (self._seqscan,), list)
        return rows

    def execute_later(self, sql: str, params: tuple[Any, ...]) -> None:
        """One write statement (`?` marks), queued after the inserts on the worker thread if
        there is one (its rows changed are not known, nor needed), else run now."""
        if self.background is None:
            self.execute_on_driver(sql, params)
            return
        style = "qmark" if self.database.is_sqlite else "pyformat"
        self.background.submit_statement(sqlite_reads.for_driver(sql, style), params)

    def execute_on_driver(self, sql: str, params: Sequence[Any]) -> int:
        """One write statement (`?` marks) on the driver; returns the rows it changed."""
        return run_on_driver(self.driver, self.database.is_sqlite, sql, params, _rowcount)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One write statement (`?` marks) for each of `rows`, on the driver."""
        if rows:
            style = "qmark" if self.database.is_sqlite else "pyformat"
            cursor = self.driver.cursor()
            try:
                cursor.executemany(sqlite_reads.for_driver(sql, style), rows)
            finally:
                cursor.close()

    def fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """The rows of one statement (`?` marks), in the transaction."""
        return run_on_driver(self.driver, self.database.is_sqlite, sql, params, list)

    def insert_many(
        self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
    ) -> None:
        """Bulk insert on the driver's own executemany: the hot path of an import.

        The only conversion our hot columns need is a UUID's storage form, which the
        driver does (`_sqlite_uuid`, registered for SQLite; psycopg knows UUIDs).
        """
        if not rows:
            return
        if self.background is not None and self.background.submit(table, columns, rows):
            return
        driver = self.driver
        try:
            bulk_insert(driver, self.database.is_sqlite, table, columns, rows)
        except self.database.driver_module.IntegrityError as error:
            # Imported here: a query reads without loading eventsourcing.
            from eventsourcing.persistence import IntegrityError

            raise IntegrityError(f"{table}: {first_line(error)}") from None


class Database:
    """An engine plus the ledger's transaction discipline."""

    # Write transactions (and schema upgrades) committed by this process, through any
    # Database: whether a command's failure after them (its output, say) leaves what it
    # recorded recorded (the demo, a rebuild, open databases of their own).
    commits: ClassVar[int] = 0
    # Every Database of this process, for `dispose_all`.
    _instances: ClassVar[weakref.WeakSet[Database]] = weakref.WeakSet()

    def __init__(self, url: str) -> None:
        Database._instances.add(self)
        self._raw_url = url
        self._url: URL | None = None
        self._engine: Engine | None = None
        # A plain SQLite file URL is understood without SQLAlchemy (see `sqlite_reads`).
        self._sqlite_file = sqlite_reads.plain_sqlite_file(url)
        # So is a PostgreSQL URL on psycopg, for reads (see `postgres_reads`).
        postgres_uri = postgres_reads.plain_postgres_url(url)
        if self._sqlite_file is not None:
            self.backend = "sqlite"
        elif postgres_uri is not None:
            self.backend = "postgresql"
        elif self.url.drivername in _DRIVERS:  # (named without loading a dialect for it)
            self.backend = self.url.get_backend_name()
        else:
            self.backend = "unsupported"
        if self.backend not in ("sqlite", "postgresql"):
            raise DatabaseUnavailableError(
                f"unsupported database {safe_url(self.url)}: use sqlite:/// or postgresql://"
            )
        path = self.sqlite_path
        if path is not None and not path.parent.exists():
            raise DatabaseUnavailableError(
                f"cannot open {safe_url(self.url)}: folder {path.parent} does not exist"
            )
        self._background_ok: bool | None = None
        # Called (on a timer thread) when a write has waited `LOCK_NOTICE_AFTER` seconds
        # for the writer's lock: the CLI says so, rather than sit there silently.
        self.on_lock_wait: Callable[[], None] | None = None
        self._written: list[str] | None = None  # `_written_tables`
        # A PostgreSQL URL as libpq reads it (every PostgreSQL URL the ledger takes is one).
        self._postgres_uri = postgres_uri
        # The driver connection of the last write, kept for the next one (`_write_driver`).
        self._idle: tuple[int, Any] | None = None
        # SQLAlchemy over a write's driver connection (`view_of`), made on first use.
        self._view_engine: Engine | None = None
        self._handed: list[Any] = []
        # Threads of one process may write through one Database (each its own transaction).
        self._driver_lock = threading.Lock()
        self._reads: sqlite_reads.Readers | postgres_reads.Readers | None = None
        # Per thread: the connection of `one_snapshot()` where there are no `_reads`.
        self._pinned = threading.local()
        if path is not None:
            self._reads = sqlite_reads.Readers(path, url)
        elif postgres_uri is not None:
            self._reads = postgres_reads.Readers(postgres_uri, url)

    # -- engine ------------------------------------------------------------------------------

    @property
    def url(self) -> URL:
        if self._url is None:
            self._url = parse_url(self._raw_url)
        return self._url

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, created on first use."""
        if self._engine is None:
            self._engine = self._create_engine()
        return self._engine

    def background_inserts_work(self, driver: Any) -> bool:
        """Whether an import may queue its inserts on a worker thread: with two cores or
        more to run it on (on one, the overlap gains nothing and SQLite's JSON statement
        costs more than its executemany); SQLite's need its JSON functions, built in since
        3.38 and in most builds before."""
        if self._background_ok is None:
            if _usable_cores() < 2:
                self._background_ok = False
            elif not self.is_sqlite:
                self._background_ok = True
            else:
                try:
                    driver.execute("SELECT json_extract('[1]', '$[0]')").close()
                    self._background_ok = True
                except Exception:  # no JSON functions: insert in turn
                    self._background_ok = False
        return self._background_ok

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @property
    def sqlite_path(self) -> Path | None:
        if not self.is_sqlite:
            return None
        database = self._sqlite_file if self._sqlite_file is not None else self.url.database
        if not database or database == ":memory:":
            return None
        return Path(database)

    def _create_engine(self) -> Engine:
        import sqlalchemy as sa
        from sqlalchemy import event as sa_event

        if self.is_sqlite:
            # Not tied to its thread: an import's inserts run on a worker thread, one at a time
            # with the import's own statements (see `ledger.persistence.background`).
            engine = sa.create_engine(
                self.url, connect_args={"timeout": 120, "check_same_thread": False}
            )
            # A UUID's SQLite storage form, as SQLAlchemy's Uuid type stores it (32 hex
            # digits), for the raw inserts of `insert_many`: the driver converts each value
            # as it binds it, no copy of every row. (SQLAlchemy binds strings, not UUIDs.)

            @sa_event.listens_for(engine, "connect")
            def _on_connect(dbapi_connection: Any, _record: Any) -> None:
                # Let SQLAlchemy, not pysqlite, decide where transactions begin.
                _prepare_sqlite(dbapi_connection)

            @sa_event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
                if mode == "IMMEDIATE":
                    _begin_immediate(conn.connection.dbapi_connection)
                else:
                    conn.exec_driver_sql(f"BEGIN {mode}")

            return engine
        return sa.create_engine(
            self.url,
            pool_pre_ping=False,
            connect_args=dict(postgres_reads.CONNECT_ARGS),
        )

    def dispose(self) -> None:
        if self._reads is not None:
            self._reads.close()
        with self._driver_lock:
            idle, self._idle = self._idle, None
        if idle is not None and idle[0] == os.getpid():
            _close_quietly(idle[1])
        if self._view_engine is not None:
            self._view_engine.dispose()
        if self._engine is not None:
            self._engine.dispose()

    # -- the driver --------------------------------------------------------------------------

    @property
    def driver_module(self) -> Any:
        """The DBAPI module of the ledger's driver (its `IntegrityError`, `OperationalError`)."""
        if self.is_sqlite:
            return sqlite3
        import psycopg

        return psycopg

    @property
    def name(self) -> str:
        """The URL as messages show it (without a password)."""
        if self._sqlite_file is not None:
            return self._raw_url  # a plain sqlite:/// URL: no password in it
        return safe_url(self.url)

    def _open_driver(self) -> Any:
        """A new driver connection, as a write (and SQLAlchemy's engine) uses one: SQLite's
        in WAL mode with the ledger's pragmas, in autocommit (transactions are begun
        explicitly); psycopg's in a transaction from its first statement."""
        try:
            if self.is_sqlite:
                path = self.sqlite_path
                # Not tied to its thread: an import's inserts run on a worker thread, one at a
                # time with the import's own statements (see `ledger.persistence.background`).
                driver = sqlite3.connect(
                    ":memory:" if path is None else path,
                    timeout=WRITE_LOCK_WAIT,
                    isolation_level=None,
                    check_same_thread=False,
                )
                try:
                    _prepare_sqlite(driver)
                except BaseException:
                    driver.close()
                    raise
                return driver
            import psycopg

            assert self._postgres_uri is not None
            return psycopg.connect(self._postgres_uri, **postgres_reads.CONNECT_ARGS)
        except self.driver_module.Error as error:
            if sqlite_reads.is_damaged(error):
                raise DamagedDatabaseError(self.name) from None
            failure = first_line(error) if self.is_sqlite else connect_failure(self.url, error)
            hint = sqlite_reads.read_only_hint(self.sqlite_path, error)
            raise DatabaseUnavailableError(
                f"cannot connect to {self.name}: {failure}{hint}"
            ) from None

    def _write_driver(self) -> Any:
        """A driver connection for a write, holding the writer's lock (`_begin_write`): the
        last write's, if it is still open and of this process, else a new one."""
        with self._driver_lock:
            idle, self._idle = self._idle, None
        if idle is not None and idle[0] == os.getpid() and not _closed(idle[1]):
            driver = idle[1]
            try:
                self._begin_write(driver)
                return driver
            except Exception as error:
                # Ended by the server while it was idle (an administrator, an idle timeout,
                # a restart): nothing was begun on it, so the write goes ahead on a new one
                # rather than fail once. (A lock not had is no such failure: raised.)
                lost = self._operational(error) is not None and _closed(driver)
                _close_quietly(driver)
                if not lost:
                    raise
            except BaseException:
                _close_quietly(driver)
                raise
        driver = self._open_driver()
        try:
            self._begin_write(driver)
        except BaseException:
            _close_quietly(driver)
            raise
        return driver

    @contextmanager
    def driver_connection(self) -> Iterator[Any]:
        """A driver connection of its own (not the ambient write's), closed after; its
        failures as a write's are (`_failures`)."""
        driver = self._open_driver()
        try:
            with self._failures():
                yield driver
        finally:
            _close_quietly(driver)

    def view_of(self, driver: Any) -> Connection:
        """SQLAlchemy's view of a write's driver connection, in the write's transaction: a
        Connection of an engine whose pool hands it over (`_hand_over`). Its dialect asks
        its questions of the server once per process, on a connection of its own (and ends
        with a rollback, which must not reach a write). Closing the view closes `driver`."""
        import sqlalchemy as sa

        with self._driver_lock:
            if self._view_engine is None:
                engine = sa.create_engine(
                    self.url,
                    creator=self._hand_over,
                    poolclass=sa.pool.NullPool,
                    pool_reset_on_return=None,
                )
                engine.connect().close()
                self._view_engine = engine
            self._handed.append(driver)
            try:
                return self._view_engine.connect()
            finally:
                self._handed.clear()

    def _hand_over(self) -> Any:
        return self._handed.pop() if self._handed else self._open_driver()

    @classmethod
    def dispose_all(cls) -> None:
        """Close every connection of every Database of this process (before it ends)."""
        for database in list(cls._instances):
            database.dispose()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        from sqlalchemy.exc import DBAPIError, OperationalError

        try:
            conn = self.engine.connect()
        except (OperationalError, DBAPIError) as error:
            if sqlite_reads.is_damaged(error):
                raise DamagedDatabaseError(safe_url(self.url)) from None
            hint = sqlite_reads.read_only_hint(self.sqlite_path, error)
            raise DatabaseUnavailableError(
                f"cannot connect to {safe_url(self.url)}: "
                f"{connect_failure(self.url, error.orig)}{hint}"
            ) from None
        try:
            yield conn
        except (OperationalError, self.engine.dialect.loaded_dbapi.OperationalError) as error:
            # The server went away (or SQLite gave up on a lock) in the middle of a command:
            # one line for the user, not a traceback; an uncommitted write was rolled back.
            reason = first_line(getattr(error, "orig", None) or error)
            raise DatabaseUnavailableError(
                f"the database {safe_url(self.url)} failed: {reason}"
            ) from None
        finally:
            conn.close()

    # -- transactions ------------------------------------------------------------------------

    @property
    def current(self) -> WriteTransaction | None:
        tx = _ambient.get()
        return tx if tx is not None and tx.database is self else None

    @contextmanager
    def writing(self) -> Iterator[WriteTransaction]:
        """Join the ambient write transaction, or begin one holding the writer's lock.

        The write runs on a driver connection of its own (`_write_driver`), not through
        SQLAlchemy: a command that records one fact runs its few statements without loading
        it (see `WriteTransaction`)."""
        existing = self.current
        if existing is not None:
            yield existing
            return
        with self._lock_wait_notice(), self._failures(locking=True):
            driver = self._write_driver()
        tx: WriteTransaction | None = None  # none yet if the head read fails
        done = False  # committed, or rolled back as asked (`discard`)
        held = contextlib.ExitStack()  # signals, once the commit begins
        with held:
            try:
                with self._failures():
                    try:
                        head = run_on_driver(driver, self.is_sqlite, _HEAD, (), _scalar)
                        first_id = (head or 0) + 1
                        tx = WriteTransaction(self, driver, first_id)
                        token = _ambient.set(tx)
                        try:
                            yield tx
                        finally:
                            _ambient.reset(token)
                    except BaseException:
                        if tx is not None:
                            tx.end_background(settle=False)
                        _rollback_quietly(driver)
                        raise
                    if tx.discard:
                        tx.end_background(settle=False)
                        driver.rollback()
                        done = True
                        return
                    try:
                        tx.flush_deferred()
                        # The queued inserts first: a checkpoint is signed by a callback,
                        # and its time should be as close to the commit as it can be (it
                        # says when the write became known: `sqlite_reads.SELECT_KNOWN_SIZE`).
                        tx.end_background(settle=True)
                        for callback in tx.before_commit:
                            callback()
                        if not self.is_sqlite and tx.next_notification_id > first_id:
                            # Wakes `projections follow`; PostgreSQL delivers it only on commit.
                            run_on_driver(driver, False, f"NOTIFY {NOTIFY_CHANNEL}", (), _rowcount)
                    except BaseException:
                        tx.end_background(settle=False)
                        _rollback_quietly(driver)
                        raise
                    # Ctrl-C or SIGTERM is held from here to the end of what completes the
                    # commit (an erasure's clean-up of old key bytes): a signal just after
                    # the commit would skip it, and the command's count of its commits.
                    held.enter_context(signals_held())
                    driver.commit()
                    Database.commits += 1
                    done = True
            finally:
                if tx is not None and tx._view is not None:
                    tx.close_view()  # (closes the driver connection with it)
                elif done:  # kept for the next write of this process
                    with self._driver_lock:
                        idle, self._idle = self._idle, (os.getpid(), driver)
                    if idle is not None and idle[0] == os.getpid():  # (another thread's)
                        _close_quietly(idle[1])
                else:
                    _close_quietly(driver)
            for callback in tx.after_commit:
                callback()

    def _begin_write(self, driver: Any) -> None:
        """Take the writer's lock on `driver`: SQLite's `BEGIN IMMEDIATE`; on PostgreSQL the
        event table in EXCLUSIVE mode and the other written tables as a write takes them."""
        if self.is_sqlite:
            _begin_immediate(driver)
            return
        # Not forever: a session left holding it (or maintenance that takes the table, such
        # as a VACUUM FULL) would stop every write unseen.
        execute = driver.execute
        execute(f"SET LOCAL lock_timeout = '{WRITE_LOCK_WAIT}s'")
        execute("LOCK TABLE ledger_events IN EXCLUSIVE MODE")
        # The other tables a write changes, in the mode its changes take anyway (readers and
        # other writers' modes do not conflict with it): a session holding one of them
        # (`LOCK TABLE`, a `VACUUM FULL`) is waited for here, told of and given up on, not
        # mid-write unseen.
        written = self._written_tables(driver)
        if written:
            execute(f"LOCK TABLE {', '.join(written)} IN ROW EXCLUSIVE MODE")
        execute("SET LOCAL lock_timeout = DEFAULT")

    def _written_tables(self, driver: Any) -> list[str]:
        """Those of `WRITTEN_TABLES` this PostgreSQL schema has (an older revision's may
        lack some), found once per process."""
        if self._written is None:
            found = run_on_driver(driver, False, _WRITTEN_TABLES, (list(WRITTEN_TABLES),), list)
            self._written = sorted(str(name) for (name,) in found)
        return self._written

    @contextmanager
    def _failures(self, *, locking: bool = False) -> Iterator[None]:
        """The server gone (or SQLite giving up on a lock) in the middle of a command: one
        line for the user, not a traceback; an uncommitted write was rolled back. (As the
        driver raises it, or wrapped by SQLAlchemy for a statement built with it.)
        `locking`: while the writer's lock is taken, not had within `WRITE_LOCK_WAIT` is
        said so (exit 1)."""
        try:
            yield
        except Exception as error:
            failure = self._operational(error)
            if failure is None:
                raise
            text = str(failure)
            if not locking or ("database is locked" not in text and "lock timeout" not in text):
                raise DatabaseUnavailableError(
                    f"the database {self.name} failed: {first_line(failure)}"
                ) from None
            raise DatabaseUnavailableError(
                f"waited {WRITE_LOCK_WAIT} s for the write lock of {self.name}: "
                "another session holds it (a command or an import still writing, a "
                "transaction left open, or on PostgreSQL a session or maintenance that "
                "holds one of the ledger's tables); nothing was recorded"
            ) from None

    def _operational(self, error: Exception) -> BaseException | None:
        """The driver's OperationalError that `error` is (or SQLAlchemy wraps), if it is one."""
        driver_error = getattr(error, "orig", None) or error
        operational = isinstance(driver_error, self.driver_module.OperationalError)
        return driver_error if operational else None

    @contextmanager
    def _lock_wait_notice(self) -> Iterator[None]:
        """Tell `on_lock_wait` if what this block waits for (the writer's lock, held by
        another import or command until it commits) takes longer than `LOCK_NOTICE_AFTER`."""
        callback = self.on_lock_wait
        if callback is None:
            yield
            return
        import threading

        timer = threading.Timer(LOCK_NOTICE_AFTER, callback)
        timer.daemon = True
        with signals_held():  # its thread never takes Ctrl-C or SIGTERM (`signals_held`)
            timer.start()
        try:
            yield
        finally:
            timer.cancel()

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection that sees one consistent snapshot (or the ambient write)."""
        existing = self.current
        if existing is not None:
            yield existing.connection
            return
        with self.connect() as conn:
            if self.is_sqlite:
                with conn.begin():
                    yield conn
            else:
                with conn.execution_options(isolation_level="REPEATABLE READ").begin():
                    yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Callable[[str, tuple[Any, ...]], list[Any]]]:
        """Statements (`?` marks) -> their rows, all read in one snapshot: the ambient
        write's (on its driver connection), else `reading()`'s."""
        tx = self.current
        if tx is not None:
            yield tx.fetch
            return
        with self.reading() as conn:
            yield lambda sql, params: fetch_rows(conn, sql, params)

    @contextmanager
    def reading_statement(self) -> Iterator[Connection]:
        """A connection for a query of one statement, which sees one snapshot by itself.

        On PostgreSQL it runs outside any transaction (autocommit): one round trip to the
        server instead of three (BEGIN, the query, COMMIT), most of a query's time there.
        SQLite reads as `reading()` does; inside a write, the write's connection.
        """
        if self.is_sqlite or self.current is not None:
            with self.reading() as conn:
                yield conn
            return
        with self.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def one_snapshot(self) -> Iterator[None]:
        """Every read of this thread through `fetch_on_driver` inside the block sees one
        snapshot (the ambient write's, if there is one): for an answer read in several
        statements. Each would otherwise see the log as committed when it ran (a read
        outside a write is in autocommit), and a write committed between two of them
        would mix two moments in one answer (a trail's exports with a stream read before
        the last of them, a customer's stream with their key destroyed since).

        On the driver as `fetch_on_driver` reads (SQLite: one read transaction; PostgreSQL:
        one REPEATABLE READ transaction, two round trips more), so a query that never loaded
        SQLAlchemy still does not; for any other URL, in `reading()`'s transaction."""
        if self.current is not None:
            yield
            return
        if self._reads is not None:
            with self._reads.snapshot():
                yield
            return
        if getattr(self._pinned, "conn", None) is not None:
            yield
            return
        with self.reading() as conn:
            self._pinned.conn = conn
            try:
                yield
            finally:
                self._pinned.conn = None

    def fetch_on_driver(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """The rows of one read statement (`?` marks), run on the driver itself.

        Outside a write, through `sqlite_reads` or `postgres_reads` (no SQLAlchemy is
        loaded); inside a write, on the write's connection; for any other URL as
        `reading_statement()` reads (or in `one_snapshot()`'s transaction).
        """
        tx = self.current
        if tx is not None:
            return tx.fetch(sql, params)
        if self._reads is not None:
            return self._reads.fetch(sql, params)
        pinned = getattr(self._pinned, "conn", None)
        if pinned is not None:
            return fetch_rows(pinned, sql, params)
        with self.reading_statement() as conn:
            return fetch_rows(conn, sql, params)

    def set_meta(self, name: str, value: str) -> None:
        """Keep one named value in `ledger_meta` (replacing any), in a write of its own."""
        with self.writing() as tx:
            tx.execute_on_driver("DELETE FROM ledger_meta WHERE name = ?", (name,))
            tx.execute_on_driver(
                "INSERT INTO ledger_meta (name, value) VALUES (?, ?)", (name, value)
            )

    # -- schema ------------------------------------------------------------------------------

    def schema_revision(self) -> str | None:
        if self._reads is not None and self.current is None:
            return self._reads.schema_revision()

        with self.connect() as conn:
            return _revision_on(conn)

    def is_fresh(self) -> bool:
        """A new, empty database: safe to create the schema in without asking."""
        if self.is_sqlite:
            path = self.sqlite_path
            if path is None or not path.exists() or path.stat().st_size == 0:
                return True
        if self._reads is not None and self.current is None:
            return not self._reads.table_names()
        import sqlalchemy as sa

        with self.connect() as conn:
            return not sa.inspect(conn).get_table_names()

    def require_current_schema(self) -> None:
        revision = self.schema_revision()
        if revision != SCHEMA_HEAD:
            _refuse_unknown(revision)
            raise SchemaOutOfDateError(revision, SCHEMA_HEAD)

    def upgrade(self) -> tuple[str | None, str]:
        """Create or migrate every table (Alembic, sharing our connection)."""
        from migrations import upgrade_connection

        before = self.schema_revision()
        _refuse_unknown(before)
        if not self.is_sqlite and before is None:
            # A new ledger only: one an earlier version made in such a database (they took
            # one) is upgraded, warned of (`db upgrade`), so that `db copy`, which wants a
            # ledger at this schema, can move it into a UTF8 database.
            self.refuse_unless_utf8()
        with self.connect() as base:
            # Upgrades one after the other (the later ones find it done), not racing: SQLite
            # takes the write lock first (else "database is locked" when a read lock cannot
            # become a write lock); PostgreSQL an advisory lock of the transaction (else two
            # upgrades of a new database both create its tables, and one fails on a
            # duplicate key of the catalogue).
            conn = base.execution_options(sqlite_begin="IMMEDIATE")
            with self._lock_wait_notice(), self._failures(locking=True):
                trans = conn.begin()
                if not self.is_sqlite:
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK})")
            with trans:
                before = _revision_on(conn)  # what an upgrade before this one left
                _refuse_unknown(before)
                upgrade_connection(conn)
        if before != SCHEMA_HEAD:
            Database.commits += 1
        return before, SCHEMA_HEAD

    def server_encoding(self) -> str | None:
        """A PostgreSQL database's encoding if it is not UTF8 (None: UTF8, or SQLite). Asked
        on the driver (in SQL_ASCII the answer may come as bytes)."""
        if self.is_sqlite:
            return None
        [(found,)] = self.fetch_on_driver("SHOW server_encoding", ())
        encoding = found.decode() if isinstance(found, bytes) else str(found)
        return None if encoding.upper() in ("UTF8", "UTF-8") else encoding

    def refuse_unless_utf8(self) -> None:
        """A PostgreSQL database whose encoding is not UTF8 cannot hold what a feed may
        name (SQLite holds any text): in LATIN1 an import naming a customer "Ω" failed as an
        unexpected UnicodeEncodeError, in SQL_ASCII `db upgrade` itself as a TypeError."""
        encoding = self.server_encoding()
        if encoding is not None:
            raise ConfigurationError(
                f"the PostgreSQL database {self.name} is encoded in {encoding}; the "
                "ledger needs UTF8: create the database with ENCODING 'UTF8'"
            )


_UPGRADE_LOCK = 0x636F6E73656E74  # PostgreSQL advisory lock key of `db upgrade` ("consent")


def _revision_on(conn: Connection) -> str | None:
    import sqlalchemy as sa

    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return None if revision is None else str(revision)


def _refuse_unknown(revision: str | None) -> None:
    """A schema this code has no migration for (revisions are numbered 0001, 0002, …): one
    made by a newer consent-ledger, which `db upgrade` cannot help with."""
    if revision is not None and not (revision.isdigit() and revision <= SCHEMA_HEAD):
        raise SchemaTooNewError(revision, SCHEMA_HEAD)


_R = TypeVar("_R")


def run_on_driver(
    driver: Any,
    is_sqlite: bool,
    sql: str,
    params: Sequence[Any],
    result: Callable[[Any], _R],
    *,
    unprepared: bool = False,
    binary: bool = False,
) -> _R:
    """Run one statement (`?` marks) on a driver connection's cursor; `result` reads the
    cursor (`list`: its rows) before it is closed. `unprepared`: psycopg plans it afresh
    (never as a prepared statement's generic plan). `binary`: psycopg's results in binary
    (a bytea as is, not as hex text to decode; a uuid as a UUID)."""
    cursor: Any = driver.cursor(binary=True) if binary and not is_sqlite else driver.cursor()
    options = {"prepare": False} if unprepared else {}
    try:
        sql = sqlite_reads.for_driver(sql, "qmark" if is_sqlite else "pyformat")
        cursor.execute(sql, params, **options)
        return result(cursor)
    finally:
        cursor.close()


def fetch_rows(conn: Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    """The rows of one small statement (`?` marks) on `conn`'s driver connection."""
    driver = conn.connection.dbapi_connection
    return run_on_driver(driver, conn.dialect.name == "sqlite", sql, params, list)


def stream_rows(
    conn: Connection, sql: str, params: Sequence[Any] = (), *, size: int = 10_000
) -> Iterator[list[Any]]:
    """The rows of one statement (`?` marks) on `conn`'s driver, in batches of `size`: on
    PostgreSQL through a server-side cursor (in `conn`'s transaction), so that a table as
    large as the ledger never lands in memory at once."""
    is_sqlite = conn.dialect.name == "sqlite"
    raw: Any = conn.connection.dbapi_connection
    cursor = raw.cursor() if is_sqlite else raw.cursor(name="consent_ledger_stream")
    try:
        cursor.execute(sqlite_reads.for_driver(sql, "qmark" if is_sqlite else "pyformat"), params)
        while rows := cursor.fetchmany(size):
            yield rows
    finally:
        cursor.close()


def _rowcount(cursor: Any) -> int:
    return int(cursor.rowcount)


def _scalar(cursor: Any) -> Any:
    return cursor.fetchone()[0]


_HEAD = "SELECT max(notification_id) FROM ledger_events"
_WRITTEN_TABLES = (
    "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') "
    "AND relnamespace = current_schema()::regnamespace AND relname = ANY(?)"
)
_SEQSCAN = "SELECT current_setting('enable_seqscan')"
_SET_SEQSCAN = "SELECT set_config('enable_seqscan', ?, true)"  # true: until the transaction ends


def _sqlite_uuid(value: UUID) -> str:
    return value.hex


def bulk_insert(
    driver: Any, is_sqlite: bool, table: str, columns: Sequence[str], rows: Sequence[Any]
) -> None:
    """Rows inserted on a driver connection (sqlite3's or psycopg's): SQLite's executemany,
    PostgreSQL's COPY (one stream instead of a statement per row: executemany cost ~50 us a
    row there, most of an import). Constraints and triggers apply as to any insert."""
    names = ", ".join(columns)
    if is_sqlite:
        marks = ", ".join("?" for _ in columns)
        driver.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
        return
    with driver.cursor() as cursor, cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held off (delivered when the block ends), in the main thread of a
    POSIX process; elsewhere nothing is held. For what must not be cut between a commit and
    what completes it (a key file's swap, a pack put in place).

    The kernel gives a signal sent to the process to any thread that does not block it, so
    a thread the ledger starts (the lock-wait notice's, the background inserts' worker) is
    started inside this, and blocks both for its whole life (a thread inherits the mask of
    the thread that starts it): while such a thread lived (it outlives its `cancel` or
    `shutdown` until it gets the GIL), a signal as a write committed was handled at once, in
    the hold, and what completes the commit was skipped."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "pthread_sigmask"
    ):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_LOCK_STEP_MS = 100  # SQLite's busy wait at a time, while a write waits for the lock


def _enter_wal(cursor: sqlite3.Cursor) -> None:
    """Put the file in WAL mode (once set, the file keeps it), waiting up to `WRITE_LOCK_WAIT`
    for the lock that takes. SQLite does not call its busy handler for that lock: commands
    racing on a new file had one of them fail at once ("database is locked") while another
    was creating the file or setting the mode (seen 1 time in 4, 4 first imports at once)."""
    deadline = time.monotonic() + WRITE_LOCK_WAIT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "database is locked" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(_LOCK_STEP_MS / 1000 / 10)


def _begin_immediate(driver: Any) -> None:
    """SQLite's write lock (`BEGIN IMMEDIATE`) on a driver connection, waited for
    `WRITE_LOCK_WAIT` in steps of `_LOCK_STEP_MS`: SQLite's own busy wait runs in C, where
    Ctrl-C and SIGTERM are not seen until it ends (a write waiting on another's lock ignored
    them for up to two minutes)."""
    deadline = time.monotonic() + WRITE_LOCK_WAIT
    driver.execute(f"PRAGMA busy_timeout = {_LOCK_STEP_MS}")
    try:
        while True:
            try:
                driver.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if "database is locked" not in str(error) or time.monotonic() > deadline:
                    raise
    finally:
        driver.execute(f"PRAGMA busy_timeout = {WRITE_LOCK_WAIT * 1000}")


def _prepare_sqlite(driver: sqlite3.Connection) -> None:
    """A new SQLite connection as the ledger uses every one: transactions begun explicitly
    (not by pysqlite), WAL mode, the ledger's pragmas; a UUID bound as its storage form."""
    # A UUID's SQLite storage form, as SQLAlchemy's Uuid type stores it (32 hex digits), for
    # the statements run on the driver: it converts each value as it binds it.
    sqlite3.register_adapter(UUID, _sqlite_uuid)
    driver.isolation_level = None
    cursor = driver.cursor()
    try:
        _enter_wal(cursor)
        for pragma in (
            "synchronous=NORMAL",
            f"busy_timeout={WRITE_LOCK_WAIT * 1000}",
            "secure_delete=ON",
            "foreign_keys=ON",
            # 64 MiB of page cache (the default is 2 MiB): a large import's index pages stay
            # in memory instead of spilling to the WAL again and again (at 300k facts it
            # halved the inserts' time). An upper bound, not an allocation: memory stays
            # flat in the size of the feed.
            "cache_size=-65536",
        ):
            cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def _closed(driver: Any) -> bool:
    """Whether a driver connection is closed (or broken, for psycopg's)."""
    if isinstance(driver, sqlite3.Connection):
        try:
            driver.total_changes  # noqa: B018 (raises once closed)
        except sqlite3.ProgrammingError:
            return True
        return False
    return bool(driver.closed or driver.broken)


def _close_quietly(driver: Any) -> None:
    """Close a driver connection after a failure (its own error would hide the first)."""
    with contextlib.suppress(Exception):  # (already gone)
        driver.close()


def _rollback_quietly(driver: Any) -> None:
    """Roll back a write that failed: on a connection the server ended, the rollback's own
    error ("the connection is lost") would hide the failure's reason. (Not kept for the next
    write: the connection is closed after.)"""
    with contextlib.suppress(Exception):
        driver.rollback()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def first_line(error: BaseException | None) -> str:
    text = str(error or "unknown error").strip().splitlines()
    return text[0] if text else "unknown error"


def _password_spill(url: URL) -> str | None:
    """For a URL whose password holds an '@' not written %40 (so that the rest of it was
    read as the host, and maybe the database): what follows the last '@', the server and
    database meant. None for any other URL."""
    port = f":{url.port}" if url.port else ""
    where = f"{url.host or ''}{port}/{url.database or ''}"
    if "@" not in where:
        return None
    return where.rsplit("@", 1)[1]


def connect_failure(url: URL, error: BaseException | None) -> str:
    """Why a connection failed, for its message: the driver's first line, unless the URL's
    password holds an '@' (the rest of it, read as the host, is in that line)."""
    if _password_spill(url) is not None:
        return "its password seems to hold an '@', which a URL writes as %40"
    return first_line(error)


def own_files(database: Database) -> list[Path]:
    """The ledger's own files, which no file a command writes may replace: an SQLite
    database and its journals, the key folder, a master key file kept elsewhere."""
    files = [default_key_dir(database), master_key_path(database)]
    path = database.sqlite_path
    if path is not None:
        files += [path, *(path.with_name(path.name + end) for end in ("-wal", "-shm", "-journal"))]
    return files


MASTER_KEY_FILE_ENV = "CONSENT_LEDGER_MASTER_KEY_FILE"


def master_key_path(database: Database) -> Path:
    configured = os.environ.get(MASTER_KEY_FILE_ENV)
    return Path(configured) if configured else default_key_dir(database) / "master.key"


def default_key_dir(database: Database) -> Path:
    """Where key files live unless configured: beside an SQLite file, else per server."""
    configured = os.environ.get("CONSENT_LEDGER_KEY_DIR")
    if configured:
        return Path(configured)
    path = database.sqlite_path
    if path is not None:
        return path.with_name(path.name + ".keys")
    import hashlib

    # As first written (a query string's password was not hidden then): the folder of an
    # existing ledger's keys must not move. (A plain URL's rendering is known without
    # SQLAlchemy: `postgres_reads.rendered_url`.)
    rendered = postgres_reads.rendered_url(database._raw_url)
    if rendered is None:
        rendered = database.url.render_as_string(hide_password=True)
    ident = hashlib.sha256(rendered.encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "consent-ledger" / "keys" / ident
