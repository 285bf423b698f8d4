"""The schema is Alembic's: the code's head is the migrations' head, `db upgrade` creates or
migrates it, and commands refuse an out-of-date schema, naming the command that upgrades it."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
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


def downgrade_to(url: str, revision: str) -> None:
    from alembic import command

    from migrations import alembic_config

    database = Database(url)
    try:
        with database.connect() as conn, conn.begin():
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, revision)
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


def test_an_upgrade_that_migrated_counts_as_a_commit(ledger_url: str) -> None:
    """What a failure after it says (`SystemFailure`: a key folder that cannot be written
    after the schema was created) depends on whether the command committed anything."""
    database = Database(ledger_url)
    before = Database.commits
    try:
        database.upgrade()
        assert Database.commits == before + 1
        database.upgrade()  # at the head already: nothing to commit
        assert Database.commits == before + 1
    finally:
        database.dispose()


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
        pytest.skip("a new SQLite file is created by the first import or record, by design")
    result = run(ledger_url, "audit", "check")
    assert result.exit_code == 1
    assert "has no ledger schema" in error_line(result)
    assert "db upgrade" in error_line(result)


def test_a_new_sqlite_file_is_created_by_the_first_record_never_by_a_question(
    tmp_path: Path, feed_small: Path
) -> None:
    """A mistyped path must not answer as an empty ledger (`verify` "ok", 0 facts) nor leave
    a file behind: a command that does not record is refused, exit 1. A shop's first import
    (or record, or `db upgrade`) creates the ledger."""
    path = tmp_path / "new.db"
    url = f"sqlite:///{path}"
    give = ["consent", "give", "C100", "marketing", "email", "--method", "web"]
    for command in (
        [*give, "--policy-version", "v1"],  # names a customer: no new ledger holds one
        ["verify"],
        ["audit", "check"],
        ["customer", "show", "C100"],
        ["keys", "rotate"],
    ):
        refused = run(url, *command, "--json")
        assert (refused.exit_code, refused.stdout) == (1, ""), command
        assert error_line(refused) == (
            f"Error: no ledger at {url}: the file {path} does not exist (check the path, --db or "
            "CONSENT_LEDGER_DB); a first import or record, or 'consent-ledger db upgrade', "
            "creates a new ledger"
        )
        assert list(tmp_path.iterdir()) == [], command
    path.touch()  # an empty file is no ledger either (nor left behind changed)
    refused = run(url, "verify")
    assert refused.exit_code == 1 and f"the file {path} is empty" in error_line(refused)
    assert path.stat().st_size == 0
    assert run_json(url, "import", str(feed_small))["accepted"] == 26
    assert tables_of(url) >= CORE_TABLES
    assert run_json(url, "verify")["facts"] == 26


def test_a_dry_run_where_no_ledger_is_yet_checks_against_an_empty_one_and_creates_none(
    tmp_path: Path, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checking a shop's first feed (`import --dry-run`, `record --dry-run`) must leave no
    ledger file and no keys behind: not beside the file, nor in the key folder the
    environment names for the shop's ledgers."""
    keys = tmp_path / "shop-keys"
    monkeypatch.setenv("CONSENT_LEDGER_KEY_DIR", str(keys))
    ledger = tmp_path / "ledgers"
    ledger.mkdir()
    path = ledger / "new.db"
    url = f"sqlite:///{path}"
    dry = run(url, "import", str(feed_small), "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    summary = {"accepted": 26, "duplicates": 0, "rejected": 0, "errors": []}
    assert orjson.loads(dry.stdout) == summary
    assert "an empty ledger: none at the URL yet, none created" in dry.stderr
    registration = feed_small.read_text().splitlines()[0]
    checked = run(url, "record", registration, "--dry-run", "--json")
    assert checked.exit_code == 0, checked.stderr
    assert orjson.loads(checked.stdout)["recorded"] is False
    unknown = run(url, "record", feed_small.read_text().splitlines()[3], "--dry-run")
    assert unknown.exit_code == 1 and "unknown customer" in error_line(unknown)
    assert (list(ledger.iterdir()), keys.exists()) == ([], False)
    assert os.environ["CONSENT_LEDGER_KEY_DIR"] == str(keys)  # given back after the command
    # An existing ledger is checked as it stands (its facts are duplicates), and kept.
    assert run_json(url, "import", str(feed_small))["accepted"] == 26
    assert run_json(url, "import", str(feed_small), "--dry-run")["duplicates"] == 26
    assert "none created" not in run(url, "import", str(feed_small), "--dry-run").stderr


def test_a_violations_model_from_before_0006_is_rebuilt_and_old_ties_judged_as_then(
    ledger_url: str, tmp_path: Path
) -> None:
    """0006 adds each initiation's position in the log to the violations model: the model
    is emptied and set back to event zero, and the next query rebuilds it. A tie at the same
    `at` between facts recorded before 0006 is judged as it was then (an import stored its
    events stream by stream, so their positions did not follow its lines); one recorded
    since, by position."""
    import orjson

    at = "2025-02-01T00:00:00Z"
    facts = [
        {
            "id": "r1",
            "type": "customer.registered",
            "customer": "C1",
            "name": "Ada Lovelace",
            "email": "ada@example.org",
            "address": {"line1": "1 Way", "city": "Leeds", "postcode": "LS1", "country": "GB"},
            "at": "2025-01-01T00:00:00Z",
        },
        {
            "id": "t1",
            "type": "transfer.disclosure",
            "customer": "C1",
            "acquirer": "Northwind",
            "categories": ["name"],
            "at": at,
        },
        {
            "id": "i1",
            "type": "transfer.initiated",
            "acquirer": "Northwind",
            "scope": "all",
            "at": at,
        },
    ]
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"".join(orjson.dumps(f) + b"\n" for f in facts))
    run_json(ledger_url, "db", "upgrade")
    run_json(ledger_url, "import", str(feed))
    expected = [
        {"rule": "transfer_without_initiation", "customer": "C1", "fact_id": "t1", "at": at}
    ]
    assert run_json(ledger_url, "audit", "check")["violations"] == expected

    # Back to 0005, as an older version left it: its model at the head, holding a row the
    # rebuild will not (a stale verdict).
    downgrade_to(ledger_url, "0005")
    database = Database(ledger_url)
    try:
        with database.connect() as conn, conn.begin():
            slot = conn.execute(
                sa.text("SELECT slot FROM rm_tracking WHERE name = 'violations'")
            ).scalar_one()
            head = conn.execute(sa.text("SELECT max(notification_id) FROM ledger_events")).scalar()
            conn.execute(
                sa.text(
                    f"INSERT INTO rm_violations_{slot} (stream_id, customer, rule, fact_id, at) "
                    "VALUES ('0', 'C1', 'affiliate_without_consent', 'stale', "
                    "'2025-02-01T00:00:00.000000Z')"
                )
            )
            conn.execute(
                sa.text("UPDATE rm_tracking SET position = :head WHERE name = 'violations'"),
                {"head": head},
            )
    finally:
        database.dispose()
    assert run(ledger_url, "audit", "check").exit_code == 1  # names db upgrade
    document = run_json(ledger_url, "db", "upgrade")
    assert (document["from"], document["to"]) == ("0005", SCHEMA_HEAD)
    # Rebuilt (the stale row is gone), and the tie recorded before 0006 judged as it was then:
    # such an import's positions did not follow its lines.
    assert run_json(ledger_url, "audit", "check")["violations"] == []
    # A tie recorded since is ordered by position: the disclosure came first.
    later = [
        facts[1] | {"id": "t2", "acquirer": "Contoso"},
        facts[2] | {"id": "i2", "acquirer": "Contoso"},
    ]
    feed.write_bytes(b"".join(orjson.dumps(f) + b"\n" for f in later))
    run_json(ledger_url, "import", str(feed))
    assert run_json(ledger_url, "audit", "check")["violations"] == [expected[0] | {"fact_id": "t2"}]
    assert run_json(ledger_url, "verify")["ok"] is True


