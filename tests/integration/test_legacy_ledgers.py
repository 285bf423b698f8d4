"""Ledgers written by earlier versions upgrade, verify and answer as they did.

`tests/data/legacy/` holds a ledger built by commit 223a2a8 (schema 0005), the same ledger
after commit 448b0b8 upgraded it to its first 0006 (which kept no `stream_ordered_until`),
that version's answers and its due-diligence export (see the README there). On PostgreSQL,
where a file cannot be carried, the old import's order is reproduced instead: a chunk's
events stored stream by stream, then the ledger set back to how the first 0006 left it.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from ledger.persistence.database import SCHEMA_HEAD, Database
from tests.cli_helpers import run, run_json

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"

# The questions 223a2a8 answered (`answers-223a2a8/<name>.json`).
QUESTIONS: dict[str, list[str]] = {
    **{f"show-{ref}": ["customer", "show", ref] for ref in ("C100", "C101", "C102", "C103")},
    **{f"trail-{ref}": ["customer", "trail", ref] for ref in ("C100", "C101", "C102", "C103")},
    "asof-C100-feb": ["consent", "show", "C100", "--as-of", "2025-02-15T00:00:00Z"],
    "asof-C100-apr": ["consent", "show", "C100", "--as-of", "2025-04-01T00:00:00Z"],
    "asof-C100-now": ["consent", "show", "C100"],
    "asof-C102-now": ["consent", "show", "C102"],
    "asof-C102-tie": ["consent", "show", "C102", "--as-of", "2025-09-02T10:00:00Z"],
    "audit": ["audit", "check"],
    "verify": ["verify"],
    "order-O502": ["order", "show", "O502"],
    "exportlist": ["export", "list"],
}

AT = "2025-10-01T00:00:00Z"


def _legacy_ledger(name: str, tmp_path: Path, keys_of: str = "keys") -> str:
    """A copy of a fixture ledger, its keys where this test's key folder is."""
    path = tmp_path / "ledger.db"
    shutil.copyfile(LEGACY / name, path)
    keys = tmp_path / "keys"  # CONSENT_LEDGER_KEY_DIR (tests/conftest.py)
    shutil.copytree(LEGACY / keys_of, keys)
    for key in keys.iterdir():
        key.chmod(0o600)
    return f"sqlite:///{path}"


def _tie(prefix: str, *, initiation_first: bool = False) -> list[dict[str, Any]]:
    """A customer's registration, a transfer disclosure and, on the next line at the same
    `at`, its acquirer's initiation: recorded in line order, the disclosure comes first (SPEC
    §1), a violation. With `initiation_first`, the two lines swapped: no violation."""
    registered, disclosed, initiated = [
        {
            "id": f"{prefix}-r",
            "type": "customer.registered",
            "customer": f"{prefix}-C",
            "name": "Ada Lovelace",
            "email": "ada@example.org",
            "address": {"line1": "1 Way", "city": "Leeds", "postcode": "LS1", "country": "GB"},
            "at": "2025-01-01T00:00:00Z",
        },
        {
            "id": f"{prefix}-d",
            "type": "transfer.disclosure",
            "customer": f"{prefix}-C",
            "acquirer": f"{prefix} Holdings",
            "categories": ["name"],
            "at": AT,
        },
        {
            "id": f"{prefix}-i",
            "type": "transfer.initiated",
            "acquirer": f"{prefix} Holdings",
            "scope": "all",
            "at": AT,
        },
    ]
    if initiation_first:
        return [registered, initiated, disclosed]
    return [registered, disclosed, initiated]


def _import(url: str, facts: list[dict[str, Any]], path: Path) -> None:
    path.write_bytes(b"".join(orjson.dumps(fact) + b"\n" for fact in facts))
    assert run_json(url, "import", str(path))["accepted"] == len(facts)


def _transfer_violations(url: str) -> list[str]:
    violations = run_json(url, "audit", "check")["violations"]
    return [v["fact_id"] for v in violations if v["rule"] == "transfer_without_initiation"]


def _as_the_first_0006_left_it(url: str) -> None:
    """The ledger at schema 0006 with no `stream_ordered_until`."""
    database = Database(url)
    try:
        with database.connect() as conn, conn.begin():
            conn.execute(sa.text("DELETE FROM ledger_meta WHERE name = 'stream_ordered_until'"))
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0006'"))
    finally:
        database.dispose()


