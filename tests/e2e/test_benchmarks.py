"""The benchmark scripts still run, at tiny sizes (the README tells users to run them).

Speed is never asserted here: each script must finish, print the figures it promises and
the machine's state at its end, and `benchmarks/run.py --out` must write every figure of
the README's table, each a positive number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import postgres_server

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"

# script -> (arguments at a tiny size, a line its output must hold)
SCRIPTS = {
    "bench_projections.py": (["--customers", "120"], "1. rebuild of every read model"),
    "bench_export.py": (["--customers", "120"], "export verify      ok"),
    "bench_integrity.py": (["--facts", "1500", "--proofs", "20"], "inclusion proof"),
    "bench_import.py": (["--facts", "1500", "--rounds", "1"], "worker thread"),
    "bench_privacy.py": (["--customers", "80"], "data keys re-wrapped"),
    "bench_feed.py": (["--lines", "300", "--rounds", "1"], "us per line"),
    "bench_shapes.py": (["--facts", "60", "--shapes", "email-changes,one-order"], "one-order"),
    "bench_copy.py": (["--facts", "300"], "same head"),
    "bench_facts_index.py": (["--facts", "3000", "--rounds", "1"], "0013 (with the index)"),
    "bench_incremental.py": (["--customers", "30", "--rounds", "1"], "round 1"),
}
# Scripts that keep no files (no --work folder).
IN_MEMORY = {"bench_privacy.py", "bench_feed.py", "bench_facts_index.py"}

# Every row of the README's performance table (`benchmarks/run.py`'s figures).
FIGURES = {
    "raw sqlite executemany",
    "import",
    "import peak RSS",
    "projections rebuild",
    "verify",
    "customer trail p50",
    "customer trail p99",
    "consent show --as-of p50",
    "consent show --as-of p99",
    "CLI customer trail (process)",
    "export due-diligence",
    "export peak RSS",
}


def _postgres_url(server: str) -> sa.URL:
    return sa.engine.make_url(server).set(drivername="postgresql+psycopg")


def _run(script: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENT_LEDGER_")}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
    assert "machine at start: reference workload" in done.stdout
    assert "machine at end:   reference workload" in done.stdout
    return done.stdout


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_runs(script: str, tmp_path: Path) -> None:
    args, expected = SCRIPTS[script]
    if script not in IN_MEMORY:  # (bench_privacy works in a temporary folder of its own)
        args = [*args, "--work", str(tmp_path)]
    assert expected in _run(script, *args)


@pytest.mark.parametrize("script", [*sorted(SCRIPTS), "run.py", "bench_write.py", "bench_check.py"])
def test_help_prints_usage_without_running_anything(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script}")
    assert "reference workload" not in done.stdout  # the machine check is work too


def test_bench_write_times_every_command_that_writes_one_fact(tmp_path: Path) -> None:
    """It writes to the ledger it is given (a new one here): each command once."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    out = _run("bench_write.py", "--db", db, "--runs", "1", "--work", str(tmp_path))
    table = out.split("(ms)\n", 1)[1].split("machine at end")[0].splitlines()
    timed = [line.split("  ")[0] for line in table]
    assert timed == [
        "record consent.given",
        "consent give",
        "disclose affiliate",
        "customer erase",
        "customer trail (a read)",
    ]


def test_bench_check_times_the_read_model_check_and_an_import_beside_it(
    tmp_path: Path, feed_small: Path
) -> None:
    db = tmp_path / "ledger.db"  # (its keys beside it, as a command makes them)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENT_LEDGER_")}
    command = str(Path(sys.executable).with_name("consent-ledger"))
    made = subprocess.run(
        [command, "--db", f"sqlite:///{db}", "import", str(feed_small)],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    out = _run("bench_check.py", "--db", str(db), "--keys", f"{db}.keys", "--import-every", "0.01")
    assert "verify --read-models:" in out and "exit 0, ok=True, problems=[]" in out


def test_bench_import_compares_switch_intervals(tmp_path: Path) -> None:
    out = _run(
        "bench_import.py", "--facts", "1500", "--rounds", "1", "--switch", "--work", str(tmp_path)
    )
    assert "worker thread" in out and "worker, 5 ms switch" in out
    assert "in turn" not in out


@pytest.mark.postgres  # (and SQLite: it asks for the server itself)
def test_run_writes_every_figure_of_the_table(tmp_path: Path) -> None:
    backends = ["sqlite"]
    extra: list[str] = []
    server = postgres_server()
    if server is not None:
        backends.append("postgresql")
        extra = ["--postgres", server]
    out = tmp_path / "figures.json"
    args = ["--facts", "1500", "--backends", ",".join(backends), "--work", str(tmp_path)]
    try:
        _run("run.py", *args, *extra, "--out", str(out))
    finally:
        if server is not None:  # the schema run.py made for its PostgreSQL ledger
            engine = sa.create_engine(_postgres_url(server))
            with engine.begin() as conn:
                conn.exec_driver_sql("DROP SCHEMA IF EXISTS bench_1500 CASCADE")
            engine.dispose()
    figures = json.loads(out.read_text())
    for backend in backends:
        found = {f["name"] for f in figures if f["backend"] == backend}
        expected = FIGURES if backend == "sqlite" else FIGURES - {"raw sqlite executemany"}
        assert found == expected, backend
    assert all(f["value"] > 0 and f["facts"] == 1500 for f in figures)
    ratios = [f for f in figures if f["name"] == "import"]
    assert all(f["ratio"] is not None and f["ratio"] > 0 for f in ratios)
