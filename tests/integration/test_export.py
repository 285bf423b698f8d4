"""The due-diligence export on each backend: contents, pseudonyms, personal data, refusal,
recording, and `export verify` through the command line."""

from __future__ import annotations

import os
import signal
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger import views
from ledger.domainmodel import customer_id
from ledger.errors import InputError, RuleViolationError
from ledger.exports import (
    ExportRequest,
    export_due_diligence,
    export_secret,
    parquet_available,
    pseudonym,
    recorded_exports,
)
from ledger.feed import iso, parse_time
from ledger.free_text import WITHHELD
from ledger.manifest import MANIFEST_NAME, verify_export_dir
from ledger.persistence import seals
from ledger.samplefeed import ACQUIRER, generate
from tests.cli_helpers import error_line, run, run_json
from tests.examples import at, line

TABLE_NAMES = ("customers", "consents", "consent_history", "orders", "disclosures")


def _feed(customers: int) -> list[dict[str, Any]]:
    return list(generate(customers, seed=11, prefix="G"))


def _load(ledger: Any, feed_small: Path, customers: int = 25) -> list[dict[str, Any]]:
    """feed-small plus a generated feed; returns every fact imported."""
    facts = [orjson.loads(line) for line in feed_small.read_bytes().splitlines() if line]
    facts += _feed(customers)
    ledger.import_lines(orjson.dumps(f) for f in facts)
    return facts


def _rows(folder: Path, table: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (folder / f"{table}.jsonl").read_bytes().splitlines()]


def _export(ledger: Any, out: Path, **kwargs: Any) -> Any:
    return export_due_diligence(ledger, ExportRequest(out=out, **{"acquirer": ACQUIRER, **kwargs}))


def _personal_values(facts: list[dict[str, Any]]) -> dict[str, list[bytes]]:
    """Every customer's name, email, phone, address pieces and reference, as bytes."""
    found: dict[str, list[bytes]] = {}
    for fact in facts:
        ref = fact.get("customer")
        if fact["type"] in ("customer.registered", "customer.updated"):
            values = [fact.get(k) for k in ("name", "email", "phone")]
            address = fact.get("address") or {}
            values += [address.get("line1"), address.get("postcode")]
            found.setdefault(ref, [ref.encode()]).extend(str(v).encode() for v in values if v)
    return found


def _all_bytes(folder: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]


def test_pseudonymous_export_matches_the_ledger(
    ledger: Any, feed_small: Path, tmp_path: Path
) -> None:
    _load(ledger, feed_small)
    events_before = seals.verify_ledger(ledger).events
    out = tmp_path / "dd"
    result = _export(ledger, out)
    refs = list(ledger.customer_refs())
    assert result.customers == len(refs)

    manifest = orjson.loads((out / MANIFEST_NAME).read_bytes())
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == {f"{t}.jsonl" for t in TABLE_NAMES} | {"summary.json"}
    for table in TABLE_NAMES:
        assert listed[f"{table}.jsonl"]["rows"] == len(_rows(out, table))
    assert manifest["parameters"] == {
        "acquirer": ACQUIRER,
        "as_of": None,
        "identified": False,
        "format": "jsonl",
    }
    # The ledger as verified and signed at the export; the export event comes after it.
    assert manifest["ledger"]["tree_size"] == events_before
    assert manifest["ledger"]["verify_head"] == manifest["ledger"]["checkpoint"]["root_hash"]
    assert verify_export_dir(out, seals.load_public_key(ledger.database)).ok

    # The seller re-identifies: each customer's rows are the ledger's answers.
    secret = export_secret(ledger, result.export_id)
    customers = {row["customer"]: row for row in _rows(out, "customers")}
    disclosures = Counter(row["customer"] for row in _rows(out, "disclosures"))
    for ref in refs:
        alias = pseudonym(secret, "customer", ref)
        customer, events = ledger.customer_with_events(ref)
        assert customers[alias]["erased"] == customer.erased
        assert disclosures[alias] == len(views.trail_rows(events))
        assert customers[alias]["orders"] == len(customer.orders)
    summary = orjson.loads((out / "summary.json").read_bytes())
    expected = Counter(v.rule for v in ledger.audit())
    by_rule = summary["open_violations"]["by_rule"]
    assert {rule: n for rule, n in by_rule.items() if n} == dict(expected)
    assert summary["customers"] == len(refs)
    assert summary["erased_customers"] == sum(1 for c in customers.values() if c["erased"])


