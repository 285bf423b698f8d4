"""Erasure by crypto-shredding (SPEC §4), through the CLI, on SQLite and PostgreSQL.

Before: the details show. After `customer erase`: no command shows them, the database's raw
bytes hold neither them nor the destroyed key, and the consent history, orders and trail
remain and still verify. New consents and detail updates are refused, withdrawals accepted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from ledger.config import open_ledger
from ledger.domainmodel import customer_id
from ledger.persistence import tables
from ledger.persistence.database import normalise_url
from ledger.persistence.seals import verify_ledger
from tests.cli_helpers import run, run_json
from tests.personal import (
    feed_values,
    found_in,
    raw_bytes_once_pruned,
    raw_database_bytes,
    table_bytes,
)


def _prepare(url: str, feed: Path) -> None:
    assert run(url, "db", "upgrade").exit_code == 0
    assert run_json(url, "import", str(feed))["accepted"] == 26


def _wrapped_key(url: str, ref: str) -> bytes | None:
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            value = conn.execute(
                sa.select(tables.data_keys.c.wrapped_key).where(
                    tables.data_keys.c.customer_id == customer_id(ref)
                )
            ).scalar()
    finally:
        engine.dispose()
    return bytes(value) if value is not None else None


def _everything_shown(url: str, ref: str, tmp_path: Path) -> str:
    """What every reading command says about the customer (and the ledger), as one text."""
    pack = tmp_path / f"pack-{ref}.json"
    outputs = [
        run(url, "customer", "show", ref).stdout,
        run(url, "customer", "show", ref, "--json").stdout,
        run(url, "customer", "trail", ref, "--json").stdout,
        run(url, "consent", "show", ref, "--json").stdout,
        run(url, "audit", "check", "--json").stdout,
        run(url, "recipients", "notifications", "--all", "--json").stdout,
    ]
    assert run(url, "customer", "access-export", ref, "--out", str(pack)).exit_code == 0
    outputs += [pack.read_text(), Path(f"{pack}.md").read_text()]
    return "\n".join(outputs)


def test_erasure_hides_the_details_and_keeps_the_history(
    ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    _prepare(ledger_url, feed_small)
    ada = feed_values(feed_small, {"C100"})
    assert {"Ada Lovelace", "ada@example.org", "12 Analytical Row"} <= ada
    before = run_json(ledger_url, "customer", "show", "C100")
    assert before["details"]["name"] == "Ada Lovelace" and before["erased"] is False
    assert found_in(_everything_shown(ledger_url, "C100", tmp_path).encode(), ada) == sorted(ada)
    trail = run_json(ledger_url, "customer", "trail", "C100")
    consents = run_json(ledger_url, "consent", "show", "C100")
    history = orjson.loads((tmp_path / "pack-C100.json").read_bytes())["consent_history"]

    erased = run_json(ledger_url, "customer", "erase", "C100")
    assert erased["erased"] is True

    after = run_json(ledger_url, "customer", "show", "C100")
    assert after["details"] is None and after["erased"] is True
    assert after["consents"] == before["consents"] and after["orders"] == before["orders"]
    assert run_json(ledger_url, "customer", "trail", "C100") == trail
    assert run_json(ledger_url, "consent", "show", "C100") == consents
    shown = _everything_shown(ledger_url, "C100", tmp_path)
    assert found_in(shown.encode(), ada) == []
    pack = orjson.loads((tmp_path / "pack-C100.json").read_bytes())
    assert pack["personal_data"] is None and pack["erased"] is True
    assert pack["consent_history"] == history
    assert pack["disclosures"] == trail["disclosures"]
    assert "ERASED" in run(ledger_url, "customer", "show", "C100").stdout

    app = open_ledger(ledger_url)
    try:
        assert verify_ledger(app).ok
    finally:
        app.database.dispose()


def _erase_then_put_the_key_back(url: str, ref: str) -> None:
    """Erase customer `ref`, then put their wrapped key back, as a restored backup would."""
    wrapped = _wrapped_key(url, ref)
    assert wrapped is not None
    assert run_json(url, "customer", "erase", ref)["recorded"] is True
    engine = sa.create_engine(normalise_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.update(tables.data_keys)
                .where(tables.data_keys.c.customer_id == customer_id(ref))
                .values(wrapped_key=wrapped, destroyed_at=None)
            )
    finally:
        engine.dispose()


def test_a_key_put_back_after_the_erasure_is_destroyed_by_erasing_again(
    ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    """An erased customer's key whole again (put back from a backup, or never destroyed by
    the first version's feed erasures): verify names it, and `customer erase` destroys it,
    recording nothing. Before, it recorded nothing, destroyed nothing and yet said
    "their personal data is gone", while customer show still showed it."""
    _prepare(ledger_url, feed_small)
    _erase_then_put_the_key_back(ledger_url, "C100")
    problems = run_json(ledger_url, "verify", code=4)["problems"]
    assert [(p["kind"], "'C100'" in p["message"]) for p in problems] == [("key_altered", True)]
    # Meanwhile no command opens the erased customer's data with that key (SPEC §4).
    shown = run_json(ledger_url, "customer", "show", "C100")
    assert (shown["erased"], shown["details"]) == (True, None)
    pack = tmp_path / "pack.json"
    assert run(ledger_url, "customer", "access-export", "C100", "--out", str(pack)).exit_code == 0
    assert found_in(pack.read_bytes(), feed_values(feed_small, {"C100"})) == []

    again = run_json(ledger_url, "customer", "erase", "C100")
    assert (again["recorded"], again["shredded"]) == (False, True)
    assert _wrapped_key(ledger_url, "C100") is None
    assert run_json(ledger_url, "customer", "show", "C100")["details"] is None
    assert run_json(ledger_url, "verify")["ok"] is True


def test_after_erasure_updates_are_refused_consents_and_withdrawals_recorded(
    ledger_url: str, feed_small: Path
) -> None:
    _prepare(ledger_url, feed_small)
    run_json(ledger_url, "customer", "erase", "C100")
    give = run(
        ledger_url,
        "consent",
        "give",
        "C100",
        "marketing",
        "post",
        "--method",
        "phone",
        "--policy-version",
        "2024-01",
    )
    # SPEC §2 makes only a details update of an erased customer invalid: a consent is a fact
    # like any other (no personal data), recorded for the auditor to see.
    assert give.exit_code == 0, give.stderr
    update = run(
        ledger_url,
        "record",
        '{"type": "customer.updated", "customer": "C100", "email": "new.ada@example.net"}',
    )
    assert update.exit_code == 1
    assert "new.ada@example.net" not in update.stdout + update.stderr
    # An objection to marketing (a withdrawal) is still recorded.
    withdrawn = run_json(
        ledger_url,
        "consent",
        "withdraw",
        "C100",
        "affiliate_sharing",
        "post",
        "--method",
        "letter",
    )
    assert withdrawn["recorded"] is True
    rows = {
        (r["purpose"], r["channel"]): r["status"]
        for r in run_json(ledger_url, "consent", "show", "C100")["consents"]
    }
    assert rows[("affiliate_sharing", "post")] == "withdrawn"


def test_the_raw_database_never_holds_personal_data_nor_an_erased_key(
    ledger_url: str, feed_small: Path
) -> None:
    _prepare(ledger_url, feed_small)
    # The read models are in the database too: fill them, so their rows are searched.
    assert run(ledger_url, "projections", "rebuild").exit_code == 0
    everyone = feed_values(feed_small)
    assert len(everyone) >= 8
    raw = raw_database_bytes(ledger_url)
    assert found_in(raw, everyone) == []
    assert found_in(table_bytes(ledger_url), everyone) == []
    key = _wrapped_key(ledger_url, "C100")
    assert key is not None and key in raw  # the search below can find what is there

    run_json(ledger_url, "customer", "erase", "C100")
    assert run(ledger_url, "projections", "rebuild").exit_code == 0

    assert _wrapped_key(ledger_url, "C100") is None
    raw = raw_bytes_once_pruned(ledger_url, key)
    assert key not in raw
    assert found_in(raw, everyone) == []
    assert found_in(table_bytes(ledger_url), everyone) == []


def test_an_erasure_after_a_rotation_leaves_no_copy_of_the_key(
    ledger_url: str, feed_small: Path
) -> None:
    """PostgreSQL's VACUUM prunes a dead row version but leaves its bytes in the page's free
    space: after a rotation (every key row rewritten) an erased customer's data key, wrapped
    under the current master key, stayed readable in the table's file (privacy review)."""
    _prepare(ledger_url, feed_small)
    for ref in ("C102", "C103"):  # more live keys in the table's page
        assert run_json(ledger_url, "record", _registration(ref))["recorded"] is True
    before = {ref: _wrapped_key(ledger_url, ref) for ref in ("C100", "C102", "C103")}
    assert run(ledger_url, "keys", "rotate").exit_code == 0
    keys = {ref: _wrapped_key(ledger_url, ref) for ref in ("C100", "C102", "C103")}
    assert run_json(ledger_url, "customer", "erase", "C102")["shredded"] is True
    raw = raw_database_bytes(ledger_url)
    assert keys["C102"] not in raw
    assert all(key not in raw for key in before.values())  # nor any under the old master
    assert keys["C100"] in raw and keys["C103"] in raw  # the search finds what is there


