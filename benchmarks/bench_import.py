"""Benchmark: an import with and without its worker thread for inserts, alternated.

    .venv/bin/python benchmarks/bench_import.py --facts 1000000 --rounds 2
    .venv/bin/python benchmarks/bench_import.py --facts 200000 --postgres postgresql://postgres@127.0.0.1:5432/consent_ledger_bench
    .venv/bin/python benchmarks/bench_import.py --facts 1000000 --switch

Each round imports the same generated feed into a fresh database twice, in a fresh process
each: once as the product does (a chunk's inserts on a worker thread while the next chunk is
applied, `ledger/persistence/background.py`) and once with the inserts in turn (as on a
one-core machine). With `--switch`, the second import keeps the worker thread but with
Python's default switch interval (5 ms) instead of the product's 0.1 ms on SQLite. Prints wall
and CPU seconds (both threads) and facts/s. Asserts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from machine import watched

WORK = Path("/tmp/consent-ledger-bench")


def feed(work: Path, facts: int) -> Path:
    from ledger.samplefeed import generate_lines

    path = work / f"import-{facts}.jsonl"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        with partial.open("wb") as handle:
            for count, line in enumerate(generate_lines(facts // 14 + 10), start=1):
                handle.write(line)
                if count >= facts:
                    break
        partial.rename(path)
    return path


def fresh_url(work: Path, postgres: str | None) -> str:
    if postgres is None:
        path = work / "import-bench.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}"
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(postgres)
    server = url.set(database="postgres", drivername="postgresql").render_as_string(False)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.database}"')
        conn.execute(f'CREATE DATABASE "{url.database}"')
    command = Path(sys.executable).with_name("consent-ledger")
    subprocess.run(
        [command, "--db", postgres, "--log-level", "error", "db", "upgrade"],
        check=True,
        capture_output=True,
    )
    return postgres


def child(path: str, url: str, mode: str) -> None:
    if mode == "off":
        import ledger.persistence.database as database

        database._usable_cores = lambda: 1  # as on one core: inserts in turn
    elif mode == "slow-switch":
        import ledger.persistence.background as background

        background._SWITCH_INTERVAL = 0.005  # Python's default
    from ledger.config import open_ledger

    ledger = open_ledger(url)
    started, cpu = time.perf_counter(), time.process_time()
    with open(path, "rb") as lines:
        summary = ledger.import_lines(lines)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    label = {"on": "worker thread", "off": "in turn", "slow-switch": "worker, 5 ms switch"}[mode]
    print(
        f"{label:19}  {summary.accepted:,} facts  {wall:7.2f} s wall  {cpu:7.2f} s CPU  "
        f"{summary.accepted / wall:9,.0f} facts/s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--postgres", help="a PostgreSQL database to drop and recreate")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument(
        "--switch", action="store_true", help="compare switch intervals, not the worker thread"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, url, mode = args.child
        child(path, url, mode)
        return
    path = feed(args.work, args.facts)
    for _ in range(args.rounds):
        for mode in ("on", "slow-switch" if args.switch else "off"):
            url = fresh_url(args.work, args.postgres)
            subprocess.run([sys.executable, __file__, "--child", str(path), url, mode], check=True)


if __name__ == "__main__":
    with watched("--child" not in sys.argv):
        main()