def test_no_personal_data_or_reference_in_any_byte(
    ledger: Any, feed_small: Path, tmp_path: Path
) -> None:
    facts = _load(ledger, feed_small)
    out = tmp_path / "dd"
    _export(ledger, out)
    personal = _personal_values(facts)
    assert len(personal) == 27
    orders = {f["order"].encode() for f in facts if f["type"] == "order.placed"}
    fact_ids = {f["id"].encode() for f in facts}
    for name, data in _all_bytes(out):
        for ref, values in personal.items():
            for value in values:
                assert value not in data, f"{name} holds personal data of {ref}"
        assert not [o for o in orders if o in data], f"{name} holds an order reference"
        assert not [i for i in fact_ids if i in data], f"{name} holds a fact id"


def test_pseudonyms_are_stable_within_an_export_and_differ_across_exports(
    ledger: Any, feed_small: Path, tmp_path: Path
) -> None:
    _load(ledger, feed_small, customers=10)
    first = _export(ledger, tmp_path / "one")
    second = _export(ledger, tmp_path / "two")
    one = {r["customer"] for r in _rows(tmp_path / "one", "customers")}
    two = {r["customer"] for r in _rows(tmp_path / "two", "customers")}
    assert len(one) == len(two) == first.customers
    assert not one & two
    for table in TABLE_NAMES[1:]:
        assert {r["customer"] for r in _rows(tmp_path / "one", table)} <= one
    orders_one = {r["order"] for r in _rows(tmp_path / "one", "orders")}
    assert {r["order"] for r in _rows(tmp_path / "one", "disclosures") if r["order"]} <= orders_one
    assert not orders_one & {r["order"] for r in _rows(tmp_path / "two", "orders")}
    secret = export_secret(ledger, first.export_id)
    assert pseudonym(secret, "customer", "C100") in one
    assert pseudonym(export_secret(ledger, second.export_id), "customer", "C100") in two


def test_rows_follow_no_order_a_reference_gives_and_differ_across_exports(
    ledger: Any, feed_small: Path, tmp_path: Path
) -> None:
    """Customer ids are name-based UUIDs of the references: rows in id order would let
    anyone who can guess the references (C1000, C1001, ...) read each row's customer off
    its place, and would line two exports up row for row. The seller alone, who keeps each
    export's secret, can tell which row is whose."""
    _load(ledger, feed_small, customers=60)
    orders = []
    for name in ("one", "two"):
        result = _export(ledger, tmp_path / name)
        secret = export_secret(ledger, result.export_id)
        whose = {pseudonym(secret, "customer", ref): ref for ref in ledger.customer_refs()}
        refs = [whose[row["customer"]] for row in _rows(tmp_path / name, "customers")]
        assert len(refs) == len(set(refs)) > 60
        assert refs != sorted(refs, key=lambda ref: customer_id(ref).bytes)  # id order
        assert refs != sorted(refs)  # nor the references' own
        for table in TABLE_NAMES[1:]:  # every table in the customers' order
            rows = [whose[row["customer"]] for row in _rows(tmp_path / name, table)]
            assert sorted(set(rows), key=refs.index) == list(dict.fromkeys(rows))
        orders.append(refs)
    assert orders[0] != orders[1]


def test_identified_export_is_refused_before_initiation(
    ledger: Any, feed_small: Path, tmp_path: Path
) -> None:
    _load(ledger, feed_small, customers=3)
    before = seals.verify_ledger(ledger).events
    with pytest.raises(RuleViolationError) as refused:
        _export(ledger, tmp_path / "dd", acquirer="Contoso Holdings", identified=True)
    assert "transfer_without_initiation" in str(refused.value)
    assert not (tmp_path / "dd").exists() and not list(tmp_path.glob(".dd*"))
    assert seals.verify_ledger(ledger).events == before
    assert recorded_exports(ledger) == []


def test_pseudonymous_export_before_initiation_is_a_recorded_disclosure_breaking_no_rule(
    ledger: Any, feed_small: Path, tmp_path: Path
) -> None:
    _load(ledger, feed_small, customers=3)
    violations = ledger.audit()
    result = _export(ledger, tmp_path / "dd", acquirer="Contoso Holdings")
    assert ledger.audit() == violations
    [recorded] = recorded_exports(ledger)
    assert recorded["fact_id"] == result.fact_id
    assert recorded["recipient"] == "Contoso Holdings"
    assert (recorded["recipient_kind"], recorded["purpose"], recorded["basis"]) == (
        "acquirer",
        "business_transfer",
        "legitimate_interests",
    )
    assert recorded["categories"] == ["order_details"]
    assert recorded["manifest_sha256"] == result.manifest_sha256
    assert recorded["identified"] is False and recorded["customers"] == result.customers
    verified = seals.verify_ledger(ledger)
    assert verified.ok
    proof = seals.prove_fact(ledger, result.fact_id)
    assert proof["fact_id"] == result.fact_id
    # Listed from the record, not from the export secrets beside it: with those gone (only
    # the seller's re-identification needs them), the disclosure is still listed.
    with ledger.database.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM ledger_export_secrets")
    assert recorded_exports(ledger) == [recorded]


