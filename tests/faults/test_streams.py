"""The command's own streams failing: stdout on a full disk or closed, stderr full or closed,
stdout's reader gone. A result that cannot be written after a commit must not be reported as
rolled back; logs that cannot be written must not fail a command that worked."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.cli_helpers import run_json
from tests.faults.support import COMMAND

GIVE = ["consent", "give", "C100", "marketing", "email", "--method", "web_form"]
GIVE += ["--policy-version", "v1", "--json"]

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


@pytest.fixture
def url(tmp_path: Path, feed_small: Path) -> str:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert run_json(ledger_url, "import", str(feed_small))["rejected"] == 0
    return ledger_url


def _facts(url: str) -> int:
    return int(run_json(url, "verify")["facts"])


def _run(url: str, args: list[str], **streams: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMAND), "--db", url, *args], text=True, timeout=120, check=False, **streams
    )


@needs_dev_full
def test_a_result_that_cannot_be_written_after_the_commit_says_it_was_recorded(
    url: str,
) -> None:
    # Given a ledger, when a command records and its stdout is a full disk
    before = _facts(url)
    with open("/dev/full", "w") as full:
        done = _run(url, GIVE, stdout=full, stderr=subprocess.PIPE)
    # Then it fails (the result was not given) in one line that says the fact was recorded
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert done.returncode == 1, done.stderr
    assert len(errors) == 1 and "No space left on device" in errors[0], done.stderr
    assert "is committed" in errors[0] and "rolled back" not in errors[0]
    assert "Traceback" not in done.stderr and "bug" not in done.stderr
    # And it was
    assert _facts(url) == before + 1


@needs_dev_full
def test_a_result_that_cannot_be_written_before_any_commit_says_nothing_was(url: str) -> None:
    with open("/dev/full", "w") as full:
        done = _run(
            url, ["customer", "trail", "C100", "--json"], stdout=full, stderr=subprocess.PIPE
        )
    assert done.returncode == 1
    assert "no fact was recorded" in done.stderr and "bug" not in done.stderr


@needs_dev_full
def test_logs_on_a_full_disk_do_not_fail_a_command_that_worked(url: str) -> None:
    before = _facts(url)
    with open("/dev/full", "w") as full:
        done = _run(url, GIVE, stdout=subprocess.PIPE, stderr=full)
    assert done.returncode == 0
    assert orjson.loads(done.stdout)["recorded"] is True
    assert _facts(url) == before + 1


def test_a_command_started_with_stderr_closed_runs_and_keeps_stdout_for_its_result(
    url: str,
) -> None:
    # (`2>&-`: the logs, which go to stderr, went to stdout through a closed fd 2's reuse)
    done = _run(url, ["verify", "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                pass_fds=(), preexec_fn=lambda: os.close(2))  # fmt: skip
    assert done.returncode == 0
    assert orjson.loads(done.stdout)["ok"] is True


def test_a_command_started_with_stdout_closed_does_nothing_and_says_so(url: str) -> None:
    before = _facts(url)
    done = _run(url, GIVE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                preexec_fn=lambda: os.close(1))  # fmt: skip
    assert done.returncode == 1
    assert "Error: stdout is closed; no fact was recorded" in done.stderr
    assert _facts(url) == before


def test_a_reader_leaving_after_the_commit_is_told_of_on_stderr(url: str) -> None:
    # `consent give … --json | true`: the fact is recorded, its result not delivered
    before = _facts(url)
    reader = subprocess.Popen(["true"], stdin=subprocess.PIPE)
    assert reader.stdin is not None
    reader.wait()
    done = _run(url, GIVE, stdout=reader.stdin, stderr=subprocess.PIPE)
    reader.stdin.close()
    assert done.returncode == 1
    assert "the result was not delivered" in done.stderr and "is committed" in done.stderr
    assert _facts(url) == before + 1


def test_record_from_a_closed_stdin_says_so(url: str) -> None:
    before = _facts(url)
    done = _run(url, ["record", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                preexec_fn=lambda: os.close(0))  # fmt: skip
    assert done.returncode == 1
    assert "Error: stdin is closed" in done.stderr and "unexpected" not in done.stderr
    assert _facts(url) == before


def test_an_error_naming_a_path_with_a_line_break_stays_one_line(url: str, tmp_path: Path) -> None:
    # (`--out $'bad\nname/x.html'`: the error was three lines)
    out = tmp_path / "bad\nname" / "report.html"
    done = _run(url, ["audit", "report", "--out", str(out)], stderr=subprocess.PIPE,
                stdout=subprocess.PIPE)  # fmt: skip
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "bad" in line]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "bad\\nname" in lines[0]


@needs_dev_full
def test_a_demo_whose_summary_cannot_be_written_says_it_built_the_ledger(tmp_path: Path) -> None:
    # (the demo opens a ledger of its own, not the command's: its commits count too)
    path = tmp_path / "demo.db"
    with open("/dev/full", "w") as full:
        done = _run(f"sqlite:///{path}", ["demo", "--customers", "3", "--path", str(path)],
                    stdout=full, stderr=subprocess.PIPE)  # fmt: skip
    assert done.returncode == 1
    assert "is committed" in done.stderr and "no fact was recorded" not in done.stderr
    import sqlite3

    with sqlite3.connect(path) as conn:  # (the demo's keys are beside it, not the tests')
        assert conn.execute("SELECT count(*) FROM ledger_facts").fetchone()[0] > 0