def _registration(ref: str) -> str:
    return orjson.dumps(
        {
            "id": f"reg-{ref}",
            "type": "customer.registered",
            "at": "2025-03-01T09:00:00Z",
            "customer": ref,
            "name": f"Test Person {ref}",
            "email": f"{ref.lower()}@example.org",
            "phone": "+44 7700 900002",
            "address": {
                "line1": "1 Test Street",
                "city": "Leeds",
                "postcode": "LS1 1AA",
                "country": "GB",
            },
        }
    ).decode()


def test_an_erasure_in_the_feed_destroys_the_key_like_the_command(
    ledger_url: str, feed_small: Path
) -> None:
    _prepare(ledger_url, feed_small)  # the feed erases C101 (s-0025)
    assert _wrapped_key(ledger_url, "C101") is None
    shown: Any = run_json(ledger_url, "customer", "show", "C101")
    assert shown["details"] is None and shown["erased"] is True
    assert found_in(raw_database_bytes(ledger_url), feed_values(feed_small, {"C101"})) == []


def test_a_consent_reported_after_the_erasure_but_dated_before_it_clears_a_violation(
    ledger: Any,
) -> None:
    """A late fact dated earlier is judged in business time (SPEC §3), also for an erased
    customer: the late consent makes the earlier contact lawful."""
    registered = {
        "id": "r1",
        "type": "customer.registered",
        "customer": "C1",
        "name": "Ann A",
        "email": "ann@example.org",
        "address": {"line1": "1 St", "city": "X", "postcode": "AB1", "country": "GB"},
        "at": "2025-01-01T00:00:00Z",
    }
    contact = {"id": "mc", "type": "marketing.contact", "customer": "C1", "channel": "post"}
    erased = {"id": "e1", "type": "subject.erased", "customer": "C1"}
    consent = {"id": "g0", "type": "consent.given", "customer": "C1", "purpose": "marketing"}
    ledger.import_lines(
        orjson.dumps(fact)
        for fact in (
            registered,
            contact | {"campaign": "x", "at": "2025-06-02T00:00:00Z"},
            erased | {"at": "2025-07-01T00:00:00Z"},
        )
    )
    assert [(v.rule, v.fact_id) for v in ledger.audit()] == [("marketing_without_consent", "mc")]
    late = consent | {"channel": "post", "method": "web", "policy_version": "v1"}
    summary = ledger.import_lines([orjson.dumps(late | {"at": "2025-06-01T00:00:00Z"})])
    assert (summary.accepted, summary.rejected) == (1, 0)
    assert ledger.audit() == []