def test_identified_export_after_initiation_names_living_customers_only(
    ledger: Any, feed_small: Path, tmp_path: Path
) -> None:
    facts = _load(ledger, feed_small, customers=5)
    out = tmp_path / "dd"
    result = _export(ledger, out, identified=True, format="csv")
    erased = {f["customer"] for f in facts if f["type"] == "subject.erased"}
    assert "C101" in erased
    text = "\n".join(data.decode() for _, data in _all_bytes(out))
    personal = _personal_values(facts)
    assert b"ada@example.org".decode() in text  # C100 lives: identified
    for ref in erased:
        for value in personal[ref]:
            assert value.decode() not in text, f"personal data of erased {ref}"
    assert result.identified_customers == result.customers - len(erased)
    assert {"name", "email", "postal_address", "order_details"} <= set(result.categories)
    trail = views.trail_rows(ledger.customer_events("C100"))
    assert trail[-1]["fact_id"].startswith(result.fact_id + "/")
    assert trail[-1]["recipient_kind"] == "acquirer"
    assert not [
        r
        for r in views.trail_rows(ledger.customer_events("C101"))
        if r["fact_id"].startswith(result.fact_id)
    ]
    assert not [v for v in ledger.audit() if v.fact_id.startswith(result.fact_id)]
    assert verify_export_dir(out).ok
    # Personal data: the folder and its files are the owner's alone.
    assert out.stat().st_mode & 0o777 == 0o700
    assert {path.stat().st_mode & 0o777 for path in out.rglob("*")} == {0o600}


def test_free_text_shaped_like_an_email_or_phone_is_withheld_unless_identified(
    ledger: Any, tmp_path: Path
) -> None:
    """A shifted column can put a customer's email or phone where the shop's own words go
    (a consent's method, a policy version, a recipient's name): a pseudonymous export (and
    an erased customer's rows in an identified one) withholds such a value; the words stay."""
    shifted = [
        line("customer.registered", "r-1", 0, customer="C1"),
        line("customer.registered", "r-2", 0, customer="C2", email="c2@example.net"),
        *(
            line(
                "consent.given",
                f"g-{ref}",
                1,
                customer=ref,
                purpose="marketing",
                channel="email",
                method="zq-4711@example.org",
                policy_version="+44 7700 900123",
            )
            for ref in ("C1", "C2")
        ),
        line("order.placed", "o-1", 2, customer="C1", order="O1"),
        line("payment.authorisation", "p-1", 3, order="O1", issuer="07700 900456"),
        line("order.placed", "o-2", 2, customer="C2", order="O2"),
        line("payment.authorisation", "p-2", 3, order="O2", issuer="Visa"),
        line("transfer.initiated", "t-1", 4, acquirer=ACQUIRER),
        line("subject.erased", "e-2", 5, customer="C2"),
    ]
    summary = ledger.import_lines(orjson.dumps(f) for f in shifted)
    assert summary.shaped == 3  # the lines, not their values, are kept for a warning
    assert summary.shaped_lines == [
        (3, ["method", "policy_version"]),
        (4, ["method", "policy_version"]),
        (6, ["issuer"]),
    ]
    values = (b"zq-4711@example.org", b"+44 7700 900123", b"07700 900456")
    _export(ledger, tmp_path / "pseudonymous")
    for name, data in _all_bytes(tmp_path / "pseudonymous"):
        assert not [value for value in values if value in data], name
    history = _rows(tmp_path / "pseudonymous", "consent_history")
    assert {(row["method"], row["policy_version"]) for row in history} == {(WITHHELD, WITHHELD)}
    recipients = {row["recipient"] for row in _rows(tmp_path / "pseudonymous", "disclosures")}
    assert recipients == {WITHHELD, "Visa"}
    _export(ledger, tmp_path / "identified", identified=True)
    named = {row["customer"]: row for row in _rows(tmp_path / "identified", "customers")}
    living = next(alias for alias, row in named.items() if not row["erased"])
    methods = {
        row["customer"]: row["method"] for row in _rows(tmp_path / "identified", "consent_history")
    }
    assert methods[living] == "zq-4711@example.org"  # C1's own data, in an identified export
    assert {m for alias, m in methods.items() if alias != living} == {WITHHELD}  # erased C2


