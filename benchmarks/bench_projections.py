"""Benchmark: the read models on SQLite. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/bench_projections.py --customers 6600     # ~100k facts
    .venv/bin/python benchmarks/bench_projections.py --customers 66000    # ~1M facts

Builds (once, cached under --work) a ledger of N generated customers (~15 facts each), then
measures, in this order:

1. `projections rebuild` of every read model from event zero (events/s);
2. `audit check` with the violations model at the head (in-process, and the CLI's wall time
   as a user would see it);
3. `audit check` when the violations model must first catch up from event zero (as after a
   fresh import);
4. the catch-up check a query pays when nothing is new (one indexed query), median of 200;
5. an incremental catch-up of every model after importing ~1,500 more facts.

Targets (issue 3): rebuild at 1M facts >= 100k events/s; `audit check` at 1M facts <= 10 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from machine import open_cached, watched

ROOT = Path(__file__).resolve().parents[1]


def build(path: Path, customers: int) -> None:
    from ledger.config import open_ledger
    from ledger.samplefeed import generate_lines

    started = time.perf_counter()
    ledger = open_ledger(f"sqlite:///{path}")
    summary = ledger.import_lines(generate_lines(customers))
    seconds = time.perf_counter() - started
    print(f"built {path}: {summary.accepted} facts in {seconds:.1f} s")
    ledger.database.dispose()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(label: str, action: Any) -> Any:
    """Wall time (what a user waits) and CPU time (what the work costs, less disturbed by
    other load on a shared machine; the database's I/O waits are not in it): this process's
    and, for a pass folded by worker processes (`projections.parallel`), theirs."""
    started, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
    result = action()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    workers = _children_cpu() - children
    split = f" ({cpu:.2f} s this process, {workers:.2f} s workers)" if workers else ""
    print(f"{label}: {seconds:.2f} s wall, {cpu + workers:.2f} s CPU{split}")
    return result, seconds, cpu + workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=6600)
    parser.add_argument("--work", type=Path, default=Path("/tmp/consent-ledger-bench"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / f"projections-{args.customers}.db"
    os.environ.setdefault("CONSENT_LEDGER_KEY_DIR", str(args.work / f"keys-{args.customers}"))
    if not path.exists():
        build(path, args.customers)

    import sqlalchemy as sa

    from projections.base import tracking

    url = f"sqlite:///{path}"
    ledger = open_cached(url)
    models = ledger.read_models
    head = models.status()[0].head
    print(f"ledger: {head} events, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    rebuilt, seconds, cpu = timed("1. rebuild of every read model", models.rebuild)
    print(
        f"   {rebuilt.events} events, {rebuilt.streams} streams: "
        f"{rebuilt.events / seconds:,.0f} events/s wall, {rebuilt.events / cpu:,.0f} per CPU second"
    )

    violations, *_ = timed("2. audit check, models at the head (in-process)", ledger.audit)
    print(f"   {len(violations)} violations")
    cli = [str(Path(sys.executable).parent / "consent-ledger"), "--db", url, "audit", "check"]
    started = time.perf_counter()
    subprocess.run([*cli, "--json"], check=True, capture_output=True, cwd=ROOT)
    print(f"   CLI wall time (a new process): {time.perf_counter() - started:.2f} s")

    with ledger.database.connect() as conn, conn.begin():
        conn.execute(tracking.update().where(tracking.c.name == "violations").values(position=0))
    cold, *_ = timed("3. audit check, violations model caught up from event zero", ledger.audit)
    assert len(cold) == len(violations)

    samples = []
    for _ in range(200):
        started = time.perf_counter()
        with models.snapshot():
            pass
        samples.append(time.perf_counter() - started)
    print(f"4. catch-up check with nothing new: median {statistics.median(samples) * 1000:.2f} ms")

    from ledger.samplefeed import generate_lines

    # New customers only: a transfer.initiated would (rightly) judge again every customer
    # who disclosed to that acquirer, which is another measurement.
    more = [
        line
        for line in generate_lines(100, seed=int(time.time()), prefix=f"b{int(time.time())}-")
        if b'"transfer.initiated"' not in line
    ]
    ledger.import_lines(more)
    label = f"5. catch-up after importing {len(more)} more facts (100 new customers)"
    applied, seconds, _ = timed(label, models.catch_up)
    print(f"   {applied} events: {applied / seconds:,.0f} events/s wall")
    with ledger.database.reading() as conn:
        positions = {r.name: r.position for r in conn.execute(sa.select(tracking))}
    assert len(set(positions.values())) == 1, positions


if __name__ == "__main__":
    with watched():
        main()
