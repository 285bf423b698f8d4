"""The read models on each backend: catch-up, tracking, rebuild beside then swap, follow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.config import open_ledger
from projections import runner

ROOT = Path(__file__).parents[2]
SMALL = ROOT / "tests" / "data" / "feed-small.jsonl"
CONSENT_LEDGER = str(Path(sys.executable).parent / "consent-ledger")


def _import(ledger: Any, *facts: dict[str, Any]) -> None:
    ledger.import_lines([orjson.dumps(f) for f in facts])


def _register(ref: str, fact_id: str) -> dict[str, Any]:
    return {
        "id": fact_id,
        "type": "customer.registered",
        "customer": ref,
        "name": "Ada Lovelace",
        "email": "ada@example.org",
        "address": {"line1": "1 Way", "city": "Leeds", "postcode": "LS1", "country": "GB"},
        "at": "2025-01-01T00:00:00Z",
    }


def _rules(ledger: Any) -> set[tuple[str, str]]:
    return {(v.rule, v.fact_id) for v in ledger.audit()}


def _positions(ledger: Any) -> dict[str, tuple[int, str]]:
    return {s.name: (s.position, s.slot) for s in ledger.read_models.status()}


@pytest.fixture
def small(ledger: Any) -> Any:
    with open(SMALL, "rb") as handle:
        ledger.import_lines(handle)
    return ledger


def test_status_shows_positions_head_and_lag(small: Any) -> None:
    before = small.read_models.status()
    assert {s.name for s in before} == set(runner.NAMES)
    assert all(s.position == 0 and s.lag == s.head > 0 for s in before)
    small.audit()  # catches up the violations model only
    after = {s.name: s for s in small.read_models.status()}
    assert after["violations"].lag == 0
    assert after["disclosure_trail"].lag == after["disclosure_trail"].head
    assert small.read_models.catch_up() == after["disclosure_trail"].head
    assert all(s.lag == 0 for s in small.read_models.status())
    assert small.read_models.catch_up() == 0  # nothing new: nothing applied


def test_a_late_initiation_clears_an_earlier_transfer_violation(ledger: Any) -> None:
    _import(
        ledger,
        _register("C1", "f1"),
        {
            "id": "f2",
            "type": "transfer.disclosure",
            "customer": "C1",
            "acquirer": "Northwind",
            "categories": ["name"],
            "at": "2025-02-01T00:00:00Z",
        },
    )
    assert _rules(ledger) == {("transfer_without_initiation", "f2")}
    _import(
        ledger,
        {
            "id": "f3",
            "type": "transfer.initiated",
            "acquirer": "Northwind",
            "scope": "all",
            "at": "2025-01-15T00:00:00Z",
        },
    )
    assert _rules(ledger) == set()


def test_an_acquirers_export_judges_no_customer_again_its_initiation_does(
    ledger: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catch-up judges again the customers who disclosed to an acquirer whose initiations
    changed, not for its other events: a due-diligence export (26k customers judged again
    for one export at 1M facts, 10.8 s of the next `audit check`). As initiations are only
    added, and one more can only clear a `transfer_without_initiation`, only the customers
    with such a violation are judged again."""
    from ledger.exports import ExportRequest, export_due_diligence
    from projections.violations import Violations

    def transfer(fact_id: str, ref: str, at: str) -> dict[str, Any]:
        return {
            "id": fact_id,
            "type": "transfer.disclosure",
            "customer": ref,
            "acquirer": "Northwind",
            "categories": ["name"],
            "at": at,
        }

    def initiation(fact_id: str, at: str) -> dict[str, Any]:
        return {
            "id": fact_id,
            "type": "transfer.initiated",
            "acquirer": "Northwind",
            "scope": "all",
            "at": at,
        }

    # C1 disclosed before the only initiation (a violation); C2 after it (none)
    _import(
        ledger,
        _register("C1", "f1"),
        transfer("f2", "C1", "2025-02-01T00:00:00Z"),
        initiation("f3", "2025-03-01T00:00:00Z"),
        _register("C2", "f4"),
        transfer("f5", "C2", "2025-04-01T00:00:00Z"),
    )
    assert _rules(ledger) == {("transfer_without_initiation", "f2")}
    judged_again: list[set[Any]] = []
    begin = Violations.begin

    def noted(self: Violations, run: Any) -> set[Any]:
        found = begin(self, run)
        judged_again.append(found)
        return found

    monkeypatch.setattr(Violations, "begin", noted)
    export_due_diligence(ledger, ExportRequest(out=tmp_path / "dd", acquirer="Northwind"))
    ledger.read_models.catch_up()
    assert judged_again == [set()]
    # An initiation dated before C1's disclosure: C1 is judged again, not C2
    _import(ledger, initiation("f6", "2025-01-15T00:00:00Z"))
    ledger.read_models.catch_up()
    assert judged_again[1] == {ledger.customer_with_events("C1")[0].id}
    assert _rules(ledger) == set()


