"""`audit report` states the ledger's integrity first, and does not take the violations read
model on trust: `verify` does not cover the read models, which anyone who can write to the
database can change (a reviewer emptied a rule's violations from the report so, with
`verify` still passing)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from ledger.config import open_ledger
from tests.cli_helpers import error_line, run, run_json
from tests.integration.test_tamper import tamper


def _recorded(url: str, feed: Path) -> list[dict[str, Any]]:
    """The small feed recorded; its violations as `audit check` gives them."""
    assert run(url, "db", "upgrade").exit_code == 0
    assert run_json(url, "import", str(feed))["accepted"] == 26
    violations: list[dict[str, Any]] = run_json(url, "audit", "check")["violations"]
    assert len({v["rule"] for v in violations}) >= 3  # (several rules broken: a real test)
    return violations


def _report(url: str, out: Path, code: int) -> tuple[dict[str, Any], str]:
    result = run(url, "audit", "report", "--out", str(out), "--json")
    assert result.exit_code == code, (result.stdout, result.stderr)
    return orjson.loads(result.stdout), out.read_text(encoding="utf-8")


def _table_of(url: str, model: str, table: str) -> str:
    app = open_ledger(url)
    try:
        with app.database.engine.connect() as conn:
            slot = conn.execute(
                sa.text("SELECT slot FROM rm_tracking WHERE name = :m"), {"m": model}
            ).scalar_one()
    finally:
        app.database.dispose()
    return f"{table}_{slot}"


def _one_model_differs(url: str, model: str, rows: int) -> None:
    """`verify --read-models` fails (exit 4) on one problem: `model` with `rows` rows differing."""
    (problem,) = run_json(url, "verify", "--read-models", code=4)["problems"]
    assert problem["kind"] == "read_model_altered"
    assert f"the read model {model} disagrees with the events" in problem["message"]
    assert f"({rows} rows differ)" in problem["message"]


def test_a_report_states_the_verified_head_and_its_signed_checkpoint(
    ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    violations = _recorded(ledger_url, feed_small)
    verified = run_json(ledger_url, "verify")
    checkpoint = run_json(ledger_url, "checkpoint")
    document, page = _report(ledger_url, tmp_path / "report.html", 0)
    assert document["verified"] is True and document["read_models_agree"] is True
    assert document["violations"] == len(violations)
    assert verified["head"] == checkpoint["root_hash"]  # (nothing recorded in between)
    assert checkpoint["root_hash"] in page and checkpoint["signature"] in page
    assert all(v["fact_id"] in page for v in violations)


def test_violations_removed_from_the_read_model_are_judged_from_the_events_and_reported(
    ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    violations = _recorded(ledger_url, feed_small)
    rule = violations[0]["rule"]
    removed = [v for v in violations if v["rule"] == rule]
    app = open_ledger(ledger_url)
    try:
        table = _table_of(ledger_url, "violations", "rm_violations")
        tamper(app, (f"DELETE FROM {table} WHERE rule = :rule", {"rule": rule}))
    finally:
        app.database.dispose()
    # What the read model says now (`audit check` reads it), while the ledger verifies:
    assert len(run_json(ledger_url, "audit", "check")["violations"]) == len(violations) - len(
        removed
    )
    assert run_json(ledger_url, "verify")["ok"] is True

    result = run(ledger_url, "audit", "report", "--out", str(tmp_path / "r.html"), "--json")
    assert result.exit_code == 4, result.stderr
    document = orjson.loads(result.stdout)
    assert document["verified"] is True and document["read_models_agree"] is False
    assert document["violations"] == len(violations)  # judged from the events
    assert f"disagrees with the events on {len(removed)} violation" in error_line(result)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert all(v["fact_id"] in page for v in removed)

    # Rebuilt, the read model agrees again.
    assert run(ledger_url, "projections", "rebuild", "violations").exit_code == 0
    document, _ = _report(ledger_url, tmp_path / "again.html", 0)
    assert document["read_models_agree"] is True


def test_a_ledger_that_fails_verification_gets_a_report_that_says_so(
    ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    _recorded(ledger_url, feed_small)
    app = open_ledger(ledger_url)
    try:
        with app.database.engine.connect() as conn:
            number, state = conn.execute(
                sa.text(
                    "SELECT notification_id, state FROM ledger_events "
                    "WHERE topic LIKE '%OrderDispatched' ORDER BY notification_id LIMIT 1"
                )
            ).one()
        altered = orjson.loads(bytes(state))
        altered["recipient"] = "Somebody Else Ltd"
        tamper(
            app,
            (
                "UPDATE ledger_events SET state = :state WHERE notification_id = :n",
                {"state": orjson.dumps(altered), "n": number},
            ),
        )
    finally:
        app.database.dispose()
    assert run_json(ledger_url, "verify", code=4)["ok"] is False

    result = run(ledger_url, "audit", "report", "--out", str(tmp_path / "r.html"), "--json")
    assert result.exit_code == 4, result.stderr
    assert orjson.loads(result.stdout)["verified"] is False
    assert "failed verification" in error_line(result)
    assert "NOT VERIFIED" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_verify_read_models_names_a_violations_read_model_altered(
    ledger_url: str, feed_small: Path
) -> None:
    violations = _recorded(ledger_url, feed_small)
    document = run_json(ledger_url, "verify", "--read-models")
    assert document["ok"] is True
    plain = run(ledger_url, "verify", "--read-models")
    assert "every read model agrees with the events" in plain.stdout
    app = open_ledger(ledger_url)
    try:
        table = _table_of(ledger_url, "violations", "rm_violations")
        once = [
            v for v in violations if [w["fact_id"] for w in violations].count(v["fact_id"]) == 1
        ]
        kept = once[0]
        tamper(
            app,
            (f"DELETE FROM {table} WHERE fact_id = :f", {"f": kept["fact_id"]}),
            (  # and one made up, of a fact that broke no rule
                f"INSERT INTO {table} (stream_id, customer, rule, fact_id, at) "
                f"SELECT stream_id, customer, 'after_erasure', 'made-up', at FROM {table} "
                "WHERE fact_id = :g LIMIT 1",
                {"g": violations[-1]["fact_id"]},
            ),
        )
    finally:
        app.database.dispose()
    assert run_json(ledger_url, "verify")["ok"] is True  # (not covered without the option)
    _one_model_differs(ledger_url, "violations", 2)


def test_a_write_landing_while_the_report_reads_is_no_disagreement(
    ledger_url: str, feed_small: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    """A fact recorded between the read models' catch-up and the snapshot read after it (a
    concurrent import) is past the violations read model's position: neither side of the
    comparison may count it, else a legitimate write reads as a read model altered (exit 4)."""
    from projections.runner import ReadModels

    _recorded(ledger_url, feed_small)
    now_update = {"type": "customer.updated", "customer": "C100", "phone": "+44 7700 900001"}
    assert run(ledger_url, "record", orjson.dumps({"id": "upd-now", **now_update}).decode())
    # C100 now has a rectification whose notifications are due in the future (a notice
    # stream of the read model); the read models are behind by that one fact.
    catch_up, landed = ReadModels.catch_up, []

    def catch_up_then_a_write(self: Any, *args: Any, **kwargs: Any) -> Any:
        done = catch_up(self, *args, **kwargs)
        if not landed:  # a concurrent writer: a rectification recorded late, long overdue
            landed.append(True)
            late = {**now_update, "id": "upd-late", "at": "2025-09-01T00:00:00Z"}
            other = open_ledger(ledger_url)
            try:
                other.record_fact(late)
            finally:
                other.database.dispose()
        return done

    monkeypatch.setattr(ReadModels, "catch_up", catch_up_then_a_write)
    document, _ = _report(ledger_url, tmp_path / "r.html", 0)
    assert landed and document["read_models_agree"] is True


def test_verify_read_models_of_a_ledger_that_fails_verify_names_its_problems(
    ledger_url: str, feed_small: Path
) -> None:
    """`--read-models` adds a check: on a ledger that fails `verify`, it still names what
    `verify` found (one JSON document, exit 4), not a crash of the read models' fold."""
    _recorded(ledger_url, feed_small)
    app = open_ledger(ledger_url)
    try:
        tamper(
            app,
            ("DELETE FROM ledger_events WHERE notification_id = 5", {}),
            (
                "UPDATE ledger_events SET topic = 'ledger.domainmodel:Customer.Nope' "
                "WHERE notification_id = 7",
                {},
            ),
        )
    finally:
        app.database.dispose()
    plain = run_json(ledger_url, "verify", code=4)
    kinds = {p["kind"] for p in plain["problems"]}
    assert "event_removed" in kinds
    document = run_json(ledger_url, "verify", "--read-models", code=4)
    assert document["ok"] is False
    assert kinds <= {p["kind"] for p in document["problems"]}
    text = run(ledger_url, "verify", "--read-models")
    assert text.exit_code == 4 and "event 5 is missing" in text.stdout


