"""Benchmark: what the personal-data features cost, on SQLite (or --db URL).

    .venv/bin/python benchmarks/bench_privacy.py --customers 10000
    .venv/bin/python benchmarks/bench_privacy.py --customers 2000 \
        --db postgresql://postgres@127.0.0.1:5432/test

Imports N generated customers (~15 facts each) twice into fresh ledgers: once as shipped, once
with the Art. 21 suppression-list upkeep switched off, and prints both times (the difference is
that upkeep's cost). Then times, on the first ledger: one `customer erase` (key destroyed,
WAL checkpoint or VACUUM), one access pack, `recipients notifications`, and `keys rotate`
(every data key re-wrapped). A PostgreSQL URL gets a fresh schema per ledger, dropped after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from machine import watched


@contextmanager
def fresh_url(db: str | None, folder: Path, name: str) -> Iterator[str]:
    if db is None:
        yield f"sqlite:///{folder / name}.db"
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(db.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        url = sa.engine.make_url(admin.url).update_query_dict(
            {"options": f"-csearch_path={schema}"}
        )
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def timed(label: str, action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = action()
    print(f"{label}: {time.perf_counter() - started:.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--db", help="a PostgreSQL server URL (default: SQLite files)")
    args = parser.parse_args()

    from ledger import application
    from ledger.config import open_ledger, upgrade
    from ledger.persistence.database import Database
    from ledger.samplefeed import generate_lines

    folder = Path(tempfile.mkdtemp(prefix="bench-privacy-"))
    os.environ["CONSENT_LEDGER_KEY_DIR"] = str(folder / "keys")
    lines = list(generate_lines(args.customers, seed=7))
    keep = application.Recording._keep_suppression
    with fresh_url(args.db, folder, "with") as url, fresh_url(args.db, folder, "without") as bare:
        for name, target in (("with", url), ("without", bare)):
            upgrade(Database(target))
            if name == "without":
                application.Recording._keep_suppression = lambda *_: None  # type: ignore[method-assign,assignment]
            ledger = open_ledger(target)
            summary = timed(
                f"import {args.customers} customers, {name} suppression upkeep",
                lambda ledger=ledger: ledger.import_lines(lines),
            )
            application.Recording._keep_suppression = keep  # type: ignore[method-assign]
            ledger.database.dispose()
        print(f"facts: {summary.accepted}")
        ledger = open_ledger(url)
        ref = next(iter(ledger.customer_refs()))
        timed("access pack of one customer", lambda: ledger.access_pack(ref))
        timed(
            "customer erase (one)",
            lambda: ledger.record_fact({"type": "subject.erased", "customer": ref}),
        )
        dues = timed("recipients notifications", ledger.notifications)
        print(f"notifications due: {len(dues)}")
        rotation = timed("keys rotate", ledger.rotate_master_key)
        print(f"data keys re-wrapped: {rotation.data_keys}")
        ledger.database.dispose()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    with watched():
        main()
