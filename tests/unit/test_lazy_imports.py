"""The command line starts light: what a command does not need, it does not import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from ledger.config import open_ledger
from ledger.persistence.sqlite_reads import plain_sqlite_file
from tests.cli_helpers import error_line, run

HEAVY = (
    "sqlalchemy",
    "alembic",
    "cryptography",
    "ledger.application",
    "ledger.domainmodel",
    "eventsourcing",
    "eventsourcing.application",
    "eventsourcing.domain",
    "asyncio",
)


def run_probe(code: str, heavy: tuple[str, ...] = HEAVY) -> tuple[str, set[str]]:
    """What `code` prints, run in a fresh interpreter, and the `heavy` modules it loaded."""
    probe = f"{code}\nimport sys\nprint('@@', *(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    printed, _, loaded = done.stdout.rpartition("@@")
    return printed, set(loaded.split())


def imported_after(code: str) -> set[str]:
    return run_probe(code)[1]


def _small_ledger(tmp_path: Path, feed: Path) -> str:
    """The URL of an SQLite ledger of the small feed in `tmp_path`."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = open_ledger(url)
    ledger.import_lines(feed.read_bytes().splitlines())
    ledger.database.dispose()
    return url


def _command(url: str, command: list[str]) -> str:
    """A probe's code that runs `command` on the ledger at `url`, as the console does."""
    return f"""
from cli.main import cli
cli.main({["--db", url, *command]!r}, prog_name="consent-ledger", standalone_mode=False)
"""


def test_importing_the_cli_imports_no_database_or_domain_code() -> None:
    assert imported_after("import cli.main") == set()


def test_structlog_logs_without_importing_asyncio_until_it_is_used() -> None:
    printed, loaded = run_probe(
        "from cli import logs\n"
        "logs.configure('info')\n"
        "logs.log.info('probe.line', n=1)\n"
        "import sys\n"
        "print(sys.modules['structlog._native'].asyncio.get_running_loop.__name__)"
    )
    assert printed.strip() == "get_running_loop"  # its asyncio answers when asked
    assert "asyncio" in loaded  # ... once asked, not before:
    assert "asyncio" not in imported_after(
        "from cli import logs\nlogs.configure('info')\nlogs.log.warning('probe.line', n=1)"
    )


def test_the_probe_sees_a_heavy_import() -> None:
    assert "sqlalchemy" in imported_after("import sqlalchemy")


@pytest.mark.parametrize(
    "command",
    [
        ["customer", "trail", "C100", "--json"],
        ["consent", "show", "C100", "--as-of", "2025-06-01T00:00:00Z", "--json"],
    ],
)
def test_a_query_on_sqlite_never_loads_sqlalchemy(
    tmp_path: Path, feed_small: Path, command: list[str]
) -> None:
    printed, loaded = run_probe(_command(_small_ledger(tmp_path, feed_small), command))
    assert json.loads(printed)["customer"] == "C100"  # the query ran and answered
    # Answered from stored facts: no eventsourcing, application, domain model or asyncio.
    assert not loaded & {"eventsourcing", "ledger.application", "ledger.domainmodel", "asyncio"}
    assert "sqlalchemy" not in loaded
    assert "alembic" not in loaded
    assert "cryptography" not in loaded  # no personal data is opened for these answers


POSTGRESQL = ("sqlalchemy.dialects.postgresql", "psycopg")


@pytest.mark.parametrize(
    "command",
    [
        ["import", "FEED", "--json"],
        ["record", '{"type": "transfer.initiated", "acquirer": "Acme", "scope": "all"}', "--json"],
    ],
)
def test_a_write_on_sqlite_never_loads_the_postgresql_dialect(
    tmp_path: Path, feed_small: Path, command: list[str]
) -> None:
    """SQLAlchemy's PostgreSQL dialect (asyncpg's module with it) cost every SQLite command
    that writes 60-120 ms of its start, for an index option in the table models. (A new
    ledger's first command loads it: Alembic's migrations know every dialect.)"""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    open_ledger(url).database.dispose()
    command = [str(feed_small) if part == "FEED" else part for part in command]
    printed, loaded = run_probe(_command(url, command), ("ledger.application", *POSTGRESQL))
    assert json.loads(printed)  # the command wrote and answered
    assert "ledger.application" in loaded  # the probe sees what a write loads
    assert not loaded & set(POSTGRESQL)


