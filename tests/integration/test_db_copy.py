"""`db copy`: a ledger copied, as stored, into a new database, on either backend."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ledger.persistence.database import WRITTEN_TABLES, Database
from tests.cli_helpers import error_line, run, run_json
from tests.conftest import postgres_schema, postgres_server

LEDGER_TABLES = ("ledger_events", *WRITTEN_TABLES)  # every table of the ledger's own
KEY_FILES = ["master.key", "signing.key", "signing.pub"]
# What each answers, the same from the ledger and from its copy.
QUERIES = (
    ("customer", "show", "C100"),
    ("customer", "show", "C101"),  # erased in both
    ("customer", "trail", "C100"),
    ("consent", "show", "C100", "--as-of", "2025-03-03T00:00:00Z"),
    ("audit", "check"),
    ("checkpoint",),
    ("recipients", "notifications", "--all"),
    ("suppression", "check", "ada@example.org"),
)


@pytest.fixture
def keys_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ledger finds its keys where it would without configuration: beside an SQLite
    file, or the folder for its URL (under XDG_DATA_HOME) on PostgreSQL."""
    monkeypatch.delenv("CONSENT_LEDGER_KEY_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@pytest.fixture(params=["sqlite", "postgresql"])
def target_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty database on the target's backend."""
    if request.param == "sqlite":
        (tmp_path / "copy").mkdir()
        yield f"sqlite:///{tmp_path / 'copy' / 'ledger-copy.db'}"
        return
    if postgres_server() is None:
        pytest.skip("PostgreSQL tests need CONSENT_LEDGER_TEST_POSTGRES")
    with postgres_schema() as url:
        yield url


def _full_ledger(url: str, feed: Path, tmp_path: Path) -> None:
    """A ledger with a row in every table of its own: an erasure, a notification, a
    suppression, a due-diligence export's secret, checkpoints."""
    _small_ledger(url, feed)
    run_json(url, "recipients", "notified", "Mastercard", "--customer", "C101")
    run_json(url, "consent", "withdraw", "C100", "marketing", "email", "--method", "link")
    export = ("export", "due-diligence", "--acquirer", "Northwind Retail Group")
    run_json(url, *export, "--out", str(tmp_path / "export"))


def _small_ledger(url: str, feed: Path) -> None:
    assert run(url, "db", "upgrade").exit_code == 0
    assert run_json(url, "import", str(feed))["accepted"] == 26


def _rows(url: str) -> dict[str, int]:
    database = Database(url)
    try:
        with database.engine.connect() as conn:
            return {
                name: conn.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar_one()
                for name in LEDGER_TABLES
            }
    finally:
        database.dispose()


def _answers(url: str) -> list[Any]:
    return [run_json(url, *query) for query in QUERIES]


def _key_folder(url: str) -> Path:
    from ledger.persistence.database import default_key_dir

    return default_key_dir(Database(url))


def test_a_copy_answers_as_the_ledger_does_and_verifies_with_its_head(
    keys_of_their_own: None,
    ledger_url: str,
    target_url: str,
    feed_small: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PostgreSQL sessions in another zone than UTC: a time read from one backend is stored
    # in the other as the same moment (a suppression's "since" moved by 5 hours, once).
    monkeypatch.setenv("PGTZ", "America/New_York")
    _full_ledger(ledger_url, feed_small, tmp_path)
    rows = _rows(ledger_url)
    assert all(rows.values()), rows  # every table has something to copy
    verified = run_json(ledger_url, "verify")
    answers = _answers(ledger_url)

    copied = run_json(ledger_url, "db", "copy", target_url)

    assert copied["rows"] == rows
    assert copied["verify"] == verified  # same facts, same head, no problem
    assert _rows(target_url) == rows
    assert run_json(target_url, "verify") == verified
    assert _answers(target_url) == answers
    assert copied["rebuilt"] == [
        p["name"] for p in run_json(target_url, "projections", "status")["projections"]
    ]
    folder = _key_folder(target_url)
    assert copied["key_files"] == [str(folder / name) for name in KEY_FILES]
    source_folder = _key_folder(ledger_url)
    for name in KEY_FILES:
        assert (folder / name).read_bytes() == (source_folder / name).read_bytes()
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    # The copy goes on: it records, signs with the copied key, and still verifies.
    fact = '{"type": "transfer.initiated", "id": "t-copy", "acquirer": "Acme", "scope": "all"}'
    assert run_json(target_url, "record", fact)["recorded"] is True
    after = run_json(target_url, "verify")
    assert after["ok"] is True and after["facts"] == verified["facts"] + 1
    assert run_json(ledger_url, "verify") == verified  # the source is as it was


def test_a_copy_into_a_database_that_holds_tables_is_refused(
    ledger_url: str, target_url: str, feed_small: Path
) -> None:
    _small_ledger(ledger_url, feed_small)
    assert run(target_url, "db", "upgrade").exit_code == 0
    before = _rows(target_url)
    result = run(ledger_url, "db", "copy", target_url)
    assert result.exit_code == 1
    assert "already holds tables (a ledger made by 'db upgrade'?)" in error_line(result)
    assert _rows(target_url) == before


def test_a_copy_that_fails_leaves_the_target_empty_and_no_key_behind(
    keys_of_their_own: None,
    ledger_url: str,
    target_url: str,
    feed_small: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ledger.persistence import copying

    _small_ledger(ledger_url, feed_small)
    missing = sa.Table("ledger_no_such_table", sa.MetaData(), sa.Column("x", sa.Integer))
    with monkeypatch.context() as patched:  # fails after every real table was written
        patched.setattr(copying, "TABLES", (*copying.TABLES, missing))
        result = run(ledger_url, "db", "copy", target_url)
    assert result.exit_code == 1
    assert "no_such_table" in error_line(result)
    assert Database(target_url).is_fresh()
    if target_url.startswith("sqlite:///"):  # the new file it made, and its journals: gone
        made = Path(target_url.removeprefix("sqlite:///"))
        assert sorted(made.parent.iterdir()) == []
    assert not _key_folder(target_url).exists()
    # Nothing stands in the way of the copy made again.
    copied = run_json(ledger_url, "db", "copy", target_url)
    assert copied["verify"] == run_json(ledger_url, "verify")


def test_a_key_folder_holding_other_keys_is_refused_before_anything_is_written(
    keys_of_their_own: None, ledger_url: str, target_url: str, feed_small: Path
) -> None:
    _small_ledger(ledger_url, feed_small)
    folder = _key_folder(target_url)
    folder.mkdir(parents=True)
    other = folder / "master.key"
    other.write_text("b3RoZXIga2V5IG9mIGFub3RoZXIgbGVkZ2VyIQAAAAA=\n")
    result = run(ledger_url, "db", "copy", target_url)
    assert result.exit_code == 1
    assert error_line(result).startswith(f"Error: {other} holds another key than this ledger's ")
    assert Database(target_url).is_fresh()
    assert sorted(p.name for p in folder.iterdir()) == ["master.key"]


def test_a_copy_that_finds_another_copy_there_first_leaves_that_copys_keys(
    keys_of_their_own: None,
    ledger_url: str,
    target_url: str,
    feed_small: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two `db copy` into one new target at once: the one that loses the race must not
    remove the key files the winner's copy opens with (its clean-up did, once)."""
    from ledger.persistence import copying

    _small_ledger(ledger_url, feed_small)
    real = copying._copy_rows

    def another_copy_first(*args: Any) -> Any:
        real(*args)  # the other command's copy, whole
        return real(*args)

    with monkeypatch.context() as patched:
        patched.setattr(copying, "_copy_rows", another_copy_first)
        result = run(ledger_url, "db", "copy", target_url)
    assert result.exit_code == 1
    assert "already holds tables" in error_line(result)
    folder = _key_folder(target_url)
    assert sorted(p.name for p in folder.iterdir()) == KEY_FILES
    assert run_json(target_url, "customer", "show", "C100")["customer"] == "C100"


def test_a_rotation_of_the_source_during_a_copy_is_not_copied_half(
    keys_of_their_own: None,
    ledger_url: str,
    target_url: str,
    feed_small: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`keys rotate` commits between the copy's read of the key file and its snapshot: the
    copy would carry the old key and the new wrappings."""
    import migrations
    from ledger.config import open_database
    from ledger.persistence.keys import KeyStore

    _small_ledger(ledger_url, feed_small)
    real = migrations.upgrade_connection

    def rotated_meanwhile(conn: Any) -> None:
        source = open_database(ledger_url, create=False)
        try:
            KeyStore(source).rotate()
        finally:
            source.dispose()
        real(conn)

    with monkeypatch.context() as patched:
        patched.setattr(migrations, "upgrade_connection", rotated_meanwhile)
        result = run(ledger_url, "db", "copy", target_url)
    assert result.exit_code == 1
    assert "master key changed while it was being copied" in error_line(result)
    assert Database(target_url).is_fresh()
    assert not _key_folder(target_url).exists()
    copied = run_json(ledger_url, "db", "copy", target_url)  # again: the new key goes along
    assert copied["verify"]["ok"] is True
    assert run_json(target_url, "customer", "show", "C100")["customer"] == "C100"


def test_a_master_key_file_that_does_not_open_the_ledger_is_not_copied(
    keys_of_their_own: None, ledger_url: str, target_url: str, feed_small: Path
) -> None:
    """A rotation cut off after its commit leaves the ledger's key in master.key.new and the
    old one in master.key: copying master.key gave a copy that no key opens."""
    _small_ledger(ledger_url, feed_small)
    assert run(ledger_url, "keys", "rotate").exit_code == 0
    source = _key_folder(ledger_url)
    (source / "master.key").rename(source / "master.key.new")
    next(source.glob("master.key.*.old")).rename(source / "master.key")
    result = run(ledger_url, "db", "copy", target_url)
    assert result.exit_code == 1
    assert "master.key.new" in error_line(result)
    assert Database(target_url).is_fresh()
    assert not _key_folder(target_url).exists()


def test_an_in_memory_target_is_refused(
    keys_of_their_own: None, ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    """A copy into `sqlite://` was gone at the command's end, its keys left for good in the
    key folder of that URL."""
    _small_ledger(ledger_url, feed_small)
    keys = tmp_path / "xdg" / "consent-ledger" / "keys"
    before = sorted(keys.iterdir()) if keys.exists() else []
    for url in ("sqlite://", "sqlite:///:memory:"):
        result = run(ledger_url, "db", "copy", url)
        assert result.exit_code == 1
        assert "in-memory database" in error_line(result)
    assert (sorted(keys.iterdir()) if keys.exists() else []) == before


def test_a_copy_into_one_of_the_ledgers_own_files_is_refused(
    keys_of_their_own: None, ledger_url: str, feed_small: Path
) -> None:
    """`db copy sqlite:///ledger.db-wal` made its copy in the source's write-ahead log's
    place: the source's connection removed that file as it closed, the copy with it (exit
    0, 'the copy verifies'), its keys left beside nothing."""
    _small_ledger(ledger_url, feed_small)
    database = Database(ledger_url)
    if database.sqlite_path is None:
        pytest.skip("an SQLite ledger's own files")
    result = run(ledger_url, "db", "copy", f"sqlite:///{database.sqlite_path}-wal")
    assert result.exit_code == 1
    assert "one of the ledger's own files" in error_line(result)
    assert not Path(f"{database.sqlite_path}-wal.keys").exists()


def test_an_auditors_copy_carries_the_public_key_alone(
    keys_of_their_own: None, ledger_url: str, target_url: str, feed_small: Path
) -> None:
    """`--public-key-only`: the copy verifies and answers from the record, but opens no
    personal data (no master key) and records nothing (no signing key)."""
    _small_ledger(ledger_url, feed_small)
    verified = run_json(ledger_url, "verify")
    copied = run_json(ledger_url, "db", "copy", target_url, "--public-key-only")
    folder = _key_folder(target_url)
    assert copied["key_files"] == [str(folder / "signing.pub")]
    assert sorted(p.name for p in folder.iterdir()) == ["signing.pub"]
    assert copied["verify"] == verified
    assert run_json(target_url, "verify") == verified
    for query in (("customer", "trail", "C100"), ("audit", "check")):
        assert run_json(target_url, *query) == run_json(ledger_url, *query)
    details = run(target_url, "customer", "show", "C100")
    assert details.exit_code == 1 and error_line(details).startswith("Error: no master key")
    fact = '{"type": "transfer.initiated", "id": "t-2", "acquirer": "Acme", "scope": "all"}'
    refused = run(target_url, "record", fact)
    assert refused.exit_code == 1 and error_line(refused).startswith("Error: no signing key")
    assert run_json(target_url, "verify") == verified  # nothing recorded


def test_an_auditors_copy_sharing_the_ledgers_key_folder_is_refused(
    ledger_url: str, target_url: str, feed_small: Path
) -> None:
    """CONSENT_LEDGER_KEY_DIR (set by the tests' fixture) names one folder for both: the
    copy would sit beside the master and signing keys."""
    _small_ledger(ledger_url, feed_small)
    result = run(ledger_url, "db", "copy", target_url, "--public-key-only")
    assert result.exit_code == 1
    assert "the copy's key folder would be the ledger's own" in error_line(result)
    assert Database(target_url).is_fresh()


@pytest.mark.parametrize(
    ("table", "change"),
    [
        ("ledger_data_keys", "UPDATE ledger_data_keys SET created_at = 'not a time'"),
        ("ledger_suppressions", "UPDATE ledger_suppressions SET since = 'not a time'"),
    ],
)
def test_a_source_row_of_a_type_the_ledger_never_writes_is_an_integrity_failure(
    keys_of_their_own: None,
    target_url: str,
    feed_small: Path,
    tmp_path: Path,
    table: str,
    change: str,
) -> None:
    """SQLite keeps any type in any column: such a row made the copy fail with "unexpected
    ValueError", exit 1. Now exit 4, naming the table, and the target is left empty."""
    source = f"sqlite:///{tmp_path / 'source.db'}"
    _full_ledger(source, feed_small, tmp_path)
    with Database(source).engine.begin() as conn:  # (no trigger guards these tables)
        assert conn.exec_driver_sql(change).rowcount >= 1
    result = run(source, "db", "copy", target_url)
    assert result.exit_code == 4, (result.stdout, result.stderr)
    assert f"table {table} holds a value of a type the ledger never writes" in error_line(result)
    assert Database(target_url).is_fresh()
    assert not _key_folder(target_url).exists()
