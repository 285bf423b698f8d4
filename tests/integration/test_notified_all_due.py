"""`recipients notified --all-due` records what judging every customer from events would.

It judges only the customers the violations read model names (caught up first, outside the
write), the erased ones a due-diligence export may not have shown, and every customer with
an event the model had not applied when the write began (`ReadModels.notice_candidates`).
Each case here compares what it records with the full scan it falls back to when the model
was never built (every customer with an erasure or a rectification, judged from their
events), taken in a write rolled back just before, on the same ledger. Facts land between
the catch-up and the write (an import in between, as a concurrent one would), so some
customers are known only by events the model has not applied.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.config import open_ledger
from ledger.errors import InputError
from projections.runner import ReadModels
from tests.cli_helpers import due_diligence_export, error_line, run, run_json
from tests.examples import at, jsonl, line, registered

ACQUIRER = "Contoso Holdings"
LATER = "2099-01-01T00:00:00+00:00"  # past every notice's start (an export's is its time)
RECIPIENTS = ("Offspring", "Bluebird", "Northwind", "DPD", "Equifax", ACQUIRER)
Done = list[tuple[str, list[str]]]


@pytest.fixture
def url(ledger_url: str) -> str:
    assert run(ledger_url, "db", "upgrade").exit_code == 0
    return ledger_url


def _import(url: str, facts: list[dict[str, Any]]) -> None:
    """Record `facts` in a write of their own (as an import running beside the command)."""
    app = open_ledger(url)
    try:
        app.import_lines(jsonl(facts).splitlines())
    finally:
        app.database.dispose()


def _full_scan(url: str, recipient: str, moment: str) -> Done:
    """What `--all-due` records when it judges every customer with an erasure or a
    rectification: its fallback, which it takes inside a write (here one rolled back)."""
    app = open_ledger(url)
    try:
        with app.database.writing() as tx:
            tx.discard = True
            done = app.record_notifications_due(recipient, datetime.fromisoformat(moment))
    except InputError:
        return []
    finally:
        app.database.dispose()
    return [(ref, sorted({d.fact_id for d in answered})) for ref, _id, answered in done]


@pytest.fixture
def landing(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[], None]], None]]:
    """`landing(act)`: the next `--all-due` runs `act` after its catch-up, before its write."""
    original = ReadModels.notices_caught_up
    pending: list[Callable[[], None]] = []

    def caught_up(self: ReadModels) -> bool:
        result = original(self)
        while pending:
            pending.pop(0)()
        return result

    monkeypatch.setattr(ReadModels, "notices_caught_up", caught_up)
    yield pending.append


@pytest.fixture
def judged(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """How many customers each `--all-due` took from the read model (None: none, the model
    was never built): the comparisons are of that path, not the full scan's with itself."""
    original = ReadModels.notice_candidates
    found: list[int | None] = []

    def candidates(self: ReadModels, conn: Any) -> Any:
        result = original(self, conn)
        found.append(None if result is None else len(result))
        return result

    monkeypatch.setattr(ReadModels, "notice_candidates", candidates)
    return found