def test_pseudonymous_export_keeps_the_usual_permissions(
    ledger: Any, feed_small: Path, tmp_path: Path
) -> None:
    _load(ledger, feed_small, customers=2)
    out = tmp_path / "dd"
    umask = os.umask(0o022)  # the usual one: the export takes what the user's umask allows
    try:
        _export(ledger, out)
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o077  # shareable in a data room: others may read
    assert all(path.stat().st_mode & 0o044 for path in out.rglob("*"))


def test_as_of_limits_rows_to_facts_then(ledger: Any, feed_small: Path, tmp_path: Path) -> None:
    _load(ledger, feed_small, customers=0)
    as_of = parse_time("2025-02-01T00:00:00Z")
    out = tmp_path / "dd"
    result = _export(ledger, out, as_of=as_of)
    assert result.customers == 1  # C101 registered on 5 February
    [customer] = _rows(out, "customers")
    assert customer["orders"] == 1 and customer["disclosures"] == 4
    assert all(row["at"] <= "2025-02-01" for row in _rows(out, "disclosures"))


def test_as_of_before_an_order_is_placed_leaves_out_the_order_not_its_earlier_facts(
    ledger: Any, tmp_path: Path
) -> None:
    """Facts of an order dated before its placing (valid: recorded after it) and an `as_of`
    between them: the order was not placed then, so it is not in the orders table; the
    disclosures dated by then are in the disclosures table, as the trail shows them."""
    facts = [
        line("customer.registered", "p-r", 0, customer="pC1"),
        line("order.placed", "p-o", 60, customer="pC1", order="pO1"),
        line("identity.check", "p-i", 10, order="pO1"),
        line("payment.authorisation", "p-p", 20, order="pO1"),
        line("order.dispatched", "p-d", 30, order="pO1"),
        line("order.delivered", "p-v", 40, order="pO1"),
        line("order.cancelled", "p-c", 50, order="pO1"),
    ]
    ledger.import_lines(orjson.dumps(f) for f in facts)
    out = tmp_path / "dd"
    _export(ledger, out, as_of=parse_time(at(55)))
    assert _rows(out, "orders") == []
    [customer] = _rows(out, "customers")
    assert (customer["orders"], customer["disclosures"]) == (0, 3)
    kinds = [row["recipient_kind"] for row in _rows(out, "disclosures")]
    assert kinds == ["identity_verification", "card_issuer", "carrier"]
    later = tmp_path / "later"
    _export(ledger, later, as_of=parse_time(at(60)))
    [order] = _rows(later, "orders")
    assert (order["status"], order["payment"], order["identity_check"]) == (
        "cancelled",
        "authorised",
        "pass",
    )


def test_consent_history_at_the_same_time_is_in_recording_order(
    ledger: Any, tmp_path: Path
) -> None:
    """Across purposes and channels too (SPEC §1), in the views and in the export; and by
    time, not by its text (".5Z" sorts before "Z" as text)."""
    given = {"method": "web", "policy_version": "v1"}
    facts = [
        line("customer.registered", "y-r", 0, customer="yC1"),
        line("consent.given", "y-1", 5, customer="yC1", purpose="personalisation", channel="web")
        | given,
        line("consent.given", "y-2", 5, customer="yC1", purpose="marketing", channel="email")
        | given,
        line("consent.withdrawn", "y-3", 0.5 / 60, customer="yC1", channel="post"),
        line("consent.given", "y-4", 0, customer="yC1", channel="post") | given,
    ]
    ledger.import_lines(orjson.dumps(f) for f in facts)
    events = ledger.customer_events("yC1")
    expected = [("marketing", "post"), ("marketing", "post")]
    expected += [("personalisation", "web"), ("marketing", "email")]
    history = views.consent_history_rows(events)
    assert [(row["purpose"], row["channel"]) for row in history] == expected
    assert [row["fact_id"] for row in history] == ["y-4", "y-3", "y-1", "y-2"]
    _export(ledger, tmp_path / "dd")
    exported = _rows(tmp_path / "dd", "consent_history")
    assert [(row["purpose"], row["channel"]) for row in exported] == expected


