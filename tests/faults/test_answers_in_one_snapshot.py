"""A query answered from several statements sees the ledger as it stood at one moment.

A read outside a write is one statement in autocommit (`sqlite_reads`, `postgres_reads`):
each sees the log as committed when it ran. An answer read in several statements (a trail's
stream and its exports; a customer's stream and their data key) must not mix two moments:
another process may commit between any two of them. Each test below commits a write after
each statement of the command in turn, and holds the answer to one of the two moments.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.examples import registered


def test_every_read_of_one_snapshot_sees_the_ledger_as_it_stood_at_the_first(
    ledger: Any, ledger_url: str
) -> None:
    from ledger.persistence.database import Database

    count = "SELECT count(*) FROM ledger_events"
    urls = [ledger_url]
    if ledger_url.startswith("sqlite:///"):  # (read through SQLAlchemy, not `sqlite_reads`)
        urls.append(ledger_url.replace("sqlite:///", "sqlite+pysqlite:///"))
    for n, url in enumerate(urls):
        database = Database(url)
        try:
            with database.one_snapshot():
                [(first,)] = database.fetch_on_driver(count, ())
                ledger.import_lines([orjson.dumps(registered(f"S{n}a", 0))])
                with database.one_snapshot():  # (joins the outer one)
                    assert database.fetch_on_driver(count, ()) == [(first,)]
                assert database.fetch_on_driver(count, ()) == [(first,)]
            [(after,)] = database.fetch_on_driver(count, ())
            assert after > first
            # A failure inside the block ends its transaction too
            with pytest.raises(KeyError), database.one_snapshot():
                database.fetch_on_driver(count, ())
                raise KeyError
            ledger.import_lines([orjson.dumps(registered(f"S{n}b", 0))])
            assert database.fetch_on_driver(count, ()) > [(after,)]
        finally:
            database.dispose()
