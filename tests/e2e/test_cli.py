# ruff: noqa: E501
"""The `consent-ledger` command as a user runs it: exact stdout documents, exit codes,
`Error: …` on stderr, one log line per command, no personal data in logs, on each backend."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from click.testing import Result

from ledger.samplefeed import generate, generate_lines
from ledger.vocabulary import RULES
from tests.cli_helpers import error_line, log_pseudonym, run, run_json
from tests.conftest import BACKENDS, POSTGRES_ENV, _postgres_schema_url, postgres_server
from tests.examples import EMAIL, NAME, jsonl, line
from tests.faults.support import recorded_ids

SMALL = Path(__file__).parents[1] / "data" / "feed-small.jsonl"
PERSONAL = ("Ada", "Lovelace", "ada@example.org", "Alan Turing", "alan@example.org", "Analytical")


def build(ledger_url: str) -> str:
    run_json(ledger_url, "db", "upgrade")
    summary = run_json(ledger_url, "import", str(SMALL))
    assert summary == {"accepted": 26, "duplicates": 0, "rejected": 0, "errors": []}
    return ledger_url


@pytest.fixture
def url(ledger_url: str) -> str:
    """An upgraded ledger holding feed-small.jsonl, built through the CLI, for one test."""
    return build(ledger_url)


_SHARED_KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(scope="module", params=BACKENDS)
def _shared_ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One ledger per backend for the tests that only read (or are refused): building one
    costs more than most tests here."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONSENT_LEDGER_MASTER_KEY", _SHARED_KEY)
        keys = str(tmp_path_factory.mktemp("shared-keys"))
        env.setenv("CONSENT_LEDGER_KEY_DIR", keys)
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('shared') / 'ledger.db'}"
            _SHARED_KEY_DIRS[url] = keys
            yield build(url)
            return
        server = postgres_server()
        if server is None:
            pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV}")
        schema = f"t_{uuid.uuid4().hex[:16]}"
        admin = sa.create_engine(_postgres_schema_url(server, "public"))
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        try:
            url = _postgres_schema_url(server, schema)
            _SHARED_KEY_DIRS[url] = keys
            yield build(url)
        finally:
            with admin.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            admin.dispose()


@pytest.fixture
def shared(_shared_ledger: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The shared feed-small ledger; a test using it must leave it as it found it."""
    monkeypatch.setenv("CONSENT_LEDGER_MASTER_KEY", _SHARED_KEY)
    monkeypatch.setenv("CONSENT_LEDGER_KEY_DIR", _SHARED_KEY_DIRS[_shared_ledger])
    return _shared_ledger


# Each shared ledger's own key folder (its signing key), whatever test uses it.
_SHARED_KEY_DIRS: dict[str, str] = {}


def log_lines(result: Result) -> list[dict[str, Any]]:
    """stderr is not a terminal here, so logs are JSON lines."""
    return [orjson.loads(ln) for ln in result.stderr.splitlines() if ln.startswith("{")]


def assert_one_clean_log_line(result: Result, command: str) -> dict[str, Any]:
    (entry,) = log_lines(result)
    assert entry["command"] == command
    for value in PERSONAL:
        assert value not in result.stderr
    return entry


def facts_recorded(url: str) -> int:
    """How many facts the ledger holds, by re-importing nothing new: every line a duplicate."""
    return int(run_json(url, "import", "--dry-run", str(SMALL))["duplicates"])


# -- import ----------------------------------------------------------------------------------


def test_import_again_skips_every_line_as_duplicate(shared: str) -> None:
    result = run(shared, "import", str(SMALL), "--json")
    assert result.exit_code == 0
    assert orjson.loads(result.stdout) == {
        "accepted": 0,
        "duplicates": 26,
        "rejected": 0,
        "errors": [],
    }
    entry = assert_one_clean_log_line(result, "import")
    assert (entry["accepted"], entry["duplicates"], entry["level"]) == (0, 26, "info")


def test_import_plain_output_is_one_readable_sentence(url: str, tmp_path: Path) -> None:
    feed = tmp_path / "more.jsonl"
    feed.write_bytes(jsonl([line("customer.registered", "n-1", 0, customer="C900")]))
    result = run(url, "import", str(feed))
    assert (result.exit_code, result.stdout) == (
        0,
        "recorded 1 facts, skipped 0 duplicates, rejected 0\n",
    )


def test_import_of_a_file_that_begins_with_a_byte_order_mark(
    ledger_url: str, tmp_path: Path
) -> None:
    run_json(ledger_url, "db", "upgrade")
    feed = tmp_path / "bom.jsonl"
    feed.write_bytes(b"\xef\xbb\xbf" + SMALL.read_bytes())
    assert run_json(ledger_url, "import", str(feed))["accepted"] == 26


def test_disclose_categories_are_refused_where_the_type_fixes_them(shared: str) -> None:
    result = run(
        shared, "disclose", "card_issuer", "Visa", "--order", "O500", "--categories", "name"
    )
    assert (result.exit_code, result.stdout) == (2, "")
    assert "--categories is for affiliate and acquirer disclosures" in result.stderr


def test_import_dry_run_counts_and_records_nothing(ledger_url: str) -> None:
    run_json(ledger_url, "db", "upgrade")
    dry = run_json(ledger_url, "import", "--dry-run", str(SMALL))
    assert dry == {"accepted": 26, "duplicates": 0, "rejected": 0, "errors": []}
    assert run_json(ledger_url, "audit", "check") == {"violations": []}
    assert run_json(ledger_url, "import", str(SMALL))["accepted"] == 26


def test_import_of_an_invalid_file_reports_every_bad_line_and_records_nothing(
    shared: str, tmp_path: Path
) -> None:
    lines = [
        orjson.dumps(line("customer.registered", "n-1", 0, customer="C900")),
        b'{"id": "n-2", "type": "consent.given", ',
        orjson.dumps(line("consent.given", "n-3", 1, customer="C900")),
        orjson.dumps(line("marketing.contact", "n-4", 2, customer="C999")),
        orjson.dumps(line("order.delivered", "n-5", 3, at="2025-01-10T09:00:00")),
        orjson.dumps(line("order.delivered", "n-6", 3, at="9999-12-31T23:59:59-05:00")),
    ]
    feed = tmp_path / "bad.jsonl"
    feed.write_bytes(b"\n".join(lines) + b"\n")
    result = run(shared, "import", str(feed), "--json")
    assert result.exit_code == 1
    assert orjson.loads(result.stdout) == {
        "accepted": 0,
        "duplicates": 0,
        "rejected": 4,
        "errors": [
            {"line": 2, "error": "not valid JSON"},
            {"line": 4, "error": "unknown customer 'C999'"},
            {"line": 5, "error": "field 'at' has no UTC offset (add Z or +00:00)"},
            {
                "line": 6,
                "error": "field 'at' is out of range: in UTC it must fall in the years 1 to 9999",
            },
        ],
    }
    assert error_line(result) == (
        "Error: line 2: not valid JSON (and 3 more invalid lines); "
        "nothing from the file was recorded"
    )
    entry = assert_one_clean_log_line(result, "import")
    assert (entry["level"], entry["exit"], entry["rejected"]) == ("warning", 1, 4)
    assert run(shared, "customer", "show", "C900").exit_code == 1


