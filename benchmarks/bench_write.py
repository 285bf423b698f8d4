"""Benchmark: the start-to-end time of the commands that write one fact, as processes.

    .venv/bin/python benchmarks/bench_write.py --db sqlite:///copy-of-ledger.db --runs 10
    .venv/bin/python benchmarks/bench_write.py --db sqlite:///copy.db --tree /tmp/base --tree .

Each run starts the commands a support agent or the shop's platform runs to record one fact,
each in a fresh process as the console script runs (bytecode cached): `record` (a
consent.given for an existing customer, a new fact id each run), `consent give`, `disclose`
(an affiliate disclosure the rules allow), `customer erase` (of a customer registered for it)
and, as the reference of a process that only reads, `customer trail`. It prints, per command,
the wall time (median and p90) and the CPU time (user + system: median and p90) of its runs.

The commands WRITE to the ledger `--db` names (the customers it registers are synthetic, under
refs starting with `BENCH-`): give it a copy, never a ledger that matters. The ledger's keys
are found as the commands find them (`CONSENT_LEDGER_KEY_DIR`, or beside an SQLite file).

With `--tree DIR` given more than once, each command is run from each source tree in turn
(A B A B ...: the same ledger, the same moment of a noisy machine), the trees' packages first
on the path: `git worktree add /tmp/base origin/main` and `--tree /tmp/base --tree .` compare
a change with its base. Without it, the tree this script is in. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
from machine import watched

HERE = Path(__file__).resolve().parent.parent

# Runs `cli.main:run` as the console script does, with TREE's packages first on the path.
_LAUNCH = (
    "import sys; sys.path.insert(0, {tree!r}); sys.argv[0] = 'consent-ledger'; "
    "from cli.main import run; run()"
)


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def _run(tree: Path, args: list[str], env: dict[str, str]) -> tuple[float, float, bytes]:
    """Wall and CPU seconds of one command, and its stdout; exits if the command fails."""
    argv = [sys.executable, "-c", _LAUNCH.format(tree=str(tree)), *args]
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    cpu = _child_cpu()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])}… failed:\n{stderr.decode(errors='replace')}")
    return seconds, cpu, stdout


_last_children = [0.0]


def _child_cpu() -> float:
    """CPU seconds (user + system) of the child just reaped (by `communicate`): how much
    this process's children's times grew since the last call."""
    times = os.times()
    total = times.children_user + times.children_system
    spent, _last_children[0] = total - _last_children[0], total
    return spent


def _fact(kind: str, **fields: object) -> str:
    return orjson.dumps({"type": kind, **fields}).decode()


def _commands(db: str, customer: str, erasable: list[str]) -> dict[str, list[list[str]]]:
    """Each measured command's argument lists, one per run (a new fact id each run)."""
    runs = len(erasable)
    consent = {"purpose": "marketing", "channel": "email", "method": "bench"}
    return {
        "record consent.given": [
            [
                "--db",
                db,
                "record",
                _fact("consent.given", customer=customer, policy_version="2024-01", **consent),
                "--json",
            ]
            for _ in range(runs)
        ],
        "consent give": [
            [
                "--db",
                db,
                "consent",
                "give",
                customer,
                "marketing",
                "post",
                "--method",
                "bench",
                "--policy-version",
                "2024-01",
                "--json",
            ]
            for _ in range(runs)
        ],
        "disclose affiliate": [
            [
                "--db",
                db,
                "disclose",
                "affiliate",
                "Offspring",
                "--customer",
                customer,
                "--categories",
                "name,email",
                "--json",
            ]
            for _ in range(runs)
        ],
        "customer erase": [["--db", db, "customer", "erase", ref, "--json"] for ref in erasable],
        "customer trail (a read)": [
            ["--db", db, "customer", "trail", customer, "--json"] for _ in range(runs)
        ],
    }


def _register(tree: Path, db: str, ref: str, env: dict[str, str]) -> None:
    registered = _fact(
        "customer.registered",
        customer=ref,
        name="Bench Customer",
        email=f"{ref.lower()}@bench.invalid",
        address={
            "line1": "1 Bench Street",
            "city": "Testtown",
            "postcode": "TT1 1TT",
            "country": "GB",
        },
    )
    _run(tree, ["--db", db, "record", registered], env)


def _setup(
    tree: Path, db: str, customer: str | None, count: int, env: dict[str, str]
) -> tuple[str, list[str]]:
    """The customer the commands name (registered if not given, with affiliate_sharing given
    so that the disclosure is allowed) and `count` customers registered to be erased."""
    tag = uuid.uuid4().hex[:8].upper()
    if customer is None:
        customer = f"BENCH-{tag}"
        _register(tree, db, customer, env)
    consent = _fact(
        "consent.given",
        customer=customer,
        purpose="affiliate_sharing",
        channel="email",
        method="bench",
        policy_version="2024-01",
    )
    _run(tree, ["--db", db, "record", consent], env)
    erasable = [f"BENCH-{tag}-E{number}" for number in range(count)]
    for ref in erasable:
        _register(tree, db, ref, env)
    return customer, erasable


def _ms(values: list[float], quantile: float) -> str:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(quantile * (len(ordered) - 1))))
    return f"{ordered[index] * 1000:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="the ledger's URL (a copy: it is written)")
    parser.add_argument("--runs", type=int, default=10, help="runs of each command (10)")
    parser.add_argument("--customer", help="an existing customer (default: one registered)")
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        help="a source tree to run the commands from (repeat to compare, interleaved)",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/consent-ledger-bench-write"))
    parser.add_argument(
        "--only", action="append", help="measure only the commands whose name starts so"
    )
    args = parser.parse_args()
    trees = [tree.resolve() for tree in (args.tree or [HERE])]
    env = _env(args.work)
    with watched():
        customer, erasable = _setup(trees[0], args.db, args.customer, args.runs * len(trees), env)
        commands = _commands(args.db, customer, erasable)
        if args.only:
            commands = {n: c for n, c in commands.items() if n.startswith(tuple(args.only))}
        for name, argvs in commands.items():  # one untimed start each, bytecode written
            for tree in trees:
                if not name.startswith("customer erase"):
                    _run(tree, argvs[0], env)
        walls: dict[tuple[str, Path], list[float]] = {}
        cpus: dict[tuple[str, Path], list[float]] = {}
        for number in range(args.runs):
            for name, argvs in commands.items():
                for position, tree in enumerate(trees):
                    argv = argvs[number]
                    if name.startswith("customer erase"):
                        argv = argvs[number * len(trees) + position]
                    seconds, cpu, _ = _run(tree, argv, env)
                    walls.setdefault((name, tree), []).append(seconds)
                    cpus.setdefault((name, tree), []).append(cpu)
        print(f"{args.runs} runs of each command on {args.db.split('@')[-1]}, interleaved")
        print(
            f"{'command':<26} {'tree':<24} {'wall p50':>8} {'p90':>6} "
            f"{'CPU p50':>8} {'p90':>6} (ms)"
        )
        for name in commands:
            for tree in trees:
                wall, cpu = walls[(name, tree)], cpus[(name, tree)]
                print(
                    f"{name:<26} {str(tree)[-24:]:<24} {_ms(wall, 0.5):>8} {_ms(wall, 0.9):>6} "
                    f"{_ms(cpu, 0.5):>8} {_ms(cpu, 0.9):>6}"
                )


if __name__ == "__main__":
    main()
