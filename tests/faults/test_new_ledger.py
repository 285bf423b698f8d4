"""A new SQLite ledger's first command creates its schema, then its keys: a second command
that starts in between, or the next command after a first one cut off in between, finds the
schema current and the keys not made yet.

The first command is paused (or killed) at that moment by a function patched in this
process before it forks the command (`support.fork`): the command forked after the patch is
undone runs the product as it is.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.persistence.database import Database
from tests.faults.support import (
    feed_lines,
    fork,
    recorded_ids,
    run,
    run_forked,
    wait,
    write_feed,
)

DEADLINE = 60  # seconds, far beyond the few these take: reaching it means a deadlock


def _wait_for(path: Path, pid: int | None = None) -> None:
    """Until `path` exists (the forked command `pid`, if given, still running)."""
    deadline = time.monotonic() + DEADLINE
    while not path.exists():
        if pid is not None and os.waitpid(pid, os.WNOHANG)[0]:
            pytest.fail(f"the first command ended before {path.name}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def _paused(
    function: Callable[..., Any], paused: Path, go: Path, *, before: bool = False
) -> Callable[..., Any]:
    """`function`, after which (or, `before`, before which) the command says it is `paused`
    and waits for `go`."""

    def pause(*args: Any, **kwargs: Any) -> Any:
        result = None if before else function(*args, **kwargs)
        paused.touch()
        _wait_for(go)
        return function(*args, **kwargs) if before else result

    return pause


def _ended(pid: int, err: Path, *, waiting_ends: bool = False) -> int | None:
    """Wait for the forked command `pid` to end: its exit code. With `waiting_ends`: None
    as soon as it says (on stderr) that it waits for the writer's lock."""
    deadline = time.monotonic() + DEADLINE
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if waiting_ends and err.exists() and b"waiting for the write lock" in err.read_bytes():
            return None
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the command was still running after {DEADLINE}s: a deadlock")
        time.sleep(0.01)


def _feeds(tmp_path: Path) -> tuple[Path, Path, set[str]]:
    """Two feeds of different customers, and the ids of all their facts."""
    first, second = feed_lines(3, prefix="a-"), feed_lines(3, prefix="b-", seed=8)
    ids = {str(orjson.loads(line)["id"]) for line in first + second}
    return (
        write_feed(tmp_path / "first.jsonl", first),
        write_feed(tmp_path / "second.jsonl", second),
        ids,
    )


def _assert_whole(url: str, ids: set[str]) -> None:
    """Every fact once, the ledger verifies, and a customer's personal data opens."""
    assert sorted(recorded_ids(url)) == sorted(ids)
    verified = run_forked(url, "verify", "--json")
    assert verified.returncode == 0, verified.stderr.decode()[-2000:]
    assert orjson.loads(verified.stdout)["ok"] is True
    shown = run_forked(url, "customer", "show", "a-C0000000", "--json")
    assert shown.returncode == 0, shown.stderr.decode()[-2000:]


def test_a_command_starting_after_the_first_ones_migrations_makes_the_keys_itself(
    tmp_path: Path,
) -> None:
    # Given the first command on a new file, paused once its migrations are committed
    url = f"sqlite:///{tmp_path / 'new.db'}"
    first_feed, second_feed, ids = _feeds(tmp_path)
    paused, go = tmp_path / "paused", tmp_path / "go"
    with pytest.MonkeyPatch.context() as patch:  # (in the forked command only)
        patch.setattr(Database, "upgrade", _paused(Database.upgrade, paused, go))
        first = fork(url, "import", str(first_feed), err=tmp_path / "first.err")
    try:
        _wait_for(paused, first)
        # When a second command starts then
        err = tmp_path / "second.err"
        second = fork(url, "import", str(second_feed), err=err)
        code = _ended(second, err)
    finally:
        go.touch()
    # Then it finds no keys, makes them as the first would have, and records
    assert code == 0, err.read_text()[-2000:]
    # And the first one goes on with those keys
    assert wait(first) == 0, (tmp_path / "first.err").read_text()[-2000:]
    _assert_whole(url, ids)


def test_a_command_starting_while_the_first_one_makes_the_keys_waits_for_them(
    tmp_path: Path,
) -> None:
    """The keys are made in one write: a command never sees some of them without the
    others (the master key's fingerprint without the signing key, say)."""
    import ledger.persistence.seals as seals

    # Given the first command on a new file, paused among its key steps (the master key
    # made, the signing key not yet)
    url = f"sqlite:///{tmp_path / 'new.db'}"
    first_feed, second_feed, ids = _feeds(tmp_path)
    paused, go = tmp_path / "paused", tmp_path / "go"
    pause = _paused(seals.create_signing_key, paused, go, before=True)
    with pytest.MonkeyPatch.context() as patch:  # (in the forked command only)
        patch.setattr(seals, "create_signing_key", pause)
        first = fork(url, "import", str(first_feed), err=tmp_path / "first.err")
    try:
        _wait_for(paused, first)
        # When a second command starts then
        err = tmp_path / "second.err"
        second = fork(url, "import", str(second_feed), err=err)
        code = _ended(second, err, waiting_ends=True)
    finally:
        go.touch()
    # Then it waits for the first one's keys (it says so), and records with them
    assert code is None, err.read_text()[-2000:]
    assert _ended(second, err) == 0, err.read_text()[-2000:]
    assert wait(first) == 0, (tmp_path / "first.err").read_text()[-2000:]
    _assert_whole(url, ids)


def test_the_command_after_a_first_one_cut_off_after_its_migrations_makes_the_keys(
    tmp_path: Path,
) -> None:
    # Given a new file whose first command committed its migrations and was cut off then
    url = f"sqlite:///{tmp_path / 'new.db'}"
    first_feed, second_feed, ids = _feeds(tmp_path)
    database = Database(url)
    database.upgrade()
    database.dispose()
    # When the next command runs (an import, the console script as a user runs it)
    result = run(url, "import", str(first_feed), "--json")
    # Then it makes the keys and records
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert run(url, "import", str(second_feed)).returncode == 0
    _assert_whole(url, ids)


def test_the_command_after_a_first_one_killed_among_its_key_steps_records(tmp_path: Path) -> None:
    import ledger.persistence.seals as seals

    # Given a new file whose first command was killed (SIGKILL) once it had made the master
    # key file and before the signing key
    url = f"sqlite:///{tmp_path / 'new.db'}"
    first_feed, second_feed, ids = _feeds(tmp_path)

    def killed(_database: Database) -> bool:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("not killed")

    with pytest.MonkeyPatch.context() as patch:  # (in the forked command only)
        patch.setattr(seals, "create_signing_key", killed)
        first = fork(url, "import", str(first_feed))
    assert wait(first) == -signal.SIGKILL
    master = tmp_path / "keys" / "master.key"
    made = master.read_bytes()
    # When the next commands run
    for feed in (first_feed, second_feed):
        result = run(url, "import", str(feed))
        assert result.returncode == 0, result.stderr.decode()[-2000:]
    # Then they record, with the master key the killed one made (never a second one)
    assert master.read_bytes() == made
    _assert_whole(url, ids)