def test_import_of_an_invalid_file_in_plain_output_lists_the_lines(
    shared: str, tmp_path: Path
) -> None:
    feed = tmp_path / "bad.jsonl"
    feed.write_bytes(b"not json\n")
    result = run(shared, "import", str(feed))
    assert result.exit_code == 1
    assert (
        result.stdout
        == "nothing recorded: 1 invalid lines\n  LINE  ERROR\n  1     not valid JSON\n"
    )


def test_import_of_a_missing_file_is_a_usage_error(shared: str, tmp_path: Path) -> None:
    result = run(shared, "import", str(tmp_path / "absent.jsonl"))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "does not exist" in result.stderr


def test_import_shows_a_progress_bar_on_stderr_when_it_is_a_terminal(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cli.commands.recording.progress_enabled", lambda: True)
    feed = tmp_path / "more.jsonl"
    feed.write_bytes(jsonl([line("customer.registered", "n-1", 0, customer="C900")]))
    result = run(url, "import", str(feed), "--json")
    assert result.exit_code == 0
    assert "importing" in result.stderr
    assert orjson.loads(result.stdout)["accepted"] == 1


# -- record, consent give/withdraw, disclose -----------------------------------------------


def test_record_records_one_fact_and_prints_what_it_recorded(url: str) -> None:
    fact = line(
        "consent.given", "r-1", 0, customer="C100", channel="post", at="2025-04-01T10:00:00+02:00"
    )
    document = run_json(url, "record", orjson.dumps(fact).decode())
    assert document == {
        "recorded": True,
        "duplicate": False,
        "fact_id": "r-1",
        "type": "consent.given",
        "at": "2025-04-01T08:00:00Z",
    }
    again = run_json(url, "record", orjson.dumps(fact).decode())
    assert (again["recorded"], again["duplicate"]) == (False, True)
    # Another fact sent under that id (a withdrawal, say) is refused, not reported as done.
    facts = run_json(url, "verify")["facts"]
    for other in (
        line("consent.withdrawn", "r-1", 0, customer="C100", channel="post"),
        line("consent.given", "r-1", 0, customer="C100", channel="email"),
        {**fact, "at": "2025-04-02T10:00:00Z"},
    ):
        refused = run(url, "record", orjson.dumps(other).decode(), "--json")
        assert (refused.exit_code, refused.stdout) == (1, ""), other
        assert "r-1" in error_line(refused) and "consent.given" in error_line(refused)
    assert run_json(url, "verify")["facts"] == facts
    # What is sealed is compared too (personal data, unknown fields): a registration sent
    # again with another email, a fact with another unknown field, is another fact.
    registration = line("customer.registered", "r-2", 0, customer="C777")
    noted = line("consent.given", "r-3", 0, customer="C777", note="by phone")
    for fact, other in (
        (registration, {**registration, "email": "someone.else@example.org"}),
        (noted, {**noted, "note": "by letter"}),
        (noted, {key: value for key, value in noted.items() if key != "note"}),
    ):
        run_json(url, "record", orjson.dumps(fact).decode())
        again = run_json(url, "record", orjson.dumps(fact).decode())
        assert (again["recorded"], again["duplicate"]) == (False, True)
        refused = run(url, "record", orjson.dumps(other).decode(), "--json")
        assert (refused.exit_code, refused.stdout) == (1, ""), other
        assert "already taken by another fact" in error_line(refused)
        assert "someone.else" not in refused.stderr  # (personal data is never echoed)


@pytest.mark.parametrize("mark", [b"", "\ufeff".encode()])
def test_record_reads_the_fact_from_stdin(url: str, mark: bytes) -> None:
    """With or without a byte order mark (as `import` takes a file that begins with one)."""
    fact = line("subject.access_requested", f"r-2{len(mark)}", 0, customer="C100")
    result = run(url, "record", "-", stdin=mark + orjson.dumps(fact))
    assert (result.exit_code, result.stdout) == (
        0,
        f"recorded subject.access_requested r-2{len(mark)}\n",
    )
    assert_one_clean_log_line(result, "record")


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux's /proc")
def test_a_file_that_fails_while_it_is_read_is_one_input_error(url: str) -> None:
    """/proc/self/mem opens, then fails to read (EIO): mid-import, the transaction is rolled
    back and the error names the file, not an internal 'unexpected OSError'."""
    result = run(url, "import", "/proc/self/mem")
    assert result.exit_code == 1
    assert error_line(result) == "Error: cannot read /proc/self/mem: Input/output error"


def test_record_defaults_id_and_at(url: str) -> None:
    document = run_json(url, "record", '{"type": "subject.access_requested", "customer": "C100"}')
    assert document["fact_id"].startswith("cmd-")
    assert document["at"].endswith("Z")


def test_record_refused_by_a_rule_exits_3_and_records_nothing(url: str) -> None:
    fact = line(
        "marketing.contact", "r-3", 0, customer="C100", channel="post", at="2025-05-01T00:00:00Z"
    )
    before = run_json(url, "audit", "check")
    result = run(url, "record", orjson.dumps(fact).decode(), "--json")
    assert (result.exit_code, result.stdout) == (3, "")
    assert error_line(result) == (
        "Error: refused by rule marketing_without_consent: marketing.contact for customer "
        "'C100'; nothing was recorded"
    )
    entry = assert_one_clean_log_line(result, "record")
    assert (entry["exit"], entry["error_type"]) == (3, "RuleViolationError")
    assert run_json(url, "audit", "check") == before
    assert facts_recorded(url) == 26
    # Not recorded, so the same id is free for a fact that breaks no rule.
    allowed = {**fact, "channel": "email", "at": "2025-02-20T00:00:00Z"}
    assert run_json(url, "record", orjson.dumps(allowed).decode())["recorded"] is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "Error: FACT is not valid JSON"),
        ("[1]", "Error: FACT must be a JSON object"),
        (
            '{"type": "consent.given", "customer": "C100"}',
            "Error: consent.given lacks required field",
        ),
        (
            '{"type": "subject.access_requested", "customer": "C404"}',
            "Error: unknown customer 'C404'",
        ),
    ],
)
def test_record_of_an_invalid_fact_exits_1(shared: str, text: str, message: str) -> None:
    result = run(shared, "record", text)
    assert (result.exit_code, result.stdout) == (1, "")
    assert error_line(result).startswith(message)


