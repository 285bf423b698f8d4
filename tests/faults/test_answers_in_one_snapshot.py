"""A query answered from several statements sees the ledger as it stood at one moment.

A read outside a write is one statement in autocommit (`sqlite_reads`, `postgres_reads`):
each sees the log as committed when it ran. An answer read in several statements (a trail's
stream and its exports; a customer's stream and their data key) must not mix two moments:
another process may commit between any two of them. Each test below commits a write after
each statement of the command in turn, and holds the answer to one of the two moments.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.exports import ExportRequest, export_due_diligence
from tests.cli_helpers import run
from tests.examples import line, registered


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


class Between:
    """`Database.fetch_on_driver` with a write committed after the command's read statement
    number `after` (none while `after` is 0); the writes' own statements pass through."""

    def __init__(self, monkeypatch: Any, write: Callable[[], None]) -> None:
        from ledger.persistence.database import Database

        real = Database.fetch_on_driver
        self.statements: list[str] = []
        self.after = 0
        self.written = False
        writing = [False]

        def fetching(database: Database, sql: str, params: tuple[Any, ...]) -> list[Any]:
            rows = real(database, sql, params)
            if writing[0] or database.current is not None:
                # The write's own; or the command's, under the writer's lock (which a write
                # committing there would wait for: after it, as after a later read)
                return rows
            self.statements.append(sql)
            if len(self.statements) == self.after:
                writing[0] = True
                try:
                    write()
                finally:
                    writing[0] = False
                self.written = True
            return rows

        monkeypatch.setattr(Database, "fetch_on_driver", fetching)

    def reads(self, command: Callable[[], Any]) -> int:
        """How many statements `command` reads, nothing committed meanwhile."""
        self.after, self.written = 0, False
        self.statements.clear()
        command()
        return len(self.statements)

    def commit_after(self, after: int, command: Callable[[], Any]) -> Any:
        self.after, self.written = after, False
        self.statements.clear()
        answer = command()
        assert self.written, f"statement {after} of {len(self.statements)} was not run"
        return answer


def test_customer_show_of_a_customer_erased_meanwhile_is_before_or_after_the_erasure(
    ledger: Any, ledger_url: str, monkeypatch: Any
) -> None:
    import ledger.persistence.keys as keys

    monkeypatch.setattr(keys, "_SHRED_WAIT", 0.2)  # (a reader's snapshot may hold it back)
    refs = [f"C{n}" for n in range(1, 20)]
    ledger.import_lines(orjson.dumps(registered(ref, n)) for n, ref in enumerate(refs))
    erasing = iter(refs[1:])
    erased: list[str] = []

    def erase() -> None:
        erased.append(next(erasing))
        ledger.erase(erased[-1])

    between = Between(monkeypatch, erase)

    def show(ref: str) -> Any:
        return run(ledger_url, "customer", "show", ref, "--json")

    reads = between.reads(lambda: show(refs[0]))
    assert 2 <= reads < len(refs), between.statements
    for after in range(1, reads + 1):
        ref = refs[after]
        answer = between.commit_after(after, lambda ref=ref: show(ref))  # type: ignore[misc]
        assert erased[-1] == ref
        # Then the customer as they stood before the erasure (details), or after (none)
        assert answer.exit_code == 0, (after, answer.stderr)
        document = orjson.loads(answer.stdout)
        assert (document["details"] is None) == document["erased"], (after, document)