@pytest.mark.skipif(not parquet_available(), reason="pyarrow is not installed (extra 'parquet')")
def test_parquet_export_has_the_same_rows(ledger: Any, feed_small: Path, tmp_path: Path) -> None:
    import importlib

    pq: Any = importlib.import_module("pyarrow.parquet")
    _load(ledger, feed_small, customers=5)
    result = _export(ledger, tmp_path / "dd", format="parquet")
    for entry in result.files:
        if entry.path.endswith(".parquet"):
            assert pq.read_table(tmp_path / "dd" / entry.path).num_rows == entry.rows
    assert verify_export_dir(tmp_path / "dd").ok


def test_cli_export_and_verify_exit_codes(
    ledger_url: str, ledger: Any, feed_small: Path, tmp_path: Path
) -> None:
    _load(ledger, feed_small, customers=3)
    out = tmp_path / "dd"
    export = ("export", "due-diligence", "--acquirer", "Contoso Holdings", "--out")
    made = run_json(ledger_url, *export, str(out))
    assert made["folder"] == str(out) and made["customers"] == 5
    refused = run(ledger_url, *export, str(tmp_path / "x"), "--identified")
    assert refused.exit_code == 3
    assert "transfer_without_initiation" in error_line(refused)
    key = seals.public_key_path(ledger.database)
    checked = run_json(None, "export", "verify", str(out), "--public-key", str(key))
    assert checked["ok"] is True and checked["key_pinned"] is True
    not_a_key = run(None, "export", "verify", str(out), "--public-key", str(out / "summary.json"))
    assert not_a_key.exit_code == 1
    assert error_line(not_a_key).startswith(f"Error: cannot read the public key {out}")
    (out / "consents.jsonl").write_bytes((out / "consents.jsonl").read_bytes() + b" ")
    bad = run(None, "export", "verify", str(out))
    assert bad.exit_code == 4
    assert "consents.jsonl" in error_line(bad)


def test_the_export_decoder_rebuilds_exactly_what_the_mapper_does(
    ledger: Any, feed_small: Path
) -> None:
    from eventsourcing.persistence import StoredEvent

    from ledger.persistence.export_store import customer_event_rows
    from ledger.persistence.recorder import EventDecoder

    _load(ledger, feed_small, customers=5)
    decode = EventDecoder(ledger.mapper)
    upto = seals.verify_ledger(ledger).events
    streams = [
        [StoredEvent(ident, row[1], row[2], bytes(row[3])) for row in rows]
        for ident, rows in customer_event_rows(ledger.database, upto, order_secret=b"streams")
    ]
    assert len(streams) == len(list(ledger.customer_refs()))
    for stream in streams:
        for stored in stream:
            fast, slow = decode(stored), ledger.mapper.to_domain_event(stored)
            assert type(fast) is type(slow) and fast.__dict__ == slow.__dict__


def test_an_occupied_folder_or_unknown_format_is_refused_before_anything(
    ledger: Any, feed_small: Path, tmp_path: Path
) -> None:
    _load(ledger, feed_small, customers=0)
    before = seals.verify_ledger(ledger).events
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd" / "old.txt").write_text("keep me")
    with pytest.raises(InputError, match="already exists"):
        _export(ledger, tmp_path / "dd")
    with pytest.raises(InputError, match="unknown format"):
        _export(ledger, tmp_path / "new", format="xlsx")
    # A name the feed would refuse for an acquirer (PostgreSQL's columns hold 500 characters).
    with pytest.raises(InputError, match="'acquirer' is longer than 500 characters"):
        _export(ledger, tmp_path / "new", acquirer="A" * 501)
    with pytest.raises(InputError, match="'acquirer' contains control characters"):
        _export(ledger, tmp_path / "new", acquirer="Acme\nLtd")
    assert (tmp_path / "dd" / "old.txt").read_text() == "keep me"
    assert not (tmp_path / "new").exists()
    assert seals.verify_ledger(ledger).events == before