def test_record_of_personal_data_never_logs_or_echoes_it(url: str) -> None:
    fact = line("customer.registered", "r-4", 0, customer="C901", email="not-an-email")
    result = run(url, "record", orjson.dumps(fact).decode())
    assert result.exit_code == 1
    assert NAME not in result.stderr and "C901" not in "".join(result.stderr.split("Error")[:1])
    good = line("customer.registered", "r-5", 0, customer="C901")
    result = run(url, "record", orjson.dumps(good).decode())
    assert result.exit_code == 0
    for value in (NAME, EMAIL):
        assert value not in result.stderr and value not in result.stdout
    entry = assert_one_clean_log_line(result, "record")
    assert entry["customer"] == log_pseudonym(url, "C901")
    assert "C901" not in result.stderr


def test_free_text_shaped_like_an_email_or_phone_is_warned_of_by_line_never_repeated(
    url: str, tmp_path: Path
) -> None:
    """A shifted column can put an email where a consent's method goes: recorded as the feed
    says, in clear, so the import says which lines and fields (never the values)."""
    feed = tmp_path / "shifted.jsonl"
    facts = [
        line("customer.registered", "r-9", 0, customer="C901"),
        line("consent.given", "g-9", 1, customer="C901", method=EMAIL),
        line("consent.given", "g-10", 2, customer="C901", policy_version="+44 7700 900123"),
    ]
    feed.write_bytes(b"".join(orjson.dumps(fact) + b"\n" for fact in facts))
    result = run(url, "import", str(feed), "--json")
    assert result.exit_code == 0
    warning, done = log_lines(result)
    assert warning["level"] == "warning" and "email or phone number" in warning["event"]
    assert (warning["lines"], warning["first"]) == (2, ["2: method", "3: policy_version"])
    assert done["event"] == "command.done"
    assert EMAIL not in result.stderr and "7700" not in result.stderr
    quiet = run(url, "import", str(SMALL))  # the shop's own words: no warning
    assert [entry["event"] for entry in log_lines(quiet)] == ["command.done"]
    record = line("consent.given", "g-11", 3, customer="C901", method=EMAIL)
    recorded = run(url, "record", orjson.dumps(record).decode())
    assert [entry.get("fields") for entry in log_lines(recorded)] == [["method"], None]
    assert EMAIL not in recorded.stderr


def test_consent_give_and_withdraw(url: str) -> None:
    given = run_json(
        url,
        "consent", "give", "C100", "marketing", "post",
        "--method", "phone", "--policy-version", "2024-01",
        "--at", "2025-04-01T00:00:00Z", "--id", "cg-1",
    )  # fmt: skip
    assert given == {
        "recorded": True,
        "duplicate": False,
        "fact_id": "cg-1",
        "type": "consent.given",
        "at": "2025-04-01T00:00:00Z",
    }
    withdrawn = run_json(
        url,
        "consent", "withdraw", "C100", "marketing", "post",
        "--method", "letter", "--at", "2025-05-01T00:00:00Z", "--id", "cw-1",
    )  # fmt: skip
    assert withdrawn["fact_id"] == "cw-1" and withdrawn["type"] == "consent.withdrawn"
    rows = run_json(url, "consent", "show", "C100", "--as-of", "2025-04-15")["consents"]
    assert {
        "purpose": "marketing",
        "channel": "post",
        "status": "given",
        "since": "2025-04-01T00:00:00Z",
    } in rows
    rows = run_json(url, "consent", "show", "C100")["consents"]
    assert {
        "purpose": "marketing",
        "channel": "post",
        "status": "withdrawn",
        "since": "2025-05-01T00:00:00Z",
    } in rows


def test_consent_give_plain_output(url: str) -> None:
    result = run(
        url,
        "consent", "give", "C100", "personalisation", "web",
        "--method", "cookie-banner", "--policy-version", "2024-01", "--id", "cg-2",
    )  # fmt: skip
    assert (result.exit_code, result.stdout) == (0, "recorded consent.given cg-2\n")


def test_a_details_update_of_an_erased_customer_exits_1(shared: str) -> None:
    result = run(
        shared, "record", '{"type": "customer.updated", "customer": "C101", "phone": "+1 555"}'
    )
    assert result.exit_code == 1
    assert (
        error_line(result)
        == "Error: customer 'C101' has been erased: a details update is not accepted"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["consent", "give", "C100", "marketing", "post", "--policy-version", "1"],
        [
            "consent",
            "give",
            "C100",
            "marketing",
            "telepathy",
            "--method",
            "x",
            "--policy-version",
            "1",
        ],
        ["consent", "show", "C100", "--as-of", "2025-01-01T00:00:00"],
        ["consent", "show", "C100", "--as-of", "9999-12-31T23:59:59-05:00"],
        ["audit", "check", "--as-of", "0001-01-01T00:00:00+01:00"],
        ["disclose", "pigeon", "Bob", "--customer", "C100"],
        ["customer", "teleport", "C100"],
    ],
)
def test_usage_errors_exit_2(shared: str, args: list[str]) -> None:
    result = run(shared, *args)
    assert (result.exit_code, result.stdout) == (2, "")
    assert "Error:" in result.stderr


def test_disclose_affiliate_with_consent_is_recorded(url: str) -> None:
    document = run_json(
        url,
        "disclose", "affiliate", "Offspring", "--customer", "C100",
        "--categories", "name,postal_address", "--at", "2025-02-02T00:00:00Z", "--id", "d-1",
    )  # fmt: skip
    assert document == {
        "recorded": True,
        "duplicate": False,
        "fact_id": "d-1",
        "type": "affiliate.disclosure",
        "at": "2025-02-02T00:00:00Z",
    }
    trail = run_json(url, "customer", "trail", "C100")["disclosures"]
    assert [r["fact_id"] for r in trail] == [
        "s-0006",
        "s-0007",
        "s-0008",
        "s-0009",
        "s-0011",
        "d-1",
        "s-0023",
    ]


