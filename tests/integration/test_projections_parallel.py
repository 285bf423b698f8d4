"""A pass from event zero folded by worker processes (`projections.parallel`) makes the rows a
pass in one process makes, in the same order; a worker that fails fails the pass, which
leaves queries on the model they used. (SQLite only: other backends fold in one process.)"""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

from ledger.errors import ConfigurationError, ReadModelWorkerError
from projections import parallel, runner
from tests.integration.test_projections_properties import (
    _import,
    dump,
    evaluate,
    scenarios,
    spec_rules,
)

SMALL = Path(__file__).parents[2] / "tests" / "data" / "feed-small.jsonl"


@pytest.fixture
def small(ledger: Any) -> Any:
    if not ledger.database.is_sqlite:
        pytest.skip("worker processes fold SQLite passes only")
    with open(SMALL, "rb") as handle:
        ledger.import_lines(handle)
    return ledger


def _by_workers(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    monkeypatch.setattr(parallel, "MIN_EVENTS", 0 if on else 10**12)
    monkeypatch.setattr(runner, "worker_count", lambda: 2)


def _exact(ledger: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every model's answering slot, with its rowid, in rowid order."""
    with ledger.read_models.snapshot() as (conn, slots):
        return {
            table.name: [
                tuple(row)
                for row in conn.exec_driver_sql(
                    f"SELECT rowid, * FROM {table[slots[name]].name} ORDER BY rowid"
                )
            ]
            for name, model in ledger.read_models.models.items()
            for table in model.all_tables()
        }


def test_a_rebuild_by_workers_writes_the_rows_of_a_rebuild_in_one_process(
    small: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _by_workers(monkeypatch, False)
    steps: list[int] = []
    small.read_models.rebuild(progress=steps.append)
    alone, progressed = _exact(small), sum(steps)
    _by_workers(monkeypatch, True)
    started: list[parallel.Workers] = []
    init = parallel.Workers.__init__

    def counted(self: parallel.Workers, count: int) -> None:
        init(self, count)
        started.append(self)

    monkeypatch.setattr(parallel.Workers, "__init__", counted)
    seen: list[int] = []
    small.read_models.rebuild(progress=seen.append)
    assert len(started) == 1 and len(started[0].processes) == 2
    assert _exact(small) == alone
    assert sum(seen) == progressed
    assert all(s.lag == 0 for s in small.read_models.status())


def test_a_range_sent_in_pieces_writes_the_rows_of_a_rebuild_in_one_process(
    small: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker sends a range's rows a few streams at a time (so that neither process holds
    a range's rows at once, whatever the ledger's size): the pass takes them in order."""
    _by_workers(monkeypatch, False)
    small.read_models.rebuild()
    alone = _exact(small)
    _by_workers(monkeypatch, True)
    monkeypatch.setattr(parallel, "RANGES", 2)
    monkeypatch.setattr(parallel, "PIECE", 1)
    kinds: list[str] = []
    receive = parallel.Workers._receive

    def seen(self: parallel.Workers, index: int) -> list[Any]:
        message = receive(self, index)
        kinds.append(message[0])
        return message

    monkeypatch.setattr(parallel.Workers, "_receive", seen)
    small.read_models.rebuild()
    assert _exact(small) == alone
    pieces = [len(list(group)) for kind, group in itertools.groupby(kinds) if kind == "rows"]
    assert kinds.count("range") == 2 and pieces and max(pieces) > 1


def test_a_catch_up_from_event_zero_by_workers_equals_one_in_one_process(
    small: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _by_workers(monkeypatch, True)
    by_workers = spec_rules(small.audit())  # the violations model, from event zero
    rows = _exact(small)
    with small.database.connect() as conn, conn.begin():
        conn.execute(sa.update(runner.tracking).values(position=0))
    _by_workers(monkeypatch, False)
    assert spec_rules(small.audit()) == by_workers
    assert _exact(small) == rows


def test_a_failing_worker_fails_the_rebuild_and_queries_keep_the_old_model(
    small: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    small.read_models.catch_up()
    before = _exact(small)
    _by_workers(monkeypatch, True)
    task = parallel.Workers._task

    def unknown_model(self: parallel.Workers, *args: Any) -> dict[str, Any]:
        return {**task(self, *args), "models": ["no_such_model"]}

    monkeypatch.setattr(parallel.Workers, "_task", unknown_model)
    with pytest.raises(ReadModelWorkerError, match="read-model worker failed: KeyError"):
        small.read_models.rebuild()
    assert {s.slot for s in small.read_models.status()} == {"a"}
    assert _exact(small) == before
    monkeypatch.undo()
    _by_workers(monkeypatch, True)
    small.read_models.rebuild()
    assert {s.slot for s in small.read_models.status()} == {"b"}
    assert _exact(small) == before


def test_killed_workers_fail_the_rebuild_and_queries_keep_the_old_model(
    small: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    small.read_models.catch_up()
    before = _exact(small)
    _by_workers(monkeypatch, True)
    started: list[parallel.Workers] = []
    init = parallel.Workers.__init__

    def killed(self: parallel.Workers, count: int) -> None:
        init(self, count)
        started.append(self)
        for process in self.processes:
            os.kill(process.pid, signal.SIGKILL)

    monkeypatch.setattr(parallel.Workers, "__init__", killed)
    with pytest.raises(ReadModelWorkerError, match="read-model worker ended early"):
        small.read_models.rebuild()
    assert all(process.poll() is not None for process in started[0].processes)
    assert {s.slot for s in small.read_models.status()} == {"a"}
    assert _exact(small) == before


# Everything recorded in each example's ledger, keyed by its database URL (hypothesis runs
# every example of a test on the test's one ledger).
RECORDED: dict[str, list[dict[str, Any]]] = {}


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_incremental_equals_rebuilt_by_workers_and_audit_by_workers_equals_evaluator(
    ledger: Any, scenario: tuple[list[dict[str, Any]], list[int], list[bool]]
) -> None:
    if not ledger.database.is_sqlite:
        pytest.skip("worker processes fold SQLite passes only")
    facts, cuts, catch_ups = scenario
    recorded = RECORDED.setdefault(str(ledger.database.url), [])
    bounds = [0, *cuts, len(facts)]
    for (start, stop), catch_up in zip(itertools.pairwise(bounds), catch_ups, strict=True):
        _import(ledger, facts[start:stop])
        recorded.extend(facts[start:stop])
        if catch_up:
            ledger.read_models.catch_up()
    ledger.read_models.catch_up()
    incremental = dump(ledger)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _by_workers(monkeypatch, True)
        ledger.read_models.rebuild()
        assert dump(ledger) == incremental
        with ledger.database.connect() as conn, conn.begin():
            conn.execute(
                sa.update(runner.tracking)
                .where(runner.tracking.c.name == "violations")
                .values(position=0)
            )
        assert spec_rules(ledger.audit()) == evaluate(recorded)
        assert dump(ledger) == incremental


def test_the_number_of_workers_can_be_set_and_a_bad_setting_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONSENT_LEDGER_WORKERS", "0")
    assert parallel.worker_count() == 0
    monkeypatch.setenv("CONSENT_LEDGER_WORKERS", "3")
    assert parallel.worker_count() == 3
    monkeypatch.setenv("CONSENT_LEDGER_WORKERS", "many")
    with pytest.raises(ConfigurationError, match="CONSENT_LEDGER_WORKERS must be a whole number"):
        parallel.worker_count()
