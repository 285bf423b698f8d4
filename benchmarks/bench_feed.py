"""Benchmark: parsing and validating feed lines (`ledger.feed.parse_line`), per line.

    .venv/bin/python benchmarks/bench_feed.py                 # 100k generated lines, best of 5
    .venv/bin/python benchmarks/bench_feed.py --lines 20000 --rounds 3

The first step of every import line, on the import's own thread. Prints microseconds per
line (the best round: the least disturbed by other work) and the rounds' spread. Asserts
nothing.
"""

from __future__ import annotations

import argparse
import time

from machine import watched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from ledger.feed import parse_line
    from ledger.samplefeed import generate_lines

    lines = []
    for line in generate_lines(args.lines // 14 + 10):
        lines.append(line)
        if len(lines) >= args.lines:
            break
    seconds = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for number, line in enumerate(lines, start=1):
            parse_line(line, number)
        seconds.append(time.perf_counter() - started)
    per_line = [s / len(lines) * 1e6 for s in seconds]
    print(
        f"parse_line: {min(per_line):.2f} us per line (best of {args.rounds}; "
        f"rounds {min(per_line):.2f}-{max(per_line):.2f}), {len(lines):,} lines",
        flush=True,
    )


if __name__ == "__main__":
    with watched():
        main()