def test_disclose_carrier_for_an_order_recorded_earlier(url: str) -> None:
    document = run_json(
        url, "disclose", "carrier", "DPD", "--order", "O500", "--tracking", "DPD9", "--id", "d-2"
    )
    assert (document["recorded"], document["type"]) == (True, "order.dispatched")
    facts = run_json(url, "order", "show", "O500")["facts"]
    assert facts[-1]["fact_id"] == "d-2"


@pytest.mark.parametrize(
    ("args", "rules"),
    [
        (
            ["affiliate", "Offspring", "--customer", "C101", "--categories", "name"],
            "affiliate_without_consent, after_erasure",
        ),
        (
            ["acquirer", "Contoso", "--customer", "C100", "--categories", "name"],
            "transfer_without_initiation",
        ),
        (
            ["carrier", "DPD", "--order", "O501", "--tracking", "T1"],
            "dispatch_without_payment, dispatch_after_failed_verification, after_erasure",
        ),
    ],
)
def test_disclose_that_breaks_a_rule_exits_3_and_records_nothing(
    shared: str, args: list[str], rules: str
) -> None:
    trails = {ref: run_json(shared, "customer", "trail", ref) for ref in ("C100", "C101")}
    result = run(shared, "disclose", *args, "--json")
    assert (result.exit_code, result.stdout) == (3, "")
    assert error_line(result).startswith(f"Error: refused by rule {rules}: ")
    assert {ref: run_json(shared, "customer", "trail", ref) for ref in trails} == trails


# -- customer show / trail / erase, consent show, order show ---------------------------------


def test_customer_trail_json_is_the_spec_document(shared: str) -> None:
    def row(
        at: str,
        recipient: str,
        kind: str,
        purpose: str,
        basis: str,
        categories: list[str],
        order: str | None,
        fact_id: str,
    ) -> dict[str, Any]:
        return {
            "at": at,
            "recipient": recipient,
            "recipient_kind": kind,
            "purpose": purpose,
            "basis": basis,
            "categories": categories,
            "order": order,
            "fact_id": fact_id,
        }

    result = run(shared, "customer", "trail", "C100", "--json")
    assert result.exit_code == 0
    assert orjson.loads(result.stdout) == {
        "customer": "C100",
        "disclosures": [
            row("2025-01-10T09:03:00Z", "Visa", "card_issuer", "payment", "contract", ["card", "name", "postal_address"], "O500", "s-0006"),
            row("2025-01-10T09:03:30Z", "Experian", "identity_verification", "identity_verification", "consent", ["name", "postal_address"], "O500", "s-0007"),
            row("2025-01-10T09:04:00Z", "Experian", "credit_reference_agency", "fraud_prevention", "legitimate_interests", ["name", "order_details", "postal_address"], "O500", "s-0008"),
            row("2025-01-11T08:00:00Z", "DPD", "carrier", "delivery", "contract", ["name", "phone", "postal_address"], "O500", "s-0009"),
            row("2025-02-01T10:00:00Z", "Offspring", "affiliate", "affiliate_marketing", "consent", ["name", "postal_address"], None, "s-0011"),
            row("2025-06-15T00:00:00Z", "Northwind Retail Group", "acquirer", "business_transfer", "legitimate_interests", ["email", "name", "order_details"], None, "s-0023"),
        ],
    }  # fmt: skip
    entry = assert_one_clean_log_line(result, "customer trail")
    assert (entry["customer"], entry["disclosures"]) == (log_pseudonym(shared, "C100"), 6)


def test_customer_trail_plain_output_is_a_table(shared: str) -> None:
    result = run(shared, "customer", "trail", "C101")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "Disclosures of customer C101's personal data",
        "  AT                    RECIPIENT                 RECIPIENT_KIND         PURPOSE                BASIS     CATEGORIES                ORDER  FACT_ID",
        "  2025-02-05T16:05:00Z  Mastercard                card_issuer            payment                contract  card,name,postal_address  O501   s-0017",
        "  2025-02-05T16:06:00Z  Electoral Roll Check Ltd  identity_verification  identity_verification  consent   name,postal_address       O501   s-0018",
    ]  # fmt: skip


def test_customer_show_json(shared: str) -> None:
    assert run_json(shared, "customer", "show", "C100") == {
        "customer": "C100",
        "erased": False,
        "registered_at": "2025-01-10T09:00:00Z",
        "details": {
            "name": "Ada Lovelace",
            "email": "ada@example.org",
            "phone": "+44 7700 900001",
            "address": {
                "line1": "12 Analytical Row",
                "city": "London",
                "postcode": "W1 1AA",
                "country": "GB",
            },
        },
        "consents": [
            {"purpose": "marketing", "channel": "email", "status": "withdrawn", "since": "2025-03-02T09:00:00Z"},
            {"purpose": "affiliate_sharing", "channel": "post", "status": "given", "since": "2025-01-10T09:01:00Z"},
        ],
        "orders": [
            {"order": "O500", "placed_at": "2025-01-10T09:02:00Z", "total": "89.99", "currency": "GBP", "status": "delivered"},
        ],
    }  # fmt: skip


def test_customer_show_of_an_erased_customer_has_no_details(shared: str) -> None:
    document = run_json(shared, "customer", "show", "C101")
    assert (document["erased"], document["details"]) == (True, None)
    assert document["orders"][0]["status"] == "cancelled"
    result = run(shared, "customer", "show", "C101")
    assert "personal data: ERASED" in result.stdout
    assert "Alan" not in result.stdout


def test_customer_show_plain_output(shared: str) -> None:
    result = run(shared, "customer", "show", "C100")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "Customer C100 (registered 2025-01-10T09:00:00Z)",
        "  name:    Ada Lovelace",
        "  email:   ada@example.org",
        "  phone:   +44 7700 900001",
        "  address: 12 Analytical Row, London, W1 1AA, GB",
        "Consents",
        "  PURPOSE            CHANNEL  STATUS     SINCE",
        "  marketing          email    withdrawn  2025-03-02T09:00:00Z",
        "  affiliate_sharing  post     given      2025-01-10T09:01:00Z",
        "Orders",
        "  ORDER  PLACED_AT             TOTAL  CURRENCY  STATUS",
        "  O500   2025-01-10T09:02:00Z  89.99  GBP       delivered",
    ]
    entry = assert_one_clean_log_line(result, "customer show")
    assert entry["customer"] == log_pseudonym(shared, "C100")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["customer", "show", "C404"], "Error: customer 'C404' is not in the ledger"),
        (["customer", "trail", "C404"], "Error: customer 'C404' is not in the ledger"),
        (["consent", "show", "C404"], "Error: customer 'C404' is not in the ledger"),
        (["order", "show", "O404"], "Error: order 'O404' is not in the ledger"),
        (["customer", "erase", "C404"], "Error: unknown customer 'C404'"),
    ],
)
def test_unknown_references_exit_1_with_one_error_line(
    shared: str, args: list[str], message: str
) -> None:
    result = run(shared, *args, "--json")
    assert (result.exit_code, result.stdout) == (1, "")
    assert error_line(result) == message
    assert len(log_lines(result)) == 1


