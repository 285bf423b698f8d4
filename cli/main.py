"""The `consent-ledger` command: global options, the ledger for each command, exit codes.

Exit codes (SPEC §5): 0 success, 1 error in use or input, 2 usage (click's own),
3 refused by a rule, 4 integrity failure. The mapping lives in `exit_code_for`, nowhere else.
"""

from __future__ import annotations

import contextlib
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NoReturn

import click

from cli import logs
from cli.commands import LazyGroup
from cli.params import Choice
from ledger.errors import (
    CustomerNotFoundError,
    DamagedDatabaseError,
    DatabaseUnavailableError,
    IntegrityFailure,
    InterruptedCommand,
    LedgerError,
    RuleViolationError,
    SystemFailure,
    UnexpectedError,
    UnreadableEventError,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED, EXIT_INTEGRITY = 0, 1, 2, 3, 4


def exit_code_for(error: LedgerError) -> int:
    if isinstance(error, RuleViolationError):
        return EXIT_REFUSED
    if isinstance(error, IntegrityFailure):
        return EXIT_INTEGRITY
    return EXIT_ERROR


def _first_line(error: BaseException | None) -> str:
    lines = str(error or "unknown error").strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _is_database_error(error: Exception) -> bool:
    """A driver error (as the driver raised it, or SQLAlchemy), e.g. the server went away
    mid-command.

    Checked without importing SQLAlchemy: a command that never loaded it (the SQLite
    queries) cannot have raised one, and importing it would cost most of such a command.
    """
    exc = sys.modules.get("sqlalchemy.exc")
    if exc is not None and isinstance(error, exc.DBAPIError):
        return True
    # The drivers' own: the writes, which run on the driver (`Database.writing`), and the
    # reads that bypass SQLAlchemy (`sqlite_reads`, `postgres_reads`, exports).
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(error, psycopg.Error):
        return True
    sqlite3 = sys.modules.get("sqlite3")
    return sqlite3 is not None and isinstance(error, sqlite3.Error)


def _is_damaged(error: Exception) -> bool:
    """SQLite's file is damaged (only a command that opened SQLite can have met that)."""
    reads = sys.modules.get("ledger.persistence.sqlite_reads")
    return reads is not None and bool(reads.is_damaged(error))


def _is_stream_gap(error: Exception) -> bool:
    """eventsourcing's refusal to replay a stream with a version missing (only a database
    changed outside the ledger has one: the log is append-only)."""
    domain = sys.modules.get("eventsourcing.domain")  # never imported just to check
    gap = getattr(domain, "OriginatorVersionError", None)
    return gap is not None and isinstance(error, gap)


def _is_unreadable_event(error: Exception) -> bool:
    """eventsourcing's mapper wraps what a stored state's decoding raised (ours, when the
    state is not what the ledger wrote: see `stored_state.decode_state`)."""
    persistence = sys.modules.get("eventsourcing.persistence")
    wrapper = getattr(persistence, "MapperDeserialisationError", None)
    return wrapper is not None and isinstance(error, wrapper)


# What reading a field of an altered event raises where a value of another type is used.
_MISREAD = (TypeError, ValueError, KeyError, AttributeError, ArithmeticError, IndexError)


def _misshapen(context: Any) -> str | None:
    """Where the first event the ledger cannot have written is (`recorder.misshapen_event`)
    in the database the command opened (None: it opened none, or every event is as the
    ledger wrote it, and the error is a bug)."""
    database = getattr(context, "_database", None)
    if database is None:
        return None
    from ledger.persistence.recorder import misshapen_event

    return misshapen_event(database)


def _one_line(text: str) -> str:
    """The error's one line: a line break or other control character in a name it quotes (a
    path given with a newline in it) is written as an escape, as Python writes it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _committed() -> bool:
    """Whether the command committed a write before it failed (on any database it opened)."""
    persistence = sys.modules.get("ledger.persistence.database")
    return persistence is not None and persistence.Database.commits > 0


def _os_reason(error: OSError) -> str:
    """An operating system's error in words: what failed, and on which file (a path the user
    or the ledger named, never data). Without a file, a write to stdout failed."""
    what = error.strerror or type(error).__name__
    if error.filename is not None:
        return f"cannot use {error.filename}: {what}"
    return f"cannot write the command's output: {what}"


def _rolled_back() -> str:
    """What became of the command's writes when it failed unexpectedly."""
    if _committed():
        return "what the command committed before it stays committed, the rest was rolled back"
    return "the command's transaction was rolled back"


