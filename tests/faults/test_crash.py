"""Crash: `kill -9` an import at random points; importing the file again records it once.

An import is one write transaction, so after each kill the ledger holds all of the file or
none of it, never a part; the import that finally completes records every fact exactly once,
and the recorded log still verifies. Read models killed while catching up or rebuilding end,
once caught up, with exactly the rows a rebuild makes. The killed commands are forked from
this process (see `support.fork`) so that the random moments fall in their work, not in
start-up.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ledger.persistence.seals import verify_ledger
from tests.faults.support import (
    event_count,
    fact_id,
    feed_lines,
    fork,
    recorded_ids,
    run,
    summary,
    wait,
    write_feed,
)

KILLS = 12
READ_MODEL_KILLS = 6
MAX_ATTEMPTS = 40


def test_import_killed_at_random_points_then_reimported_records_every_fact_once(
    ledger: Any, ledger_url: str, tmp_path: Path
) -> None:
    # Given a feed of two self-contained parts, and how long a dry run of it takes
    lines = feed_lines(40, prefix="a-") + feed_lines(40, prefix="b-", seed=8)
    feed = write_feed(tmp_path / "feed.jsonl", lines)
    ids = {fact_id(line) for line in lines}
    ledger.database.dispose()  # no connection of ours carried into the forked commands
    began = time.monotonic()
    assert wait(fork(ledger_url, "import", str(feed), "--dry-run")) == 0
    duration = time.monotonic() - began

    # When imports of it are killed with SIGKILL at random moments, at least twelve times
    rng = random.Random(20261126)
    killed_at: list[float] = []
    for _attempt in range(MAX_ATTEMPTS):
        if len(killed_at) >= KILLS:
            break
        pid = fork(ledger_url, "import", str(feed))
        started = time.monotonic()
        delay = rng.uniform(0.0, 0.95) * duration
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        if wait(pid) == -signal.SIGKILL:
            killed_at.append(round(delay, 3))
        else:  # it finished first: from now on the kills land in re-imports of the file
            duration = time.monotonic() - started
        # Then each time the ledger holds all of the file or none of it
        held = recorded_ids(ledger_url)
        assert len(held) == len(set(held))
        assert set(held) in (set(), ids), f"a killed import left {len(held)} of {len(ids)} facts"
    assert len(killed_at) >= KILLS, f"only {len(killed_at)} kills landed during an import"

    # And importing the file once more (the console script) completes, each line accepted
    # or counted as a duplicate
    done = summary(run(ledger_url, "import", str(feed), "--json"))
    assert done["accepted"] + done["duplicates"] == len(lines)
    assert done["rejected"] == 0

    # And every fact is recorded exactly once, each as one event (plus the acquirer's own)
    held = recorded_ids(ledger_url)
    assert sorted(held) == sorted(ids), killed_at
    assert event_count(ledger_url) == len(ids) + 1

    # And the recorded log verifies
    result = verify_ledger(ledger)
    assert result.ok, result.problems
    assert result.facts == len(ids)


def test_read_models_killed_while_catching_up_or_rebuilding_end_as_a_rebuild_would(
    ledger: Any, ledger_url: str, tmp_path: Path
) -> None:
    # Given a ledger holding a feed, its read models not yet caught up
    lines = feed_lines(40, prefix="m-")
    feed = write_feed(tmp_path / "feed.jsonl", lines)
    ledger.database.dispose()  # no connection of ours carried into the forked commands
    assert wait(fork(ledger_url, "import", str(feed))) == 0
    began = time.monotonic()
    assert wait(fork(ledger_url, "projections", "rebuild")) == 0
    duration = time.monotonic() - began
    assert (
        wait(
            fork(
                ledger_url,
                "import",
                str(write_feed(tmp_path / "more.jsonl", feed_lines(20, prefix="n-"))),
            )
        )
        == 0
    )

    # When catch-ups (a query's, `audit check`) and rebuilds are killed at random moments
    rng = random.Random(7)
    kills = 0
    for attempt in range(MAX_ATTEMPTS):
        if kills >= READ_MODEL_KILLS:
            break
        command = ["audit", "check"] if attempt % 2 == 0 else ["projections", "rebuild"]
        pid = fork(ledger_url, *command)
        time.sleep(rng.uniform(0.0, 0.95) * duration)
        os.kill(pid, signal.SIGKILL)
        kills += wait(pid) == -signal.SIGKILL

    # Then catching up brings every model to the head, with the rows a rebuild makes
    models = ledger.read_models
    models.catch_up()
    assert all(status.lag == 0 for status in models.status())
    caught_up = _rows(ledger)
    models.rebuild()
    assert _rows(ledger) == caught_up
    assert kills >= READ_MODEL_KILLS, f"only {kills} kills landed"
    # And the log itself still verifies
    assert verify_ledger(ledger).ok


def _rows(ledger: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every read model, from the slot each model answers from."""
    with ledger.read_models.snapshot() as (conn, slots):
        return {
            f"{name}.{table.name}": sorted(
                tuple(row) for row in conn.execute(sa.select(table[slots[name]]))
            )
            for name, model in ledger.read_models.models.items()
            for table in model.all_tables()
        }


def test_an_export_stopped_by_sigterm_or_killed_leaves_no_unrecorded_copy(
    ledger: Any, ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An identified export writes every customer's details to a staging folder, signs its
    manifest, and only then records itself. Stopped there, SIGTERM ends it as Ctrl-C does
    (one line, the folder removed, nothing recorded); after a kill -9 the next export in
    that folder removes what was left."""
    from ledger import manifest as manifests

    digest = manifests.manifest_sha256

    def slow_digest(data: bytes) -> str:
        time.sleep(60)  # the window the signal lands in (the forked child inherits this)
        return digest(data)

    # (Its manifest written, the export takes the digest it records next.)
    monkeypatch.setattr(manifests, "manifest_sha256", slow_digest)
    feed = write_feed(tmp_path / "feed.jsonl", feed_lines(300, prefix="X"))
    assert summary(run(ledger_url, "import", str(feed), "--json"))["accepted"] > 0
    acquirer = "Northwind Retail Group"  # the sample feed initiates a transfer to it
    out = tmp_path / "exports"
    out.mkdir()
    facts = event_count(ledger_url)

    def staged() -> list[Path]:
        return [p for p in out.iterdir() if p.name.startswith(".")]

    for stop in (signal.SIGTERM, signal.SIGKILL):
        command = ("export", "due-diligence", "--acquirer", acquirer, "--identified")
        pid = fork(ledger_url, *command, "--out", str(out / f"dd-{stop}"))
        deadline = time.monotonic() + 30
        while not any((p / "MANIFEST.json").exists() for p in staged()):
            assert time.monotonic() < deadline, "the export never signed its manifest"
            time.sleep(0.01)
        os.kill(pid, stop)
        status = wait(pid)
        if stop == signal.SIGTERM:
            assert status == 1
            assert staged() == []
        else:
            assert staged() != []  # what a kill leaves: the next export removes it
        assert not (out / f"dd-{stop}").exists()
        assert event_count(ledger_url) == facts  # nothing recorded
    monkeypatch.setattr(manifests, "manifest_sha256", digest)
    done = run(
        ledger_url, "export", "due-diligence", "--acquirer", acquirer, "--out", str(out / "ok")
    )
    assert done.returncode == 0, done.stderr
    assert staged() == []