def test_customer_erase(url: str) -> None:
    document = run_json(
        url, "customer", "erase", "C100", "--at", "2025-09-01T00:00:00Z", "--id", "x-1"
    )
    assert document == {
        "customer": "C100",
        "erased": True,
        "fact_id": "x-1",
        "recorded": True,
        "shredded": True,
    }
    shown = run_json(url, "customer", "show", "C100")
    assert (shown["erased"], shown["details"]) == (True, None)
    # History stays: the trail and the consents are still answered.
    assert len(run_json(url, "customer", "trail", "C100")["disclosures"]) == 6
    assert len(shown["consents"]) == 2
    result = run(url, "customer", "erase", "C100", "--id", "x-1")
    assert result.exit_code == 0


def test_consent_show_as_of_json(shared: str) -> None:
    assert run_json(shared, "consent", "show", "C100", "--as-of", "2025-02-15T00:00:00Z") == {
        "customer": "C100",
        "as_of": "2025-02-15T00:00:00Z",
        "consents": [
            {"purpose": "marketing", "channel": "email", "status": "given", "since": "2025-01-10T09:01:00Z"},
            {"purpose": "affiliate_sharing", "channel": "post", "status": "given", "since": "2025-01-10T09:01:00Z"},
        ],
    }  # fmt: skip
    assert run_json(shared, "consent", "show", "C100", "--as-of", "2025-01-01") == {
        "customer": "C100",
        "as_of": "2025-01-01T23:59:59.999999Z",
        "consents": [],
    }
    now = run_json(shared, "consent", "show", "C100")
    assert now["as_of"] is None and now["consents"][0]["status"] == "withdrawn"


def test_consent_show_plain_output(shared: str) -> None:
    result = run(shared, "consent", "show", "C100", "--as-of", "2025-04-01T00:00:00+01:00")
    assert result.stdout.splitlines() == [
        "Consents of customer C100, as of 2025-03-31T23:00:00Z",
        "  PURPOSE            CHANNEL  STATUS     SINCE",
        "  marketing          email    withdrawn  2025-03-02T09:00:00Z",
        "  affiliate_sharing  post     given      2025-01-10T09:01:00Z",
    ]


def test_order_show(shared: str) -> None:
    document = run_json(shared, "order", "show", "O501")
    assert document == {
        "customer": "C101",
        "order": "O501",
        "placed_at": "2025-02-05T15:25:00Z",
        "total": "45.00",
        "currency": "GBP",
        "status": "cancelled",
        "facts": [
            {"at": "2025-02-05T15:25:00Z", "type": "order.placed", "fact_id": "s-0015", "total": "45.00", "currency": "GBP"},
            {"at": "2025-02-05T16:00:00Z", "type": "order.verification_contact", "fact_id": "s-0016", "channel": "phone"},
            {"at": "2025-02-05T16:05:00Z", "type": "payment.authorisation", "fact_id": "s-0017", "issuer": "Mastercard", "result": "refused", "reason": "do_not_honour"},
            {"at": "2025-02-05T16:06:00Z", "type": "identity.check", "fact_id": "s-0018", "provider": "Electoral Roll Check Ltd", "source": "electoral_roll", "result": "fail"},
            {"at": "2025-02-05T17:00:00Z", "type": "order.cancelled", "fact_id": "s-0019", "reason": "payment_refused"},
        ],
    }  # fmt: skip
    result = run(shared, "order", "show", "O501")
    assert result.stdout.splitlines()[0] == "Order O501 of customer C101: 45.00 GBP, cancelled"


# -- audit check, db upgrade, demo, help -----------------------------------------------------


def test_audit_check_json(shared: str) -> None:
    def violation(rule: str, customer: str, fact_id: str, at: str) -> dict[str, str]:
        return {"rule": rule, "customer": customer, "fact_id": fact_id, "at": at}

    document = run_json(shared, "audit", "check")
    assert list(document) == ["violations"]
    for row in document["violations"]:
        assert list(row) == ["rule", "customer", "fact_id", "at"]
    # Other issues may add rules beyond SPEC §3; these are §3's, in order.
    assert {"violations": [v for v in document["violations"] if v["rule"] in RULES]} == {
        "violations": [
            violation("marketing_without_consent", "C100", "s-0013", "2025-02-03T10:00:00Z"),
            violation("research_without_consent", "C101", "s-0020", "2025-03-01T09:00:00Z"),
            violation("after_erasure", "C101", "s-0026", "2025-08-05T12:00:00Z"),
            violation("marketing_without_consent", "C101", "s-0026", "2025-08-05T12:00:00Z"),
        ]
    }
    as_of = run_json(shared, "audit", "check", "--as-of", "2025-03-01")
    assert [v["fact_id"] for v in as_of["violations"]] == ["s-0013", "s-0020"]


def test_audit_check_sees_a_late_withdrawal_dated_earlier(url: str, tmp_path: Path) -> None:
    late = line("consent.withdrawn", "late-1", 0, customer="C100", at="2025-02-02T00:00:00Z")
    feed = tmp_path / "late.jsonl"
    feed.write_bytes(jsonl([late]))
    assert run_json(url, "import", str(feed))["accepted"] == 1
    found = {(v["rule"], v["fact_id"]) for v in run_json(url, "audit", "check")["violations"]}
    assert ("marketing_without_consent", "s-0012") in found


def test_audit_check_plain_output(shared: str) -> None:
    result = run(shared, "audit", "check", "--as-of", "2025-03-01")
    assert result.stdout.splitlines() == [
        "2 violations",
        "",
        "marketing_without_consent: 1",
        "  AT                    CUSTOMER  FACT_ID",
        "  2025-02-03T10:00:00Z  C100      s-0013",
        "",
        "research_without_consent: 1",
        "  AT                    CUSTOMER  FACT_ID",
        "  2025-03-01T09:00:00Z  C101      s-0020",
    ]


def test_db_upgrade_plain_output(shared: str) -> None:
    result = run(shared, "db", "upgrade")
    assert result.exit_code == 0
    assert result.stdout.endswith("is up to date (schema 0013)\n")