def test_a_ledger_with_an_event_deleted_gets_a_report_from_its_read_models_saying_so(
    ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    """An event removed: its stream cannot be folded again, so the report's violations are
    the read model's, not compared, and the report says so under NOT VERIFIED."""
    violations = _recorded(ledger_url, feed_small)
    assert run(ledger_url, "projections", "rebuild").exit_code == 0  # (every model caught up)
    app = open_ledger(ledger_url)
    try:
        tamper(app, ("DELETE FROM ledger_events WHERE notification_id = :n", {"n": 7}))
    finally:
        app.database.dispose()
    result = run(ledger_url, "audit", "report", "--out", str(tmp_path / "r.html"), "--json")
    assert result.exit_code == 4, result.stderr
    document = orjson.loads(result.stdout)
    assert document["verified"] is False and document["read_models_agree"] is None
    assert document["violations"] == len(violations)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "NOT VERIFIED" in page and "event_removed" in page
    assert "judged from the read models; the read models were not compared" in page


def test_every_read_model_is_held_against_the_events(
    ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    """A reviewer deleted a recipient from the registry's totals: the report left it out,
    said "Verified", and nothing else noticed. Every model is now rebuilt from the events
    and compared row for row."""
    _recorded(ledger_url, feed_small)
    _, page = _report(ledger_url, tmp_path / "before.html", 0)
    assert "was rebuilt from the events and agrees with them row for row" in page
    registry = _table_of(ledger_url, "recipient_registry", "rm_recipients")
    trail = _table_of(ledger_url, "disclosure_trail", "rm_disclosure_trail")
    consents = _table_of(ledger_url, "current_consent", "rm_current_consent")
    app = open_ledger(ledger_url)
    try:
        tamper(
            app,
            (f"DELETE FROM {registry} WHERE recipient = 'Offspring'", {}),
            (f"UPDATE {trail} SET recipient = 'Somebody' WHERE recipient = 'DPD'", {}),
            # A row copied: the same rows as a set, one more as a multiset.
            (f"INSERT INTO {consents} SELECT * FROM {consents} LIMIT 1", {}),
        )
    finally:
        app.database.dispose()
    assert "Offspring" not in {
        r["recipient"] for r in run_json(ledger_url, "recipients", "list")["recipients"]
    }  # (what the read model says, as altered)
    problems = run_json(ledger_url, "verify", "--read-models", code=4)["problems"]
    named = sorted(p["message"].split(" disagrees")[0] for p in problems)
    assert named == [
        "the read model current_consent",
        "the read model disclosure_trail",
        "the read model recipient_registry",
    ]
    assert {p["kind"] for p in problems} == {"read_model_altered"}

    result = run(ledger_url, "audit", "report", "--out", str(tmp_path / "r.html"), "--json")
    assert result.exit_code == 4, result.stderr
    assert "read models disagree with the events" in error_line(result)
    assert "current_consent, disclosure_trail, recipient_registry" in error_line(result)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Read models altered:" in page and "recipient_registry (" in page

    # Trusted, at the auditor's word: not compared, and the report says so.
    trusted = run(
        ledger_url, "audit", "report", "--out", str(tmp_path / "t.html"), "--trust-read-models"
    )
    assert trusted.exit_code == 0, trusted.stderr
    assert "which were not compared with the events" in (tmp_path / "t.html").read_text(
        encoding="utf-8"
    )

    # Nothing was changed by the checks; a rebuild mends the models.
    assert run(ledger_url, "projections", "rebuild").exit_code == 0
    assert run_json(ledger_url, "verify", "--read-models")["ok"] is True


def _behind_and_tampered(url: str, feed: Path, *statements: tuple[str, dict[str, Any]]) -> None:
    """The small feed recorded and its read models built, one fact more recorded (the models
    behind it by one), then `statements` run as an intruder would."""
    _recorded(url, feed)
    fact = {"id": "upd-x", "type": "customer.updated", "customer": "C100", "phone": "+44 1"}
    assert run(url, "record", orjson.dumps(fact).decode()).exit_code == 0
    app = open_ledger(url)
    try:
        tamper(app, *statements)
    finally:
        app.database.dispose()


@pytest.mark.parametrize("behind", [True, False], ids=["behind", "at-the-head"])
def test_verify_read_models_names_a_tracking_row_the_ledger_never_wrote(
    ledger_url: str, feed_small: Path, behind: bool
) -> None:
    """A read model's tracking row pointing at no slot is an altered read model (exit 4,
    read_model_altered), not "unexpected KeyError" (exit 1), whether the model is behind
    the head (a catch-up would fail on it) or at it (only read). (A position beyond the
    head `verify` names itself: log_truncated.)"""
    slot_c = ("UPDATE rm_tracking SET slot = 'c' WHERE name = 'disclosure_trail'", {})
    if behind:
        _behind_and_tampered(ledger_url, feed_small, slot_c)
    else:
        _recorded(ledger_url, feed_small)
        app = open_ledger(ledger_url)
        try:
            app.read_models.catch_up()
            tamper(app, slot_c)
        finally:
            app.database.dispose()
    document = run_json(ledger_url, "verify", "--read-models", code=4)
    named = {p["message"].split()[3] for p in document["problems"]}
    assert {p["kind"] for p in document["problems"]} == {"read_model_altered"}
    assert named == {"disclosure_trail"}


@pytest.mark.parametrize("workers", [False, True], ids=["one-process", "workers"])
def test_read_models_that_agree_are_compared_without_writing_their_spare_slots(
    ledger: Any, feed_small: Path, monkeypatch: pytest.MonkeyPatch, workers: bool
) -> None:
    """The check digests the rows a pass from event zero would write (`DigestWriter`) as it
    digests a stored table: models that agree with the events take that one pass, neither
    written into their spare slot nor counted row by row (at 1M facts the writing and the
    read back were a third of the check). If the two digests of agreeing rows differed
    (a row's values or columns digested otherwise), every model would take a second pass
    and the counting, and still agree: only this test would notice."""
    from projections import parallel, runner

    if workers and not ledger.database.is_sqlite:
        pytest.skip("worker processes fold SQLite passes only")
    monkeypatch.setattr(parallel, "MIN_EVENTS", 0 if workers else 10**12)
    monkeypatch.setattr(runner, "worker_count", lambda: 2)
    with open(feed_small, "rb") as handle:
        ledger.import_lines(handle)
    ledger.read_models.catch_up()
    # Rebuilt: the spare slots now hold the rows the models had, which the check's pass (in
    # a read transaction: it empties no table) must take as emptied, never read back.
    ledger.read_models.rebuild()
    passes: list[str] = []
    counted: list[str] = []
    real_pass, real_count = runner.ReadModels._pass, runner._rows_differing

    def one_pass(self: Any, conn: Any, targets: Any, *args: Any, **kwargs: Any) -> int:
        passes.append(type(kwargs.get("writer", runner.Writer)(conn, "a")).__name__)
        return real_pass(self, conn, targets, *args, **kwargs)

    def count(conn: Any, ours: sa.Table, theirs: sa.Table) -> int:
        counted.append(ours.name)
        return real_count(conn, ours, theirs)

    monkeypatch.setattr(runner.ReadModels, "_pass", one_pass)
    monkeypatch.setattr(runner, "_rows_differing", count)
    head, differing = ledger.read_models.check()
    assert head > 0 and differing == {}
    assert passes == ["DigestWriter"] and counted == []
    with ledger.read_models.snapshot() as (conn, slots):  # (every table's values digested)
        for name, model in ledger.read_models.models.items():
            for table in model.all_tables():
                query = sa.select(sa.func.count()).select_from(table[slots[name]])
                assert conn.execute(query).scalar_one() > 0, table.name


def test_a_row_copied_once_is_counted_as_one_row_differing(
    ledger_url: str, feed_small: Path
) -> None:
    """The count `verify --read-models` gives is of rows in one slot and not the other,
    with their repeats: a row copied once is one row more (not the copy and its original
    counted, and the original once more from the other side: '3 rows differ')."""
    _recorded(ledger_url, feed_small)
    assert run(ledger_url, "projections", "rebuild").exit_code == 0
    table = _table_of(ledger_url, "current_consent", "rm_current_consent")
    columns = "stream_id, customer, purpose, channel, status, since"
    app = open_ledger(ledger_url)
    try:
        tamper(app, (f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {table} LIMIT 1", {}))
    finally:
        app.database.dispose()
    _one_model_differs(ledger_url, "current_consent", 1)


_REGISTERED = {
    "id": "reg-mid",
    "type": "customer.registered",
    "at": "2025-04-01T09:00:00+00:00",
    "customer": "C102",
    "name": "Grace Hopper",
    "email": "grace@example.org",
    "phone": "+44 7700 900003",
    "address": {"line1": "1 Compiler Way", "city": "Leeds", "postcode": "LS1 1AA", "country": "GB"},
}


@pytest.mark.parametrize("altered", [False, True], ids=["agreeing", "a-row-copied"])
def test_a_write_and_a_catch_up_commit_while_the_check_is_in_its_pass(
    ledger_url: str, feed_small: Path, monkeypatch: pytest.MonkeyPatch, altered: bool
) -> None:
    """The read-model check reads in a snapshot, without the writer's lock: a fact recorded
    and the read models caught up by another connection while the check is paused in its
    pass from event zero both commit (on SQLite they waited for the whole check, up to the
    lock's wait, and then failed; on PostgreSQL the catch-up waited for the tracking rows the
    check held). The check still answers for the snapshot it read: a ledger that agrees
    agrees, and a row copied in a read model is still that model's one row differing."""
    from ledger.persistence import database
    from projections.base import DigestWriter

    _recorded(ledger_url, feed_small)
    app = open_ledger(ledger_url)
    try:
        if altered:
            app.read_models.catch_up()
            table = _table_of(ledger_url, "current_consent", "rm_current_consent")
            columns = "stream_id, customer, purpose, channel, status, since"
            copied = (  # (C100's: the write below is another's, whose catch-up leaves it)
                f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {table} "
                "WHERE customer = 'C100' LIMIT 1"
            )
            tamper(app, (copied, {}))
        # Not two minutes: a write that waits for the check gives up soon, and says so.
        monkeypatch.setattr(database, "WRITE_LOCK_WAIT", 3)
        landed: list[str] = []
        failed: list[BaseException] = []

        def write_elsewhere() -> None:
            other = open_ledger(ledger_url)
            try:
                other.record_fact(_REGISTERED)
                landed.append("recorded")
                other.read_models.catch_up()
                landed.append("caught up")
            except BaseException as error:  # (told to the test, which fails on it)
                failed.append(error)
            finally:
                other.database.dispose()

        insert = DigestWriter.insert

        def paused_in_the_pass(self: Any, *args: Any, **kwargs: Any) -> None:
            if not landed and not failed:  # the first rows the pass digests
                writer = threading.Thread(target=write_elsewhere)
                writer.start()
                writer.join(timeout=60)  # (a bound on a wait that fails the test, not a speed)
                if writer.is_alive():
                    failed.append(TimeoutError(f"waits for the check, done: {landed}"))
            insert(self, *args, **kwargs)

        monkeypatch.setattr(DigestWriter, "insert", paused_in_the_pass)
        before = app.read_models.status()[0].head
        head, differing = app.read_models.check()
        assert not failed, failed
        assert landed == ["recorded", "caught up"]
        assert differing == ({"current_consent": 1} if altered else {})
        # The head of the snapshot compared; a model that differs is counted afterwards,
        # under the writer's lock, at the head then (the write included).
        assert head == before + (1 if altered else 0)
        monkeypatch.setattr(DigestWriter, "insert", insert)
        assert app.read_models.check() == (before + 1, differing)
    finally:
        app.database.dispose()


def test_models_a_write_left_behind_are_each_checked_at_their_own_position(
    ledger_url: str, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fact recorded after the check's catch-up and before its snapshot, and one read
    model (violations) caught up to it meanwhile: in the snapshot the models stand at two
    positions. Each is held against a pass up to its own position (two digest passes, no
    rows counted), so a write is no disagreement, and a model behind is not judged by
    events it has not applied."""
    from projections import runner

    _recorded(ledger_url, feed_small)
    app = open_ledger(ledger_url)
    try:
        app.read_models.catch_up()  # (the check's own catch-up has nothing to do)
        caught_up = runner.ReadModels._catch_up_to_check

        def then_a_write(self: Any, names: Any) -> dict[str, int]:
            failed = caught_up(self, names)
            other = open_ledger(ledger_url)
            try:
                other.record_fact(_REGISTERED)
                other.read_models.catch_up(["violations"])
            finally:
                other.database.dispose()
            return failed

        passes: list[tuple[str, int]] = []
        counted: list[str] = []
        real_pass, real_count = runner.ReadModels._pass, runner._rows_differing

        def one_pass(self: Any, conn: Any, targets: Any, head: int, **kwargs: Any) -> int:
            if self is app.read_models:  # (not the other connection's catch-up)
                writer = kwargs.get("writer", runner.Writer)(conn, "a")
                passes.append((type(writer).__name__, head))
            return real_pass(self, conn, targets, head, **kwargs)

        def count(conn: Any, ours: sa.Table, theirs: sa.Table) -> int:
            counted.append(ours.name)
            return real_count(conn, ours, theirs)

        monkeypatch.setattr(runner.ReadModels, "_catch_up_to_check", then_a_write)
        monkeypatch.setattr(runner.ReadModels, "_pass", one_pass)
        monkeypatch.setattr(runner, "_rows_differing", count)
        before = app.read_models.status()[0].head
        assert app.read_models.check() == (before + 1, {})
        assert passes == [("DigestWriter", before), ("DigestWriter", before + 1)]
        assert counted == []
        positions = {s.name: s.position for s in app.read_models.status()}
        assert positions.pop("violations") == before + 1
        assert set(positions.values()) == {before}  # (the check caught up none of them)
    finally:
        app.database.dispose()


def test_a_read_model_its_catch_up_fails_on_is_named_and_left_as_it_was(
    ledger_url: str, feed_small: Path
) -> None:
    """A read-model row altered into a value of another type, in a stream with an event the
    model has not applied: the check's catch-up fails on it, and that model (only) is an
    altered read model, its one row; the catch-up of the others is committed, its own not."""
    if not ledger_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's column types refuse this value")
    _recorded(ledger_url, feed_small)
    app = open_ledger(ledger_url)
    try:
        app.read_models.catch_up()
        links = _table_of(ledger_url, "recipient_registry", "rm_recipient_links")
        consents = _table_of(ledger_url, "current_consent", "rm_current_consent")
        tamper(
            app,
            (
                f"UPDATE {links} SET disclosures = 'many' WHERE stream_id IN "
                f"(SELECT stream_id FROM {consents} WHERE customer = 'C100')",
                {},
            ),
        )
        before = app.read_models.status()[0].head
        app.record_fact(
            {"id": "upd-y", "type": "customer.updated", "customer": "C100"}
            | {"phone": "+44 7700 900004"}
        )
    finally:
        app.database.dispose()
    _one_model_differs(ledger_url, "recipient_registry", 1)
    status = {
        row["name"]: row["position"]
        for row in run_json(ledger_url, "projections", "status")["projections"]
    }
    assert status.pop("recipient_registry") == before
    assert set(status.values()) == {before + 1}
