"""Benchmark: a pseudonymous due-diligence export of N customers on SQLite.

    .venv/bin/python benchmarks/bench_export.py --customers 10000
    .venv/bin/python benchmarks/bench_export.py --customers 100000 --format csv

Builds (once, cached under --work) a ledger of N generated customers (~15 facts each), then
runs the export in a fresh child process so its peak RSS is the export's own, and prints:
facts, customers, seconds (total, and the ledger verification part), CPU seconds (this
process and its worker processes: the export's scan workers and verify's hashing workers),
customers/s, facts/s, peak RSS (of this process, and of the largest worker: each process
holds one customer at a time), bytes written, and that `export verify` passes. The export
figure of `benchmarks/run.py` is the same export run as the command (wall seconds, and the
peak RSS of the largest process, workers included). `--sequential` scans in one process.
Targets (issue 6): 100k customers (~1.5M facts) in <= 10 s, <= 300 MB.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import open_cached, watched


def build(path: Path, customers: int) -> None:
    from ledger.config import open_ledger
    from ledger.samplefeed import generate_lines

    started = time.perf_counter()
    ledger = open_ledger(f"sqlite:///{path}")
    summary = ledger.import_lines(generate_lines(customers, seed=7))
    ledger.database.dispose()
    print(
        f"built {path.name}: {summary.accepted} facts in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )


def export(path: Path, out: Path, file_format: str, sequential: bool) -> None:
    from ledger import exports, manifest
    from ledger.exports import ExportRequest, export_due_diligence
    from ledger.persistence import seals

    if sequential:
        exports.PARALLEL_MIN_CUSTOMERS = 1 << 62
    ledger = open_cached(f"sqlite:///{path}")
    started = time.perf_counter()
    verified = seals.verify_ledger(ledger)
    verify_seconds = time.perf_counter() - started
    started = time.perf_counter()
    cpu = _cpu()
    result = export_due_diligence(
        ledger, ExportRequest("Northwind Retail Group", out, format=file_format)
    )
    seconds = time.perf_counter() - started
    cpu = _cpu() - cpu
    # This process's own high-water mark (VmHWM): its ru_maxrss would include the parent's,
    # which built the ledger (Linux hands a parent's peak on through fork and exec).
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    peak_mb = peak_kib / 1024
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    written = sum(f.bytes for f in result.files)
    checked = manifest.verify_export_dir(out, seals.load_public_key(ledger.database))
    print(f"facts              {verified.facts}")
    print(f"customers          {result.customers}")
    print(f"format             {file_format}")
    print(f"export seconds     {seconds:.2f}  (of which verify ~{verify_seconds:.2f})")
    print(f"export CPU seconds {cpu:.2f}  (all processes: on N CPUs wall >= CPU / N)")
    print(f"customers/s        {result.customers / seconds:,.0f}")
    print(f"facts/s            {verified.facts / seconds:,.0f}")
    print(f"peak RSS           {peak_mb:.0f} MB  (largest child process {worker_mb:.0f} MB)")
    print(f"bytes written      {written / 1e6:.1f} MB")
    print(f"export verify      {'ok' if checked.ok else 'FAILED'}")


def _cpu() -> float:
    """CPU seconds of this process and of its (finished) worker processes."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--format", default="jsonl", choices=["jsonl", "csv", "parquet"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/consent-ledger-bench"))
    parser.add_argument("--sequential", action="store_true", help="scan in one process")
    parser.add_argument("--export-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / f"export-{args.customers}.db"
    os.environ["CONSENT_LEDGER_KEY_DIR"] = str(args.work / f"export-{args.customers}.keys")
    out = args.work / f"export-{args.customers}-out"
    if args.export_only:
        export(path, out, args.format, args.sequential)
        return
    if not path.exists():
        build(path, args.customers)
    shutil.rmtree(out, ignore_errors=True)
    child = [sys.executable, __file__, "--export-only", *sys.argv[1:]]
    subprocess.run(child, check=True)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    with watched("--export-only" not in sys.argv):
        main()
