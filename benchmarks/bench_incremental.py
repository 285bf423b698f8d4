"""Benchmark: a later file of facts about customers the ledger already holds (a daily feed).

    .venv/bin/python benchmarks/bench_incremental.py --customers 20000
    .venv/bin/python benchmarks/bench_incremental.py --customers 20000 --tree /tmp/base --tree .
    .venv/bin/python benchmarks/bench_incremental.py --postgres postgresql://postgres@127.0.0.1:5432/consent_ledger_bench

`benchmarks/run.py` times the import of a new ledger's feed, where each customer's facts
follow their registration in the same file. A shop's daily feed is the other shape: facts
about customers recorded by earlier files, each of whom the import reads back from the
ledger (their whole stream) before it can apply the rules to their new fact.

The script imports a generated feed of `--customers` customers (~15 facts each) once, into
a base ledger; then, each round, imports into a fresh copy of it a later file of
`--facts-per-customer` consent facts for every customer (dated after the feed), in a process
of its own, timed inside. With `--tree DIR` given more than once, each round runs the later
file from each source tree in turn (A B A B ...), the tree's packages first on the path:
`git worktree add /tmp/base origin/main` and `--tree /tmp/base --tree .` compare a change
with its base. With `--postgres`, the ledgers are databases `incr_base` and `incr_run` on
that server, dropped at the end. Prints wall and CPU seconds and facts/s per run. Asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
from machine import watched

HERE = Path(__file__).resolve().parent.parent

# The later file's import, timed inside a process with TREE's packages first on the path.
_CHILD = """
import json, sys, time
sys.path.insert(0, {tree!r})
from ledger.config import open_ledger
app = open_ledger({url!r})
started, cpu = time.perf_counter(), time.process_time()
with open({feed!r}, "rb") as lines:
    summary = app.import_lines(lines)
print(json.dumps({{"accepted": summary.accepted, "wall": time.perf_counter() - started,
                   "cpu": time.process_time() - cpu}}))
"""


def _feeds(work: Path, customers: int, per_customer: int) -> tuple[Path, Path]:
    """The base feed (generated) and the later file: consent facts for its customers."""
    from ledger.samplefeed import generate_lines

    base, later = work / f"base-{customers}.jsonl", work / f"later-{customers}-{per_customer}.jsonl"
    refs: list[str] = []
    with base.open("wb") as handle:
        for line in generate_lines(customers):
            handle.write(line)
            fact = orjson.loads(line)
            if fact["type"] == "customer.registered":
                refs.append(fact["customer"])
    channels = ("email", "post")
    with later.open("wb") as handle:
        for round_ in range(per_customer):
            for number, ref in enumerate(refs):
                fact = {
                    "id": f"later-{round_}-{number}",
                    "type": "consent.given",
                    "at": f"2099-01-01T{round_ % 24:02d}:00:00Z",
                    "customer": ref,
                    "purpose": "market_research",
                    "channel": channels[round_ % 2],
                    "method": "bench",
                    "policy_version": "2024-01",
                }
                handle.write(orjson.dumps(fact) + b"\n")
    return base, later


def _import(url: str, feed: Path, tree: Path, env: dict[str, str]) -> dict[str, float]:
    code = _CHILD.format(tree=str(tree), url=url, feed=str(feed))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"the import failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _sqlite_copy(work: Path, base: Path, name: str) -> tuple[str, dict[str, str]]:
    copy = work / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{copy}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(f"{copy}.keys", ignore_errors=True)
    shutil.copyfile(base, copy)
    shutil.copytree(f"{base}.keys", f"{copy}.keys")
    os.sync()  # the copy's pages on disk: not flushed by the timed import's checkpoint
    return f"sqlite:///{copy}", {}


def _postgres_copy(server: str, base: str, name: str, keys: Path) -> tuple[str, dict[str, str]]:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server)
    _drop(server, name)
    admin = url.set(database="postgres", drivername="postgresql").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        if name != base:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{base}"')
        else:
            conn.execute(f'CREATE DATABASE "{name}"')
    target = url.set(database=name).render_as_string(False)
    if name == base:  # a new PostgreSQL ledger's schema is made by `db upgrade`
        command = Path(sys.executable).with_name("consent-ledger")
        upgrade = [command, "--db", target, "--log-level", "error", "db", "upgrade"]
        env = {**os.environ, "CONSENT_LEDGER_KEY_DIR": str(keys)}
        subprocess.run(upgrade, check=True, capture_output=True, env=env)
    return target, {"CONSENT_LEDGER_KEY_DIR": str(keys)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--facts-per-customer", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--postgres", help="a PostgreSQL server URL (its databases are made)")
    parser.add_argument("--tree", type=Path, action="append", help="a source tree (repeat)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/consent-ledger-bench-incr"))
    args = parser.parse_args()
    trees = [tree.resolve() for tree in (args.tree or [HERE])]
    args.work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENT_LEDGER_")}
    base_feed, later = _feeds(args.work, args.customers, args.facts_per_customer)
    if args.postgres:
        keys = args.work / "keys-postgresql"
        shutil.rmtree(keys, ignore_errors=True)
        url, extra = _postgres_copy(args.postgres, "incr_base", "incr_base", keys)
    else:
        base_db = args.work / "base.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{base_db}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(f"{base_db}.keys", ignore_errors=True)
        url, extra = f"sqlite:///{base_db}", {}
    made = _import(url, base_feed, trees[0], {**env, **extra})
    facts = sum(1 for _ in later.open("rb"))
    print(
        f"base ledger: {made['accepted']:,.0f} facts of {args.customers:,} customers "
        f"({made['accepted'] / made['wall']:,.0f} facts/s); later file: {facts:,} facts",
        flush=True,
    )
    for round_ in range(1, args.rounds + 1):
        for tree in trees:
            if args.postgres:
                target, extra = _postgres_copy(args.postgres, "incr_base", "incr_run", keys)
            else:
                target, extra = _sqlite_copy(args.work, args.work / "base.db", "run")
            result = _import(target, later, tree, {**env, **extra})
            print(
                f"round {round_}  {str(tree)[-40:]:40}  {result['accepted']:,.0f} facts  "
                f"{result['wall']:6.2f} s wall  {result['cpu']:6.2f} s CPU  "
                f"{result['accepted'] / result['wall']:9,.0f} facts/s",
                flush=True,
            )
    if args.postgres:
        _drop(args.postgres, "incr_run", "incr_base")


def _drop(server: str, *names: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(server).set(database="postgres", drivername="postgresql")
    with psycopg.connect(admin.render_as_string(False), autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


if __name__ == "__main__":
    with watched():
        main()