def test_an_initiation_at_the_same_at_counts_only_if_recorded_before_the_transfer(
    ledger: Any, tmp_path: Path
) -> None:
    """SPEC §1: ties at the same `at` are broken by recording order, across streams too (a
    customer's transfer, an acquirer's initiation). The violations model, its rebuild, the
    ledger as known at a time and the due-diligence export's summary all agree."""
    from datetime import UTC, datetime

    from ledger.exports import ExportRequest, export_due_diligence

    at = "2025-02-01T00:00:00Z"

    def transfer(fact_id: str, ref: str, acquirer: str) -> dict[str, Any]:
        return {
            "id": fact_id,
            "type": "transfer.disclosure",
            "customer": ref,
            "acquirer": acquirer,
            "categories": ["name"],
            "at": at,
        }

    def initiation(fact_id: str, acquirer: str) -> dict[str, Any]:
        return {"id": fact_id, "type": "transfer.initiated", "acquirer": acquirer, "scope": "all"}

    _import(
        ledger,
        _register("C1", "r1"),
        _register("C2", "r2"),
        initiation("i2", "Contoso") | {"at": at},
        transfer("t2", "C2", "Contoso"),  # after Contoso's initiation: lawful
        transfer("t1", "C1", "Northwind"),  # before Northwind's, at the same `at`
        initiation("i1", "Northwind") | {"at": at},
    )
    expected = {("transfer_without_initiation", "t1")}
    assert _rules(ledger) == expected
    known_now = {(v.rule, v.fact_id) for v in ledger.audit(None, datetime.now(UTC))}
    assert known_now == expected
    ledger.read_models.rebuild()
    assert _rules(ledger) == expected
    export_due_diligence(ledger, ExportRequest(out=tmp_path / "dd", acquirer="Fabrikam"))
    summary = orjson.loads((tmp_path / "dd" / "summary.json").read_bytes())
    by_rule = {rule: n for rule, n in summary["open_violations"]["by_rule"].items() if n}
    assert by_rule == {"transfer_without_initiation": 1}
    # An earlier initiation, recorded late, makes t1 lawful after all.
    _import(ledger, initiation("i3", "Northwind") | {"at": "2025-01-31T23:59:59Z"})
    assert _rules(ledger) == set()


def test_a_late_withdrawal_dated_earlier_turns_a_contact_into_a_violation(ledger: Any) -> None:
    consent = {"customer": "C1", "purpose": "marketing", "channel": "email", "method": "web"}
    _import(
        ledger,
        _register("C1", "f1"),
        {"id": "f2", "type": "consent.given", "at": "2025-01-02T00:00:00Z", **consent}
        | {"policy_version": "1"},
        {
            "id": "f3",
            "type": "marketing.contact",
            "customer": "C1",
            "channel": "email",
            "campaign": "spring",
            "at": "2025-03-01T00:00:00Z",
        },
    )
    assert _rules(ledger) == set()
    _import(
        ledger, {"id": "f4", "type": "consent.withdrawn", "at": "2025-02-01T00:00:00Z", **consent}
    )
    assert _rules(ledger) == {("marketing_without_consent", "f3")}


