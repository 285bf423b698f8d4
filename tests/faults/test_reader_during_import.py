"""Concurrent writer and reader: queries during an import never fail, and see a prefix.

A feed arrives as consecutive files, each imported in one transaction. While they are being
imported, queries run: none fails, and each answer reflects a prefix of the recorded log.
A customer shows exactly their first k facts (so a disclosure is never visible without the
facts recorded before it), a trail lists exactly the disclosures among those, and the ledger
as a whole holds exactly the first n files.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from ledger.errors import CustomerNotFoundError
from ledger.persistence import tables
from ledger.vocabulary import DISCLOSURES
from tests.cli_helpers import run
from tests.faults.support import customer_of, fact_id, feed_lines, fork_commands, write_feed

FILES = 8


def _by_customer(lines: list[bytes]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each customer's fact ids in feed order, and their disclosures' fact ids."""
    facts: dict[str, list[str]] = defaultdict(list)
    disclosures: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        obj = orjson.loads(line)
        ref = customer_of(obj["id"])
        if ref is not None:
            facts[ref].append(obj["id"])
            if obj["type"] in DISCLOSURES:
                disclosures[ref].append(obj["id"])
    return facts, disclosures


def _is_prefix(seen: set[str], expected: list[str]) -> bool:
    return seen == set(expected[: len(seen)])


def test_queries_during_an_import_never_fail_and_see_a_prefix_of_the_log(
    ledger: Any, ledger_url: str, tmp_path: Path
) -> None:
    # Given a feed that arrives as eight consecutive files
    lines = feed_lines(80, prefix="r-")
    size = -(-len(lines) // FILES)
    parts = [lines[n : n + size] for n in range(0, len(lines), size)]
    files = [write_feed(tmp_path / f"part-{n}.jsonl", part) for n, part in enumerate(parts)]
    committed = [sum(len(part) for part in parts[:n]) for n in range(len(parts) + 1)]
    facts, disclosures = _by_customer(lines)
    refs = sorted(facts)
    rng = random.Random(7)

    # When they are imported one after the other, while queries run
    ledger.database.dispose()  # no connection of ours carried into the forked importer
    writer = fork_commands(ledger_url, [["import", str(path)] for path in files])
    answers = partial = 0
    while True:
        done, status = os.waitpid(writer, os.WNOHANG)
        ref = rng.choice(refs)
        # Then the ledger holds exactly the first n files
        with ledger.database.reading() as conn:
            held = conn.execute(sa.select(sa.func.count()).select_from(tables.facts)).scalar()
        assert held in committed, f"{held} facts recorded: not a whole number of files"
        partial += 0 < held < len(lines)
        # And a customer shows exactly their first k facts
        try:
            _, events = ledger.customer_with_events(ref)
        except CustomerNotFoundError:
            pass
        else:
            seen = {event.fact_id for event in events}
            assert _is_prefix(seen, facts[ref]), (ref, sorted(seen))
        # And the trail (as the command answers it) lists the disclosures among those
        result = run(ledger_url, "customer", "trail", ref, "--json")
        if result.exit_code == 0:
            trail = orjson.loads(result.stdout)["disclosures"]
            shown = {row["fact_id"] for row in trail}
            assert _is_prefix(shown, disclosures[ref]), (ref, sorted(shown))
        else:
            assert result.exit_code == 1 and "C" in result.stderr, result.stderr
        answers += 1
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, "the import failed"
            break

    # And the queries did run while the import was under way, and it all arrived
    assert partial >= 1 and answers >= 2, (partial, answers)
    with ledger.database.reading() as conn:
        held = conn.execute(sa.select(sa.func.count()).select_from(tables.facts)).scalar()
    assert held == len(lines)


def test_a_customer_recorded_between_the_reads_of_a_trail_is_not_an_altered_index(
    ledger: Any, ledger_url: str, monkeypatch: Any
) -> None:
    # A trail of a customer the ledger does not hold reads their stream, then asks whether the
    # customer index names them and whether their stream has events (an index row deleted
    # outside consent-ledger). A new customer's import may commit between any two of those.
    from ledger.persistence.database import Database

    registrations = [
        line for line in feed_lines(12, prefix="n-") if b'"customer.registered"' in line
    ]
    real = Database.fetch_on_driver
    statements: list[str] = []
    commit_after: list[int] = []

    def fetching(self: Database, sql: str, params: tuple[Any, ...]) -> list[Any]:
        rows = real(self, sql, params)
        if self is ledger.database:
            return rows  # the import's own
        statements.append(sql)
        if commit_after and len(statements) == commit_after[0]:
            ledger.import_lines([registrations[len(commit_after)]])
            commit_after.clear()
        return rows

    monkeypatch.setattr(Database, "fetch_on_driver", fetching)
    ledger.import_lines([registrations[0]])  # the ledger is not empty
    # Given the statements of a trail of a customer not in the ledger
    assert run(ledger_url, "customer", "trail", "n-C0000011").exit_code == 1
    reads = len(statements)
    assert 2 <= reads < len(registrations), statements
    for after in range(1, reads + 1):
        # When that customer's first import commits after the trail's statement `after`
        ref = customer_of(fact_id(registrations[after]))
        statements.clear()
        commit_after[:] = [after] * after  # (whose length picks the registration)
        answer = run(ledger_url, "customer", "trail", str(ref), "--json")
        # Then the answer is the ledger as it stood at some moment: the customer, or not yet
        assert not commit_after, f"statement {after} of {len(statements)} was not run"
        if answer.exit_code == 1:
            assert f"customer {ref!r} is not in the ledger" in answer.stderr, answer.stderr
        else:
            assert answer.exit_code == 0, (after, answer.stderr)
            assert orjson.loads(answer.stdout)["customer"] == ref