def _unexpected(error: Exception) -> UnexpectedError:
    """One line for a failure the ledger did not raise on purpose, instead of a traceback:
    its type and the innermost place it was raised (not its message: it could quote data)."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    where = ""
    if frames:
        path = frames[-1].filename.replace("\\", "/").split("/")
        where = f" at {'/'.join(path[-2:])}:{frames[-1].lineno}"
    return UnexpectedError(
        f"unexpected {type(error).__name__}{where}; {_rolled_back()}. If the database was "
        "changed outside consent-ledger, 'consent-ledger verify' names what was altered; "
        "otherwise this is a bug: please report it with this line"
    )


# The commands that may create a new SQLite ledger where its file does not exist yet: those
# that can record a ledger's first facts (a shop's first import, a registration given to
# `record`) and `db upgrade`. Any other command pointed at a missing file is refused
# (`LedgerNotFoundError`): a mistyped path would otherwise answer as an empty ledger,
# `verify` "ok" with 0 facts, and leave a new file behind. (`consent give`, `disclose`:
# they name a customer or order, which a new ledger cannot hold.)
_CREATING: Final = frozenset({"import", "record", "db upgrade"})


def _no_ledger_at(url: str) -> bool:
    """Whether `url` names an SQLite file that does not exist yet (or is empty)."""
    from ledger.config import no_ledger_file
    from ledger.persistence.database import Database

    path = Database(url).sqlite_path  # (no connection is made)
    return path is not None and no_ledger_file(path)


class LedgerContext:
    """What every command gets: the database URL and, opened on first use, the database and
    the ledger (the application, on that database)."""

    def __init__(self, db: str | None) -> None:
        from ledger.config import database_url

        self.url = database_url(db)
        self._database: Any = None
        self._ledger: Any = None
        self._log_key: bytes | None = None
        self._log_key_read = False
        self._scratch = contextlib.ExitStack()  # a dry run's scratch ledger (`_scratch_ledger`)

    def log_key(self) -> bytes | None:
        """The ledger's key of customer pseudonyms in logs (`logs.hashed`), read once; None
        if it has none (made by `db upgrade`) or cannot be read now."""
        if not self._log_key_read:
            self._log_key_read = True
            import base64

            from ledger.persistence import sqlite_reads as reads

            try:
                rows = self.database.fetch_on_driver(reads.SELECT_META, (reads.LOG_KEY_NAME,))
                self._log_key = base64.b64decode(rows[0][0]) if rows else None
            except Exception:  # a log line is never worth failing a command that worked
                self._log_key = None
        return self._log_key

    @property
    def database(self) -> Any:
        if self._database is None:
            from ledger.config import open_database

            ctx = click.get_current_context(silent=True)
            command = ctx.meta.get("consent_ledger.command") if ctx is not None else None
            url = self.url
            if ctx is not None and ctx.params.get("dry_run") and _no_ledger_at(url):
                url = self._scratch_ledger()
            self._database = open_database(
                url,
                on_lock_wait=self.say_waiting,
                create=command is None or command in _CREATING,
            )
        return self._database

    def _scratch_ledger(self) -> str:
        """A dry run where no ledger is yet: checked against an empty ledger made in a
        temporary folder (keys beside it) and removed at the end, so that checking a shop's
        first feed creates neither a ledger file nor keys."""
        import tempfile

        from ledger.config import keys_beside

        folder = Path(self._scratch.enter_context(tempfile.TemporaryDirectory()))
        self._scratch.enter_context(keys_beside(folder / "ledger.db.keys"))
        logs.summarise(checked_against="an empty ledger: none at the URL yet, none created")
        return f"sqlite:///{folder / 'ledger.db'}"

    def say_waiting(self) -> None:
        """A write has waited a while for the writer's lock: say why it is not done yet."""
        from ledger.persistence.database import safe_url

        logs.log.warning(
            "waiting for the write lock: another command is writing to this ledger (or a "
            "session holds one of its tables), and this one goes on when that one commits",
            database=safe_url(self.url),
        )

    @property
    def ledger(self) -> Any:
        if self._ledger is None:
            from ledger.application import ConsentLedger

            # The key store is made on first use (a query of events needs no key).
            self._ledger = ConsentLedger(self.database)
        return self._ledger

    def customer_facts(self, ref: str, known_at: datetime | None = None) -> list[Any]:
        """Customer REF's events (only those recorded by `known_at`, if given), for the
        answers of `ledger.views`.

        Read as `StoredFact`s, without the domain model: importing eventsourcing and the
        domain was most of a query process's time. Through the ledger if it is open already,
        or if an event needs the domain to be read (an upcast).
        """
        if self._ledger is None:
            from ledger import views
            from ledger.persistence import sqlite_reads as reads

            if known_at is None:
                rows = self.database.fetch_on_driver(reads.SELECT_CUSTOMER_STREAM, (ref,))
            else:
                known = (ref, reads.checkpoint_time(known_at))
                rows = self.database.fetch_on_driver(reads.SELECT_CUSTOMER_STREAM_KNOWN, known)
            facts = views.stored_facts(rows)
            if facts:
                views.check_stream(ref, facts)
            if facts is not None:
                if not facts:
                    self._unindexed(ref)
                    raise CustomerNotFoundError(ref, known_at)
                return facts
        events: list[Any] = self.ledger.customer_with_events(ref, known_at)[1]
        return events

    def _unindexed(self, ref: str) -> None:
        """A customer the index does not name must have no stream either: else the index
        row was deleted, and the answer "not in the ledger" would hide a customer who is."""
        from ledger.domainmodel import customer_id  # (only on this path: not a query's cost)
        from ledger.persistence import sqlite_reads as reads

        ident = customer_id(ref)
        params = (ref, ident.hex if self.database.is_sqlite else ident)
        [(indexed, stream)] = self.database.fetch_on_driver(
            reads.SELECT_CUSTOMER_INDEXED_AND_STREAM, params
        )
        # Indexed: named, but with nothing recorded by the --known-at time asked for (or
        # recorded since the stream was read: a new customer's first import).
        if stream and not indexed:
            raise IntegrityFailure(
                f"the customer index has no row for customer {ref!r}, whose events are in the "
                "ledger: it was altered outside consent-ledger; 'consent-ledger verify' names "
                "what changed"
            )

    def customer_exports(self, ref: str, known_at: datetime | None = None) -> list[Any]:
        """The due-diligence exports that may hold customer REF's data, for
        `views.trail_rows` (read as `customer_facts` reads, without the domain model)."""
        from ledger.persistence import sqlite_reads as reads

        return reads.customer_exports(self.database.fetch_on_driver, ref, known_at)

    def close(self) -> None:
        if self._database is not None:
            self._database.dispose()
        self._scratch.close()