@pytest.mark.parametrize(
    ("fixture", "schema"), [("at-0005-by-223a2a8.db", "0005"), ("at-0006-by-448b0b8.db", "0006")]
)
def test_a_ledger_an_earlier_version_wrote_upgrades_and_answers_as_that_version_did(
    fixture: str, schema: str, tmp_path: Path
) -> None:
    url = _legacy_ledger(fixture, tmp_path)
    # Given a ledger an earlier version wrote: commands ask for the upgrade first
    assert run(url, "audit", "check").exit_code == 1
    document = run_json(url, "db", "upgrade")
    assert (document["from"], document["to"]) == (schema, SCHEMA_HEAD)
    # Then every question gets the answer the version that built it gave, `verify` the
    # same head; so does the tie it recorded out of line order (x-0005 then x-0006, at 31
    # and 36): the initiation counts, as it did then
    answers = LEGACY / "answers-223a2a8"
    for name, command in QUESTIONS.items():
        expected = orjson.loads((answers / f"{name}.json").read_bytes())
        assert run_json(url, *command) == _with_exports(name, expected, answers), name
    # Its export still verifies
    assert run(url, "export", "verify", str(LEGACY / "export-by-223a2a8")).exit_code == 0
    # And a tie recorded since is judged by its position: the disclosure came first
    _import(url, _tie("new"), tmp_path / "tie.jsonl")
    assert _transfer_violations(url) == ["new-d"]
    assert run_json(url, "verify")["ok"] is True