def test_the_seller_lists_exports_and_reidentifies_a_pseudonym(
    ledger_url: str, ledger: Any, feed_small: Path, tmp_path: Path
) -> None:
    _load(ledger, feed_small, customers=2)
    result = _export(ledger, tmp_path / "dd")
    listed = run_json(ledger_url, "export", "list")["exports"]
    assert [e["fact_id"] for e in listed] == [result.fact_id]
    # The plain table shows the id that `export reidentify` takes.
    table = run(ledger_url, "export", "list").stdout
    assert "EXPORT_ID" in table.splitlines()[0] and result.export_id in table
    alias = next(r["customer"] for r in _rows(tmp_path / "dd", "customers"))
    found = run_json(ledger_url, "export", "reidentify", result.export_id, alias)
    assert found["customer"] in set(ledger.customer_refs())
    assert (
        pseudonym(export_secret(ledger, result.export_id), "customer", found["customer"]) == alias
    )
    unknown = run(ledger_url, "export", "reidentify", result.export_id, "0" * 32)
    assert unknown.exit_code == 1 and "no customer" in error_line(unknown)


def _fixed_export(ledger: Any, out: Path, *, parallel: bool, **kwargs: Any) -> dict[str, bytes]:
    """An export with a fixed secret and time, scanned by one process or by workers; its
    files but the manifest (which names the ledger's growing size), and the summary without
    the export's id."""
    from datetime import UTC, datetime

    from ledger import exports

    request = ExportRequest(out=out, **{"acquirer": ACQUIRER, **kwargs})
    exporter = exports.Exporter(ledger, request, now=datetime(2026, 1, 1, tzinfo=UTC))
    exporter.secret = b"s" * 32
    exporter.pseudonyms = exports.Pseudonyms(exporter.secret)
    minimum = exports.PARALLEL_MIN_CUSTOMERS
    exports.PARALLEL_MIN_CUSTOMERS = 0 if parallel else 1 << 62
    try:
        exporter.run()
    finally:
        exports.PARALLEL_MIN_CUSTOMERS = minimum
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != MANIFEST_NAME}
    summary = orjson.loads(files.pop("summary.json"))
    del summary["export_id"]
    files["summary.json"] = orjson.dumps(summary)
    return files