def test_a_reader_holding_back_the_shredding_is_said_and_keys_shred_finishes_it(
    ledger_url: str, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session reading a snapshot from before the erasure (an export, a backup) keeps the
    old key's bytes in the database (SQLite: the checkpoint cannot finish; PostgreSQL:
    VACUUM cannot prune the old row version). The erasure still records and destroys the
    key, but says the bytes remain instead of "gone"; `keys shred` refuses (exit 1) while
    the reader lasts and removes them once it ends."""
    from ledger.persistence import keys

    monkeypatch.setattr(keys, "_SHRED_WAIT", 0.2)
    _prepare(ledger_url, feed_small)
    old_key = _wrapped_key(ledger_url, "C100")
    assert old_key is not None
    engine = sa.create_engine(normalise_url(ledger_url))
    try:
        with engine.connect() as reader:
            if engine.dialect.name == "postgresql":
                reader.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            else:  # pysqlite would begin no transaction for a SELECT
                reader.connection.dbapi_connection.isolation_level = None  # type: ignore[union-attr]
                reader.exec_driver_sql("BEGIN")
            assert reader.exec_driver_sql("SELECT count(*) FROM ledger_data_keys").scalar()

            erased = run(ledger_url, "customer", "erase", "C100")
            assert erased.exit_code == 0, erased.stderr
            assert "their data key is destroyed" in erased.stdout
            assert "still holds the old key's bytes" in erased.stdout
            assert "gone" not in erased.stdout
            assert "old key bytes remain in the database" in erased.stderr  # for --json too
            assert _wrapped_key(ledger_url, "C100") is None  # destroyed in the ledger
            held = run(ledger_url, "keys", "shred", "--json")
            assert (held.exit_code, held.stdout) == (1, "")
            assert "run 'consent-ledger keys shred' again" in held.stderr
        # The reader's transaction ends with its connection.
        assert run_json(ledger_url, "keys", "shred") == {"shredded": True}
        assert old_key not in raw_bytes_once_pruned(ledger_url, old_key)
        again = run_json(ledger_url, "customer", "erase", "C100")
        assert (again["recorded"], again["shredded"]) == (False, True)
    finally:
        engine.dispose()


def test_a_lock_on_the_key_table_holds_back_the_shredding_not_the_erasure(
    ledger_url: str, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's VACUUM waited for its lock without end: a session holding the key table
    held a committed erasure's command (149 s, then a wrong cause). It waits `_SHRED_WAIT`."""
    from ledger.persistence import keys

    if not ledger_url.startswith("postgresql"):
        pytest.skip("SQLite's clean-up is a checkpoint: a reader holds it back (test above)")
    monkeypatch.setattr(keys, "_SHRED_WAIT", 0.5)
    _prepare(ledger_url, feed_small)
    engine = sa.create_engine(normalise_url(ledger_url))
    holder = engine.connect()
    try:
        # (The server ends the holder after 20 s, so that a wait without end fails, not hangs.)
        holder.exec_driver_sql("SET idle_in_transaction_session_timeout = '20s'")
        holder.exec_driver_sql("BEGIN")
        holder.exec_driver_sql("LOCK TABLE ledger_data_keys IN SHARE UPDATE EXCLUSIVE MODE")
        started = time.monotonic()
        erased = run(ledger_url, "customer", "erase", "C100", "--json")
        waited = time.monotonic() - started
        assert erased.exit_code == 0, erased.stderr
        assert orjson.loads(erased.stdout)["shredded"] is False
        assert "holding the key table" in erased.stderr
        assert waited < 15  # not the holder's end
    finally:
        with contextlib.suppress(sa.exc.DBAPIError):
            holder.close()
        engine.dispose()
    assert run_json(ledger_url, "keys", "shred") == {"shredded": True}


