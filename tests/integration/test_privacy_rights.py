"""Data subjects' rights through the CLI, on each backend: Art. 15 access pack, Art. 19
notifications of recipients, Art. 21 suppression by keyed email hash."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from ledger.persistence.database import normalise_url
from tests.cli_helpers import error_line, run, run_json


def _prepare(url: str, feed: Path) -> None:
    assert run(url, "db", "upgrade").exit_code == 0
    assert run_json(url, "import", str(feed))["accepted"] == 26


def _register(url: str, ref: str, email: str, at: str = "2025-09-01T10:00:00Z") -> None:
    fact = {
        "type": "customer.registered",
        "at": at,
        "customer": ref,
        "name": "Returning Person",
        "email": email,
        "address": {
            "line1": "9 Return Road",
            "city": "Leeds",
            "postcode": "LS1 1AA",
            "country": "GB",
        },
    }
    assert run_json(url, "record", orjson.dumps(fact).decode())["recorded"] is True


# -- Art. 15 -----------------------------------------------------------------------------------


def test_access_export_writes_the_pack_and_its_readable_rendering(
    ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    _prepare(ledger_url, feed_small)
    out = tmp_path / "ada.json"
    done = run_json(ledger_url, "customer", "access-export", "C100", "--out", str(out))
    readable = Path(f"{out}.md")
    assert done["files"] == [str(out), str(readable)] and done["disclosures"] == 6
    for path in (out, readable):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pack = orjson.loads(out.read_bytes())
    details = run_json(ledger_url, "customer", "show", "C100")["details"]
    assert pack["personal_data"] == details and details["phone"] == "+44 7700 900001"
    trail = run_json(ledger_url, "customer", "trail", "C100")["disclosures"]
    assert pack["disclosures"] == trail
    assert [r["recipient"] for r in pack["recipients"]] == [
        "DPD",
        "Experian",
        "Northwind Retail Group",
        "Offspring",
        "Visa",
    ]
    experian = next(r for r in pack["recipients"] if r["recipient"] == "Experian")
    assert experian["recipient_kinds"] == ["credit_reference_agency", "identity_verification"]
    assert experian["bases"] == ["consent", "legitimate_interests"]
    assert [
        (h["fact_id"], h["status"], h["method"], h["policy_version"])
        for h in pack["consent_history"]
    ] == [
        ("s-0002", "given", "checkout-checkbox", "2024-01"),
        ("s-0003", "given", "checkout-checkbox", "2024-01"),
        ("s-0021", "withdrawn", "unsubscribe-link", None),
    ]
    assert [o["order"] for o in pack["orders"]] == ["O500"]
    assert {f["fact_id"] for f in pack["orders"][0]["facts"]} >= {"s-0006", "s-0009"}
    # The request it answered is recorded; the feed's earlier one (s-0024) is listed too.
    requests = [r["fact_id"] for r in pack["access_requests"]]
    assert requests[0] == "s-0024" and len(requests) == 2
    text = readable.read_text()
    assert "Ada Lovelace" in text and "Northwind Retail Group" in text
    assert "| business_transfer | legitimate_interests |" in text

    again = tmp_path / "again.json"
    run_json(ledger_url, "customer", "access-export", "C100", "--out", str(again), "--no-record")
    assert len(orjson.loads(again.read_bytes())["access_requests"]) == 2


def test_an_erased_customers_pack_withholds_free_text_shaped_like_their_contact_details(
    ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    """A shifted column puts a customer's phone number in a consent's method or a carrier's
    name; their own pack, trail and orders show it, but after the erasure no command may
    (SPEC §4), as the identified export already withheld it (privacy review)."""
    _prepare(ledger_url, feed_small)
    shifted = tmp_path / "shifted.jsonl"
    lines = [
        {
            "id": "w-1",
            "type": "consent.given",
            "at": "2025-06-01T09:00:00Z",
            "customer": "C100",
            "purpose": "market_research",
            "channel": "email",
            "method": "phoned 07700 900555",
            "policy_version": "v2 ring +44 7700 900555",
        },
        {
            "id": "w-2",
            "type": "order.dispatched",
            "at": "2025-06-02T09:00:00Z",
            "order": "O500",
            "carrier": "DPD ask for ada.shifted@example.org",
            "tracking": "DPD555",
        },
    ]
    shifted.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    assert run_json(ledger_url, "import", str(shifted))["accepted"] == 2
    secrets = ("900555", "ada.shifted@example.org")

    def pack_text(name: str) -> str:
        out = tmp_path / f"{name}.json"
        args = ("customer", "access-export", "C100", "--out", str(out), "--no-record")
        assert run(ledger_url, *args).exit_code == 0
        return out.read_text() + Path(f"{out}.md").read_text()

    def views_text() -> str:  # the carrier is the dispatch's recipient
        trail = run(ledger_url, "customer", "trail", "C100", "--json")
        order = run(ledger_url, "order", "show", "O500", "--json")
        assert trail.exit_code == order.exit_code == 0
        return trail.stdout + order.stdout

    before = pack_text("before") + views_text()
    assert all(secret in before for secret in secrets)  # their own words, to them
    assert run(ledger_url, "customer", "erase", "C100").exit_code == 0
    for after in (pack_text("after"), views_text()):
        assert [secret for secret in secrets if secret in after] == []
        assert "[withheld: shaped like an email or phone number]" in after
        assert "DPD555" in after  # the shop's words stay


@pytest.mark.parametrize(
    "command",
    [
        ["customer", "access-export", "C100", "--out", "{name}.json"],
        ["audit", "report", "--out", "{name}.html"],
        ["export", "due-diligence", "--acquirer", "Northwind", "--out", "{name}"],
    ],
    ids=["access-export", "audit-report", "export"],
)
def test_outputs_named_near_the_file_name_limit_are_written(
    ledger_url: str, feed_small: Path, tmp_path: Path, command: list[str]
) -> None:
    """Temporaries beside an output are named after it: an output within ~40 bytes of the
    255-byte limit was refused ("File name too long"); cut short naively, an access pack's
    two temporaries (x.json, x.json.md) took one name, and the request was recorded as
    served with no pack written."""
    _prepare(ledger_url, feed_small)
    (tmp_path / "out").mkdir()
    name = str(tmp_path / "out" / ("r" * 245))
    result = run(ledger_url, *(part.format(name=name) for part in command))
    assert result.exit_code == 0, result.stderr
    made = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert made and all(n.startswith("r" * 245) for n in made), made  # no temporary left
    if command[0] == "customer":
        assert orjson.loads((tmp_path / "out" / ("r" * 245 + ".json")).read_bytes())


def test_access_export_of_an_unknown_customer_is_an_error(
    ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    _prepare(ledger_url, feed_small)
    result = run(ledger_url, "customer", "access-export", "C999", "--out", str(tmp_path / "x"))
    assert result.exit_code == 1
    assert error_line(result) == "Error: customer 'C999' is not in the ledger"
    assert not (tmp_path / "x").exists()
    nowhere = tmp_path / "missing" / "pack.json"
    result = run(ledger_url, "customer", "access-export", "C100", "--out", str(nowhere))
    assert result.exit_code == 1 and "does not exist" in error_line(result)
    pack = tmp_path / "pack.json"
    run_json(ledger_url, "customer", "access-export", "C100", "--out", str(pack), "--no-record")
    requests = orjson.loads(pack.read_bytes())["access_requests"]
    assert [r["fact_id"] for r in requests] == ["s-0024"]  # the failed export recorded nothing


@pytest.mark.parametrize("blocked", ["the pack", "its rendering"])
def test_an_access_pack_that_cannot_be_written_is_not_recorded_as_served(
    ledger_url: str,
    feed_small: Path,
    tmp_path: Path,
    blocked: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Art. 15: the request is recorded as answered only when the pack was handed over.
    A folder where a file should go is caught before anything is done; a file that fails
    while it is written (here: the disk full halfway through) undoes the request's record,
    and leaves no part of the pack behind, written or half written."""
    _prepare(ledger_url, feed_small)
    out = tmp_path / "pack.json"
    target = out if blocked == "the pack" else out.with_name("pack.json.md")
    target.mkdir()
    result = run(ledger_url, "customer", "access-export", "C100", "--out", str(out))
    if blocked == "the pack":  # click refuses a folder as --out itself: a usage error
        assert result.exit_code == 2 and "is a directory" in result.stderr
    else:
        assert result.exit_code == 1
        assert error_line(result) == f"Error: cannot write {target}: it is a folder"
    target.rmdir()

    from cli.commands import privacy
    from ledger.errors import InputError

    real = privacy.write_file

    def disk_full(path: Path, content: bytes, **options: Any) -> None:
        if options.get("shown") == target:
            path.write_bytes(content[: len(content) // 2])  # half, then no space left
            raise InputError(f"cannot write {target}: No space left on device")
        real(path, content, **options)

    monkeypatch.setattr(privacy, "write_file", disk_full)
    result = run(ledger_url, "customer", "access-export", "C100", "--out", str(out))
    assert result.exit_code == 1
    assert error_line(result) == f"Error: cannot write {target}: No space left on device"
    assert not out.exists() and not target.exists()
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".partial")]
    monkeypatch.setattr(privacy, "write_file", real)
    kept = tmp_path / "kept.json"
    run_json(ledger_url, "customer", "access-export", "C100", "--out", str(kept), "--no-record")
    requests = orjson.loads(kept.read_bytes())["access_requests"]
    assert [r["fact_id"] for r in requests] == ["s-0024"]


