"""The schema is Alembic's: the code's head is the migrations' head, `db upgrade` creates or
migrates it, and commands refuse an out-of-date schema, naming the command that upgrades it."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from ledger.persistence.database import SCHEMA_HEAD, Database
from migrations import head_revision, upgrade_connection
from tests.cli_helpers import error_line, run, run_json

CORE_TABLES = {
    "alembic_version",
    "ledger_events",
    "ledger_facts",
    "ledger_orders",
    "ledger_customers",
    "ledger_data_keys",
    "ledger_meta",
}


def tables_of(url: str) -> set[str]:
    database = Database(url)
    try:
        with database.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        database.dispose()


def stamp_at(url: str, revision: str) -> None:
    database = Database(url)
    try:
        with database.connect() as conn, conn.begin():
            upgrade_connection(conn, revision)
    finally:
        database.dispose()


def test_the_code_needs_the_migrations_head() -> None:
    assert head_revision() == SCHEMA_HEAD


def test_db_upgrade_creates_every_table_on_a_fresh_database(ledger_url: str) -> None:
    document = run_json(ledger_url, "db", "upgrade")
    assert document["from"] is None
    assert document["to"] == SCHEMA_HEAD
    assert "password" not in document["database"]
    assert tables_of(ledger_url) >= CORE_TABLES
    again = run_json(ledger_url, "db", "upgrade")
    assert (again["from"], again["to"]) == (SCHEMA_HEAD, SCHEMA_HEAD)


def test_db_upgrade_migrates_an_old_schema(ledger_url: str) -> None:
    stamp_at(ledger_url, "0001")
    document = run_json(ledger_url, "db", "upgrade")
    assert (document["from"], document["to"]) == ("0001", SCHEMA_HEAD)


def test_a_command_on_an_out_of_date_schema_refuses_and_names_db_upgrade(ledger_url: str) -> None:
    stamp_at(ledger_url, "0001")
    result = run(ledger_url, "customer", "show", "C1", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert error_line(result) == (
        "Error: the database is at schema 0001, this version needs "
        f"{SCHEMA_HEAD}: run 'consent-ledger db upgrade'"
    )


def test_postgresql_is_never_upgraded_behind_the_users_back(ledger_url: str) -> None:
    if not ledger_url.startswith("postgresql"):
        pytest.skip("a new SQLite file is created by the first command, by design")
    result = run(ledger_url, "audit", "check")
    assert result.exit_code == 1
    assert "has no ledger schema" in error_line(result)
    assert "db upgrade" in error_line(result)


def test_a_new_sqlite_file_is_created_by_the_first_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert run_json(url, "audit", "check") == {"violations": []}
    assert tables_of(url) >= CORE_TABLES
