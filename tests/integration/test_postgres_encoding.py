"""A PostgreSQL database not encoded in UTF8 gets no new ledger from `db upgrade`, nor a
copy from `db copy`, clearly refused: SQLite holds any text a feed may name, and such a
database could not (an import naming a customer "Ω" failed in LATIN1 as an unexpected
UnicodeEncodeError, as did a copy of a ledger naming one; in SQL_ASCII `db upgrade` itself
failed as an unexpected TypeError). A ledger an earlier version made there upgrades, with a
warning to move it. And the client's encoding in the environment changes no answer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from tests.cli_helpers import error_line, run, run_json
from tests.conftest import postgres_server
from tests.examples import jsonl, line, registered


@pytest.fixture(params=["LATIN1", "SQL_ASCII"])
def database_in(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a new database of the test server in the encoding, dropped afterwards."""
    server = postgres_server()
    if server is None:
        pytest.skip("needs the PostgreSQL server (CONSENT_LEDGER_TEST_POSTGRES)")
    url = sa.engine.make_url(server).set(drivername="postgresql+psycopg")
    name = f"t_enc_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                f"CREATE DATABASE {name} ENCODING '{request.param}' LC_COLLATE 'C' "
                "LC_CTYPE 'C' TEMPLATE template0"
            )
    except sa.exc.ProgrammingError as error:  # a server user without CREATEDB
        admin.dispose()
        pytest.skip(f"cannot create a database on the test server: {error.orig}")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["upgrade", "copy"])
def test_db_upgrade_and_copy_refuse_a_database_not_in_utf8(
    database_in: str, command: str, tmp_path: Path
) -> None:
    if command == "upgrade":
        result = run(database_in, "db", "upgrade")
    else:
        source = f"sqlite:///{tmp_path / 'ledger.db'}"
        assert run(source, "db", "upgrade").exit_code == 0
        result = run(source, "db", "copy", database_in)
    assert result.exit_code == 1
    line = error_line(result)
    assert "encoded in" in line and "the ledger needs UTF8" in line
    assert "unexpected" not in line
    # (on psycopg itself: SQLAlchemy's dialect cannot start on an SQL_ASCII database)
    uri = sa.engine.make_url(database_in).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(uri) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)  # nothing created


def test_a_client_encoding_in_the_environment_changes_no_answer(
    ledger: Any, ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq takes PGCLIENTENCODING as its default: set to LATIN1, a reference "Ω" failed to
    encode (an unexpected UnicodeEncodeError) and an answer holding one failed on the server;
    set to SQL_ASCII, every text came back as bytes. The ledger's connections speak UTF8."""
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(
        jsonl(
            [
                registered("Ω", 0),
                line("affiliate.disclosure", "Ω-a", 1, customer="Ω", affiliate="Ωmega"),
            ]
        )
    )
    assert run_json(ledger_url, "import", str(feed))["accepted"] == 2
    expected = [
        run_json(ledger_url, "customer", "trail", "Ω"),
        run_json(ledger_url, "audit", "check"),
        run_json(ledger_url, "recipients", "list"),
    ]
    for encoding in ("LATIN1", "SQL_ASCII"):
        monkeypatch.setenv("PGCLIENTENCODING", encoding)
        assert [
            run_json(ledger_url, "customer", "trail", "Ω"),
            run_json(ledger_url, "audit", "check"),
            run_json(ledger_url, "recipients", "list"),
        ] == expected


# LATIN1 only: no version made a ledger in SQL_ASCII (its `db upgrade` failed there).
@pytest.mark.postgres
@pytest.mark.parametrize("database_in", ["LATIN1"], indirect=True)
def test_a_ledger_already_in_such_a_database_upgrades_with_a_warning_and_copies_out(
    database_in: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger the earlier versions made in a LATIN1 database (they took one) at an older
    schema was stranded: `db upgrade` refused the database, and every other command, `db
    copy` too, refused the ledger until it was upgraded. It upgrades, warned on stderr that
    the ledger belongs in a UTF8 database, and `db copy` moves it into one."""
    from migrations import upgrade_connection

    monkeypatch.setenv("CONSENT_LEDGER_KEY_DIR", str(tmp_path / "keys"))
    engine = sa.create_engine(database_in)
    try:
        with engine.begin() as conn:  # the schema an earlier version left
            upgrade_connection(conn, "0012")
    finally:
        engine.dispose()
    upgraded = run(database_in, "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.stderr
    warning = [ln for ln in upgraded.stderr.splitlines() if ln.startswith("Warning: ")]
    assert len(warning) == 1 and "'db copy'" in warning[0], upgraded.stderr
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(jsonl([registered("C1", 0)]))
    assert run_json(database_in, "import", str(feed))["accepted"] == 1
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    copied = run(database_in, "db", "copy", target)
    assert copied.exit_code == 0, copied.stderr
    assert run_json(target, "customer", "show", "C1")["details"] is not None
