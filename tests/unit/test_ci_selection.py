"""CI's PostgreSQL run keeps only the tests that reach the server (`.ci/run`,
`CONSENT_LEDGER_TEST_POSTGRES_ONLY`): the rest ran on SQLite just before it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import POSTGRES_ENV, POSTGRES_ONLY_ENV

ROOT = Path(__file__).resolve().parents[2]


def _collected(
    *paths: str, only: bool, server: str | None = "postgresql://nobody@nowhere/x"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (POSTGRES_ENV, POSTGRES_ONLY_ENV)}
    if server is not None:
        env[POSTGRES_ENV] = server  # (collecting connects to nothing)
    if only:
        env[POSTGRES_ONLY_ENV] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", *paths],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def _ids(done: subprocess.CompletedProcess[str]) -> set[str]:
    return {line.split("::", 1)[1] for line in done.stdout.splitlines() if "::" in line}


def test_only_the_cases_that_reach_the_server_are_kept() -> None:
    paths = ("tests/integration/test_postgres_reads.py", "tests/e2e/test_benchmarks.py")
    every = _ids(_collected(*paths, only=False))
    kept = _ids(_collected(*paths, only=True))
    # a case parametrized "postgresql" stays; its SQLite twin and a test of no backend go
    assert "test_the_driver_reads_as_sqlalchemy_does[postgresql]" in kept
    assert "test_the_driver_reads_as_sqlalchemy_does[sqlite]" in every - kept
    assert "test_script_runs[bench_feed.py]" in every - kept
    # a test marked `postgres` (it asks for the server itself) stays
    assert "test_run_writes_every_figure_of_the_table" in kept
    assert kept < every


def test_it_needs_a_server() -> None:
    done = _collected("tests/integration/test_postgres_reads.py", only=True, server=None)
    assert done.returncode != 0
    assert f"{POSTGRES_ONLY_ENV} needs {POSTGRES_ENV}" in done.stdout + done.stderr