def test_an_access_pack_of_a_customer_erased_meanwhile_is_before_or_after_the_erasure(
    ledger: Any, ledger_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    # The pack written without recording the request (`--no-record`): read outside a write
    import ledger.persistence.keys as keys

    monkeypatch.setattr(keys, "_SHRED_WAIT", 0.2)  # (a reader's snapshot may hold it back)
    refs = [f"C{n}" for n in range(1, 20)]
    ledger.import_lines(orjson.dumps(registered(ref, n)) for n, ref in enumerate(refs))
    erasing = iter(refs[1:])
    between = Between(monkeypatch, lambda: ledger.erase(next(erasing)))
    out = tmp_path / "pack.json"

    def pack(ref: str) -> Any:
        answer = run(ledger_url, "customer", "access-export", ref, "--out", str(out), "--no-record")
        return answer, (orjson.loads(out.read_bytes()) if answer.exit_code == 0 else None)

    reads = between.reads(lambda: pack(refs[0]))
    assert 2 <= reads < len(refs), between.statements
    for after in range(1, reads + 1):
        answer, document = between.commit_after(after, lambda ref=refs[after]: pack(ref))  # type: ignore[misc]
        # Then the customer as they stood before the erasure (details), or after (none)
        assert answer.exit_code == 0, (after, answer.stderr)
        assert (document["personal_data"] is None) == document["erased"], (after, document)


ACQUIRER = "Contoso Holdings"


def test_a_trail_never_lists_an_export_without_the_disclosure_recorded_before_it(
    ledger: Any, ledger_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    # C1 is registered; then, between two statements of a trail of C1, a disclosure of C1
    # and a due-diligence export (which holds C1) commit, one after the other.
    ledger.import_lines([orjson.dumps(registered("C1", 0))])
    exports = iter(range(100))

    def disclose_then_export() -> None:
        n = next(exports)
        fact = line("affiliate.disclosure", f"C1-d{n}", 10 + n, customer="C1")
        assert ledger.import_lines([orjson.dumps(fact)]).accepted == 1
        export_due_diligence(ledger, ExportRequest(acquirer=ACQUIRER, out=tmp_path / f"dd{n}"))

    between = Between(monkeypatch, disclose_then_export)

    def trail() -> list[dict[str, Any]]:
        answer = run(ledger_url, "customer", "trail", "C1", "--json")
        assert answer.exit_code == 0, answer.stderr
        rows: list[dict[str, Any]] = orjson.loads(answer.stdout)["disclosures"]
        return rows

    reads = between.reads(trail)
    for after in range(1, reads + 1):
        before = [row["fact_id"] for row in trail()]
        shown = [row["fact_id"] for row in between.commit_after(after, trail)]
        # Then the trail is C1's as it stood before that write, or after it: never an export
        # that held C1 listed without the disclosure of C1 recorded before it.
        assert set(before) <= set(shown), (after, before, shown)
        new = sorted(set(shown) - set(before))
        if new:
            assert len(new) == 2 and new[0] == f"C1-d{after - 1}", (after, before, shown)
            assert new[1].startswith("export-"), (after, before, shown)


def test_a_trail_known_at_a_later_time_withholds_once_erased_meanwhile(
    ledger: Any, ledger_url: str, monkeypatch: Any
) -> None:
    # Each customer's data went to a recipient named like an email address (withheld from
    # their trail once they are erased, whatever time the trail is asked for)
    import ledger.persistence.keys as keys

    monkeypatch.setattr(keys, "_SHRED_WAIT", 0.2)  # (a reader's snapshot may hold it back)
    refs = [f"C{n}" for n in range(1, 12)]
    facts = [registered(ref, n) for n, ref in enumerate(refs)]
    facts += [_disclosure(ref, "d1", 20) for ref in refs]
    assert ledger.import_lines(orjson.dumps(f) for f in facts).accepted == len(facts)
    erasing = iter(refs[1:])

    def disclose_then_erase() -> None:
        # Another disclosure of the customer, then their erasure, in one import
        ref = next(erasing)
        erasure = line("subject.erased", f"{ref}-x", 40, customer=ref)
        more = [_disclosure(ref, "d2", 30), erasure]
        assert ledger.import_lines(orjson.dumps(f) for f in more).accepted == 2

    between = Between(monkeypatch, disclose_then_erase)

    def trail(ref: str) -> list[dict[str, Any]]:
        # As known at the end of a day to come: everything recorded by the time it answers
        answer = run(ledger_url, "customer", "trail", ref, "--known-at", "2999-01-01", "--json")
        assert answer.exit_code == 0, answer.stderr
        rows: list[dict[str, Any]] = orjson.loads(answer.stdout)["disclosures"]
        return rows

    reads = between.reads(lambda: trail(refs[0]))
    for after in range(1, reads + 1):
        ref = refs[after]
        rows = between.commit_after(after, lambda ref=ref: trail(ref))  # type: ignore[misc]
        # Then the trail is before the import (one disclosure, named), or after it (both,
        # the customer erased: the names withheld)
        shown = [(row["fact_id"], row["recipient"] == EMAIL) for row in rows]
        assert shown in ([(f"{ref}-d1", True)], [(f"{ref}-d1", False), (f"{ref}-d2", False)]), (
            after,
            shown,
        )


EMAIL = "ann@example.org"


def _disclosure(ref: str, name: str, minutes: int) -> dict[str, Any]:
    return line("affiliate.disclosure", f"{ref}-{name}", minutes, customer=ref, affiliate=EMAIL)


def test_order_show_of_an_order_dispatched_meanwhile_gives_the_status_of_its_facts(
    ledger: Any, ledger_url: str, monkeypatch: Any
) -> None:
    refs = [f"C{n}" for n in range(1, 8)]
    facts = [registered(ref, n) for n, ref in enumerate(refs)]
    facts += [line("order.placed", f"{ref}-o", 10, customer=ref, order=f"O-{ref}") for ref in refs]
    assert ledger.import_lines(orjson.dumps(f) for f in facts).accepted == len(facts)
    dispatching = iter(refs[1:])

    def dispatch() -> None:
        ref = next(dispatching)
        fact = line("order.dispatched", f"{ref}-s", 20, order=f"O-{ref}")
        assert ledger.import_lines([orjson.dumps(fact)]).accepted == 1

    between = Between(monkeypatch, dispatch)

    def show(ref: str) -> dict[str, Any]:
        answer = run(ledger_url, "order", "show", f"O-{ref}", "--json")
        assert answer.exit_code == 0, answer.stderr
        document: dict[str, Any] = orjson.loads(answer.stdout)
        return document

    reads = between.reads(lambda: show(refs[0]))
    for after in range(1, reads + 1):
        document = between.commit_after(after, lambda ref=refs[after]: show(ref))  # type: ignore[misc]
        # Then the order as it stood before the dispatch, or after: its status and its facts
        dispatched = any(fact["type"] == "order.dispatched" for fact in document["facts"])
        assert document["status"] == ("dispatched" if dispatched else "placed"), (after, document)


def test_the_recipient_registry_counts_the_exports_it_lists_as_of_its_position(
    ledger: Any, ledger_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    # C0 is registered and exported; then, between two statements of `recipients list`, one
    # more customer is registered and another export (which holds both) commits.
    ledger.import_lines([orjson.dumps(registered("C0", 0))])
    export_due_diligence(ledger, ExportRequest(acquirer=ACQUIRER, out=tmp_path / "dd"))
    positions = [
        ledger.database.fetch_on_driver("SELECT max(notification_id) FROM ledger_events", ())[0][0]
    ]
    customers = iter(range(1, 100))

    def register_then_export() -> None:
        n = next(customers)
        assert ledger.import_lines([orjson.dumps(registered(f"C{n}", n))]).accepted == 1
        export_due_diligence(ledger, ExportRequest(acquirer=ACQUIRER, out=tmp_path / f"dd{n}"))
        positions.append(
            ledger.database.fetch_on_driver("SELECT max(notification_id) FROM ledger_events", ())[
                0
            ][0]
        )

    between = Between(monkeypatch, register_then_export)

    def registry() -> dict[str, Any]:
        answer = run(ledger_url, "recipients", "list", "--json")
        assert answer.exit_code == 0, answer.stderr
        document: dict[str, Any] = orjson.loads(answer.stdout)
        return document

    reads = between.reads(registry)
    for after in range(1, reads + 1):
        document = between.commit_after(after, registry)
        # Then the exports listed are those recorded by the registry's position, and the
        # customers they held are counted of those exports: the n-th held n customers
        (row,) = [r for r in document["recipients"] if r["recipient"] == ACQUIRER]
        exports = row["exports"]
        assert row["exported_customers"] == exports, (after, row)
        assert positions[exports - 1] <= document["position"], (after, positions, document)
        assert exports == len(positions) or positions[exports] > document["position"], (
            after,
            positions,
            document,
        )


def test_an_identified_export_while_a_customer_is_erased_is_made_or_refused_not_failed(
    ledger: Any, ledger_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    # An identified export reads the customers as of the events it verified, then opens each
    # one's personal data with their key: a customer erased meanwhile has no key any more.
    import ledger.persistence.keys as keys

    monkeypatch.setattr(keys, "_SHRED_WAIT", 0.2)  # (a reader's snapshot may hold it back)
    refs = [f"C{n:02d}" for n in range(60)]
    facts = [line("transfer.initiated", "t-1", 0, acquirer=ACQUIRER)]
    facts += [registered(ref, n + 1) for n, ref in enumerate(refs)]
    assert ledger.import_lines(orjson.dumps(f) for f in facts).accepted == len(facts)
    erasing = iter(reversed(refs))  # the last registered first: their keys are read last
    between = Between(monkeypatch, lambda: ledger.erase(next(erasing)))
    folders = iter(range(1000))

    def export() -> Any:
        out = tmp_path / f"dd{next(folders)}"
        return run(
            ledger_url, "export", "due-diligence", "--acquirer", ACQUIRER, "--out", str(out),
            "--identified", "--json",
        )  # fmt: skip

    reads = between.reads(export)  # (a key read for each customer, among others)
    for after in (1, 2, 3, 4, 5, reads // 2):
        answer = between.commit_after(after, export)
        # Then the export is made (of the ledger before the erasure), or refused as one that
        # ran while a customer was erased: run it again. Never an altered key (exit 4).
        if answer.exit_code != 0:
            assert answer.exit_code == 1, (after, answer.stderr)
            assert "erased while the export ran" in answer.stderr, (after, answer.stderr)
