"""A database URL in messages: never its password, in whichever part of the URL it is given;
a URL that cannot be used is one plain error (exit 1), not an internal one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from ledger.persistence.database import Database, default_key_dir, normalise_url, safe_url
from ledger.persistence.postgres_reads import rendered_url
from tests.cli_helpers import error_line, run

SECRET = "S3cretQ"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://u:{SECRET}@h:5432/db", "postgresql://u:***@h:5432/db"),
        (
            f"postgresql://u@h/db?password={SECRET}&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        (f"postgresql://u@h/db?sslpassword={SECRET}", "postgresql://u@h/db?sslpassword=***"),
        ("postgresql://u@h/db?sslmode=require", "postgresql://u@h/db?sslmode=require"),
        ("sqlite:///ledger.db", "sqlite:///ledger.db"),
        # a password holding an '@' not written %40: the rest of it is read as the host's
        (f"postgresql://u:p@{SECRET}@h:5432/db", "postgresql://***@h:5432/db"),
        (f"postgresql://u:p@{SECRET}/x@h/db", "postgresql://***@h/db"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_the_key_folder_of_a_url_with_a_password_in_its_query_does_not_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The folder is named by a hash of the URL as it was first shown, query and all: hiding
    the query's password in messages must not lose an existing ledger's keys."""
    monkeypatch.delenv("CONSENT_LEDGER_KEY_DIR", raising=False)
    url = f"postgresql://u@h/db?password={SECRET}"
    first_shown = make_url("postgresql+psycopg" + url[len("postgresql") :])
    ident = hashlib.sha256(first_shown.render_as_string(hide_password=True).encode()).hexdigest()
    assert default_key_dir(Database(url)).name == ident[:16]


@pytest.mark.parametrize(
    ("url", "error"),
    [
        (
            f"postgresql://u:{SECRET}@h:notaport/db",
            "Error: the database URL cannot be read (e.g. sqlite:///ledger.db or "
            "postgresql://USER@HOST:5432/DATABASE)",
        ),
        (
            "garbage:x",
            "Error: the database URL cannot be read (e.g. sqlite:///ledger.db or "
            "postgresql://USER@HOST:5432/DATABASE)",
        ),
        (
            f"postgresql+psycopg2://u:{SECRET}@h/db",
            "Error: unsupported database postgresql+psycopg2://u:***@h/db: "
            "use sqlite:/// or postgresql://",
        ),
        (
            "mysql://u@h/db",
            "Error: unsupported database mysql://u@h/db: use sqlite:/// or postgresql://",
        ),
        (  # a scheme SQLAlchemy has no dialect for: named, not loaded
            f"postgress://u:{SECRET}@h/db",
            "Error: unsupported database postgress://u:***@h/db: use sqlite:/// or postgresql://",
        ),
        (
            "sqlite3:///x.db",
            "Error: unsupported database sqlite3:///x.db: use sqlite:/// or postgresql://",
        ),
    ],
)
def test_a_url_that_cannot_be_used_is_one_plain_error(url: str, error: str) -> None:
    result = run(url, "verify", "--json")
    assert result.exit_code == 1
    assert error_line(result) == error
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("command", [["customer", "show", "C1"], ["db", "upgrade"]])
@pytest.mark.parametrize("rest", [SECRET, f"{SECRET}/x"])
def test_a_password_with_an_at_sign_is_named_as_the_cause_not_shown(
    command: list[str], rest: str
) -> None:
    """The driver's reason ("failed to resolve host 'S3cretQ@127.0.0.1'") would show the
    part of the password after its '@'."""
    result = run(f"postgresql://u:p@{rest}@127.0.0.1:1/db", *command)
    assert result.exit_code == 1
    assert error_line(result) == (
        "Error: cannot connect to postgresql+psycopg://***@127.0.0.1:1/db: its password "
        "seems to hold an '@', which a URL writes as %40"
    )
    assert SECRET not in result.stdout + result.stderr


def test_a_ledger_on_read_only_ground_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write-protected copy (an auditor's) failed with SQLite's bare "attempt to write a
    readonly database": in WAL mode it writes a -shm file even to read."""
    import os
    import sqlite3

    from ledger.persistence.sqlite_reads import read_only_hint

    path = tmp_path / "ledger.db"
    refused = sqlite3.OperationalError("attempt to write a readonly database")
    writable = {path: True, tmp_path: False}
    monkeypatch.setattr(os, "access", lambda where, mode: writable[Path(where)])
    assert "copy the ledger, with any -wal file" in read_only_hint(path, refused)
    # Another failure, or writable ground: nothing added
    assert read_only_hint(path, sqlite3.OperationalError("database is locked")) == ""
    writable[tmp_path] = True
    assert read_only_hint(path, refused) == ""


_PART = st.text("abcXYZ019_.-", min_size=1, max_size=12)


@given(
    scheme=st.sampled_from(["postgresql", "postgres", "postgresql+psycopg"]),
    user=st.none() | _PART,
    password=st.none() | _PART,
    host=_PART,
    port=st.none() | st.integers(1, 99999),
    database=_PART,
)
def test_a_plain_url_is_rendered_as_sqlalchemy_renders_it(
    scheme: str, user: str | None, password: str | None, host: str, port: int | None, database: str
) -> None:
    """The key folder of a PostgreSQL ledger is named from its URL as SQLAlchemy renders it;
    a plain URL's rendering is made without loading SQLAlchemy, and must be the same."""
    credentials = f"{user}{f':{password}' if password else ''}@" if user else ""
    url = f"{scheme}://{credentials}{host}{f':{port}' if port else ''}/{database}"
    expected = normalise_url(url).render_as_string(hide_password=True)
    assert rendered_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db?sslmode=require",
        "postgresql://u%40x@h/db",
        "postgresql://u:p%2Fq@h/db",
        "postgresql://u@[::1]:5432/db",
        "postgresql://u@h:05432/db",
        "postgresql://u@h/",
        "postgresql+psycopg2://u@h/db",
        "sqlite:///ledger.db",
    ],
)
def test_any_other_url_is_left_to_sqlalchemy_to_render(url: str) -> None:
    assert rendered_url(url) is None
