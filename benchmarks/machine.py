"""The machine's state during a benchmark: how fast it was, and how much the host took from it.

This machine (a 2-core virtual machine) does not run at one speed: the same rebuild took 16 s
of CPU one morning and 31 s on another day, with nothing else running. A figure alone cannot
say whether a change or the machine moved it. So every benchmark script prints, at its start
and at its end:

- the CPU seconds of a fixed reference workload made of the kinds of work the ledger does
  (Python over dicts and tuples, orjson, SHA-256, SQLite inserts into an in-memory table),
  best of three; a figure measured at reference R compares with one measured at R' by the
  ratio R / R' (roughly: the workload is not the ledger);
- the share of the machine's CPU time the hypervisor gave to other guests while the script ran
  ("steal", from /proc/stat), and the load average.

    .venv/bin/python benchmarks/machine.py     # the reference alone
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson

ROUNDS = 3


def _workload() -> None:
    rows = []
    for number in range(40_000):
        record = {"id": f"F{number:08d}", "type": "consent.given", "n": number, "ok": True}
        data = orjson.dumps(record)
        back = orjson.loads(data)
        rows.append((back["id"], hashlib.sha256(data).hexdigest(), len(data)))
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, digest TEXT, size INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    conn.close()


def best_of(
    rounds: int, action: Callable[[], object], clock: Callable[[], float] = time.perf_counter
) -> float:
    """The least time `action` took over `rounds` runs, by `clock` (wall time by default)."""
    best = float("inf")
    for _ in range(rounds):
        started = clock()
        action()
        best = min(best, clock() - started)
    return best


def reference_seconds() -> float:
    """CPU seconds of the reference workload, best of `ROUNDS` (lower: a faster machine)."""
    return best_of(ROUNDS, _workload, time.process_time)


def _cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs since boot, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


class Machine:
    """Prints the machine's state when a benchmark starts (`start`) and ends (`end`)."""

    def __init__(self) -> None:
        self._times = _cpu_times()
        self._reference = 0.0

    def start(self) -> str:
        self._times = _cpu_times()
        self._reference = reference_seconds()
        line = f"machine at start: {self._describe(self._reference)}"
        print(line, flush=True)
        return line

    def end(self) -> str:
        reference = reference_seconds()
        line = f"machine at end:   {self._describe(reference)}"
        now, then = _cpu_times(), self._times
        if now is not None and then is not None and now[1] > then[1]:
            stolen = (now[0] - then[0]) / (now[1] - then[1])
            line += f"; steal {stolen:.1%} of the CPU time while it ran"
        print(line, flush=True)
        return line

    @staticmethod
    def _describe(reference: float) -> str:
        return (
            f"reference workload {reference:.3f} s CPU (benchmarks/machine.py), "
            f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
        )


@contextmanager
def watched(enabled: bool = True) -> Iterator[None]:
    """The machine's state printed before and after the body (the end only if it succeeds);
    nothing if not `enabled` (a script's own child processes) or if only help was asked for."""
    enabled = enabled and not {"-h", "--help"} & set(sys.argv[1:])
    machine = Machine()
    if enabled:
        machine.start()
    yield
    if enabled:
        machine.end()


if __name__ == "__main__":
    Machine().start()


def open_cached(url: str) -> Any:
    """`open_ledger` of a database a benchmark built earlier and kept: one built by an older
    version is upgraded first (`consent-ledger db upgrade`), as its owner would."""
    from ledger.config import open_ledger, upgrade
    from ledger.errors import SchemaOutOfDateError
    from ledger.persistence.database import Database

    try:
        return open_ledger(url)
    except SchemaOutOfDateError:
        database = Database(url)
        result = upgrade(database)
        database.dispose()
        print(f"upgraded the kept database from schema {result.before} to {result.after}")
        return open_ledger(url)