def _say_of_keys(context: Any) -> None:
    """A write destroyed or re-wrapped keys, but another session held back the clean-up of
    their old bytes (`KeyStore.shred`); or the master key's file is open to other users:
    say so, and what to do."""
    ledger = getattr(context, "_ledger", None)
    keys = getattr(ledger, "_keys", None)
    if keys is not None and keys.leftover:
        logs.log.warning(
            "old key bytes remain in the database: their clean-up was held back (another "
            "session reading a snapshot from before this command or holding the key table, or "
            "a full disk); run 'consent-ledger keys shred' once that ends"
        )
    loose = getattr(keys, "loose_key_file", None)
    if loose is not None:
        path, mode = loose
        logs.log.warning(
            f"the master key file {path} can be read or changed by other users (mode "
            f"{mode:04o}): it opens every customer's personal data; chmod 600 {path}"
        )


class LedgerGroup(LazyGroup):
    """Runs a command, logs its one summary line and turns the ledger's errors into one
    `Error: …` line on stderr and an exit code."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        path = [name or ""]
        if isinstance(command, click.Group):
            path.extend(token for token in rest[:1] if token in command.commands)
        ctx.meta["consent_ledger.command"] = " ".join(path)
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        started = time.perf_counter()
        persistence = sys.modules.get("ledger.persistence.database")
        if persistence is not None:  # (a process that runs several commands: the tests)
            persistence.Database.commits = 0  # this command's commits (`_committed`)
        failure: LedgerError | None = None
        with logs.summary() as fields:
            try:
                result = super().invoke(ctx)
            except LedgerError as error:
                failure = error
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (`_terminate`)
                failure = InterruptedCommand()
            except BrokenPipeError:  # stdout's reader left (`| head`): click exits quietly
                if _committed():
                    logs.log.warning(
                        "the result was not delivered (stdout's reader left); what the "
                        "command recorded is committed"
                    )
                raise
            except OSError as error:  # a file or stream: a full disk, a permission
                failure = SystemFailure(_os_reason(error), committed=_committed())
            except Exception as error:
                if _is_damaged(error):
                    from ledger.persistence.database import safe_url

                    failure = DamagedDatabaseError(safe_url(ctx.obj.url))
                elif _is_database_error(error):
                    failure = DatabaseUnavailableError(
                        f"the database failed: {_first_line(getattr(error, 'orig', error))}; "
                        f"{_rolled_back()}"
                    )
                elif _is_unreadable_event(error):
                    failure = UnreadableEventError()
                elif isinstance(error, _MISREAD) and (where := _misshapen(ctx.obj)) is not None:
                    failure = UnreadableEventError(where)
                elif _is_stream_gap(error):
                    failure = IntegrityFailure(
                        "a stream of events is not whole (a version is missing): the ledger "
                        "was altered outside consent-ledger; 'consent-ledger verify' names "
                        "what changed"
                    )
                else:
                    failure = _unexpected(error)
        if failure is not None and _signalled:
            # Cut short by Ctrl-C or SIGTERM: a database call's or a stopped worker's error
            # is the interruption's doing, not a fault to report as such.
            failure = InterruptedCommand()
        fields["command"] = ctx.meta.get("consent_ledger.command", "")
        fields["seconds"] = round(time.perf_counter() - started, 3)
        if failure is None:
            _say_of_keys(ctx.obj)
            logs.log.info("command.done", **fields)
            return result
        code = exit_code_for(failure)
        logs.log.warning("command.failed", exit=code, error_type=type(failure).__name__, **fields)
        with contextlib.suppress(OSError, ValueError):  # stderr full or closed: the code says it
            click.echo(f"Error: {_one_line(str(failure))}", err=True)
        ctx.exit(code)


@click.group(cls=LedgerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    metavar="URL",
    help="Database URL (SQLAlchemy), e.g. sqlite:///ledger.db or "
    "postgresql://user@host/db. Default: $CONSENT_LEDGER_DB or sqlite:///consent-ledger.db.",
)
@click.option(
    "--log-level",
    type=Choice(logs.LEVELS),
    default="info",
    envvar="CONSENT_LEDGER_LOG_LEVEL",
    show_default=True,
    help="Logs go to stderr; stdout carries results only.",
)
@click.version_option(package_name="consent-ledger")
@click.pass_context
def cli(ctx: click.Context, db: str | None, log_level: str) -> None:
    """consent-ledger: an immutable, verifiable record of consent and disclosure.

    Every consent change, verification result and disclosure of personal data is recorded
    as an immutable event; queries answer in business time; `verify` proves nothing was
    altered.
    """
    logs.configure(log_level)
    context = LedgerContext(db)
    ctx.obj = context
    ctx.call_on_close(context.close)


_signalled = False  # set once Ctrl-C or SIGTERM arrives (`_terminate`)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM stops a command as Ctrl-C does: its transaction rolled back, its partial
    files removed, one line said (not a silent exit 143 that leaves them behind). Whatever
    failure it then causes (a database call it cut short, a worker it stopped) is reported
    as the interruption it is."""
    global _signalled
    _signalled = True
    raise KeyboardInterrupt