def test_a_clean_up_failing_after_the_commit_does_not_fail_the_erasure(
    ledger_url: str, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk failed SQLite's checkpoint after the erasure committed: the command said
    'the database failed', exit 1, though the customer was erased (a retry: 'not recorded')."""
    from ledger.errors import DatabaseUnavailableError
    from ledger.persistence.keys import KeyStore

    def full_disk(self: KeyStore) -> bool:
        raise DatabaseUnavailableError("the database failed: database or disk is full")

    _prepare(ledger_url, feed_small)
    monkeypatch.setattr(KeyStore, "_shred", full_disk)
    erased = run(ledger_url, "customer", "erase", "C100", "--json")
    assert erased.exit_code == 0, erased.stderr
    document = orjson.loads(erased.stdout)
    assert (document["recorded"], document["shredded"]) == (True, False)
    assert "run 'consent-ledger keys shred' once that ends" in erased.stderr
    monkeypatch.undo()
    assert run_json(ledger_url, "keys", "shred") == {"shredded": True}


@pytest.fixture
def interruptible() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt in this process, as in a terminal: a test run started
    in the background (`cmd &` in a script, as CI starts its two runs) ignores SIGINT, and
    Python keeps an ignored SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _SignalAfterCommit:
    """A write's driver connection that sends this process SIGINT as its commit returns
    (after `then`, if given)."""

    def __init__(self, driver: Any, then: Callable[[], None] | None = None) -> None:
        self._driver = driver
        self._then = then

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    def commit(self) -> None:
        self._driver.commit()
        if self._then is not None:
            self._then()
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.usefixtures("interruptible")
def test_a_signal_just_after_the_commit_waits_for_what_completes_it(
    ledger: Any, ledger_url: str, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or SIGTERM) landing the moment an erasure's write commits skipped the clean-up
    of the old key bytes that runs after the commit (and the command's count of its commits):
    the bytes stayed, and nothing said so. The signal now waits for both, then interrupts."""
    from ledger.persistence.database import Database
    from ledger.persistence.keys import KeyStore

    def once() -> None:
        monkeypatch.setattr(Database, "_write_driver", unwrapped)

    unwrapped = Database._write_driver
    cleaned: list[bool] = []
    shred = KeyStore.shred
    ledger.import_lines(feed_small.read_bytes().splitlines())
    monkeypatch.setattr(KeyStore, "shred", lambda keys: cleaned.append(shred(keys)) or True)
    monkeypatch.setattr(
        Database, "_write_driver", lambda database: _SignalAfterCommit(unwrapped(database), once)
    )
    commits = Database.commits
    with pytest.raises(KeyboardInterrupt):
        ledger.erase("C100")
    # Then the erasure is committed, its clean-up ran, and the commit was counted
    assert _wrapped_key(ledger_url, "C100") is None
    assert cleaned == [True]
    assert Database.commits == commits + 1


@pytest.mark.usefixtures("interruptible")
def test_a_signal_as_a_write_commits_waits_though_the_ledger_has_started_threads(
    ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold blocks Ctrl-C and SIGTERM in the thread that commits; the kernel gives a
    signal sent to the process to any thread that does not block it. The thread of the
    lock-wait notice (which every CLI write starts: `on_lock_wait`) was such a thread until
    it had ended, well into the write: the signal was handled at once, in the hold, and
    what completes the commit was skipped (in many of these writes)."""
    import functools
    import time

    from ledger.persistence.database import Database

    unwrapped = Database._write_driver
    monkeypatch.setattr(Database, "_write_driver", lambda db: _SignalAfterCommit(unwrapped(db)))
    database = ledger.database
    database.on_lock_wait = lambda: None  # as the CLI's commands have it (`say_waiting`)
    completed: list[int] = []

    def clean_up(attempt: int) -> None:  # (as long as an erasure's checkpoint takes)
        time.sleep(0.002)
        completed.append(attempt)

    for attempt in range(40):
        idle, database._idle = database._idle, None  # (each write's connection wrapped)
        if idle is not None:
            idle[1]._driver.close()
        with pytest.raises(KeyboardInterrupt), database.writing() as tx:
            tx.execute_on_driver(
                "INSERT INTO ledger_meta (name, value) VALUES (?, ?)", (f"probe{attempt}", "")
            )
            tx.after_commit.append(functools.partial(clean_up, attempt))
    assert completed == list(range(40))


def test_an_erased_customers_key_whole_again_is_not_opened_by_recording_either(
    ledger_url: str, feed_small: Path
) -> None:
    """With an erased customer's key whole again (put back from a backup, or left whole by
    the first version's feed erasures), recording answered as if the customer still had
    data: a marketing consent opened their email history and lifted the Art. 21 suppression
    of their email (which outlives erasure), and a retried fact id was compared with their
    sealed details, so `record` told a right guess of an erased email (a duplicate, exit 0)
    from a wrong one (exit 1). Both now answer as with the key destroyed."""
    _prepare(ledger_url, feed_small)
    _erase_then_put_the_key_back(ledger_url, "C100")
    suppressed = run_json(ledger_url, "suppression", "check", "ada@example.org")
    assert (suppressed["suppressed"], suppressed["since"]) == (True, None)
    give = ("consent", "give", "C100", "marketing", "email", "--method", "phone")
    assert run(ledger_url, *give, "--policy-version", "2024-01").exit_code == 0
    # The objection stands: the fresh consent was judged without opening the erased email.
    assert run_json(ledger_url, "suppression", "check", "ada@example.org") == suppressed
    # A retry of the registration's id: the same answer whatever details it guesses.
    registration = orjson.loads(feed_small.read_text().splitlines()[0])
    answers = [
        run(ledger_url, "record", orjson.dumps({**registration, "email": email}).decode())
        for email in ("ada@example.org", "someone.else@example.org")
    ]
    assert [a.exit_code for a in answers] == [0, 0]
    assert run_json(ledger_url, "customer", "erase", "C100")["shredded"] is True
    assert run_json(ledger_url, "verify")["ok"] is True
