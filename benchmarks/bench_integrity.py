"""Benchmark: sealing overhead on import, `verify` throughput, inclusion proof time (SQLite).

    .venv/bin/python benchmarks/bench_integrity.py --facts 100000
    .venv/bin/python benchmarks/bench_integrity.py --facts 1000000 --skip-overhead
    .venv/bin/python benchmarks/bench_integrity.py --skip-overhead --reuse   # the kept ledger

Imports the same generated feed (~15 facts per customer) into a fresh ledger twice, with
sealing and with the sealer switched off, and prints both times and the overhead; then
verifies the sealed ledger (facts/s) and times inclusion proofs of random facts, on the
ledger opened afresh, as the `verify` and `prove` commands run. Verification runs with one
worker process and with one per CPU (`verify_ledger`'s default, the figure benchmarks/run.py
reports); its CPU time counts every process, the steadier figure on a busy machine.
Ledgers and keys go under --work (default: $TMPDIR/bench-integ).
Targets (issue 4): sealing <= 15 % of import time, verify of 1M facts >= 500k facts/s,
an inclusion proof <= 1 ms.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import watched


def fresh(work: Path, name: str) -> str:
    path = work / name
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(path.with_name(path.name + ".keys"), ignore_errors=True)
    return f"sqlite:///{path}"


def import_feed(url: str, lines: list[bytes], *, sealed: bool) -> tuple[Any, tuple[float, float]]:
    from ledger.config import open_ledger
    from ledger.persistence import recorder

    original = recorder.seal_inserted
    if not sealed:
        recorder.seal_inserted = lambda tx, rows: None  # type: ignore[assignment]
    try:
        ledger = open_ledger(url)
        started, cpu = time.perf_counter(), time.process_time()
        ledger.import_lines(lines)
        return ledger, (time.perf_counter() - started, time.process_time() - cpu)
    finally:
        recorder.seal_inserted = original  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-integ")
    parser.add_argument("--skip-overhead", action="store_true", help="import once, sealed")
    parser.add_argument("--rounds", type=int, default=1, help="import rounds per variant")
    parser.add_argument("--proofs", type=int, default=2000)
    parser.add_argument(
        "--reuse", action="store_true", help="verify and prove the ledger a previous run kept"
    )
    args = parser.parse_args()

    from ledger.persistence import seals
    from ledger.samplefeed import generate_lines

    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["CONSENT_LEDGER_KEY_DIR"] = str(args.work / "keys")
    customers = max(1, args.facts // 15)
    reusing = args.reuse and (args.work / "sealed.db").exists()
    lines = [] if reusing else list(generate_lines(customers, seed=11))
    print(f"feed               {len(lines)} facts ({customers} customers)")

    if not args.skip_overhead and not reusing:
        # Alternate the variants so a busy machine slows both alike; the CPU time of this
        # process is the steadier figure when other processes compete for the cores.
        timings: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(args.rounds):
            for sealed in (False, True):
                shutil.rmtree(args.work / "keys", ignore_errors=True)
                ledger, seconds = import_feed(fresh(args.work, "plain.db"), lines, sealed=sealed)
                ledger.database.dispose()
                # Nothing of one round lives on into the next (the last round's ledger, with
                # its caches of up to 20k aggregates and keys, stayed referenced until then).
                del ledger
                gc.collect()
                timings[sealed].append(seconds)
        for label, index in (("wall", 0), ("cpu", 1)):
            plain = min(t[index] for t in timings[False])
            sealed_s = min(t[index] for t in timings[True])
            print(
                f"import {label:<4}        unsealed {plain:.2f} s, sealed {sealed_s:.2f} s: "
                f"overhead {100 * (sealed_s - plain) / plain:+.1f} % (best of {args.rounds})"
            )

    kept = args.work / "sealed.db"
    if args.reuse and kept.exists():
        print(f"import (kept)      reused {kept}")
    else:
        shutil.rmtree(args.work / "keys", ignore_errors=True)
        ledger, seconds = import_feed(fresh(args.work, "sealed.db"), lines, sealed=True)
        print(f"import (kept)      {seconds[0]:.2f} s wall, {seconds[1]:.2f} s cpu")
        # Verify and prove as their own commands would, and as benchmarks/run.py does: on a
        # ledger opened afresh (the import's connections closed, its objects gone).
        ledger.database.dispose()
        del ledger, lines
        gc.collect()

    from ledger.config import open_ledger

    ledger = open_ledger(f"sqlite:///{kept}")

    for workers in (1, os.cpu_count() or 1):
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        started, cpu = time.perf_counter(), time.process_time()
        result = seals.verify_ledger(ledger, workers=workers)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu += (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        assert result.ok, result.problems
        print(
            f"verify {workers} worker(s)  {result.facts} facts, {result.events} events in "
            f"{seconds:.2f} s wall ({result.facts / seconds:,.0f} facts/s); "
            f"{cpu:.2f} s cpu in all processes ({cpu / result.events * 1e6:.2f} us per event)"
        )

    from ledger.persistence import tables

    with ledger.database.reading() as conn:
        ids = [
            row[0]
            for row in conn.execute(tables.facts.select().with_only_columns(tables.facts.c.fact_id))
        ]
    sample = random.Random(3).sample(ids, min(args.proofs, len(ids)))
    timings_ms = []
    for fact_id in sample:
        started = time.perf_counter()
        seals.prove_fact(ledger, fact_id)
        timings_ms.append((time.perf_counter() - started) * 1000)
    timings_ms.sort()
    print(
        f"inclusion proof    median {statistics.median(timings_ms):.3f} ms, "
        f"p99 {timings_ms[int(len(timings_ms) * 0.99) - 1]:.3f} ms ({len(sample)} facts)"
    )
    ledger.database.dispose()
    print(f"(python {sys.version.split()[0]}, {os.cpu_count()} cpus)")


if __name__ == "__main__":
    with watched():
        main()
