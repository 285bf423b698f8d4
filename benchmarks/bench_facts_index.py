"""Benchmark: what a partial index of the fact index costs the SQLite inserts of an import.

    .venv/bin/python benchmarks/bench_facts_index.py --facts 1000000 --rounds 3

An import's wall time on a shared machine moves by more than a small index costs it. This
isolates the part an index of `ledger_facts` changes: the inserts of the fact index's rows.
It makes the rows an import of a generated feed (`ledger.samplefeed`) writes (fact id,
position, type, a stream id per customer, order or acquirer), then inserts them into a new
file, in the import's chunks (`ledger.application.CHUNK`), one transaction each, under the
ledger's own SQLite settings, into the schema as migrations make it: once as of 0012 and once
with 0013's partial index of the transfer disclosures and rectifications, alternated (A B A
B), each in a fresh file. Prints the CPU and wall seconds of the inserts of each. Asserts
nothing.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from machine import watched

from ledger.application import CHUNK

_TABLE = (
    "CREATE TABLE ledger_facts (fact_id VARCHAR(500) NOT NULL, notification_id BIGINT NOT NULL, "
    "fact_type VARCHAR(40) NOT NULL, originator_id CHAR(32) NOT NULL, PRIMARY KEY (fact_id))"
)
_INDEXES = [  # as migrations 0001, 0008 and 0012 make them
    "CREATE INDEX ix_ledger_facts_notification_id ON ledger_facts (notification_id)",
    "CREATE INDEX ix_ledger_facts_initiations ON ledger_facts (originator_id, notification_id) "
    "WHERE fact_type = 'transfer.initiated'",
    "CREATE INDEX ix_ledger_facts_exports ON ledger_facts (notification_id) "
    "WHERE fact_type = 'export.due_diligence'",
]
_0013 = (
    "CREATE INDEX ix_ledger_facts_disclosures_rectifications ON ledger_facts (notification_id) "
    "WHERE fact_type IN ('transfer.disclosure', 'customer.updated')"
)


def facts_of(count: int) -> list[tuple[str, int, str, str]]:
    """The fact index's rows of the first `count` lines of a generated feed."""
    from ledger.samplefeed import generate

    rows: list[tuple[str, int, str, str]] = []
    for position, fact in enumerate(generate(count // 14 + 10), start=1):
        stream = fact.get("customer") or fact.get("order") or fact.get("acquirer")
        ident = uuid.uuid5(uuid.NAMESPACE_URL, str(stream)).hex
        rows.append((fact["id"], position, fact["type"], ident))
        if position >= count:
            break
    return rows


def inserts(
    rows: list[tuple[str, int, str, str]], indexed: bool, folder: Path
) -> tuple[float, float]:
    path = folder / f"facts-{'0013' if indexed else '0012'}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536"):
        conn.execute(f"PRAGMA {pragma}")
    for statement in [_TABLE, *_INDEXES, *([_0013] if indexed else [])]:
        conn.execute(statement)
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(rows), CHUNK):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO ledger_facts (fact_id, notification_id, fact_type, originator_id) "
            "VALUES (?, ?, ?, ?)",
            rows[start : start + CHUNK],
        )
        conn.execute("COMMIT")
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = facts_of(args.facts)
    chosen = sum(1 for row in rows if row[2] in ("transfer.disclosure", "customer.updated"))
    print(f"{len(rows):,} facts, {chosen:,} of them disclosures or rectifications")
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(1, args.rounds + 1):
            for indexed in (False, True):
                wall, cpu = inserts(rows, indexed, Path(folder))
                results[indexed].append((wall, cpu))
                label = "0013 (with the index)" if indexed else "0012"
                print(f"round {round_}  {label:22} {wall:6.2f} s wall  {cpu:6.2f} s CPU")
    for indexed, runs in results.items():
        label = "0013" if indexed else "0012"
        cpus = sorted(cpu for _wall, cpu in runs)
        print(
            f"{label}: CPU seconds, best {cpus[0]:.2f}, all {', '.join(f'{c:.2f}' for c in cpus)}"
        )


if __name__ == "__main__":
    with watched(True):
        main()