# -- Art. 19 -----------------------------------------------------------------------------------


def _due(url: str, *extra: str) -> list[tuple[str, str, str]]:
    rows = run_json(url, "recipients", "notifications", *extra)["notifications"]
    return [(r["customer"], r["recipient"], r["fact_id"]) for r in rows]


def _notification_violations(url: str) -> list[dict[str, Any]]:
    found = run_json(url, "audit", "check")["violations"]
    return [v for v in found if v["rule"] == "recipient_not_notified"]


def test_erasure_notifications_are_due_listed_recorded_and_audited(
    ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    _prepare(ledger_url, feed_small)
    assert _due(ledger_url) == [
        ("C101", "Electoral Roll Check Ltd", "s-0025"),
        ("C101", "Mastercard", "s-0025"),
    ]
    late = {
        "rule": "recipient_not_notified",
        "customer": "C101",
        "fact_id": "s-0025",
        "at": "2025-08-01T12:00:00Z",
    }
    assert _notification_violations(ledger_url) == [late]
    # Judged as of a day before the deadline, it was not late yet.
    early = run_json(ledger_url, "audit", "check", "--as-of", "2025-08-30")["violations"]
    assert [v for v in early if v["rule"] == "recipient_not_notified"] == []

    told = run_json(
        ledger_url,
        "recipients",
        "notified",
        "Mastercard",
        "--customer",
        "C101",
        "--at",
        "2025-08-20T09:00:00Z",
        "--id",
        "n-1",
    )
    assert told == {
        "customer": "C101",
        "recipient": "Mastercard",
        "fact_id": "n-1",
        "regarding": ["s-0025"],
    }
    assert _due(ledger_url) == [("C101", "Electoral Roll Check Ltd", "s-0025")]
    assert _notification_violations(ledger_url) == [late]  # one recipient still outstanding
    everything = run_json(ledger_url, "recipients", "notifications", "--all")["notifications"]
    mastercard = next(r for r in everything if r["recipient"] == "Mastercard")
    assert (mastercard["notified_at"], mastercard["notified_fact_id"]) == (
        "2025-08-20T09:00:00Z",
        "n-1",
    )

    run_json(ledger_url, "recipients", "notified", "Electoral Roll Check Ltd", "--customer", "C101")
    assert _due(ledger_url) == []
    assert _notification_violations(ledger_url) == []

    # A notification is a fact of the ledger: its id is taken, and nothing is due twice.
    again = run(ledger_url, "recipients", "notified", "Mastercard", "--customer", "C101")
    assert again.exit_code == 1 and "no notification to recipient 'Mastercard'" in error_line(again)
    reused = run(ledger_url, "recipients", "notified", "Visa", "--customer", "C100", "--id", "n-1")
    assert reused.exit_code == 1 and error_line(reused) == "Error: fact 'n-1' is already recorded"
    out = tmp_path / "pack.json"
    run_json(ledger_url, "customer", "access-export", "C101", "--out", str(out))
    pack = orjson.loads(out.read_bytes())
    assert [(n["recipient"], n["notified_fact_id"]) for n in pack["notifications"]] == [
        ("Electoral Roll Check Ltd", pack["notifications"][0]["notified_fact_id"]),
        ("Mastercard", "n-1"),
    ]
    assert pack["notifications"][0]["notified_fact_id"] is not None


def _record(url: str, **fact: str) -> None:
    assert run_json(url, "record", orjson.dumps(fact).decode())["recorded"] is True


def _mastercard_customer_erased(url: str, ref: str, erased_at: str) -> None:
    """A customer whose card went to Mastercard, erased at `erased_at`."""
    _register(url, ref, f"{ref.lower()}@example.com")
    at = "2025-09-01T11:00:00Z"
    order = f"O-{ref}"
    _record(
        url, type="order.placed", at=at, order=order, customer=ref, total="9.99", currency="GBP"
    )
    _record(
        url,
        type="payment.authorisation",
        at=at,
        order=order,
        issuer="Mastercard",
        result="authorised",
    )
    _record(url, type="subject.erased", at=erased_at, customer=ref)


def test_a_recipient_told_of_every_due_notification_at_once_answers_each_customer(
    ledger_url: str, feed_small: Path
) -> None:
    _prepare(ledger_url, feed_small)
    _mastercard_customer_erased(ledger_url, "C300", "2025-09-05T00:00:00Z")
    _mastercard_customer_erased(ledger_url, "C301", "2025-09-20T00:00:00Z")
    due = _due(ledger_url)
    assert [d for d in due if d[1] == "Mastercard"] == [
        ("C101", "Mastercard", "s-0025"),
        ("C300", "Mastercard", due[2][2]),
        ("C301", "Mastercard", due[3][2]),
    ]
    # Told on 10 September: of C101's erasure and C300's, not of C301's (not yet made).
    told = run_json(
        ledger_url,
        "recipients",
        "notified",
        "Mastercard",
        "--all-due",
        "--at",
        "2025-09-10T00:00:00Z",
    )
    assert told["recipient"] == "Mastercard"
    assert [(n["customer"], n["regarding"]) for n in told["notified"]] == [
        ("C101", ["s-0025"]),
        ("C300", [due[2][2]]),
    ]
    ids = [n["fact_id"] for n in told["notified"]]
    assert len(set(ids)) == 2
    left = [d for d in _due(ledger_url) if d[1] == "Mastercard"]
    assert left == [("C301", "Mastercard", due[3][2])]
    # Told again on the same day: nothing is due twice, and C301's is still not due.
    twice = run(
        ledger_url, "recipients", "notified", "Mastercard", "--all-due", "--at", "2025-09-10"
    )
    assert twice.exit_code == 1 and "no notification" in error_line(twice)
    everything = run_json(ledger_url, "recipients", "notifications", "--all")["notifications"]
    answered = {
        r["customer"]: (r["notified_at"], r["notified_fact_id"])
        for r in everything
        if r["recipient"] == "Mastercard" and r["notified_at"] is not None
    }
    assert answered == {
        "C101": ("2025-09-10T00:00:00Z", ids[0]),
        "C300": ("2025-09-10T00:00:00Z", ids[1]),
    }
    # Each is a fact of the ledger, in its customer's trail of record, and it verifies.
    proved = run_json(ledger_url, "prove", ids[1])
    assert proved["fact_id"] == ids[1]
    verified = run_json(ledger_url, "verify")
    assert verified["ok"] is True
    # Nothing left due to a recipient: refused, nothing recorded.
    again = run(ledger_url, "recipients", "notified", "Visa", "--all-due")
    assert again.exit_code == 1
    assert error_line(again) == (
        "Error: no notification to recipient 'Visa' is due for any customer "
        "(see 'consent-ledger recipients notifications')"
    )
    assert run_json(ledger_url, "verify")["facts"] == verified["facts"]


@pytest.mark.parametrize(
    "options",
    [[], ["--customer", "C101", "--all-due"], ["--all-due", "--id", "n-1"]],
    ids=["neither", "both", "an id for many"],
)
def test_notified_names_one_customer_or_all_due(
    ledger_url: str, feed_small: Path, options: list[str]
) -> None:
    _prepare(ledger_url, feed_small)
    before = _due(ledger_url)
    result = run(ledger_url, "recipients", "notified", "Mastercard", *options)
    assert result.exit_code == 2
    assert _due(ledger_url) == before


def test_a_batch_of_notifications_that_fails_records_none(
    ledger_url: str, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _prepare(ledger_url, feed_small)
    _mastercard_customer_erased(ledger_url, "C300", "2025-09-05T00:00:00Z")
    facts = run_json(ledger_url, "verify")["facts"]
    due = _due(ledger_url)
    import ledger.application as application

    same = application.uuid4()
    with monkeypatch.context() as patched:
        patched.setattr(application, "uuid4", lambda: same)  # the second fact's id is taken
        result = run(ledger_url, "recipients", "notified", "Mastercard", "--all-due")
    assert result.exit_code == 1 and "rolled back" in error_line(result)
    assert _due(ledger_url) == due  # the first customer's notification went with it
    verified = run_json(ledger_url, "verify")
    assert (verified["ok"], verified["facts"]) == (True, facts)


def test_a_rectification_is_due_to_the_recipients_of_what_changed(
    ledger_url: str, feed_small: Path
) -> None:
    _prepare(ledger_url, feed_small)
    fact = {
        "type": "customer.updated",
        "id": "u-1",
        "at": "2025-09-01T00:00:00Z",
        "customer": "C100",
        "email": "ada.new@example.net",
    }
    assert run_json(ledger_url, "record", orjson.dumps(fact).decode())["recorded"] is True
    # Only the acquirer received C100's email (s-0023); the others never had it.
    assert ("C100", "Northwind Retail Group", "u-1") in _due(ledger_url)
    assert [d for d in _due(ledger_url) if d[0] == "C100"] == [
        ("C100", "Northwind Retail Group", "u-1")
    ]


# -- Art. 21 -----------------------------------------------------------------------------------


def _check(url: str, email: str) -> dict[str, Any]:
    document = run_json(url, "suppression", "check", email)
    assert set(document) == {"email_hash", "suppressed", "since", "channels"}
    assert email not in orjson.dumps(document).decode()
    return dict(document)


def test_a_marketing_withdrawal_suppresses_the_email_even_after_erasure(
    ledger_url: str, feed_small: Path
) -> None:
    _prepare(ledger_url, feed_small)
    ada = _check(ledger_url, "ada@example.org")
    assert ada["suppressed"] is True and ada["since"] == "2025-03-02T09:00:00Z"
    assert ada["channels"] == ["email"]
    assert len(ada["email_hash"]) == 64
    assert _check(ledger_url, "  ADA@Example.org ") == ada  # normalised
    assert _check(ledger_url, "alan@example.org")["suppressed"] is False

    run_json(ledger_url, "customer", "erase", "C100")
    # Still suppressed, but no longer since when: that time is her withdrawal's, which stays
    # in C100's consent history and would tie the email back to the erased customer.
    withheld = {**ada, "since": None}
    assert _check(ledger_url, "ada@example.org") == withheld
    plain = run(ledger_url, "suppression", "check", "ada@example.org")
    assert plain.stdout == "suppressed (since when is withheld: erased) (marketing by email)\n"

    # Ada comes back as a new customer: her email is still suppressed for marketing...
    _register(ledger_url, "C200", "Ada@Example.org")
    assert _check(ledger_url, "ada@example.org") == withheld
    # ...until she opts in again, later, on that channel.
    give = run(
        ledger_url,
        "consent",
        "give",
        "C200",
        "marketing",
        "email",
        "--method",
        "web-form",
        "--policy-version",
        "2025-01",
        "--at",
        "2025-09-02T10:00:00Z",
    )
    assert give.exit_code == 0, give.stderr
    lifted = _check(ledger_url, "ada@example.org")
    assert lifted["suppressed"] is False and lifted["since"] is None


def test_an_erasure_in_a_feed_withholds_the_times_of_every_email_the_customer_had(
    ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    """Erased by a feed line: a customer registered before the file (their emails read back
    from their sealed details) and one registered in it, each with a changed email; another
    customer's suppression keeps its time."""
    _prepare(ledger_url, feed_small)
    _register(ledger_url, "C300", "grace@example.org", at="2025-01-01T00:00:00Z")
    lines = [
        {
            "type": "customer.registered",
            "customer": "C400",
            "name": "Hedy Lamarr",
            "email": "hedy@example.org",
            "address": {"line1": "1 Way", "city": "Vienna", "postcode": "1010", "country": "AT"},
            "at": "2025-01-01T00:00:00Z",
        },
        *(
            {
                "type": "consent.withdrawn",
                "customer": ref,
                "purpose": "marketing",
                "channel": "post",
                "method": "letter",
                "at": "2025-02-01T00:00:00Z",
            }
            for ref in ("C300", "C400")
        ),
        *(
            {
                "type": "customer.updated",
                "customer": ref,
                "email": f"new.{ref}@example.org",
                "at": "2025-03-01T00:00:00Z",
            }
            for ref in ("C300", "C400")
        ),
        *(
            {
                "type": "consent.withdrawn",
                "customer": ref,
                "purpose": "marketing",
                "channel": "email",
                "method": "link",
                "at": "2025-04-01T00:00:00Z",
            }
            for ref in ("C300", "C400")
        ),
        *(
            {"type": "subject.erased", "customer": ref, "at": "2025-05-01T00:00:00Z"}
            for ref in ("C300", "C400")
        ),
    ]
    feed = tmp_path / "erasures.jsonl"
    feed.write_bytes(
        b"".join(orjson.dumps({"id": f"e-{n}", **line}) + b"\n" for n, line in enumerate(lines))
    )
    assert run_json(ledger_url, "import", str(feed))["accepted"] == len(lines)
    for email in ("grace@example.org", "hedy@example.org"):
        assert _check(ledger_url, email) | {"email_hash": ""} == {
            "email_hash": "",
            "suppressed": True,
            "since": None,
            "channels": ["post"],
        }
    for email in ("new.C300@example.org", "new.C400@example.org"):
        assert _check(ledger_url, email)["channels"] == ["email"]
        assert _check(ledger_url, email)["since"] is None
    ada = _check(ledger_url, "ada@example.org")  # C100's, not erased: its time stays
    assert ada["since"] == "2025-03-02T09:00:00Z"


def _marketing(url: str, verb: str, ref: str, channel: str, at: str) -> None:
    how = (
        ["--method", "letter"]
        if verb == "withdraw"
        else ["--method", "web", "--policy-version", "1"]
    )
    result = run(url, "consent", verb, ref, "marketing", channel, *how, "--at", at)
    assert result.exit_code == 0, result.stderr


def test_withdrawals_by_command_and_late_facts_keep_the_list_right(
    ledger_url: str, feed_small: Path
) -> None:
    _prepare(ledger_url, feed_small)
    _register(ledger_url, "C300", "grace@example.org", at="2025-01-01T00:00:00Z")
    _marketing(ledger_url, "give", "C300", "post", "2025-01-01T00:01:00Z")
    assert _check(ledger_url, "grace@example.org")["suppressed"] is False
    _marketing(ledger_url, "withdraw", "C300", "post", "2025-05-01T00:00:00Z")
    assert _check(ledger_url, "grace@example.org")["since"] == "2025-05-01T00:00:00Z"
    # A late withdrawal dated before a later consent changes nothing now.
    _marketing(ledger_url, "give", "C300", "email", "2025-06-01T00:00:00Z")
    _marketing(ledger_url, "withdraw", "C300", "email", "2025-03-01T00:00:00Z")
    grace = _check(ledger_url, "grace@example.org")
    assert grace["channels"] == ["post"] and grace["since"] == "2025-05-01T00:00:00Z"
    # Other purposes are not marketing: no suppression from them.
    run_json(
        ledger_url, "consent", "withdraw", "C100", "affiliate_sharing", "post", "--method", "x"
    )
    assert _check(ledger_url, "ada@example.org")["channels"] == ["email"]


def test_facts_dated_at_the_end_of_time_leave_notifications_and_access_packs_working(
    ledger_url: str, feed_small: Path, tmp_path: Path
) -> None:
    """A rectification and an erasure within 30 days of the year 9999's end are valid feed
    times; their Art. 19 deadline is the last time there is, not an overflow that would
    take the notification list and the access pack away for good (the ledger is forever)."""
    _prepare(ledger_url, feed_small)
    late = tmp_path / "late.jsonl"
    late.write_text(
        '{"id":"z1","type":"customer.updated","at":"9999-12-20T00:00:00Z","customer":"C100",'
        '"name":"Ada King"}\n'
        '{"id":"z2","type":"subject.erased","at":"9999-12-31T00:00:00Z","customer":"C100"}\n'
    )
    assert run_json(ledger_url, "import", str(late))["accepted"] == 2
    rows = run_json(ledger_url, "recipients", "notifications")["notifications"]
    due = {row["due_by"] for row in rows if row["fact_id"] in ("z1", "z2")}
    assert due == {"9999-12-31T23:59:59.999999Z"}
    pack = tmp_path / "pack.json"
    run_json(ledger_url, "customer", "access-export", "C100", "--out", str(pack))
    assert orjson.loads(pack.read_bytes())["erased_at"] == "9999-12-31T00:00:00Z"
    assert run(ledger_url, "audit", "check", "--as-of", "9999-12-31").exit_code == 0


def test_an_access_pack_is_put_in_place_only_once_its_request_is_recorded(
    ledger_url: str, feed_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pack is written under temporary names while the request is recorded, and put in
    place only after that commits: a kill in between leaves no pack handed over unrecorded,
    only hidden temporaries, which the next access export in that folder removes once
    their process is gone. A pack that cannot be put in place says the request is recorded."""
    import os

    _prepare(ledger_url, feed_small)
    out = tmp_path / "pack.json"
    from ledger.temporaries import process_mark

    host = process_mark().partition("-")[0]
    left = tmp_path / f".pack.json.consent-ledger-{host}-999999999.partial"  # no such process
    left.write_text("personal data")
    mine = tmp_path / f".notes.consent-ledger-{process_mark()}.partial"  # alive: not touched
    mine.write_text("kept")
    others = [  # another machine's (a container's) temporary; a user's file; a huge pid
        tmp_path / ".pack.json.consent-ledger-00000000-999999999.partial",
        tmp_path / ".foo.json.99999.partial",
        tmp_path / f".x.consent-ledger-{host}-{'9' * 30}.partial",
    ]
    for other in others:
        other.write_text("kept")

    real_replace = os.replace
    seen: list[int] = []

    def requests() -> int:
        engine = sa.create_engine(normalise_url(ledger_url))
        try:
            with engine.connect() as conn:
                return int(
                    conn.exec_driver_sql(
                        "SELECT count(*) FROM ledger_facts "
                        "WHERE fact_type = 'subject.access_requested'"
                    ).scalar()
                    or 0
                )
        finally:
            engine.dispose()

    def replace(source: Any, target: Any) -> None:
        if Path(target) == out:
            # By the time the files are put in place, the request is recorded (committed).
            seen.append(requests())
            raise PermissionError(13, "Permission denied")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    refused = run(ledger_url, "customer", "access-export", "C100", "--out", str(out))
    assert refused.exit_code == 1
    assert "the request was recorded as answered, but" in error_line(refused)
    assert "--no-record" in error_line(refused)
    monkeypatch.setattr(os, "replace", real_replace)
    assert seen == [2]  # s-0024 and this one, recorded before the pack was placed
    assert not out.exists() and not left.exists() and mine.exists()
    left_now = [p for p in tmp_path.iterdir() if "pack" in p.name or "partial" in p.name]
    assert sorted(left_now) == sorted([mine, *others])