def main() -> None:
    import os
    import signal

    if sys.stderr is None:  # started with stderr closed: the logs go nowhere
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the process's life)
    if sys.stdout is None:  # started with stdout closed: no result could be given
        click.echo(f"Error: {SystemFailure('stdout is closed', committed=False)}", err=True)
        sys.exit(EXIT_ERROR)
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # (a background job's stays so)
        signal.signal(signal.SIGINT, _terminate)
    try:
        cli.main(prog_name="consent-ledger", standalone_mode=True)
    except KeyboardInterrupt:  # outside a command (while click parses, say)
        click.echo(f"Error: {InterruptedCommand()}", err=True)
        sys.exit(EXIT_ERROR)
    finally:
        # The command is over, its result given: a signal now would only turn its exit
        # code into a silent death by that signal.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run() -> None:
    """The console script: `main`, then the process ends without the interpreter's
    teardown where that has nothing left to do (`_exit_now`)."""
    try:
        main()
    except SystemExit as done:  # how click ends every command
        if isinstance(done.code, int) and _nothing_left_at_exit():
            _exit_now(done.code)
        raise


def _nothing_left_at_exit() -> bool:
    """Whether the interpreter's exit has nothing to do but free memory: no other thread
    (a worker's join), no child process, no finalizer that runs at exit (a temporary
    folder's removal, ours or multiprocessing's). Anything else, and the command ends as any
    Python program does."""
    import threading
    import weakref

    if threading.active_count() > 1:
        return False
    processes = sys.modules.get("multiprocessing")
    if processes is not None and processes.active_children():
        return False
    # multiprocessing's own exit work (a pool's, a temporary folder's removal).
    if getattr(sys.modules.get("multiprocessing.util"), "_finalizer_registry", None):
        return False
    registry = getattr(weakref.finalize, "_registry", None)
    if registry is None:
        return False
    return not any(info.atexit for info in list(registry.values()))


def _exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown: freeing every module and object
    one by one took 100-200 ms of a command that writes (a sixth of a `record`), for memory
    the process gives back whole. Its connections are closed first (SQLite checkpoints its
    WAL, a PostgreSQL server sees a clean goodbye), the logs flushed and closed, stdout and
    stderr flushed; if any of that fails, the interpreter's own exit goes on as it always did."""
    import os

    try:
        persistence = sys.modules.get("ledger.persistence.database")
        if persistence is not None:
            persistence.Database.dispose_all()
        logging = sys.modules.get("logging")
        if logging is not None:
            logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # (a connection that fails to close, a stream that fails to flush)
        sys.exit(code)
    os._exit(code)