ONE_FACT = (
    '{"type": "consent.given", "customer": "C100", "purpose": "marketing", '
    '"channel": "email", "method": "web", "policy_version": "2024-01"}'
)
POLICY = ["--policy-version", "2024-01"]
NAME = ["--categories", "name"]


@pytest.mark.parametrize(
    "command",
    [
        ["record", ONE_FACT, "--json"],
        ["consent", "give", "C100", "marketing", "post", "--method", "call", *POLICY, "--json"],
        ["consent", "withdraw", "C100", "marketing", "email", "--method", "call", "--json"],
        ["customer", "erase", "C100", "--json"],
        ["disclose", "acquirer", "Northwind Retail Group", "--customer", "C100", *NAME, "--json"],
    ],
)
def test_a_write_of_one_fact_never_loads_sqlalchemy(
    ledger: Any, ledger_url: str, feed_small: Path, command: list[str]
) -> None:
    """A command that records one fact runs its statements on the driver (`Database.writing`):
    SQLAlchemy (with asyncio and importlib.metadata) was most of such a command's start-up.
    (Only a new or old ledger's schema is made or migrated with it, by Alembic.) A
    disclosure to an acquirer is judged against the transfer initiations, read on the
    write's connection too (`projections.replay`). (On PostgreSQL with the key folder given,
    CONSENT_LEDGER_KEY_DIR, as these tests give it; without it, see the next test.)"""
    ledger.import_lines(feed_small.read_bytes().splitlines())
    ledger.database.dispose()
    printed, loaded = run_probe(_command(ledger_url, command))
    assert json.loads(printed)  # the command wrote and answered
    assert {"ledger.application", "eventsourcing", "cryptography"} <= loaded  # it wrote
    assert "sqlalchemy" not in loaded
    assert "alembic" not in loaded
    if ledger.database.is_sqlite:  # (psycopg imports asyncio itself)
        assert "asyncio" not in loaded
    assert open_ledger(ledger_url).customer("C100").erased == (command[0] == "customer")


@pytest.mark.parametrize(
    ("url", "sqlalchemy"),
    [("postgresql://ledger:secret@db.example:5432/shop", False), ("postgresql://h/db?x=1", True)],
)
def test_a_plain_postgresql_urls_key_folder_is_found_without_sqlalchemy(
    url: str, sqlalchemy: bool
) -> None:
    """Without CONSENT_LEDGER_KEY_DIR, a PostgreSQL ledger's key folder is named from its URL
    as SQLAlchemy renders it: for a plain URL that rendering is made without it
    (`postgres_reads.rendered_url`), so a one-fact write still loads no SQLAlchemy."""
    printed, loaded = run_probe(
        "import os\n"
        "os.environ.pop('CONSENT_LEDGER_KEY_DIR', None)\n"
        "from ledger.persistence.database import Database, default_key_dir\n"
        f"print(default_key_dir(Database({url!r})).name)"
    )
    assert len(printed.strip()) == 16
    assert ("sqlalchemy" in loaded) == sqlalchemy


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///ledger.db",
        "sqlite:////tmp/x/ledger.db",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///with space.db",
    ],
)
def test_a_plain_sqlite_url_is_read_as_sqlalchemy_reads_it(url: str) -> None:
    assert plain_sqlite_file(url) == make_url(url).database


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///a%20b.db", "sqlite:///x.db?mode=ro", "postgresql://h/db"]
)
def test_any_other_url_is_left_to_sqlalchemy(url: str) -> None:
    assert plain_sqlite_file(url) is None


def test_a_file_that_is_not_a_ledger_is_one_line_of_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are not the tables you are looking for\n" * 100)
    result = run(f"sqlite:///{path}", "customer", "trail", "C100", "--json")
    assert result.exit_code == 1
    assert error_line(result) == (
        f"Error: cannot connect to sqlite:///{path}: file is not a database"
    )
