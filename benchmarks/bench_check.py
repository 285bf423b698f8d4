"""Benchmark: the read-model check (`verify --read-models`) on a kept ledger, and an import
started while it runs.

    .venv/bin/python benchmarks/bench_check.py --db COPY.db --keys COPY-KEYS --runs 2
    .venv/bin/python benchmarks/bench_check.py --db COPY.db --keys COPY-KEYS --import-every 10

Give it a COPY of a benchmark ledger (`benchmarks/run.py` keeps them, with their keys): the
check may catch the read models up, and `--import-after` records facts. Each run is
`consent-ledger verify --read-models --json` as a process: its wall time, its CPU (its worker
processes included) and exit status. With `--import-every S`, an `import` of a small new
feed (a few customers, never seen before) is started S seconds after the check, and again
S seconds after each import ends, while the check runs: printed are when each started and
how long it took (an import waits for the writer's lock; the check held SQLite's for its
whole pass until it read in a snapshot; `verify`, before the check, never held it).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from machine import watched

COMMAND = Path(sys.executable).with_name("consent-ledger")
CUSTOMERS = 20


def small_feed(folder: Path) -> Path:
    """A feed of `CUSTOMERS` new customers, each registered and giving one consent."""
    run = uuid.uuid4().hex[:8]
    lines = []
    for number in range(CUSTOMERS):
        customer = f"BENCH-{run}-{number}"
        at = "2025-06-01T09:00:00+00:00"
        lines.append(
            {
                "id": f"{customer}-r",
                "type": "customer.registered",
                "at": at,
                "customer": customer,
                "name": "Bench Customer",
                "email": f"bench-{run}-{number}@example.org",
                "phone": "+44 7700 900000",
                "address": {
                    "line1": "1 Test St",
                    "city": "Leeds",
                    "postcode": "LS1 1AA",
                    "country": "GB",
                },
            }
        )
        lines.append(
            {
                "id": f"{customer}-c",
                "type": "consent.given",
                "at": at,
                "customer": customer,
                "purpose": "marketing",
                "channel": "email",
                "method": "checkout-checkbox",
                "policy_version": "2024-01",
            }
        )
    path = folder / f"feed-{run}.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_check(env: dict[str, str], import_every: float | None, folder: Path) -> None:
    before = children_cpu()
    started = time.perf_counter()
    check = subprocess.Popen(
        [str(COMMAND), "verify", "--read-models", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    imported = []
    while import_every is not None:
        time.sleep(import_every)
        if check.poll() is not None:
            break
        feed = small_feed(folder)
        began = time.perf_counter()
        result = subprocess.run(
            [str(COMMAND), "import", str(feed), "--json"],
            env=env,
            capture_output=True,
            check=False,
        )
        took = time.perf_counter() - began
        accepted = orjson.loads(result.stdout).get("accepted") if result.stdout else None
        ended = "" if check.poll() is None else ", check ended meanwhile"
        imported.append(
            f"at {began - started:.0f} s: {took:.1f} s (exit {result.returncode}, "
            f"{accepted} accepted{ended})"
        )
    out, _ = check.communicate()
    wall = time.perf_counter() - started
    cpu = children_cpu() - before
    document = orjson.loads(out)
    problems = [p["kind"] for p in document.get("problems", [])]
    print(
        f"verify --read-models: {wall:.1f} s wall, {cpu:.1f} s CPU (with the import if any), "
        f"exit {check.returncode}, ok={document.get('ok')}, problems={problems}",
        flush=True,
    )
    for line in imported:
        print(f"  import {line}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="a COPY of a SQLite ledger")
    parser.add_argument("--keys", type=Path, required=True, help="a copy of its key folder")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--import-every", type=float, default=None, metavar="SECONDS")
    args = parser.parse_args()
    env = dict(os.environ)
    env["CONSENT_LEDGER_DB"] = f"sqlite:///{args.db.resolve()}"
    env["CONSENT_LEDGER_KEY_DIR"] = str(args.keys.resolve())
    with watched(), tempfile.TemporaryDirectory() as folder:
        for _ in range(args.runs):
            one_check(env, args.import_every, Path(folder))


if __name__ == "__main__":
    main()