@pytest.mark.parametrize("file_format", ["jsonl", "csv"])
def test_a_parallel_export_writes_what_one_process_writes(
    ledger: Any, feed_small: Path, tmp_path: Path, file_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an earlier export among the disclosures, which each of the compared exports
    reads as the only one (not the other of its pair, recorded meanwhile)."""
    from ledger.persistence import export_store

    _load(ledger, feed_small, customers=40)
    _export(ledger, tmp_path / "earlier", acquirer="Earlier Bidder Ltd")
    with ledger.database.reading() as conn:
        [earlier] = export_store.exports_recorded(conn, 1 << 62)
    recorded = export_store.exports_recorded
    monkeypatch.setattr(
        export_store, "exports_recorded", lambda conn, upto: recorded(conn, earlier[0])
    )
    one = _fixed_export(ledger, tmp_path / "one", parallel=False, format=file_format)
    many = _fixed_export(ledger, tmp_path / "many", parallel=True, format=file_format)
    assert set(one) == {f"{t}.{file_format}" for t in TABLE_NAMES} | {"summary.json"}
    assert many == one
    assert len(one[f"customers.{file_format}"].splitlines()) >= 40
    as_of = parse_time("2025-03-01T00:00:00Z")
    then = _fixed_export(ledger, tmp_path / "then", parallel=True, as_of=as_of)
    assert then == _fixed_export(ledger, tmp_path / "then1", parallel=False, as_of=as_of)
    assert verify_export_dir(tmp_path / "many", seals.load_public_key(ledger.database)).ok
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_failing_worker_fails_the_export_and_records_nothing(
    ledger: Any, feed_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger import exports

    _load(ledger, feed_small, customers=10)
    before = seals.verify_ledger(ledger).events

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise InputError("a worker's failure")

    monkeypatch.setattr(exports, "customer_rows", broken)
    monkeypatch.setattr(exports, "PARALLEL_MIN_CUSTOMERS", 0)
    with pytest.raises(InputError, match="a worker's failure"):
        _export(ledger, tmp_path / "dd")
    assert not (tmp_path / "dd").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert seals.verify_ledger(ledger).events == before
    assert recorded_exports(ledger) == []


def test_a_worker_killed_fails_the_export_in_one_clear_line_and_records_nothing(
    ledger: Any, feed_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed outright (kill -9, the out-of-memory killer) ended the export as
    "unexpected RuntimeError ... a bug", pointing at tampering (PostgreSQL review)."""
    from ledger import exports
    from ledger.errors import WorkerLostError

    _load(ledger, feed_small, customers=10)
    before = seals.verify_ledger(ledger).events

    def killed(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(exports, "customer_rows", killed)
    monkeypatch.setattr(exports, "PARALLEL_MIN_CUSTOMERS", 0)
    with pytest.raises(WorkerLostError, match=r"export worker \d ended without its result"):
        _export(ledger, tmp_path / "dd")
    assert not (tmp_path / "dd").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert seals.verify_ledger(ledger).events == before
    assert recorded_exports(ledger) == []


@pytest.mark.parametrize("earlier", [False, True], ids=["first-export", "after-exports"])
def test_every_row_is_the_views_answer(
    ledger: Any, feed_small: Path, tmp_path: Path, earlier: bool
) -> None:
    """Each customer's rows, re-identified, are what `consent show`, the consent history,
    `customer trail` and the orders view answer, without fact ids or references: after
    earlier exports too, which the trail lists as disclosures to their acquirers (a
    pseudonymous one, an identified one, one made as of a time before some customers were
    registered), and not for a customer registered after them."""
    _load(ledger, feed_small, customers=30)
    if earlier:
        _export(ledger, tmp_path / "e1", acquirer="Earlier Bidder Ltd")
        _export(ledger, tmp_path / "e2", identified=True)
        _export(ledger, tmp_path / "e3", as_of=parse_time("2024-09-27T00:00:00Z"))
        late = [
            line("customer.registered", "late-r", 0, customer="LATE1"),
            line("consent.given", "late-c", 5, customer="LATE1"),
        ]
        ledger.import_lines(orjson.dumps(f) for f in late)
    out = tmp_path / "dd"
    result = _export(ledger, out)
    secret = export_secret(ledger, result.export_id)
    tables = {table: _rows(out, table) for table in TABLE_NAMES}
    for ref in ledger.customer_refs():
        alias = pseudonym(secret, "customer", ref)
        customer, events = ledger.customer_with_events(ref)

        def mine(table: str, alias: str = alias) -> list[dict[str, Any]]:
            return [
                {k: v for k, v in row.items() if k != "customer"}
                for row in tables[table]
                if row["customer"] == alias
            ]

        def order(value: str | None) -> str | None:
            return pseudonym(secret, "order", value) if value else None

        def without_fact_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: v for k, v in row.items() if k != "fact_id"} for row in rows]

        assert mine("consents") == views.consent_rows(events)
        assert mine("consent_history") == without_fact_id(views.consent_history_rows(events))
        trail = [
            {**row, "order": order(row["order"])}
            for row in views.trail_rows(events, exports=ledger.customer_exports(ref))
            if not row["fact_id"].startswith(result.fact_id)  # (this export, recorded after)
        ]
        assert mine("disclosures") == without_fact_id(trail)
        exported = [row for row in trail if views.is_export_row(row)]
        assert bool(exported) is (earlier and ref != "LATE1"), ref

        def latest(facts: list[dict[str, Any]], fact_type: str) -> str | None:
            results = [f["result"] for f in facts if f["type"] == fact_type]
            return results[-1] if results else None  # the facts are in business order

        orders = [
            {
                "order": order(row["order"]),
                "placed_at": row["placed_at"],
                "total": row["total"],
                "currency": row["currency"],
                "status": row["status"],
                "payment": latest(row["facts"], "payment.authorisation"),
                "identity_check": latest(row["facts"], "identity.check"),
            }
            for row in views.order_rows(customer, events)
        ]
        assert mine("orders") == orders
        [summary] = mine("customers")
        assert summary["registered_at"] == iso(customer.registered_at)
        assert summary["consents_given"] == sum(
            1 for row in views.consent_rows(events) if row["status"] == "given"
        )
    summary = orjson.loads((out / "summary.json").read_bytes())["disclosures_by_recipient_kind"]
    counted = Counter(row["recipient_kind"] for row in tables["disclosures"])
    assert {kind: figures["disclosures"] for kind, figures in summary.items()} == counted
    if earlier:  # made as of a time before them, it lists none of the exports (dated today)
        then = parse_time("2025-03-01T00:00:00Z")
        _export(ledger, tmp_path / "dated", as_of=then)
        dated = [parse_time(row["at"]) for row in _rows(tmp_path / "dated", "disclosures")]
        assert dated and max(dated) <= then


