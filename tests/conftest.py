"""Shared fixtures: a fresh ledger on each backend.

Every integration test that takes `ledger_url` runs on SQLite and on PostgreSQL. PostgreSQL
runs when CONSENT_LEDGER_TEST_POSTGRES names a server (e.g.
postgresql://postgres@127.0.0.1:5432/test); otherwise those cases are skipped, saying so.
Each PostgreSQL test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

DATA = Path(__file__).parent / "data"
POSTGRES_ENV = "CONSENT_LEDGER_TEST_POSTGRES"
BACKENDS = ["sqlite", "postgresql"]


# CI's second run (`.ci/run`), after one on SQLite alone: only the tests that reach the
# PostgreSQL server, not again those that ran in the first (`pytest_collection_modifyitems`).
POSTGRES_ONLY_ENV = "CONSENT_LEDGER_TEST_POSTGRES_ONLY"


def postgres_server() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With `POSTGRES_ONLY_ENV` set, keep only the tests that reach the PostgreSQL server:
    a case parametrized "postgresql" (by the `backend` fixture or a fixture of its own), or
    a test marked `postgres` (it asks `postgres_server()` itself)."""
    if not os.environ.get(POSTGRES_ONLY_ENV):
        return
    if postgres_server() is None:
        raise pytest.UsageError(f"{POSTGRES_ONLY_ENV} needs {POSTGRES_ENV}")
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        on_postgres = any(value == "postgresql" for value in params)
        (kept if on_postgres or item.get_closest_marker("postgres") else dropped).append(item)
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept


@pytest.fixture(autouse=True)
def _isolated_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Key files of each test live in its own folder; no ambient configuration leaks in."""
    monkeypatch.setenv("CONSENT_LEDGER_KEY_DIR", str(tmp_path / "keys"))
    for name in (
        "CONSENT_LEDGER_DB",
        "CONSENT_LEDGER_MASTER_KEY",
        "CONSENT_LEDGER_MASTER_KEY_FILE",
        "CONSENT_LEDGER_WORKERS",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "postgresql" and postgres_server() is None:
        pytest.skip(
            f"PostgreSQL tests need {POSTGRES_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test)"
        )
    return name


def _postgres_schema_url(server: str, schema: str) -> str:
    url = sa.engine.make_url(server)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@contextmanager
def postgres_schema() -> Iterator[str]:
    """The URL of a new, empty schema of the test server, dropped afterwards."""
    server = postgres_server()
    assert server is not None
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(_postgres_schema_url(server, "public"))
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield _postgres_schema_url(server, schema)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def ledger_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty ledger database on `backend`."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[object]:
    """An upgraded, empty ledger on each backend."""
    from ledger.config import open_ledger, upgrade
    from ledger.persistence.database import Database

    upgrade(Database(ledger_url))
    app = open_ledger(ledger_url)
    yield app
    app.database.dispose()


@pytest.fixture
def feed_small() -> Path:
    return DATA / "feed-small.jsonl"