def test_an_upgrade_without_the_master_key_says_the_schema_was_upgraded(
    ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The migrations commit before the keys are checked: an existing ledger upgraded
    where its master key is not to be found is told both."""
    run_json(ledger_url, "db", "upgrade")
    downgrade_to(ledger_url, "0005")  # as if an older version had last upgraded it
    monkeypatch.setenv("CONSENT_LEDGER_KEY_DIR", str(tmp_path / "elsewhere"))
    result = run(ledger_url, "db", "upgrade")
    assert result.exit_code == 1
    message = error_line(result)
    assert message.startswith(f"Error: the schema was upgraded from 0005 to {SCHEMA_HEAD}, but ")
    assert "no master key" in message
    again = run(ledger_url, "db", "upgrade")  # nothing left to migrate: the key error alone
    assert error_line(again).startswith("Error: no master key")


@pytest.mark.parametrize("command", [["customer", "show", "C1"], ["db", "upgrade"]])
def test_a_schema_from_a_newer_version_is_named_as_such(
    ledger_url: str, command: list[str]
) -> None:
    """`db upgrade` cannot help with a database a newer consent-ledger upgraded: neither
    advice to run it nor Alembic's error about a revision it does not know."""
    newer = f"{int(SCHEMA_HEAD) + 1:04d}"
    run_json(ledger_url, "db", "upgrade")
    database = Database(ledger_url)
    try:
        with database.connect() as conn, conn.begin():  # as the newer version's migration
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": newer})
    finally:
        database.dispose()
    result = run(ledger_url, *command, "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert error_line(result) == (
        f"Error: the database is at schema {newer}, which this version of consent-ledger does "
        f"not know (it knows up to {SCHEMA_HEAD}): use the newer consent-ledger that upgraded it"
    )


def test_every_preventive_check_reads_the_initiations_off_their_partial_index(
    ledger_url: str,
) -> None:
    """`transfer_without_initiation` reads every acquirer's initiations under the writer's
    lock on each command that discloses: off the partial index of 0008, not a scan of the
    whole fact index. (Its condition must stay the index's text: as a bound parameter,
    SQLite would not use the index.)"""
    from ledger.persistence.database import normalise_url
    from ledger.persistence.sqlite_reads import for_driver
    from projections.replay import _INITIATING

    assert run(ledger_url, "db", "upgrade").exit_code == 0
    engine = sa.create_engine(normalise_url(ledger_url))
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                sql = f"EXPLAIN QUERY PLAN {_INITIATING}"
            else:  # (an empty table: seq scans off, or the planner rightly takes one)
                conn.exec_driver_sql("SET enable_seqscan = off")
                sql = f"EXPLAIN {for_driver(_INITIATING, 'format')}"
            plan = conn.exec_driver_sql(sql, (100,)).all()
    finally:
        engine.dispose()
    assert "ix_ledger_facts_initiations" in " ".join(str(row) for row in plan), plan


def test_each_trail_reads_the_exports_off_their_partial_index(ledger_url: str) -> None:
    """`customer trail` reads the due-diligence exports recorded after the customer's first
    event: off the partial index of 0012, not a scan of the whole fact index."""
    from ledger.persistence.database import normalise_url
    from ledger.persistence.sqlite_reads import SELECT_CUSTOMER_EXPORTS, for_driver

    assert run(ledger_url, "db", "upgrade").exit_code == 0
    engine = sa.create_engine(normalise_url(ledger_url))
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                sql = f"EXPLAIN QUERY PLAN {SELECT_CUSTOMER_EXPORTS}"
            else:  # (an empty table: seq scans off, or the planner rightly takes one)
                conn.exec_driver_sql("SET enable_seqscan = off")
                sql = f"EXPLAIN {for_driver(SELECT_CUSTOMER_EXPORTS, 'format')}"
            plan = conn.exec_driver_sql(sql, ("C1",)).all()
    finally:
        engine.dispose()
    assert "ix_ledger_facts_exports" in " ".join(str(row) for row in plan), plan


def _three_at_once(url: str, work: Callable[[Database], Any]) -> list[Any]:
    """What `work` returned (or raised) for each of three threads running it at once, each
    on a `Database` of its own for `url`."""
    import threading

    results: list[Any] = []

    def one() -> None:
        database = Database(url)
        try:
            results.append(work(database))
        except BaseException as error:  # (reported by the caller)
            results.append(error)
        finally:
            database.dispose()

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_upgrades_started_together_on_a_new_database_run_one_after_the_other(
    ledger_url: str,
) -> None:
    """Deployments often run `db upgrade` on several machines at once: on a new PostgreSQL
    database two of them used to create the same tables, and one failed on a duplicate key
    of the catalogue. They now take turns; the later ones find the schema at the head."""
    results = _three_at_once(ledger_url, Database.upgrade)
    assert all(isinstance(r, tuple) for r in results), results
    assert sorted(str(r[0]) for r in results if isinstance(r, tuple)) == [  # type: ignore[index]
        SCHEMA_HEAD,
        SCHEMA_HEAD,
        "None",
    ]


def test_db_upgrades_started_together_make_one_set_of_keys(ledger_url: str, tmp_path: Path) -> None:
    """Several `db upgrade`s of a new database at once (as deployments start them): each
    succeeds, and the keys are made once, the same for all (each made only if missing, in
    one write under the writer's lock). Another upgrade after them changes nothing."""
    import base64

    from ledger.config import UpgradeResult, upgrade
    from ledger.crypto import key_check
    from ledger.persistence import sqlite_reads as reads

    results = _three_at_once(ledger_url, upgrade)
    assert all(isinstance(r, UpgradeResult) for r in results), results
    master = tmp_path / "keys" / "master.key"
    database = Database(ledger_url)
    try:
        meta = dict(database.fetch_on_driver("SELECT name, value FROM ledger_meta", ()))
    finally:
        database.dispose()
    assert meta[reads.MASTER_KEY_CHECK_NAME] == key_check(base64.b64decode(master.read_text()))
    assert reads.LOG_KEY_NAME in meta
    assert sorted(p.name for p in master.parent.iterdir()) == [
        "master.key",
        "signing.key",
        "signing.pub",
    ]
    again = run_json(ledger_url, "db", "upgrade")
    assert (again["from"], again["to"], again["master_key"]) == (
        SCHEMA_HEAD,
        SCHEMA_HEAD,
        str(master),
    )
    befores = sorted(str(r.before) for r in results if isinstance(r, UpgradeResult))
    assert befores == [SCHEMA_HEAD, SCHEMA_HEAD, "None"]


def _recorded_with_its_master_key_lost(tmp_path: Path, feed: Path) -> tuple[str, Path]:
    """An SQLite ledger that has recorded `feed`, its master key fingerprint row deleted and
    its key file moved to `lost.key` beside it: its URL, and where its key file was."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert run_json(url, "import", str(feed))["accepted"] == 26
    database = Database(url)
    try:
        with database.writing() as tx:
            tx.execute_on_driver("DELETE FROM ledger_meta WHERE name = 'master_key_check'", ())
    finally:
        database.dispose()
    master = tmp_path / "keys" / "master.key"
    master.rename(tmp_path / "lost.key")
    return url, master


def test_a_ledger_that_has_recorded_never_gets_a_new_master_key_when_opened(
    tmp_path: Path, feed_small: Path
) -> None:
    """A command opening an SQLite ledger without a master key fingerprint makes the keys
    (a first command was cut off before them) only if it has recorded nothing: one with
    data whose fingerprint row is gone and whose key file is lost stays an error, and no
    new master key is made (a new one would open none of its data keys)."""
    url, master = _recorded_with_its_master_key_lost(tmp_path, feed_small)
    result = run(url, "customer", "show", "C100", "--json")
    assert result.exit_code == 1
    assert error_line(result).startswith("Error: no master key")
    assert not master.exists()


def test_db_upgrade_of_a_ledger_that_has_recorded_never_makes_a_new_master_key(
    tmp_path: Path, feed_small: Path
) -> None:
    """`db upgrade` (which the 'no master key' error suggests) on a ledger with data whose
    fingerprint row is gone and whose key file is lost made a new master key file: it
    opened none of the data keys, and every command after named that new file as the
    wrong key ('does not open this ledger's data keys') instead of the lost one to
    restore."""
    url, master = _recorded_with_its_master_key_lost(tmp_path, feed_small)
    result = run(url, "db", "upgrade", "--json")
    assert result.exit_code == 1
    assert error_line(result).startswith("Error: no master key: this ledger's data keys")
    assert not master.exists()
    # And once the lost key is back, the ledger opens with it
    (tmp_path / "lost.key").rename(master)
    assert run_json(url, "customer", "show", "C100", "--json")["customer"] == "C100"


def test_0009_rebuilds_an_order_status_model_built_in_recording_order(
    tmp_path: Path, feed_small: Path
) -> None:
    """Before 0009 an order's status was the last lifecycle fact recorded; the model built
    so is emptied and set back to event zero, and the next catch-up rebuilds it."""
    from ledger.config import open_ledger

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert run_json(url, "import", str(feed_small))["accepted"] == 26
    ledger = open_ledger(url)
    ledger.read_models.catch_up()
    with ledger.database.engine.begin() as conn:
        stale = sa.text("UPDATE rm_order_status_a SET status = 'dispatched'")
        assert conn.execute(stale).rowcount > 0  # as an old version could have left it
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0008'"))
    ledger.database.dispose()
    assert run_json(url, "db", "upgrade")["to"] == SCHEMA_HEAD
    ledger = open_ledger(url)
    with ledger.database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM rm_order_status_a")).scalar() == 0
        position = "SELECT position FROM rm_tracking WHERE name = 'order_status'"
        assert conn.execute(sa.text(position)).scalar() == 0
    ledger.read_models.catch_up()
    with ledger.database.engine.connect() as conn:
        statuses = conn.execute(sa.text("SELECT order_ref, status FROM rm_order_status_a"))
        assert dict(statuses.all()) == {"O500": "delivered", "O501": "cancelled"}


def test_0010_withholds_the_times_of_suppressions_left_by_earlier_erasures(
    ledger_url: str, feed_small: Path
) -> None:
    """Before 0010 an erased customer's suppression kept its exact time, a withdrawal's in
    their consent history; the emails are not known any more (the keys are gone), so the
    upgrade withholds a suppression at the channel and time of an erased customer's
    marketing withdrawal. A living customer's keeps its time."""
    assert run(ledger_url, "db", "upgrade").exit_code == 0
    assert run_json(ledger_url, "import", str(feed_small))["accepted"] == 26
    fact = {
        "type": "customer.registered",
        "at": "2025-01-01T00:00:00Z",
        "customer": "C300",
        "name": "Grace Hopper",
        "email": "grace@example.org",
        "address": {"line1": "1 Way", "city": "York", "postcode": "YO1 1AA", "country": "GB"},
    }
    assert run_json(ledger_url, "record", orjson.dumps(fact).decode())["recorded"] is True
    withdraw = ("consent", "withdraw", "C300", "marketing", "post", "--method", "letter")
    assert run(ledger_url, *withdraw, "--at", "2025-02-01T00:00:00Z").exit_code == 0
    assert run_json(ledger_url, "customer", "erase", "C300")["recorded"] is True
    downgrade_to(ledger_url, "0009")
    database = Database(ledger_url)
    try:
        with database.connect() as conn, conn.begin():
            # As 0009 left it: the erased customer's suppression with its time.
            table = sa.table("ledger_suppressions", sa.column("since", sa.DateTime(True)))
            moment = datetime(2025, 2, 1, tzinfo=UTC)
            conn.execute(table.update().values(since=moment).where(table.c.since < moment))
    finally:
        database.dispose()
    assert run_json(ledger_url, "db", "upgrade")["to"] == SCHEMA_HEAD
    grace = run_json(ledger_url, "suppression", "check", "grace@example.org")
    assert (grace["suppressed"], grace["since"], grace["channels"]) == (True, None, ["post"])
    ada = run_json(ledger_url, "suppression", "check", "ada@example.org")
    assert (ada["suppressed"], ada["since"]) == (True, "2025-03-02T09:00:00Z")


def test_0011_a_total_or_currency_an_earlier_version_recorded_still_folds(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the feed bounded them, a total of any length and a currency ending in a newline
    were recorded; PostgreSQL's VARCHAR(40) and VARCHAR(3) then stopped the order-status
    model for good. Recorded as such a version did, they fold on either backend."""
    import ledger.feed as feed
    from ledger.config import open_ledger
    from tests.examples import line

    assert run(ledger_url, "db", "upgrade").exit_code == 0
    monkeypatch.setattr(feed, "MAX_AMOUNT", 1000)  # as before the bound
    monkeypatch.setattr(feed, "_CURRENCY", type("Loose", (), {"fullmatch": staticmethod(bool)}))
    total = "1" * 41
    facts = [
        line("customer.registered", "r-1", 0, customer="C1"),
        line("order.placed", "o-1", 1, customer="C1", order="O1", total=total, currency="GBP\n"),
    ]
    ledger = open_ledger(ledger_url)
    try:
        assert ledger.import_lines(orjson.dumps(fact) for fact in facts).accepted == 2
    finally:
        ledger.database.dispose()
    downgrade_to(ledger_url, "0010")  # the columns as 0002 made them then
    assert run_json(ledger_url, "db", "upgrade")["to"] == SCHEMA_HEAD
    ledger = open_ledger(ledger_url)
    try:
        ledger.read_models.rebuild(["order_status"])
        with ledger.database.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT total, currency FROM rm_order_status_b")).all()
    finally:
        ledger.database.dispose()
    assert [tuple(row) for row in rows] == [(total, "GBP\n")]


_DISCLOSURES_RECTIFICATIONS = "ix_ledger_facts_disclosures_rectifications"


def _facts_indexes(url: str) -> dict[str, list[str | None]]:
    database = Database(url)
    try:
        with database.connect() as conn:
            indexes = sa.inspect(conn).get_indexes("ledger_facts")
    finally:
        database.dispose()
    return {str(index["name"]): list(index["column_names"]) for index in indexes}


def _rectified_after_disclosing(url: str, read: str) -> tuple[set[str], list[Any]]:
    """What `rectified_after_disclosing` answers for an export `E` made as of 2025-01-15
    (`E/<n>` its disclosures) that read the ledger up to fact `read` (by customer
    reference), and the query plan of its read of the fact index."""
    from ledger.persistence import export_store, tables
    from ledger.persistence.database import normalise_url

    engine = sa.create_engine(normalise_url(url))
    statements: list[tuple[str, Any]] = []

    def kept(_c: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        statements.append((statement, params))

    try:
        with engine.connect() as conn:
            position = conn.execute(
                sa.text("SELECT notification_id FROM ledger_facts WHERE fact_id = :id"),
                {"id": read},
            ).scalar_one()
            customers = tables.customers
            refs = dict(
                conn.execute(sa.select(customers.c.customer_id, customers.c.customer_ref)).all()
            )
            sa.event.listen(engine, "before_cursor_execute", kept)
            as_of = datetime(2025, 1, 15, tzinfo=UTC)
            found = export_store.rectified_after_disclosing(conn, [(position, "E", as_of)], 10**9)
            sa.event.remove(engine, "before_cursor_execute", kept)
            (statement, params), *_ = [s for s in statements if "ledger_facts" in s[0]]
            if conn.dialect.name == "sqlite":
                plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params).all()
            else:  # (a small table: seq scans off, or the planner rightly takes one)
                conn.exec_driver_sql("SET enable_seqscan = off")
                plan = conn.exec_driver_sql(f"EXPLAIN {statement}", params).all()
    finally:
        engine.dispose()
    return {refs[ident] for ident in found}, plan


def test_0013_indexes_the_disclosures_and_rectifications_an_as_of_export_is_checked_by(
    ledger_url: str, tmp_path: Path
) -> None:
    """After an identified export made as of a time, every `recipients notifications` and
    `audit check` reads each transfer disclosure and rectification from event 0: off the
    partial index of 0013, not a scan of the whole fact index. A ledger recorded before
    0013 gets the index of the facts it holds, and the same answer."""
    from tests.cli_helpers import import_facts
    from tests.examples import line, registered

    day = 60 * 24
    acquirer = "Northwind Retail Group"
    assert run(ledger_url, "db", "upgrade").exit_code == 0

    def disclosed(n: int, ref: str) -> dict[str, Any]:
        return line("transfer.disclosure", f"E/{n}", day, customer=ref, acquirer=acquirer)

    facts = [
        *(registered(f"C{n}", 0) for n in range(1, 5)),
        line("transfer.initiated", "t-1", 1, acquirer=acquirer),
        # Recorded before the export read the ledger: C1's dated after its time (the old
        # name given), C2's before it (the new one given)
        line("customer.updated", "C1-u", 20 * day, customer="C1", name="Twentieth"),
        line("customer.updated", "C2-u", 2 * day, customer="C2", name="Second"),
        line("consent.given", "C1-c", 3 * day, customer="C1"),
        disclosed(1, "C1"),
        disclosed(2, "C2"),
        disclosed(3, "C3"),
        # After it read the ledger: C3's (whatever its date), and C4's, never disclosed
        line("customer.updated", "C3-u", 3 * day, customer="C3", name="Third"),
        line("customer.updated", "C4-u", 3 * day, customer="C4", name="Fourth"),
        line("transfer.disclosure", "F/1", day, customer="C4", acquirer=acquirer),
    ]
    import_facts(ledger_url, facts, tmp_path / "feed.jsonl")
    downgrade_to(ledger_url, "0012")  # as a version before 0013 left it
    assert _DISCLOSURES_RECTIFICATIONS not in _facts_indexes(ledger_url)
    before, _ = _rectified_after_disclosing(ledger_url, "E/3")
    assert before == {"C1", "C3"}

    assert run_json(ledger_url, "db", "upgrade")["to"] == SCHEMA_HEAD
    assert _facts_indexes(ledger_url)[_DISCLOSURES_RECTIFICATIONS] == ["notification_id"]
    after, plan = _rectified_after_disclosing(ledger_url, "E/3")
    assert after == before
    # Both reads of the fact index off it: the disclosures and rectifications, and the
    # customers rectified (only their disclosures are read)
    text = "\n".join(str(row[-1]) for row in plan)
    assert text.count(_DISCLOSURES_RECTIFICATIONS) == 2, text
    scans = ("SCAN ledger_facts", "SCAN rectifying", "Seq Scan")  # (SQLite's, PostgreSQL's)
    assert not any(scan in text for scan in scans), text
    assert "ix_ledger_facts_notification_id" not in text, text