def test_ties_an_import_stored_stream_by_stream_are_found_by_0007(
    ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the first 0006 left a ledger it upgraded, on either backend: the ledger's events
    stored as an import before 0006 stored them, and no `stream_ordered_until`."""
    from ledger.application import Recording

    run_json(ledger_url, "db", "upgrade")
    in_line_order = Recording._flush

    def stream_by_stream(self: Recording) -> None:  # the import before 0006
        counts = Counter(self.applied)
        self.applied[:] = [ident for ident in counts for _ in range(counts[ident])]
        in_line_order(self)

    with monkeypatch.context() as patch:
        patch.setattr(Recording, "_flush", stream_by_stream)
        # (stream by stream: the customer's two events, then the acquirer's)
        _import(ledger_url, _tie("old", initiation_first=True), tmp_path / "old.jsonl")
    _as_the_first_0006_left_it(ledger_url)
    # When 0007 upgrades it
    document = run_json(ledger_url, "db", "upgrade")
    assert (document["from"], document["to"]) == ("0006", SCHEMA_HEAD)
    # Then the old tie, its initiation stored after the disclosure though applied before
    # it, is judged as then: the initiation counts (by position it would not)
    assert _transfer_violations(ledger_url) == []
    # And one recorded since by its position
    _import(ledger_url, _tie("new"), tmp_path / "new.jsonl")
    assert _transfer_violations(ledger_url) == ["new-d"]
    assert run_json(ledger_url, "verify")["ok"] is True


def test_a_ledger_recorded_in_line_order_gets_no_old_ties(ledger_url: str, tmp_path: Path) -> None:
    """0007 on a ledger 0006 found empty (it kept no marker then): every event was stored
    in the order it was applied, so no tie is judged as before 0006."""
    run_json(ledger_url, "db", "upgrade")
    _import(ledger_url, _tie("a"), tmp_path / "a.jsonl")
    _as_the_first_0006_left_it(ledger_url)
    run_json(ledger_url, "db", "upgrade")
    assert _transfer_violations(ledger_url) == ["a-d"]


# The questions 952619b answered (`answers-952619b/<name>.json`): 223a2a8's, and more.
QUESTIONS_952619B: dict[str, list[str]] = {
    **QUESTIONS,
    "asof-C101-date": ["consent", "show", "C101", "--as-of", "2025-03-01"],
    "audit-asof": ["audit", "check", "--as-of", "2025-06-30"],
    **{f"order-{ref}": ["order", "show", ref] for ref in ("O500", "O501", "O502", "O503")},
    **{
        f"supp-{name}": ["suppression", "check", f"{name}@example.org"]
        for name in ("ada", "alan", "grace", "edsger", "barbara")
    },
    "show-C104": ["customer", "show", "C104"],
    "trail-C104": ["customer", "trail", "C104"],
    "asof-C104": ["consent", "show", "C104"],
    "notifications": ["recipients", "notifications"],
}


def _with_exports(name: str, answer: Any, answers: Path) -> Any:
    """An earlier version's answer, as changed on purpose since: a customer's trail lists
    each due-diligence export that held their data (an export "is itself recorded as a
    disclosure to the acquirer", SPEC §5). Each fixture's export, the last command that
    built it (`export list` of then), held every customer (its count says so), pseudonymous,
    their orders included (`customer show` of then)."""
    if not name.startswith("trail-"):
        return answer
    exports = orjson.loads((answers / "exportlist.json").read_bytes())["exports"]
    customers = sorted(path.name for path in answers.glob("show-*.json"))
    ref = name.removeprefix("trail-")
    orders = orjson.loads((answers / f"show-{ref}.json").read_bytes())["orders"]
    for export in exports:
        assert export["customers"] == len(customers) and not export["identified"]
        answer["disclosures"].append(
            {
                **{k: export[k] for k in ("at", "recipient", "recipient_kind", "purpose")},
                "basis": export["basis"],
                "categories": ["order_details"] if orders else [],
                "order": None,
                "fact_id": export["fact_id"],
            }
        )
    return answer


def _answered_since(name: str, answer: Any) -> Any:
    """952619b's answer, as changed on purpose since (README, Configuration): an order's
    status is its latest dispatch, delivery or cancellation in business time (0009: O502's
    dispatch reported late, dated before its delivery, no longer undoes it), and an erased
    customer's suppression keeps no time (0010); its trails list its export
    (`_with_exports`)."""
    answer = _with_exports(name, answer, LEGACY / "answers-952619b")
    if name == "order-O502":
        answer["status"] = "delivered"
    elif name == "show-C102":
        answer["orders"][0]["status"] = "delivered"
    elif name == "supp-barbara":
        answer["since"] = None
    return answer


def test_a_ledger_at_0007_with_every_later_migrations_data_upgrades_and_answers(
    tmp_path: Path,
) -> None:
    """A ledger 952619b wrote (schema 0007: `tests/data/legacy/README.md`), with what each
    later migration changed: a dispatch reported late (0009), an erased customer's marketing
    withdrawal (0010), an order total of 47 characters and a currency this version's feed
    refuses (0011), and a master key that version rotated."""
    url = _legacy_ledger("at-0007-by-952619b.db", tmp_path, "keys-952619b")
    assert run(url, "customer", "show", "C100").exit_code == 1  # upgrade first
    document = run_json(url, "db", "upgrade")
    assert (document["from"], document["to"]) == ("0007", SCHEMA_HEAD)
    for rebuilt in (False, True):  # as upgraded, and from event zero
        if rebuilt:
            assert run(url, "projections", "rebuild").exit_code == 0
        for name, command in QUESTIONS_952619B.items():
            then = orjson.loads((LEGACY / "answers-952619b" / f"{name}.json").read_bytes())
            assert run_json(url, *command) == _answered_since(name, then), (name, rebuilt)
    assert run(url, "export", "verify", str(LEGACY / "export-by-952619b")).exit_code == 0
    # Written in line order, its own tie (x-0005's disclosure before x-0006's initiation)
    # is a violation, as 952619b said; so is one recorded since
    _import(url, _tie("new"), tmp_path / "tie.jsonl")
    assert _transfer_violations(url) == ["x-0005", "new-d"]
    assert run_json(url, "verify")["ok"] is True


def test_an_export_of_a_ledger_at_0007_adds_its_47_character_total_exactly(
    tmp_path: Path,
) -> None:
    """952619b recorded O503's total of 47 characters (its currency "GBP\\n", alone in it);
    an export's summary added it in Decimal's default context (28 digits) and said
    1.234567890123456789012345679E+43, as 952619b's own export did (`export-by-952619b/`)."""
    url = _legacy_ledger("at-0007-by-952619b.db", tmp_path, "keys-952619b")
    run_json(url, "db", "upgrade")
    out = tmp_path / "export"
    run_json(
        url, "export", "due-diligence", "--acquirer", "Northwind Retail Group", "--out", str(out)
    )
    totals = orjson.loads((out / "summary.json").read_bytes())["orders"]["totals"]
    assert totals["GBP\n"] == "12345678901234567890123456789012345678901234.50"


def test_a_ledger_the_first_version_wrote_upgrades_though_its_0002_to_0005_were_empty(
    tmp_path: Path,
) -> None:
    """6d6c7e8 shipped migrations 0002-0005 as placeholders: its ledger is stamped 0005 with
    none of their tables, and 0006 failed on it ('unexpected NoSuchTableError'). They now
    run for real. That version's feed erasures left the data key whole (C101, erased by
    feed-small's s-0025): verify says so, and erasing again destroys it."""
    url = _legacy_ledger("at-0005-by-6d6c7e8.db", tmp_path, "keys-6d6c7e8")
    document = run_json(url, "db", "upgrade")
    assert (document["from"], document["to"]) == ("0005", SCHEMA_HEAD)
    assert run_json(url, "customer", "show", "C100")["details"]["name"] == "Ada Lovelace"
    assert run_json(url, "customer", "show", "C103")["details"] is None  # erased by command
    problems = run_json(url, "verify", code=4)["problems"]
    assert [(p["kind"], "'C101'" in p["message"]) for p in problems] == [("key_altered", True)]
    assert run(url, "customer", "erase", "C101").exit_code == 0
    assert run_json(url, "customer", "show", "C101")["details"] is None
    assert run_json(url, "verify")["ok"] is True
    assert run_json(url, "projections", "status")["projections"]