def test_demo_builds_a_ledger_and_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    document = run_json(None, "demo", "--customers", "20")
    expected_facts = sum(1 for _ in generate_lines(20, seed=7))
    assert document["facts"] == expected_facts
    assert document["customers"] == 20
    assert document["database"] == "sqlite:///consent-ledger-demo.db"
    demo_url = document["database"]
    # The demo keeps its keys beside its file, whatever key folder the environment names.
    assert (tmp_path / "consent-ledger-demo.db.keys" / "signing.pub").exists()
    assert not (tmp_path / "keys").exists()
    monkeypatch.setenv("CONSENT_LEDGER_KEY_DIR", str(tmp_path / "consent-ledger-demo.db.keys"))
    ref = document["customer"]
    assert run_json(demo_url, "customer", "trail", ref)["disclosures"] == document["trail"]
    violations = run_json(demo_url, "audit", "check")["violations"]
    counted: dict[str, int] = {}
    for v in violations:
        counted[v["rule"]] = counted.get(v["rule"], 0) + 1
    assert document["violations"] == dict(sorted(counted.items()))
    assert document["verify"] == run_json(demo_url, "verify")
    assert document["verify"]["ok"] is True
    plain = run(None, "demo", "--customers", "20")
    assert plain.exit_code == 0
    assert plain.stdout.startswith(
        f"Built consent-ledger-demo.db: {expected_facts} facts about 20 customers"
    )
    assert "Try next:" in plain.stdout
    # (The environment names a key folder: each line sets the demo's own, as --db does.)
    assert (
        "  env -u CONSENT_LEDGER_KEY_DIR CONSENT_LEDGER_KEY_DIR=consent-ledger-demo.db.keys "
        "consent-ledger --db sqlite:///consent-ledger-demo.db verify --json"
    ) in plain.stdout
    assert "(verify): nothing altered;" in plain.stdout


def test_demo_builds_the_file_the_global_db_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    document = run_json("sqlite:///mine.db", "demo", "--customers", "5")
    assert document["database"] == "sqlite:///mine.db"
    assert (tmp_path / "mine.db").exists()
    assert not (tmp_path / "consent-ledger-demo.db").exists()
    refused = run("postgresql://nobody@127.0.0.1:1/none", "demo", "--customers", "5")
    assert (refused.exit_code, refused.stdout) == (2, "")
    assert "the demo builds an SQLite file" in refused.stderr
    # --path, when given, names the file whatever --db says.
    assert run_json("sqlite:///mine.db", "demo", "--customers", "5", "--path", "other.db")[
        "database"
    ] == ("sqlite:///other.db")


def test_demo_replaces_only_a_ledger_it_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, feed_small: Path
) -> None:
    """The demo replaces its file and key folder: a real ledger (or any other file) named by
    --db or --path is refused, exit 1, and left exactly as it was."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONSENT_LEDGER_KEY_DIR")  # each ledger's keys beside its file
    assert run_json("sqlite:///real.db", "import", str(feed_small))["accepted"] == 26
    keys = sorted(p.name for p in (tmp_path / "real.db.keys").iterdir())
    before = (tmp_path / "real.db").read_bytes()
    for args in (["--path", "real.db"], []):
        refused = run("sqlite:///real.db", "demo", "--customers", "5", *args)
        assert (refused.exit_code, refused.stdout) == (1, "")
        assert "real.db holds something the demo did not build" in error_line(refused)
    assert (tmp_path / "real.db").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "real.db.keys").iterdir()) == keys
    assert run_json("sqlite:///real.db", "verify")["facts"] == 26
    (tmp_path / "notes.txt").write_text("not a ledger")
    refused = run(None, "demo", "--path", "notes.txt")
    assert refused.exit_code == 1 and "notes.txt holds something" in error_line(refused)
    assert (tmp_path / "notes.txt").read_text() == "not a ledger"
    (tmp_path / "orphan.db.keys").mkdir()
    (tmp_path / "orphan.db.keys" / "master.key").write_text("kept")
    refused = run(None, "demo", "--path", "orphan.db")
    assert refused.exit_code == 1 and "orphan.db.keys holds keys" in error_line(refused)
    assert (tmp_path / "orphan.db.keys" / "master.key").read_text() == "kept"

    # Its own ledger it replaces; and its key folder, once its file was removed by hand.
    assert run_json(None, "demo", "--customers", "5")["facts"] > 0
    demo_db = tmp_path / "consent-ledger-demo.db"
    demo_db.unlink()
    assert run_json(None, "demo", "--customers", "6")["customers"] == 6
    assert (tmp_path / "consent-ledger-demo.db.keys" / "master.key").exists()
    # An empty file is no ledger (a demo cut short by a full disk left one): built over
    demo_db.unlink()
    demo_db.touch()
    assert run_json(None, "demo", "--customers", "4")["customers"] == 4
    assert sorted(p.name for p in (tmp_path / "real.db.keys").iterdir()) == keys
    # Only the mark counts, not what the facts look like: a shop's ledger whose ids are
    # shaped like the sample's (C4711001-1) is not the demo's.
    shop = tmp_path / "shop.jsonl"
    shop.write_bytes(
        b"".join(
            orjson.dumps(fact) + b"\n"
            for fact in generate(1, seed=3)
            if fact["type"] == "customer.registered"
        )
    )
    assert run_json("sqlite:///shop.db", "import", str(shop))["accepted"] == 1
    refused = run("sqlite:///shop.db", "demo", "--customers", "3")
    assert refused.exit_code == 1 and "shop.db holds something" in error_line(refused)
    assert run_json("sqlite:///shop.db", "verify")["facts"] == 1


def _commands() -> list[list[str]]:
    """Every command of the tree, as the words that name it (walked, not listed by hand: a
    new command is covered by the help tests the day it lands)."""
    import click

    from cli.main import cli

    def walk(group: click.Group, path: list[str], ctx: click.Context) -> Iterator[list[str]]:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if isinstance(command, click.Group):
                yield from walk(command, [*path, name], click.Context(command, parent=ctx))
            elif command is not None:
                yield [*path, name]

    return list(walk(cli, [], click.Context(cli, info_name="consent-ledger")))


COMMANDS = _commands()


@pytest.mark.parametrize("group", [[], ["customer"], ["report"], ["recipients"], ["audit"]])
def test_command_lists_show_whole_phrases(group: list[str]) -> None:
    # click cuts a docstring's first line at its first full stop: "GDPR Art." was all it
    # showed of some commands.
    listed = run(None, *group, "--help").stdout.split("Commands:")[1]
    assert not [line for line in listed.splitlines() if line.rstrip().endswith("Art.")]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str]) -> None:
    result = run(None, *command, "--help")
    assert result.exit_code == 0
    usage, _, rest = result.stdout.partition("\n\n")
    assert usage.startswith(f"Usage: cli {' '.join(command)}") or usage.startswith(
        f"Usage: consent-ledger {' '.join(command)}"
    )
    description = rest.split("\n\n")[0].strip()
    assert len(description) > 20, result.stdout
    assert "Options:" in result.stdout
    # No option's help shows a Python value where words belong ("[x<=None]")
    assert "None" not in result.stdout, result.stdout


def test_root_help_lists_the_commands() -> None:
    result = run(None, "--help")
    assert result.exit_code == 0
    for name in (
        "import",
        "record",
        "disclose",
        "consent",
        "customer",
        "order",
        "audit",
        "db",
        "demo",
    ):
        assert f"  {name} " in result.stdout


def test_a_database_failure_mid_command_is_one_error_line(
    shared: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def gone(*_args: Any, **_kwargs: Any) -> Any:
        cause = Exception("server closed the connection unexpectedly\n\tThis probably means…")
        raise sa.exc.OperationalError("SELECT 1", {}, cause)

    monkeypatch.setattr("ledger.persistence.database.Database.fetch_on_driver", gone)
    result = run(shared, "customer", "trail", "C100", "--json")
    assert (result.exit_code, result.stdout) == (1, "")
    assert error_line(result) == (
        "Error: the database failed: server closed the connection unexpectedly; "
        "the command's transaction was rolled back"
    )
    assert log_lines(result)[0]["error_type"] == "DatabaseUnavailableError"


def test_an_unexpected_failure_after_a_commit_says_what_stays_committed(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_document: Any) -> None:
        raise TypeError("the output broke")

    assert run(ledger_url, "db", "upgrade").exit_code == 0
    fact = '{"type": "transfer.initiated", "id": "t-1", "acquirer": "Acme", "scope": "all"}'
    with monkeypatch.context() as patched:
        patched.setattr("cli.commands.recording.emit_json", broken)
        result = run(ledger_url, "record", fact, "--json")
    assert result.exit_code == 1
    assert error_line(result).startswith("Error: unexpected TypeError at ")
    assert "; what the command committed before it stays committed, the rest was rolled " in (
        error_line(result)
    )
    again = run(ledger_url, "record", fact)
    assert again.exit_code == 0 and "already recorded" in again.stdout + again.stderr


def test_a_failure_of_psycopg_itself_is_a_database_failure_too(
    shared: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's reads that bypass SQLAlchemy (`postgres_reads`, the export's scan) raise
    psycopg's errors: a restarted server read as "unexpected AdminShutdown ... a bug"."""
    import psycopg

    def shut_down(*_args: Any, **_kwargs: Any) -> Any:
        raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")

    monkeypatch.setattr("ledger.persistence.database.Database.fetch_on_driver", shut_down)
    result = run(shared, "customer", "trail", "C100", "--json")
    assert (result.exit_code, result.stdout) == (1, "")
    assert error_line(result).startswith(
        "Error: the database failed: terminating connection due to administrator command"
    )