def _all_due(
    url: str,
    recipient: str,
    moment: str,
    landing: Callable[[Callable[[], None]], None],
    late: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> tuple[Done, Done]:
    """(what `--all-due` recorded, what the full scan found just before its write), with
    `late` imported between its catch-up and its write."""
    expected: Done = []

    def land() -> None:
        if late:
            _import(url, late)
        expected.extend(_full_scan(url, recipient, moment))

    landing(land)
    result = run(url, "recipients", "notified", recipient, "--all-due", "--at", moment, "--json")
    if result.exit_code == 1:
        assert "no notification" in error_line(result)
        return [], expected
    assert result.exit_code == 0, result.stderr
    import orjson

    notified = orjson.loads(result.stdout)["notified"]
    return [(n["customer"], n["regarding"]) for n in notified], expected


def _erase(ref: str, minutes: float) -> dict[str, Any]:
    return line("subject.erased", f"{ref}-x", minutes, customer=ref)


def _affiliate(ref: str, minutes: float, categories: list[str]) -> dict[str, Any]:
    return line(
        "affiliate.disclosure", f"{ref}-a{minutes}", minutes, customer=ref, categories=categories
    )


def test_a_customer_erased_or_rectified_after_the_catch_up_is_notified(
    url: str,
    tmp_path: Path,
    landing: Callable[[Callable[[], None]], None],
    judged: list[int | None],
) -> None:
    _import(
        url,
        [
            *(registered(f"C{n}", n) for n in range(1, 6)),
            _affiliate("C1", 10, ["name"]),
            _affiliate("C2", 11, ["name"]),
            _affiliate("C5", 12, ["name"]),
            line("customer.updated", "C5-u", 13, customer="C5", name="Other"),
        ],
    )
    due_diligence_export(url, ACQUIRER, tmp_path / "dd")  # holds C1 to C5
    _import(url, [_erase("C4", 20)])  # not shown by the export; C4 disclosed to no one
    run_json(url, "audit", "check")  # the read model caught up: C4 and C5 in it

    # C1 erased and C2 rectified after the catch-up, before the write: only events tell
    late = [_erase("C1", 30), line("customer.updated", "C2-u", 31, customer="C2", name="New")]
    done, expected = _all_due(url, "Offspring", at(60 * 24 * 365), landing, late)
    assert done == expected == [("C1", ["C1-x"]), ("C2", ["C2-u"]), ("C5", ["C5-u"])]

    # The export held C3, erased after the catch-up, and C4, erased before it (which the
    # model names as an erased customer an export may not have shown, not as a notice)
    run_json(url, "audit", "check")
    done, expected = _all_due(url, ACQUIRER, LATER, landing, [_erase("C3", 40)])
    assert done == expected == [("C1", ["C1-x"]), ("C3", ["C3-x"]), ("C4", ["C4-x"])]
    # C1, C2 (their events after the catch-up), C4 (erased), C5 (the model's notice); then
    # all five: C2's and C5's notices are the model's, C1's, C3's and C4's erasures the
    # export's (C3's also recorded after the catch-up)
    assert judged == [4, 5]


def test_a_notification_due_only_through_a_late_disclosure_is_notified(
    url: str, landing: Callable[[Callable[[], None]], None], judged: list[int | None]
) -> None:
    """A rectification that changed nothing disclosed is no notice in the model; a
    disclosure of that category dated before it, recorded after the catch-up, makes one."""
    _import(
        url,
        [registered("C1", 0), line("customer.updated", "C1-u", 20, customer="C1", name="New")],
    )
    run_json(url, "audit", "check")
    done, expected = _all_due(
        url, "Offspring", at(60 * 24 * 365), landing, [_affiliate("C1", 10, ["name"])]
    )
    assert done == expected == [("C1", ["C1-u"])]
    assert judged == [1]


def _customer_facts(rng: random.Random, ref: str) -> list[dict[str, Any]]:
    """One customer's random facts: disclosures to the recipients, rectifications and
    perhaps an erasure, at random business times (late ones among them)."""

    def minute() -> float:
        return rng.randrange(10, 60 * 24 * 200)

    facts = [registered(ref, 0)]
    for number in range(rng.randrange(3)):
        order = f"{ref}-O{number}"
        facts.append(line("order.placed", f"{order}-p", minute(), customer=ref, order=order))
        if rng.random() < 0.6:
            facts.append(line("order.dispatched", f"{order}-d", minute(), order=order))
        if rng.random() < 0.4:
            facts.append(line("cra.disclosure", f"{order}-c", minute(), order=order))
    for number in range(rng.randrange(3)):
        categories = rng.sample(["name", "postal_address", "email"], rng.randrange(1, 3))
        affiliate = rng.choice(["Offspring", "Bluebird"])
        facts.append(
            line(
                "affiliate.disclosure",
                f"{ref}-a{number}",
                minute(),
                customer=ref,
                affiliate=affiliate,
                categories=sorted(categories),
            )
        )
    if rng.random() < 0.3:
        facts.append(line("transfer.disclosure", f"{ref}-t", minute(), customer=ref))
    for number in range(rng.randrange(3)):
        field = rng.choice(["name", "email", "phone"])
        value = {"name": "Other Name", "email": "o@example.net", "phone": "+441234"}[field]
        facts.append(
            line("customer.updated", f"{ref}-u{number}", minute(), customer=ref, **{field: value})
        )
    if rng.random() < 0.4:
        facts.append(_erase(ref, minute()))
    return facts


@pytest.mark.parametrize("seed", range(4))
def test_all_due_records_what_the_full_scan_finds_on_random_ledgers(
    url: str,
    tmp_path: Path,
    seed: int,
    landing: Callable[[Callable[[], None]], None],
    judged: list[int | None],
) -> None:
    rng = random.Random(seed)
    pending = [fact for n in range(24) for fact in _customer_facts(rng, f"R{seed}C{n}")]
    # Each customer's registration first, their other facts in a random recording order
    first = [fact for fact in pending if fact["type"] == "customer.registered"]
    rest = [fact for fact in pending if fact["type"] != "customer.registered"]
    placed = [fact for fact in rest if fact["type"] == "order.placed"]
    rest = [fact for fact in rest if fact["type"] != "order.placed"]
    rng.shuffle(rest)
    for fact in [fact for fact in rest if fact["type"] == "subject.erased"]:
        # a details update of an erased customer is refused: their erasure is recorded last
        mine = [i for i, f in enumerate(rest) if f.get("customer") == fact["customer"]]
        last, here = mine[-1], rest.index(fact)
        rest[here], rest[last] = rest[last], rest[here]
    # (an identified export needs the transfer initiated)
    initiated = line("transfer.initiated", f"R{seed}-i", 1, acquirer=ACQUIRER)
    _import(url, [*first, *placed, initiated])
    run_json(url, "audit", "check")  # the read model built (never built: the full scan)
    size = -(-len(rest) // 5)
    chunks = [rest[i : i + size] for i in range(0, len(rest), size)]
    compared = recorded = 0
    for number, chunk in enumerate(chunks):
        half = rng.randrange(len(chunk) + 1)
        _import(url, chunk[:half])
        if rng.random() < 0.5:  # pseudonymous, or identified (as of a time or not)
            kind = rng.choice([(), ("--identified",), ("--identified", "--as-of", "2025-04-01")])
            due_diligence_export(url, ACQUIRER, tmp_path / f"dd{number}", *kind)
        if rng.random() < 0.5:
            run_json(url, "audit", "check")
        for recipient in rng.sample(RECIPIENTS, 2):
            moment = datetime(2025, 1, 10, tzinfo=UTC) + timedelta(days=rng.randrange(400))
            late, chunk = chunk[half:], []
            done, expected = _all_due(url, recipient, moment.isoformat(), landing, late)
            half = 0
            assert done == expected, (number, recipient)
            compared += 1
            recorded += len(done)
    assert compared == 2 * len(chunks) and recorded > 0
    assert len(judged) == compared and None not in judged


def test_a_ledger_whose_read_model_was_never_built_is_scanned_whole(
    url: str, landing: Callable[[Callable[[], None]], None], judged: list[int | None]
) -> None:
    """Catching the model up from event zero would be a rebuild: every customer with an
    erasure or a rectification is judged instead, and the model is left unbuilt."""
    _import(url, [registered("C1", 0), _affiliate("C1", 10, ["name"]), _erase("C1", 20)])
    done, expected = _all_due(url, "Offspring", LATER, landing, [])
    assert done == expected == [("C1", ["C1-x"])]
    status = run_json(url, "projections", "status")
    assert [m["position"] for m in status["projections"] if m["name"] == "violations"] == [0]
    assert judged == []


def test_a_catch_up_committed_inside_the_write_misses_no_customer(
    url: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, read committed: a catch-up (which takes no lock a write holds) may commit
    its rows and position while the write reads the model. The position P is read first:
    the rows read are of P or later, and the customers with events after P are read too
    (read after the rows, it would be the later position, and these customers missed).
    On SQLite the write lock keeps any catch-up out of the write."""
    if backend == "sqlite":
        pytest.skip("SQLite: no catch-up commits while a write holds the lock")
    import projections.runner as runner

    _import(url, [registered("C1", 0), _affiliate("C1", 10, ["name"])])
    run_json(url, "audit", "check")
    late = [registered("C2", 0), _affiliate("C2", 10, ["name"]), _erase("C1", 20)]
    _import(url, [*late, _erase("C2", 21)])  # after the catch-up: the model is behind
    expected = _full_scan(url, "Offspring", LATER)
    assert expected == [("C1", ["C1-x"]), ("C2", ["C2-x"])]

    original = runner.notice_streams
    caught: list[int] = []

    def caught_up_meanwhile(conn: Any, slot: str) -> list[Any]:
        found = original(conn, slot)
        other = open_ledger(url)  # another session's catch-up, committed now
        try:
            caught.append(other.read_models.catch_up(["violations"]))
        finally:
            other.database.dispose()
        return found

    monkeypatch.setattr(runner, "notice_streams", caught_up_meanwhile)
    monkeypatch.setattr(ReadModels, "notices_caught_up", lambda self: True)  # not before
    app = open_ledger(url)
    try:
        done = app.record_notifications_due("Offspring", datetime.fromisoformat(LATER))
    finally:
        app.database.dispose()
    assert caught == [4]
    assert [(ref, sorted({d.fact_id for d in answered})) for ref, _, answered in done] == expected