def test_the_transfer_initiations_found_in_the_fact_index_are_every_acquirers(
    ledger: Any, feed_small: Path, tmp_path: Path
) -> None:
    """`transfers_initiated` (from the fact index) answers what reading the whole log does:
    each initiation's business time and position, for each acquirer with one; one without
    (named by an export) is not listed."""
    from ledger.domainmodel import Acquirer

    _load(ledger, feed_small, customers=3)
    _export(ledger, tmp_path / "dd", acquirer="Someone Without Initiation")
    replayed: dict[str, list[tuple[Any, int]]] = {}
    for notification in ledger.recorder.iter_notifications():
        event = ledger.mapper.to_domain_event(notification)
        if isinstance(event, Acquirer.TransferInitiated):
            name = ledger.repository.get(notification.originator_id).name
            replayed.setdefault(name, []).append((event.at, notification.id))
    assert replayed, "the small feed initiates a transfer"
    assert ledger.transfers_initiated().by_acquirer == replayed
    # As of an earlier event (what an export reads): only those recorded by then.
    (first, position), *_ = sorted((at, p) for found in replayed.values() for at, p in found)
    assert ledger.transfers_initiated(position - 1).by_acquirer == {}
    earlier = ledger.transfers_initiated(position).by_acquirer
    assert [found for found in earlier.values()] == [[(first, position)]]


def test_the_files_hashing_threads_never_take_ctrl_c_or_sigterm(
    ledger: Any, feed_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel gives a process's signal to any thread that does not block it, and Python
    then handles it at once, though the export's commit holds it off until the folder is in
    place: the threads that hash the export's files block both for their whole life."""
    import threading

    from ledger import manifest

    masks: list[set[signal.Signals]] = []
    file_entry = manifest.file_entry

    def noted(*args: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        return file_entry(*args)

    _load(ledger, feed_small)
    monkeypatch.setattr(manifest, "file_entry", noted)
    _export(ledger, tmp_path / "dd")
    assert masks and all({signal.SIGINT, signal.SIGTERM} <= mask for mask in masks)


def _as_earlier_versions_took_any_total(monkeypatch: pytest.MonkeyPatch) -> None:
    """Totals of any exponent, as versions before the feed's limit of digits recorded them
    (ledgers keep them: events are forever)."""
    monkeypatch.setattr("ledger.feed._written_out_within_limit", lambda amount: True)


def test_the_summary_adds_every_total_the_feed_takes_exactly_and_without_failing(
    ledger: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Order totals were added in Decimal's default context (28 digits, exponents to 999999):
    a sum of 29 digits or more was rounded ("1.234567890123456789012345679E+36") and a total
    such as "1E+999999999", which earlier versions took, failed every export after with
    Overflow."""
    _as_earlier_versions_took_any_total(monkeypatch)
    orders = {
        "O1": ("1234567890123456789012345678901234567.89", "GBP"),  # 40 characters
        "O2": ("0.01", "GBP"),
        "O3": ("1E+30", "EUR"),
        "O4": ("0.50", "EUR"),
        "O5": ("1E+999999999", "USD"),
        "O6": ("2E+999999999", "USD"),
    }
    facts = [line("customer.registered", "r", 0)] + [
        line("order.placed", f"p-{ref}", 1, order=ref, total=total, currency=currency)
        for ref, (total, currency) in orders.items()
    ]
    ledger.import_lines(orjson.dumps(f) for f in facts)
    _export(ledger, tmp_path / "out")
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    totals = summary["orders"]["totals"]
    assert (totals["GBP"], totals["EUR"]) == (
        "1234567890123456789012345678901234567.90",
        "1000000000000000000000000000000.50",
    )
    assert Decimal(totals["USD"]) == Decimal("3E+999999999")


def test_a_summary_total_beyond_any_decimal_is_infinity_not_a_failed_export(
    ledger: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Earlier versions took a total up to 9E+999999999999999999 (Decimal's largest exponent,
    21 characters); two of them in one currency add up to more than any Decimal, and the
    summary's addition raised Overflow: every export of the ledger failed as "unexpected
    Overflow ... this is a bug". The sum is "Infinity"; the other currencies' exact."""
    _as_earlier_versions_took_any_total(monkeypatch)
    biggest = "9E+999999999999999999"
    orders = {"O1": (biggest, "USD"), "O2": (biggest, "USD"), "O3": ("1.50", "GBP")}
    facts = [line("customer.registered", "r", 0)] + [
        line("order.placed", f"p-{ref}", 1, order=ref, total=total, currency=currency)
        for ref, (total, currency) in orders.items()
    ]
    assert ledger.import_lines(orjson.dumps(f) for f in facts).accepted == len(facts)
    _export(ledger, tmp_path / "out")
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert summary["orders"]["totals"] == {"GBP": "1.50", "USD": "Infinity"}
