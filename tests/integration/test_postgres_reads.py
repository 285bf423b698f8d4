"""A query on PostgreSQL reads on psycopg itself (no SQLAlchemy), as SQLAlchemy would connect,
and says in one line, without the password, when the server fails it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from ledger.application import ConsentLedger
from ledger.config import open_ledger
from ledger.errors import DatabaseUnavailableError, SchemaOutOfDateError
from ledger.persistence.database import SCHEMA_HEAD, Database
from ledger.persistence.postgres_reads import Readers, plain_postgres_url


@pytest.mark.parametrize(
    ("url", "uri"),
    [
        ("postgresql://u:p@h:5/db", "postgresql://u:p@h:5/db"),
        (
            "postgres://u@h/db?options=-csearch_path%3Ds",
            "postgresql://u@h/db?options=-csearch_path%3Ds",
        ),
        ("postgresql+psycopg://h/db", "postgresql://h/db"),
        # a space in the query, as SQLAlchemy reads a `+` there (a password keeps its `+`)
        (
            "postgresql://u:a+b@h/db?options=-csearch_path%3Ds+-cstatement_timeout%3D9",
            "postgresql://u:a+b@h/db?options=-csearch_path%3Ds%20-cstatement_timeout%3D9",
        ),
    ],
)
def test_a_psycopg_url_is_read_on_the_driver(url: str, uri: str) -> None:
    assert plain_postgres_url(url) == uri


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg2://h/db", "sqlite:///x.db", "mysql://h/db", "postgresqlx://h"]
)
def test_any_other_url_is_left_to_sqlalchemy(url: str) -> None:
    assert plain_postgres_url(url) is None


@pytest.fixture
def postgres_url(backend: str, ledger_url: str) -> str:
    if backend != "postgresql":
        pytest.skip("PostgreSQL only")
    return ledger_url


def test_the_driver_reads_as_sqlalchemy_does(postgres_url: str) -> None:
    database = Database(postgres_url)
    try:
        assert database.is_fresh() and database.schema_revision() is None
    finally:
        database.dispose()
    with pytest.raises(SchemaOutOfDateError):  # not SQLite: never upgraded by itself
        open_ledger(postgres_url)
    from ledger.config import upgrade

    upgrade(Database(postgres_url))
    database = Database(postgres_url)
    try:
        assert database.schema_revision() == SCHEMA_HEAD
        engine = sa.create_engine(database.url)
        with engine.connect() as conn:
            tables = sorted(sa.inspect(conn).get_table_names())
        engine.dispose()
        assert database._reads is not None
        assert database._reads.table_names() == tables
        assert not database.is_fresh()
    finally:
        database.dispose()


def test_a_query_on_postgres_never_loads_sqlalchemy(postgres_url: str, feed_small: Path) -> None:
    from ledger.config import upgrade

    upgrade(Database(postgres_url))
    ledger = open_ledger(postgres_url)
    ledger.import_lines(feed_small.read_bytes().splitlines())
    ledger.database.dispose()
    probe = f"""
import sys
from cli.main import cli
cli.main({["--db", postgres_url, "customer", "trail", "C100", "--json"]!r},
         prog_name="consent-ledger", standalone_mode=False)
print("@@", *(m for m in ("sqlalchemy", "eventsourcing") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    printed, _, loaded = done.stdout.rpartition("@@")
    assert json.loads(printed)["customer"] == "C100"
    assert loaded.split() == []


def test_options_joined_by_a_plus_are_read_alike_by_queries_and_writes(
    postgres_url: str, feed_small: Path
) -> None:
    # Given the test's URL with a second setting joined as a form joins words: `+`
    url = postgres_url + "+-cstatement_timeout%3D60000"
    assert "%3Dt_" in url and "search_path" in url
    from tests.cli_helpers import run

    # When the ledger is made, a feed imported and a customer asked about, by that URL
    assert run(url, "db", "upgrade").exit_code == 0
    assert run(url, "import", str(feed_small)).exit_code == 0
    answer = run(url, "customer", "trail", "C100", "--json")
    # Then the query read the ledger the writes made (the schema of the search path)
    assert answer.exit_code == 0, answer.stderr
    assert json.loads(answer.stdout)["customer"] == "C100"
    database = Database(url)
    try:
        assert database.fetch_on_driver("SHOW statement_timeout", ()) == [("1min",)]
    finally:
        database.dispose()


def test_a_server_that_goes_away_is_one_error_without_the_password(postgres_url: str) -> None:
    with_password = sa.engine.make_url(postgres_url).set(password="s3cret").render_as_string(False)
    readers = Readers(plain_postgres_url(with_password) or "", with_password)
    try:
        assert readers.fetch("SELECT ?", (1,)) == [(1,)]
        # A statement that ends its own connection, each time: a connection ended once is
        # opened again and the statement read again (`Readers.fetch`), not a second time.
        with pytest.raises(DatabaseUnavailableError) as raised:
            readers.fetch("SELECT pg_terminate_backend(pg_backend_pid())")
        message = str(raised.value)
        assert message.startswith("the database ") and " failed: " in message
        assert "s3cret" not in message and "***" in message
    finally:
        readers.close()


def test_an_import_looks_fact_ids_up_by_key_whatever_the_planner_knows(
    postgres_url: str, ledger: ConsentLedger, feed_small: Path
) -> None:
    """Planned on its own, a chunk's lookup of 2,000 ids read all of `ledger_facts` while no
    ANALYZE had seen the table (an import into a new ledger): a cost that grows with the
    ledger, each chunk. Here the table is small, where a sequential scan looks cheapest."""
    from ledger.persistence import indexes

    with feed_small.open("rb") as lines:
        assert ledger.import_lines(lines).accepted > 0
    ids = [json.loads(line)["id"] for line in feed_small.read_text().splitlines()[:50]]
    with ledger.database.writing() as tx:
        assert indexes.recorded_fact_ids(tx, ids) == set(ids)
        explain = "EXPLAIN SELECT fact_id FROM ledger_facts WHERE fact_id {in_values}"
        plan = [row[0] for row in tx.select_in(explain, ids)]
        # Only the lookup: the transaction's other statements keep their plans.
        setting = tx.connection.exec_driver_sql("SHOW enable_seqscan").scalar()
        tx.discard = True
    assert "ledger_facts_pkey" in "\n".join(plan), plan
    assert not any("Seq Scan" in step for step in plan), plan
    assert setting == "on"
