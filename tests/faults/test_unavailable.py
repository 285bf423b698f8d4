"""Unavailable database: one line naming the database (never its password), exit 1, no traceback.

The commands run forked from this process (`support.fork`, which prints a traceback as the
interpreter would); the import whose server goes away runs as the console script.

Whether the server is not there, refuses the credentials or the database, or goes away in the
middle of an import, the command says so in one `Error: …` line on stderr and exits 1; an
import cut off that way records nothing.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import postgres_server
from tests.faults.support import feed_lines, recorded_ids, run_forked, start, write_feed

pytestmark = pytest.mark.postgres  # (its server's tests ask for it themselves: `_server`)

PASSWORD = "s3cret-Pa55"
_CUT_THE_WRITER = sa.text(
    "SELECT pg_terminate_backend(l.pid) FROM pg_locks l "
    "JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relname = 'ledger_events' "
    "AND l.mode = 'ExclusiveLock' AND l.granted"
)


def _with_password(url: str) -> str:
    return sa.engine.make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def _refused_in_one_line(result: subprocess.CompletedProcess[bytes], names: str) -> str:
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert PASSWORD not in stdout + stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, stderr
    # Nothing else on stderr but the JSON log lines (no driver chatter).
    stray = [line for line in stderr.splitlines() if line and not line.startswith(("Error: ", "{"))]
    assert stray == [], stderr
    assert names in errors[0], errors[0]
    return errors[0]


def _server(database: str = "test", user: str = "postgres") -> str:
    server = postgres_server()
    if server is None:
        pytest.skip("needs CONSENT_LEDGER_TEST_POSTGRES (a server to refuse us)")
    url = sa.engine.make_url(server).set(username=user, database=database, password=PASSWORD)
    return url.render_as_string(hide_password=False)


@pytest.mark.parametrize("command", [["customer", "trail", "C100"], ["db", "upgrade"]])
def test_nothing_listening_on_the_port(command: list[str]) -> None:
    url = f"postgresql://ledger:{PASSWORD}@127.0.0.1:1/ledger"
    line = _refused_in_one_line(run_forked(url, *command), "ledger:***@127.0.0.1:1/ledger")
    assert "cannot connect" in line


def test_a_database_that_does_not_exist(feed_small: Path) -> None:
    url = _server(database="no_such_ledger_db")
    line = _refused_in_one_line(run_forked(url, "import", str(feed_small)), "@127.0.0.1")
    assert "no_such_ledger_db" in line


def test_a_role_that_does_not_exist() -> None:
    url = _server(user="no_such_ledger_role")
    _refused_in_one_line(
        run_forked(url, "customer", "trail", "C100", "--json"), "no_such_ledger_role"
    )


def test_a_sqlite_file_in_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}"
    _refused_in_one_line(run_forked(url, "customer", "trail", "C100"), str(tmp_path / "missing"))


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # a server that can go away
def test_the_server_going_away_in_the_middle_of_an_import(
    ledger: Any, ledger_url: str, tmp_path: Path
) -> None:
    # Given an import under way
    feed = write_feed(tmp_path / "feed.jsonl", feed_lines(150, prefix="g-"))
    url = _with_password(ledger_url)
    process = start(url, "import", str(feed))
    # When its connection is cut while it writes (it holds the writer's lock in its schema)
    schema = str(sa.engine.make_url(ledger_url).query["options"]).removeprefix("-csearch_path=")
    admin = sa.create_engine(ledger_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        deadline = time.monotonic() + 30
        cut = False
        while not cut and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            with admin.begin() as conn:
                cut = bool(conn.execute(_CUT_THE_WRITER, {"schema": schema}).all())
    finally:
        admin.dispose()
    stdout, stderr = process.communicate(timeout=60)
    assert cut, "the import finished before its connection could be cut"
    # Then it says so in one line, and nothing from the file is recorded
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    _refused_in_one_line(result, "postgresql+psycopg://postgres:***@")
    assert recorded_ids(ledger_url) == []


@contextmanager
def _postgres_ledger() -> Iterator[Any]:
    """A new ledger in a schema of its own on the test server (skipped without one)."""
    from ledger.config import open_ledger, upgrade
    from ledger.persistence.database import Database
    from tests.conftest import postgres_schema

    if postgres_server() is None:
        pytest.skip("needs CONSENT_LEDGER_TEST_POSTGRES")
    with postgres_schema() as url:
        upgrade(Database(url))
        app = open_ledger(url)
        try:
            yield app
        finally:
            app.database.dispose()


def _end_connection(app: Any, driver: Any) -> None:
    """The server ends `driver`'s connection, as an administrator's pg_terminate_backend."""
    with app.database.engine.connect() as admin:
        pid = driver.info.backend_pid
        admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def test_a_write_after_the_server_ended_the_idle_write_connection_goes_ahead() -> None:
    """A process's next write reuses its last write's connection: ended by the server
    meanwhile (an administrator's pg_terminate_backend, an idle timeout, a restart), that
    write goes ahead on a new connection, not refused once."""
    from tests.examples import jsonl, line

    with _postgres_ledger() as app:
        registered = jsonl([line("customer.registered", "reg", 0)])
        app.import_lines(registered.splitlines(keepends=True))
        app.record_fact(line("consent.given", "g", 1))
        idle = app.database._idle
        assert idle is not None  # kept for the next write
        _end_connection(app, idle[1])
        fact, fresh = app.record_fact(line("consent.withdrawn", "w", 2))
        assert fresh and fact.id == "w"


def test_a_read_after_the_server_ended_the_read_connection_is_answered() -> None:
    """The reads outside a write run on a connection of their own, kept by the process
    (`postgres_reads`): ended by the server meanwhile, the next read is answered on a new
    one, not refused once ("the database failed: terminating connection ...")."""
    with _postgres_ledger() as app:
        count = "SELECT count(*) FROM ledger_events"
        before = app.database.fetch_on_driver(count, ())
        first = app.database._reads.connection()
        _end_connection(app, first)
        assert app.database.fetch_on_driver(count, ()) == before == [(0,)]
        assert app.database._reads.connection() is not first


@pytest.mark.parametrize("through_sqlalchemy", [False, True], ids=["driver", "view"])
def test_a_write_whose_connection_the_server_ends_says_why(through_sqlalchemy: bool) -> None:
    """The server ending a write's connection mid-write (as for a key rotation's statements
    through SQLAlchemy's view) is told with the server's reason, not hidden by the rollback
    that follows it on the lost connection ("the connection is lost")."""
    from ledger.errors import DatabaseUnavailableError

    with _postgres_ledger() as app:
        with pytest.raises(DatabaseUnavailableError) as caught, app.database.writing() as tx:
            _end_connection(app, tx.driver)
            if through_sqlalchemy:
                tx.connection.execute(sa.text("SELECT 1"))
            else:
                tx.fetch("SELECT 1", ())
        assert "terminating connection due to administrator command" in str(caught.value)
        assert "\n" not in str(caught.value)
        fact = {"type": "transfer.initiated", "id": "t", "acquirer": "Acme", "scope": "all"}
        assert app.record_fact(fact)[1]  # and the next write goes ahead