def test_logs_of_an_import_carry_no_personal_data_even_at_debug(ledger_url: str) -> None:
    lines = SMALL.read_bytes().splitlines()
    personal: set[str] = set()
    for raw in lines:
        obj = orjson.loads(raw)
        personal.update(str(obj[k]) for k in ("name", "email", "phone") if k in obj)
        personal.update(obj.get("address", {}).values())
        personal.update(str(obj[k]) for k in ("customer",) if k in obj)
    personal.discard("GB")
    run_json(ledger_url, "db", "upgrade")
    result = run(ledger_url, "--log-level", "debug", "import", str(SMALL), "--json")
    assert result.exit_code == 0
    assert_one_clean_log_line(result, "import")
    for value in personal:
        assert value not in result.stderr, value


@pytest.mark.parametrize(
    "args",
    [
        ("consent", "give", "C1", "marketing", "Ignatius Flimwhistle", "--method", "x"),
        ("consent", "show", "C1", "--as-of", "Ignatius Flimwhistle"),
        ("audit", "check", "--known-at", "ignatius@bogglemail.example"),
        ("disclose", "Ignatius Flimwhistle", "Offspring"),
        ("demo", "--customers", "ignatius@bogglemail.example"),
        ("demo", "--seed", "Ignatius Flimwhistle"),
        ("projections", "follow", "--interval", "Ignatius Flimwhistle"),
    ],
)
def test_a_usage_error_names_the_parameter_not_the_value_given(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """Typed in the wrong place, a value may be a name or an email: errors never echo it."""
    result = run(f"sqlite:///{tmp_path / 'x.db'}", *args)
    assert result.exit_code == 2
    assert "Flimwhistle" not in result.stderr and "bogglemail" not in result.stderr
    assert "Error: Invalid value for" in result.stderr


def test_logs_name_a_customer_by_a_keyed_hash_stable_within_a_ledger_only(
    tmp_path: Path,
) -> None:
    """Not an unkeyed hash of the reference, which anyone holding the logs could reverse by
    hashing likely references (C1, C2, ...): one ledger's lines about a customer match each
    other, and another ledger's do not."""
    feed = Path(__file__).parents[1] / "data" / "feed-small.jsonl"
    names = []
    for ledger in ("a", "b"):
        url = f"sqlite:///{tmp_path / ledger}.db"
        assert run(url, "import", str(feed)).exit_code == 0
        for command in (("customer", "show", "C100"), ("customer", "trail", "C100")):
            entry = assert_one_clean_log_line(run(url, *command), " ".join(command[:2]))
            names.append(entry["customer"])
        assert names[-1] == log_pseudonym(url, "C100")
    assert names[0] == names[1] and names[2] == names[3] and names[0] != names[2]
    assert all(hashlib.sha256(b"C100").hexdigest()[:12] not in name for name in names)


@pytest.mark.parametrize(
    "command",
    [
        "consent give C100 marketing post --method phone --policy-version 1",
        "disclose affiliate Offspring --customer C100 --categories name",
        "customer erase C100",
    ],
)
def test_logs_name_a_fact_given_by_its_id_by_a_keyed_hash_too(tmp_path: Path, command: str) -> None:
    """A shop's fact ids may embed its customer references (or be emails): one in clear
    would give back the reference behind every line logged about that customer."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert run(url, "import", str(SMALL)).exit_code == 0
    fact_id = "C100/ignatius@bogglemail.example"
    args = command.split()
    result = run(url, *args, "--id", fact_id, "--json")
    assert result.exit_code == 0, result.stderr
    assert orjson.loads(result.stdout)["fact_id"] == fact_id  # (stdout answers in clear)
    entry = assert_one_clean_log_line(
        result, " ".join(args[:2]) if args[0] != "disclose" else "disclose"
    )
    assert entry["fact_id"] == log_pseudonym(url, fact_id)
    assert "C100" not in result.stderr and "bogglemail" not in result.stderr


def test_erasing_an_erased_customer_records_nothing_unless_it_was_earlier(url: str) -> None:
    first = run_json(url, "customer", "erase", "C100", "--at", "2025-09-01T00:00:00Z")
    assert first["recorded"] is True
    facts = run_json(url, "verify")["facts"]
    again = run(url, "customer", "erase", "C100")
    assert (again.exit_code, again.stdout) == (
        0,
        f"customer C100 was already erased ({first['fact_id']}): nothing recorded\n"
        "their personal data is gone: the database holds no readable copy\n",
    )
    later = run_json(url, "customer", "erase", "C100", "--at", "2025-10-01T00:00:00Z")
    assert later == {
        "customer": "C100",
        "erased": True,
        "fact_id": first["fact_id"],
        "recorded": False,
        "shredded": True,
    }
    assert run_json(url, "verify")["facts"] == facts
    # An erasure reported late, that happened earlier, moves the time the rules judge from.
    earlier = run_json(url, "customer", "erase", "C100", "--at", "2025-08-01T00:00:00Z")
    assert earlier["recorded"] is True and earlier["fact_id"] != first["fact_id"]
    assert run_json(url, "verify")["facts"] == facts + 1


GIVE_AFFILIATE_SHARING = ["consent", "give", "C100", "affiliate_sharing", "email"]
GIVE_AFFILIATE_SHARING += ["--method", "checkout-checkbox", "--policy-version", "2024-01"]
DISCLOSE_TO_OFFSPRING = ["disclose", "affiliate", "Offspring", "--customer", "C100"]
GIVE_MARKETING = ["consent", "give", "C100", "marketing", "email"]
GIVE_MARKETING += ["--method", "checkout-checkbox", "--policy-version", "2024-01"]


@pytest.mark.parametrize(
    "command",
    [
        ["customer", "erase", "C100", "--id", "s-0002"],  # a consent.given of C100
        ["customer", "erase", "C101", "--id", "s-0002"],  # C101 already erased: still refused
        # the same fact but for its time, given
        [*GIVE_MARKETING, "--at", "2030-01-01T00:00:00Z", "--id", "s-0002"],
        ["consent", "withdraw", "C100", "marketing", "email", "--method", "x", "--id", "s-0004"],
        # the same type and customer, another purpose
        [*GIVE_AFFILIATE_SHARING, "--id", "s-0002"],
        [*DISCLOSE_TO_OFFSPRING, "--categories", "email", "--id", "s-0011"],
        ["disclose", "carrier", "DPD", "--order", "O501", "--tracking", "T1", "--id", "s-0009"],
    ],
)
def test_a_command_given_an_id_another_fact_has_is_refused(shared: str, command: list[str]) -> None:
    """An id is a fact's idempotency key: given again with another fact, the command must not
    report as done (or as a duplicate) what it never recorded."""
    before = recorded_ids(shared)
    result = run(shared, *command)
    assert result.exit_code == 1, result.stdout
    fact_id = command[-1]
    assert error_line(result).startswith(f"Error: fact id '{fact_id}' is already taken by ")
    assert recorded_ids(shared) == before
    assert run_json(shared, "customer", "show", "C100")["erased"] is False


def test_a_fact_recorded_again_under_its_own_id_is_a_duplicate(shared: str) -> None:
    """A retry of a recorded fact (each line of the feed, given to `record`, or retried by a
    command whose id must name that same fact) records nothing and says so, whatever its
    type. (That a line with a recorded id is a duplicate whatever it says is
    `test_record_records_one_fact_and_prints_what_it_recorded`.)"""
    from ledger.config import open_ledger

    before = recorded_ids(shared)
    ledger = open_ledger(shared)
    try:
        for fact in SMALL.read_text().splitlines():
            document = run_json(shared, "record", fact)
            assert (document["recorded"], document["duplicate"]) == (False, True), fact
            assert document["type"] == orjson.loads(fact)["type"]
            assert ledger.record_fact(orjson.loads(fact))[1] is False
    finally:
        ledger.database.dispose()
    assert recorded_ids(shared) == before


def test_no_command_writes_over_the_ledgers_own_files(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An access pack or a report given the database, a key or a device as its --out is
    refused before any work, and nothing is recorded."""
    monkeypatch.chdir(tmp_path)
    keys = tmp_path / "keys"  # CONSENT_LEDGER_KEY_DIR (tests/conftest.py)
    targets = [keys / "master.key", keys / "pack.json", Path("/dev/null")]
    if url.startswith("sqlite:///"):
        database = Path(url.removeprefix("sqlite:///"))
        targets += [database, database.with_name(database.name + "-wal")]
    before = recorded_ids(url)
    # (the database's files are the ledger's to change, by a checkpoint: verify checks them)
    kept = {path: path.read_bytes() for path in keys.iterdir()}
    for target in targets:
        for command in (
            ["customer", "access-export", "C100", "--out", str(target)],
            ["audit", "report", "--out", str(target)],
            ["report", "processing", "--out", str(target)],
        ):
            result = run(url, *command)
            assert result.exit_code == 1, (command, result.stdout)
            assert error_line(result).startswith(f"Error: cannot write {target}: it is "), command
    assert recorded_ids(url) == before
    assert {path: path.read_bytes() for path in kept} == kept
    assert Path("/dev/null").is_char_device()
    assert run_json(url, "verify")["ok"] is True


def test_an_erasure_dated_in_the_future_is_refused(shared: str) -> None:
    """The key is destroyed now: dated in 2999, the rules would judge disclosures until
    then as made before the erasure."""
    before = recorded_ids(shared)
    result = run(shared, "customer", "erase", "C100", "--at", "2999-01-01T00:00:00Z")
    assert result.exit_code == 1
    assert error_line(result).startswith(
        "Error: an erasure cannot be dated in the future (2999-01-01T00:00:00Z)"
    )
    assert recorded_ids(shared) == before
    assert run_json(shared, "customer", "show", "C100")["erased"] is False