def test_a_failed_catch_up_leaves_rows_and_position_as_they_were(
    small: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    small.read_models.catch_up()
    before = _positions(small)
    expected = _rules(small)
    _import(small, _register("C900", "x1"))
    model = small.read_models.models["violations"]

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("crash in the middle of a catch-up")

    monkeypatch.setattr(model, "replace", broken)
    with pytest.raises(RuntimeError):
        small.read_models.catch_up()
    assert _positions(small) == before  # every model: one transaction, none moved
    monkeypatch.undo()
    assert _rules(small) == expected
    assert all(s.lag == 0 for s in small.read_models.status() if s.name == "violations")


def test_a_rebuild_that_fails_halfway_leaves_queries_on_the_old_model(
    small: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _rules(small)
    small.read_models.catch_up()
    before = _positions(small)
    figures = small.read_models.figures()
    monkeypatch.setattr(runner, "STREAMS_PER_BATCH", 1)
    seen: list[int] = []

    def progress(events: int) -> None:
        seen.append(events)
        if len(seen) == 2:
            raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError):
        small.read_models.rebuild(progress=progress)
    assert len(seen) == 2
    assert _positions(small) == before
    assert _rules(small) == expected
    assert small.read_models.figures() == figures
    # The next rebuild starts clean, swaps, and answers the same.
    result = small.read_models.rebuild()
    assert result.events == before["violations"][0]
    assert {slot for _, slot in _positions(small).values()} == {"b"}
    assert _rules(small) == expected
    assert small.read_models.figures().recipients == figures.recipients


def test_queries_answer_from_the_old_model_while_a_rebuild_runs(
    small: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _rules(small)
    small.read_models.catch_up()
    monkeypatch.setattr(runner, "STREAMS_PER_BATCH", 1)
    during: list[set[tuple[str, str]]] = []

    def progress(_events: int) -> None:
        if not during:  # a second ledger object: another connection, as another process
            other = open_ledger(small.database.url.render_as_string(hide_password=False))
            try:
                during.append(_rules(other))
                assert {s.slot for s in other.read_models.status()} == {"a"}
            finally:
                other.database.dispose()

    small.read_models.rebuild(progress=progress)
    assert during == [expected]
    assert {s.slot for s in small.read_models.status()} == {"b"}


_KILL_HALFWAY = """
import os, signal, sys
from ledger.config import open_ledger
from projections import runner
runner.STREAMS_PER_BATCH = 1
ledger = open_ledger(sys.argv[1])
seen = []
def progress(events):
    seen.append(events)
    if len(seen) == 2:
        print("halfway", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
ledger.read_models.rebuild(progress=progress)
print("finished", flush=True)
"""


def test_a_killed_rebuild_leaves_queries_on_the_old_model(small: Any, ledger_url: str) -> None:
    expected = _rules(small)
    small.read_models.catch_up()
    before = _positions(small)
    done = subprocess.run(
        [sys.executable, "-c", _KILL_HALFWAY, ledger_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.strip() == "halfway"
    assert _positions(small) == before
    assert _rules(small) == expected
    small.read_models.rebuild()
    assert _rules(small) == expected


def _follower(url: str) -> subprocess.Popen[bytes]:
    """`projections follow`, running, checking every 0.2 s."""
    return subprocess.Popen(
        [CONSENT_LEDGER, "--db", url, "projections", "follow", "--interval", "0.2"],
        cwd=ROOT,
        env={**os.environ, "CONSENT_LEDGER_LOG_LEVEL": "warning"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _caught_up(ledger: Any, deadline: float) -> bool:
    """Whether every read model reaches the head of the log by `deadline`."""
    while not all(s.lag == 0 for s in ledger.read_models.status()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_follow_keeps_the_models_at_the_head(small: Any, ledger_url: str) -> None:
    small.read_models.catch_up()
    follower = _follower(ledger_url)
    try:
        time.sleep(1.0)
        _import(small, _register("C777", "follow-1"))
        assert _caught_up(small, time.monotonic() + 30)
    finally:
        follower.send_signal(signal.SIGTERM)
        _out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err


def _sessions_of_others(ledger: Any) -> dict[int, str]:
    """The consent-ledger sessions on this database but this connection's own: their last
    queries."""
    query = (
        "SELECT pid, query FROM pg_stat_activity WHERE application_name = 'consent-ledger' "
        "AND datname = current_database() AND pid <> pg_backend_pid()"
    )
    with ledger.database.engine.connect() as conn:
        return {int(pid): str(text) for pid, text in conn.exec_driver_sql(query)}


def test_follow_takes_up_again_after_its_connections_are_ended(small: Any, ledger_url: str) -> None:
    """A server restart (here: an administrator ending the follower's sessions) ended
    `projections follow` with exit 1; it now warns, connects again, and goes on."""
    if small.database.is_sqlite:
        pytest.skip("an SQLite file has no connection to lose")
    small.read_models.catch_up()
    before = _sessions_of_others(small)
    follower = _follower(ledger_url)
    try:
        deadline = time.monotonic() + 30
        ended: dict[int, str] = {}
        while time.monotonic() < deadline:  # all its sessions: the last one LISTENs
            ended = {p: q for p, q in _sessions_of_others(small).items() if p not in before}
            if any(q.startswith("LISTEN") for q in ended.values()):
                break
            time.sleep(0.1)
        assert any(q.startswith("LISTEN") for q in ended.values()), ended
        assert len(ended) >= 2, ended  # and at least one it catches up on
        with small.database.engine.connect() as conn:
            for pid in ended:
                conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        time.sleep(0.5)
        _import(small, _register("C778", "follow-2"))
        assert _caught_up(small, deadline)
        assert follower.poll() is None
    finally:
        follower.send_signal(signal.SIGTERM)
        _out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert b'"event": "projections.retrying"' in err
    assert b"Traceback" not in err
