"""Benchmark: `db copy`, a ledger moved into a new SQLite file and into PostgreSQL.

    .venv/bin/python benchmarks/bench_copy.py --facts 100000
    .venv/bin/python benchmarks/bench_copy.py --facts 100000 --postgres postgresql://postgres@127.0.0.1:5432/consent_ledger_bench

Imports a generated feed of that many facts into an SQLite ledger, then copies it into a
fresh SQLite file and (with `--postgres`, a database it drops and creates again) into
PostgreSQL, as `db copy` does: the rows (one snapshot read, one transaction written), then the
copy's read models rebuilt, then the copy verified. Prints each step's wall seconds and the
rows copied per second, and checks that each copy verifies with the source's head. Asserts
nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from machine import watched

WORK = Path("/tmp/consent-ledger-bench-copy")


def _source(work: Path, facts: int) -> str:
    from ledger.config import open_ledger
    from ledger.samplefeed import generate_lines

    path = work / f"source-{facts}.db"
    url = f"sqlite:///{path}"
    if path.exists():
        return url
    partial = work / f"source-{facts}.partial.db"
    ledger = open_ledger(f"sqlite:///{partial}")

    def lines() -> Iterator[bytes]:
        for count, line in enumerate(generate_lines(facts // 14 + 10), start=1):
            yield line
            if count >= facts:
                return

    started = time.perf_counter()
    summary = ledger.import_lines(lines())
    ledger.database.dispose()
    partial.rename(path)
    print(f"source: {summary.accepted:,} facts imported in {time.perf_counter() - started:.1f} s")
    return url


def _fresh_postgres(url: str) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    server = parsed.set(database="postgres", drivername="postgresql").render_as_string(False)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}"')
        conn.execute(f'CREATE DATABASE "{parsed.database}"')
    return url


def _copy(source_url: str, target_url: str, label: str) -> None:
    from ledger.application import ConsentLedger
    from ledger.config import open_database
    from ledger.persistence import seals
    from ledger.persistence.copying import copy_ledger
    from ledger.persistence.database import Database

    source = open_database(source_url, create=False)
    head = seals.verify_ledger(ConsentLedger(source)).head
    target = Database(target_url)
    started = time.perf_counter()
    copied = copy_ledger(source, target)
    rows_seconds = time.perf_counter() - started
    ledger = ConsentLedger(target)
    started = time.perf_counter()
    ledger.read_models.rebuild()
    rebuild_seconds = time.perf_counter() - started
    started = time.perf_counter()
    verified = seals.verify_ledger(ledger)
    verify_seconds = time.perf_counter() - started
    rows = sum(copied.rows.values())
    same = "same head" if verified.ok and verified.head == head else "HEAD DIFFERS"
    print(
        f"{label:10} rows {rows:,} in {rows_seconds:6.2f} s ({rows / rows_seconds:9,.0f} rows/s)"
        f"  rebuild {rebuild_seconds:6.2f} s  verify {verify_seconds:6.2f} s  "
        f"total {rows_seconds + rebuild_seconds + verify_seconds:6.2f} s  {same}",
        flush=True,
    )
    source.dispose()
    target.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=100_000)
    parser.add_argument("--postgres", help="a PostgreSQL database to drop and recreate")
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    # One key folder for the source and its copies: the keys are not what is measured.
    os.environ["CONSENT_LEDGER_KEY_DIR"] = str(args.work / "keys")
    source = _source(args.work, args.facts)
    target = args.work / "copy.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(args.work / "copy.db.keys", ignore_errors=True)
    _copy(source, f"sqlite:///{target}", "sqlite")
    if args.postgres:
        _copy(source, _fresh_postgres(args.postgres), "postgresql")


if __name__ == "__main__":
    with watched():
        main()
