"""Art. 19 for due-diligence exports: the acquirer of an export that held an erased customer
must be told of the erasure.

A pseudonymous export holds the customer's consents, orders and disclosures under a pseudonym
of its own: still their personal data (GDPR Art. 4(5)), and no later export tells the acquirer
which of its records to erase (each export's pseudonyms are its own). The export's customers
table marks a customer erased when the export read the erasure (made `--as-of` a time or
not: its `erased` column is today's truth, whatever the erasure's date): that export needs no
notice. A rectification changes names, emails, phones or addresses, which no pseudonymous
export holds: it calls for none. An identified export gave them, with a `transfer.disclosure`
of its own dated when it ran: a rectification recorded after it, though dated before it, is
due to its acquirer (the export gave the details the ledger had then: the old ones).

The expected rows follow from each scenario's facts: who was erased when, and which export
read what.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.exports import Exporter, ExportRequest
from ledger.feed import iso
from tests.cli_helpers import due_diligence_export, error_line, import_facts, run, run_json
from tests.examples import T0, line, registered

ACQUIRER = "Contoso Holdings"
RULE = "recipient_not_notified"
LATER = "2099-01-01T00:00:00Z"  # past every notice's deadline
ADDRESS_ELSEWHERE = {
    "line1": "1 Other Road",
    "city": "Elsewhere",
    "postcode": "EE1 1EE",
    "country": "GB",
}


def _erase(ref: str, minutes: float) -> dict[str, Any]:
    return line("subject.erased", f"{ref}-x", minutes, customer=ref)


def _due(url: str, *options: str) -> list[dict[str, Any]]:
    rows = run_json(url, "recipients", "notifications", *options)["notifications"]
    return [row for row in rows if row["recipient"] == ACQUIRER]


def _nothing_due(url: str, ref: str) -> None:
    """Telling the acquirer of customer `ref` is refused: nothing is due to it."""
    refused = run(url, "recipients", "notified", ACQUIRER, "--customer", ref)
    assert refused.exit_code == 1 and "no notification" in error_line(refused)


def _late(url: str, *options: str) -> list[tuple[str, str]]:
    found = run_json(url, "audit", "check", *options)["violations"]
    return sorted((v["customer"], v["fact_id"]) for v in found if v["rule"] == RULE)


@pytest.fixture
def url(ledger_url: str) -> str:
    assert run(ledger_url, "db", "upgrade").exit_code == 0
    return ledger_url


def test_an_erasure_the_export_did_not_show_is_due_to_its_acquirer(
    url: str, tmp_path: Path
) -> None:
    # C1 orders; C2 does not; C3 is erased before the export (which shows it erased)
    import_facts(
        url,
        [
            registered("C1", 0),
            line("order.placed", "C1-o", 1, customer="C1", order="O1"),
            registered("C2", 2),
            registered("C3", 3),
            _erase("C3", 4),
        ],
        tmp_path / "a.jsonl",
    )
    export = due_diligence_export(url, ACQUIRER, tmp_path / "dd")
    # C1 and C2 are erased after it (dated in 2025, recorded after the export), and C2's
    # details... are not rectified: only erasures concern an export
    import_facts(url, [_erase("C1", 10), _erase("C2", 11)], tmp_path / "b.jsonl")

    rows = _due(url)
    assert [(r["customer"], r["fact_id"], r["categories"]) for r in rows] == [
        ("C1", "C1-x", ["order_details"]),
        ("C2", "C2-x", []),
    ]
    assert all(r["recipient_kinds"] == ["acquirer"] and r["reason"] == "erasure" for r in rows)
    # The acquirer received the data after the erasure's business time: due from the export
    assert {r["due_by"] for r in rows} == {_plus_30_days(export["at"])}
    # Not late today; late once the deadline has passed
    assert _late(url) == []
    assert _late(url, "--as-of", LATER) == [("C1", "C1-x"), ("C2", "C2-x")]
    # Judged as of before the export was made, nothing was due to the acquirer
    assert _due(url, "--all") == rows
    assert _late(url, "--as-of", "2025-06-30") == []

    # Telling the acquirer answers the notice, as it does any recipient's
    told = run_json(url, "recipients", "notified", ACQUIRER, "--customer", "C1", "--at", LATER)
    assert told["regarding"] == ["C1-x"]
    assert [r["customer"] for r in _due(url)] == ["C2"]
    assert _late(url, "--as-of", LATER) == [("C2", "C2-x")]
    # The access pack lists it, answered
    pack_path = tmp_path / "pack.json"
    run_json(url, "customer", "access-export", "C1", "--out", str(pack_path))
    notices = orjson.loads(pack_path.read_bytes())["notifications"]
    assert [(n["recipient"], n["notified_fact_id"]) for n in notices] == [
        (ACQUIRER, told["fact_id"])
    ]
    # All due at once
    done = run_json(url, "recipients", "notified", ACQUIRER, "--all-due", "--at", LATER)
    assert [n["customer"] for n in done["notified"]] == ["C2"]
    assert _due(url) == [] and _late(url, "--as-of", LATER) == []


def _plus_30_days(moment: str) -> str:
    from datetime import timedelta

    return iso(datetime.fromisoformat(moment) + timedelta(days=30))


def test_an_export_as_of_before_the_erasure_it_read_showed_it(url: str, tmp_path: Path) -> None:
    # Both erased before the exports were made; one export is as of a time before C1's
    # erasure, the other as of today: both read the erasures, and their customers tables
    # (`erased`, today's truth whatever the as-of) show both erased: no notice is due
    import_facts(
        url,
        [registered("C1", 0), registered("C2", 0), _erase("C1", 60 * 24 * 100), _erase("C2", 1)],
        tmp_path / "a.jsonl",
    )
    due_diligence_export(url, ACQUIRER, tmp_path / "dated", "--as-of", "2025-02-01")
    due_diligence_export(url, ACQUIRER, tmp_path / "today")
    for folder in ("dated", "today"):
        rows = (tmp_path / folder / "customers.jsonl").read_bytes().splitlines()
        assert [orjson.loads(row)["erased"] for row in rows] == [True, True]
    assert _due(url, "--all") == []
    assert _late(url, "--as-of", LATER) == []
    _nothing_due(url, "C1")


def test_an_export_as_of_before_an_erasure_recorded_after_it_did_not_show_it(
    url: str, tmp_path: Path
) -> None:
    # C1's erasure, dated before the export's as-of or after it, is recorded after the export
    import_facts(url, [registered("C1", 0), registered("C2", 0)], tmp_path / "a.jsonl")
    dated = due_diligence_export(url, ACQUIRER, tmp_path / "dated", "--as-of", "2025-02-01")
    import_facts(url, [_erase("C1", 60 * 24 * 100), _erase("C2", 1)], tmp_path / "b.jsonl")
    rows = _due(url)
    assert [(r["customer"], r["fact_id"]) for r in rows] == [("C2", "C2-x"), ("C1", "C1-x")]
    assert {r["due_by"] for r in rows} == {_plus_30_days(dated["at"])}


def test_an_export_that_read_an_erasure_showed_it_though_another_is_dated_earlier(
    url: str, tmp_path: Path
) -> None:
    # C1 is erased (March) before the export, which shows C1 erased; a second erasure of
    # C1, dated earlier (February), is recorded after it: the first in business time, but
    # the export showed the customer erased all the same
    import_facts(
        url,
        [registered("C1", 0), line("subject.erased", "C1-x1", 60 * 24 * 50, customer="C1")],
        tmp_path / "a.jsonl",
    )
    due_diligence_export(url, ACQUIRER, tmp_path / "dd")
    (row,) = (tmp_path / "dd" / "customers.jsonl").read_bytes().splitlines()
    assert orjson.loads(row)["erased"] is True
    import_facts(
        url, [line("subject.erased", "C1-x0", 60 * 24 * 20, customer="C1")], tmp_path / "b.jsonl"
    )
    assert _due(url, "--all") == []
    assert _late(url, "--as-of", LATER) == []
    refused = run(url, "recipients", "notified", ACQUIRER, "--all-due")
    assert refused.exit_code == 1


def test_a_rectification_is_due_to_no_export(url: str, tmp_path: Path) -> None:
    import_facts(
        url,
        [registered("C1", 0), line("order.placed", "C1-o", 1, customer="C1", order="O1")],
        tmp_path / "a.jsonl",
    )
    due_diligence_export(url, ACQUIRER, tmp_path / "dd")
    import_facts(
        url,
        [line("customer.updated", "C1-u", 5, customer="C1", name="Ada Other")],
        tmp_path / "b.jsonl",
    )
    assert _due(url, "--all") == []
    _nothing_due(url, "C1")


def test_a_rectification_recorded_after_an_identified_export_is_due_to_its_acquirer(
    url: str, ledger: Any, tmp_path: Path
) -> None:
    # C2's name is changed before the export is made; C1's and C3's after it, C1's dated
    # before it (a late feed), C3's after it (the acquirer got the old name by business
    # time too). C4, registered after the export, was disclosed to the acquirer by the
    # shop on day 30, in a fact whose id is shaped like an export's own (a feed's id can be
    # any string): its rectification, dated before that, recorded after, is judged by
    # business time, as any feed's is
    import_facts(
        url,
        [
            registered("C1", 0),
            registered("C2", 1),
            registered("C3", 2),
            registered("C5", 2),
            line("transfer.initiated", "t-1", 3, acquirer=ACQUIRER),
            line("customer.updated", "C2-u", 4, customer="C2", name="Before Export"),
            # dated years ahead (the feed allows it), recorded before the export: it gave it
            line("customer.updated", "C5-u", 60 * 24 * 365 * 3, customer="C5", name="Ahead"),
        ],
        tmp_path / "a.jsonl",
    )
    export = due_diligence_export(url, ACQUIRER, tmp_path / "dd", "--identified")
    before = iso(datetime.now(UTC))
    import_facts(
        url,
        [
            line("customer.updated", "C1-u", 10, customer="C1", name="Late Feed"),
            line("customer.updated", "C3-u", 60 * 24 * 365 * 3, customer="C3", email="n@x.org"),
            registered("C4", 2),
            line(
                "transfer.disclosure",
                "export-00000000-0000-4000-8000-000000000000/0000001",
                60 * 24 * 30,
                customer="C4",
                acquirer=ACQUIRER,
            ),
            line("customer.updated", "C4-u", 20, customer="C4"),
        ],
        tmp_path / "b.jsonl",
    )
    # (a second identified export names them all, after every rectification by business
    # time and by recording order: it had the new details)
    due_diligence_export(url, ACQUIRER, tmp_path / "dd-2", "--identified")
    rows = _due(url)
    assert [(r["customer"], r["fact_id"], r["reason"], r["categories"]) for r in rows] == [
        ("C1", "C1-u", "rectification", ["email", "name"]),
        ("C3", "C3-u", "rectification", ["email"]),
    ]
    # C1's is due from the export (when the acquirer got the old name), C3's from itself
    assert rows[0]["due_by"] == _plus_30_days(export["at"])
    assert rows[1]["due_by"] == _plus_30_days(iso(datetime.fromisoformat(rows[1]["at"])))
    # Judged from the events, every customer with a rectification, the same
    every = [d for _events, dues in ledger._notification_streams() for d in dues]
    assert sorted((d.customer, d.fact_id) for d in every if d.recipient == ACQUIRER) == [
        ("C1", "C1-u"),
        ("C3", "C3-u"),
    ]
    # Late once its deadline has passed, as the ledger knows it now; not before C1-u was
    # recorded
    assert _late(url, "--as-of", "2027-06-01") == [("C1", "C1-u")]
    assert _late(url, "--as-of", "2027-06-01", "--known-at", before) == []
    # A later export's summary of open violations counts it too
    request = ExportRequest(out=tmp_path / "later", acquirer="Another Bidder")
    Exporter(ledger, request, now=datetime(2027, 6, 1, tzinfo=UTC)).run()
    summary = orjson.loads((tmp_path / "later" / "summary.json").read_bytes())
    assert summary["open_violations"]["by_rule"].get(RULE) == 1
    # Telling the acquirer answers it; the access pack lists it answered
    told = run_json(url, "recipients", "notified", ACQUIRER, "--customer", "C1")
    assert told["regarding"] == ["C1-u"]
    assert _late(url, "--as-of", "2027-06-01") == []
    pack_path = tmp_path / "pack.json"
    run_json(url, "customer", "access-export", "C1", "--out", str(pack_path))
    notices = orjson.loads(pack_path.read_bytes())["notifications"]
    assert [(n["fact_id"], n["notified_fact_id"]) for n in notices] == [("C1-u", told["fact_id"])]
    # C2 and C5 were rectified before the export read them: the acquirer has the new names;
    # C4's acquirer received it after the rectification (by business time)
    for ref in ("C2", "C4", "C5"):
        _nothing_due(url, ref)


def test_an_identified_export_as_of_a_time_gave_the_details_of_that_time(
    url: str, ledger: Any, tmp_path: Path
) -> None:
    # Both rectified before the export is made: C1's dated after the time it is made as of
    # (its acquirer got the old name), C2's before it (the new one)
    import_facts(
        url,
        [
            registered("C1", 0),
            registered("C2", 0),
            line("transfer.initiated", "t-1", 1, acquirer=ACQUIRER),
            line("customer.updated", "C2-u", 60 * 24 * 2, customer="C2", name="Second"),
            line("customer.updated", "C1-u", 60 * 24 * 10, customer="C1", name="Tenth"),
        ],
        tmp_path / "a.jsonl",
    )
    export = due_diligence_export(
        url, ACQUIRER, tmp_path / "dd", "--identified", "--as-of", "2025-01-15"
    )
    # It gave the names as of 15 January: C1's first one, C2's changed one
    given = (tmp_path / "dd" / "customers.jsonl").read_bytes().splitlines()
    names = {row["ref"]: row["name"] for row in map(orjson.loads, given)}
    assert names == {"C1": registered("C1", 0)["name"], "C2": "Second"}
    # C2's name changed again, dated before that time, recorded after the export: it did
    # not give that one either
    import_facts(
        url,
        [line("customer.updated", "C2-v", 60 * 24 * 3, customer="C2", name="Third")],
        tmp_path / "b",
    )
    rows = _due(url)
    assert [(r["customer"], r["fact_id"], r["due_by"]) for r in rows] == [
        ("C2", "C2-v", _plus_30_days(export["at"])),
        ("C1", "C1-u", _plus_30_days(export["at"])),
    ]
    every = [d for _events, dues in ledger._notification_streams() for d in dues]
    assert sorted((d.customer, d.fact_id) for d in every if d.recipient == ACQUIRER) == [
        ("C1", "C1-u"),
        ("C2", "C2-v"),
    ]
    # All due at once, the read model caught up (it names neither: the exports decide)
    done = run_json(url, "recipients", "notified", ACQUIRER, "--all-due")
    assert [(n["customer"], n["regarding"]) for n in done["notified"]] == [
        ("C1", ["C1-u"]),
        ("C2", ["C2-v"]),
    ]


def _changed(fact_id: str, minutes: float, ref: str, **details: Any) -> dict[str, Any]:
    """A `customer.updated` of customer `ref` changing only `details`."""
    fact = line("customer.updated", fact_id, minutes, customer=ref)
    del fact["email"]
    return fact | details


def test_a_rectification_older_than_a_change_the_export_gave_is_not_due_to_its_acquirer(
    url: str, ledger: Any, tmp_path: Path
) -> None:
    """A late feed's rectification, dated before a change of the same detail that an
    identified export read and gave: the acquirer holds the current value, so it is not due
    to it for that detail; for a detail whose latest change the export did not give, it is.
    (The export is made as of a time: a change dated after it was not given either.)"""
    day = 60 * 24
    import_facts(
        url,
        [
            *(registered(ref, 0) for ref in ("C1", "C2", "C3", "C5")),
            line("transfer.initiated", "t-1", 1, acquirer=ACQUIRER),
            _changed("C1-a", 5 * day, "C1", name="Given"),
            _changed("C2-a", 5 * day, "C2", name="Given"),
            _changed("C5-a", 20 * day, "C5", name="Ahead"),  # after the export's as-of
        ],
        tmp_path / "a.jsonl",
    )
    export = due_diligence_export(
        url, ACQUIRER, tmp_path / "dd", "--identified", "--as-of", iso(T0 + timedelta(days=10))
    )
    import_facts(  # a late feed, every change dated before the export's as-of
        url,
        [
            _changed("C1-b", 2 * day, "C1", name="Older"),
            _changed("C2-b", 2 * day, "C2", name="Older", phone="+44 7700 900555"),
            _changed("C3-b", 2 * day, "C3", name="Only"),
            _changed("C5-b", 3 * day, "C5", name="Older"),
        ],
        tmp_path / "b.jsonl",
    )
    expected = [
        ("C2", "C2-b", ["phone"]),  # its name's latest change, C2-a, the export gave
        ("C3", "C3-b", ["name"]),
        ("C5", "C5-a", ["name"]),
        ("C5", "C5-b", ["name"]),  # its name's latest change, C5-a, it did not give
    ]
    rows = _due(url)
    assert sorted((r["customer"], r["fact_id"], r["categories"]) for r in rows) == expected
    assert {r["due_by"] for r in rows if r["fact_id"] != "C5-a"} == {_plus_30_days(export["at"])}
    every = [d for _events, dues in ledger._notification_streams() for d in dues]
    judged = [(d.customer, d.fact_id, list(d.categories)) for d in every if d.recipient == ACQUIRER]
    assert sorted(judged) == expected
    _nothing_due(url, "C1")
    done = run_json(url, "recipients", "notified", ACQUIRER, "--all-due")
    assert [(n["customer"], n["regarding"]) for n in done["notified"]] == [
        ("C2", ["C2-b"]),
        ("C3", ["C3-b"]),
        ("C5", ["C5-a", "C5-b"]),
    ]


def test_a_change_the_export_gave_dated_after_the_audit_time_still_makes_its_value_current(
    url: str, tmp_path: Path
) -> None:
    """A change dated in the future (2030), which an identified export read and gave, and a
    late feed's rectification of the same detail dated in 2025: the acquirer holds the
    current value, so no notice is listed and telling it is refused. `audit check` as of a
    time before 2030 (or today, after the deadline) agrees: the export gave that change
    whatever its date, so the rectification is not late; nor is it in the summary of an
    export made as of such a time."""
    future = 60 * 24 * 365 * 5  # minutes: January 2030
    import_facts(
        url,
        [
            registered("C1", 0),
            line("transfer.initiated", "t-1", 1, acquirer=ACQUIRER),
            _changed("C1-a", future, "C1", name="Ahead"),
        ],
        tmp_path / "a.jsonl",
    )
    due_diligence_export(url, ACQUIRER, tmp_path / "dd", "--identified")
    import_facts(url, [_changed("C1-b", 2 * 60 * 24, "C1", name="Older")], tmp_path / "b.jsonl")
    held = orjson.loads((tmp_path / "dd" / "customers.jsonl").read_bytes().splitlines()[0])
    assert held["name"] == run_json(url, "customer", "show", "C1")["details"]["name"] == "Ahead"
    assert _due(url, "--all") == []
    _nothing_due(url, "C1")
    assert _late(url, "--as-of", LATER) == []
    assert _late(url, "--as-of", "2027-06-01T00:00:00Z") == []  # after the deadline, before 2030
    due_diligence_export(url, "Other", tmp_path / "dd2", "--as-of", "2027-06-01T00:00:00Z")
    summary = orjson.loads((tmp_path / "dd2" / "summary.json").read_bytes())
    assert summary["open_violations"]["by_rule"].get(RULE, 0) == 0


def test_a_rectification_dated_before_the_registration_is_not_due_for_what_it_gives(
    url: str, tmp_path: Path
) -> None:
    """A late feed's rectification dated before the customer's registration, which the
    identified export gave: every registration holds a name, an email and an address, so
    their current values are the registration's, which the acquirer holds: not due for
    them. A phone a registration may hold or not (sealed): still due for it (a notice too
    many, never one too few)."""
    import_facts(
        url,
        [
            registered("C1", 60),
            line("transfer.initiated", "t-1", 61, acquirer=ACQUIRER),
        ],
        tmp_path / "a.jsonl",
    )
    due_diligence_export(url, ACQUIRER, tmp_path / "dd", "--identified")
    import_facts(
        url,
        [
            _changed("C1-a", 30, "C1", name="Before", email="before@example.org"),
            _changed("C1-b", 31, "C1", phone="+44 7700 900111", address=ADDRESS_ELSEWHERE),
        ],
        tmp_path / "b.jsonl",
    )
    held = orjson.loads((tmp_path / "dd" / "customers.jsonl").read_bytes().splitlines()[0])
    details = run_json(url, "customer", "show", "C1")["details"]
    assert (held["name"], held["email"], held["phone"]) == (
        details["name"],
        details["email"],
        details["phone"],
    )
    assert held["address_line1"] == details["address"]["line1"]
    assert [(r["fact_id"], r["categories"]) for r in _due(url)] == [("C1-b", ["phone"])]


def test_a_rectification_recorded_while_an_identified_export_ran_is_due_to_its_acquirer(
    url: str, ledger: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # C1's name is changed by another writer after the export read the ledger, before it
    # recorded itself (and its own disclosures): the file holds the old name
    import_facts(
        url,
        [registered("C1", 0), line("transfer.initiated", "t-1", 1, acquirer=ACQUIRER)],
        tmp_path / "a.jsonl",
    )
    record = Exporter._record

    def racing(exporter: Exporter, *args: Any) -> None:
        rectified = line("customer.updated", "C1-u", 10, customer="C1", name="New Name")
        exporter.app.import_lines([orjson.dumps(rectified)])
        record(exporter, *args)

    monkeypatch.setattr(Exporter, "_record", racing)
    export = due_diligence_export(url, ACQUIRER, tmp_path / "dd", "--identified")
    monkeypatch.setattr(Exporter, "_record", record)
    given = orjson.loads((tmp_path / "dd" / "customers.jsonl").read_bytes())
    assert given["name"] == registered("C1", 0)["name"]
    rows = _due(url)
    assert [(r["customer"], r["fact_id"], r["due_by"]) for r in rows] == [
        ("C1", "C1-u", _plus_30_days(export["at"]))
    ]
    every = [d for _events, dues in ledger._notification_streams() for d in dues]
    assert [(d.customer, d.fact_id) for d in every if d.recipient == ACQUIRER] == [("C1", "C1-u")]
    assert _late(url, "--as-of", LATER) == [("C1", "C1-u")]
    told = run_json(url, "recipients", "notified", ACQUIRER, "--customer", "C1")
    assert told["regarding"] == ["C1-u"]


def test_a_feed_disclosure_named_like_an_export_s_own_is_judged_by_business_time(
    url: str, tmp_path: Path
) -> None:
    # C2, registered after the time the export is made as of, is not in it; the shop
    # discloses C2's name to the acquirer on day 5 under a fact id that begins with the
    # export's (a feed's id can be any string), recorded after a rectification dated day 10
    day = 60 * 24
    import_facts(
        url,
        [
            registered("C1", 0),
            registered("C2", 20 * day),
            line("transfer.initiated", "t-1", 1, acquirer=ACQUIRER),
        ],
        tmp_path / "a.jsonl",
    )
    export = due_diligence_export(
        url, ACQUIRER, tmp_path / "dd", "--identified", "--as-of", iso(T0 + timedelta(days=15))
    )
    import_facts(
        url,
        [
            line("customer.updated", "C2-u", 10 * day, customer="C2", name="New"),
            line(
                "transfer.disclosure",
                f"{export['fact_id']}/0000099",
                5 * day,
                customer="C2",
                acquirer=ACQUIRER,
                categories=["name"],
            ),
        ],
        tmp_path / "b.jsonl",
    )
    assert [(r["customer"], r["fact_id"]) for r in _due(url)] == [("C2", "C2-u")]
    assert _late(url, "--as-of", LATER) == [("C2", "C2-u")]


def test_the_known_at_audit_and_a_later_exports_summary_judge_it_alike(
    url: str, ledger: Any, tmp_path: Path
) -> None:
    import_facts(url, [registered("C1", 0), registered("C2", 1)], tmp_path / "a.jsonl")
    export = due_diligence_export(url, ACQUIRER, tmp_path / "dd")
    import_facts(url, [_erase("C1", 10)], tmp_path / "b.jsonl")
    after = iso(datetime.now(UTC))
    # The audit as the ledger knew it: before the erasure was recorded, nothing; after, due
    assert _late(url, "--as-of", LATER, "--known-at", export["at"]) == []
    assert _late(url, "--as-of", LATER, "--known-at", after) == [("C1", "C1-x")]
    # A later export, judging its customers' violations at a time past the deadline,
    # counts the same violation as the audit does at that time
    later = datetime(2099, 1, 1, tzinfo=UTC)
    request = ExportRequest(out=tmp_path / "later", acquirer="Another Bidder")
    Exporter(ledger, request, now=later).run()
    summary = orjson.loads((tmp_path / "later" / "summary.json").read_bytes())
    assert summary["open_violations"]["by_rule"].get(RULE) == 1
    assert [(v.customer, v.rule) for v in ledger.audit(later)] == [("C1", RULE)]


def test_an_export_made_after_the_moment_judged_does_not_defer_an_earlier_notice(
    url: str, tmp_path: Path
) -> None:
    # The acquirer received C1's data by a transfer on day 1, then by an export (today);
    # C1's erasure, dated day 10, is recorded after the export
    import_facts(
        url,
        [
            registered("C1", 0),
            line("transfer.initiated", "t-1", 1, acquirer=ACQUIRER),
            line("transfer.disclosure", "C1-t", 60 * 24, customer="C1", acquirer=ACQUIRER),
        ],
        tmp_path / "a.jsonl",
    )
    export = due_diligence_export(url, ACQUIRER, tmp_path / "dd")
    import_facts(url, [_erase("C1", 60 * 24 * 10)], tmp_path / "b.jsonl")
    # One notice to the acquirer, due from the export (its last receipt of the data)
    (due,) = _due(url)
    assert (due["categories"], due["due_by"]) == (["email", "name"], _plus_30_days(export["at"]))
    # As of day 50, the export was not yet made: the notice for the transfer was late
    assert _late(url, "--as-of", "2025-02-20") == [("C1", "C1-x")]


def test_the_listing_from_the_read_model_is_every_customers_own(
    url: str, ledger: Any, feed_small: Path, tmp_path: Path
) -> None:
    """`recipients notifications` judges only the customers the violations read model names
    (and the erased ones an export may not have shown): what it lists is what judging every
    customer with an erasure or a rectification, from their events, finds."""
    assert run_json(url, "import", str(feed_small))["accepted"] == 26
    import_facts(
        url,
        [
            line("customer.updated", "u-1", 60 * 24 * 300, customer="C100", name="A New Name"),
            line("customer.updated", "u-2", 60 * 24 * 300, customer="C100", phone="+441234"),
            registered("C103", 60 * 24 * 200),
            line("affiliate.disclosure", "C103-a", 60 * 24 * 201, customer="C103"),
            line("customer.updated", "C103-u", 60 * 24 * 202, customer="C103", name="Other"),
        ],
        tmp_path / "a.jsonl",
    )
    due_diligence_export(url, ACQUIRER, tmp_path / "dd")
    import_facts(url, [_erase("C100", 60 * 24 * 301)], tmp_path / "b.jsonl")

    def key(due: Any) -> tuple[str, ...]:
        return (due.customer, due.recipient, due.fact_id)

    listed = ledger.notifications()
    every = [due for _events, dues in ledger._notification_streams() for due in dues]
    assert sorted(listed, key=key) == sorted(every, key=key)
    assert {(due.customer, due.reason) for due in listed} >= {
        ("C100", "erasure"),
        ("C101", "erasure"),
        ("C103", "rectification"),
    }
    assert [due.customer for due in listed if due.recipient == ACQUIRER] == ["C100"]
    assert {due.reason for due in listed if due.customer == "C100"} == {"erasure", "rectification"}
