"""Importing a feed (SPEC §2) on each backend: all or nothing, every invalid line reported
with its number, duplicates skipped forever, re-imports change nothing."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ledger import application
from ledger.application import CHUNK
from ledger.errors import InvalidFeedError
from ledger.feed import SCHEMAS
from ledger.samplefeed import generate_lines
from tests.examples import ENUM_FIELDS, PERSONAL_VALUES, at, jsonl, line, registered, story


def count(ledger: Any, table: str = "ledger_events") -> int:
    with ledger.database.reading() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar())


def import_objs(ledger: Any, objs: list[dict[str, Any]]) -> Any:
    return ledger.import_lines(jsonl(objs).splitlines(keepends=True))


def refused(ledger: Any, lines: list[bytes]) -> InvalidFeedError:
    with pytest.raises(InvalidFeedError) as caught:
        ledger.import_lines(lines)
    return caught.value


# -- corrupting any one line refuses the whole file ------------------------------------------

VALID = story(prefix="n")
KINDS = ("break_json", "drop_field", "bad_enum", "strip_offset", "unknown_reference")


def applicable(index: int, kind: str) -> bool:
    obj = VALID[index]
    if kind == "bad_enum":
        return obj["type"] in ENUM_FIELDS
    if kind == "unknown_reference":  # a registration names a new customer: no reference
        return obj["type"] != "customer.registered" and ("customer" in obj or "order" in obj)
    return True


CORRUPTIONS = [(i, k) for i in range(len(VALID)) for k in KINDS if applicable(i, k)]


def corrupt(index: int, kind: str, pick: int) -> tuple[list[bytes], str]:
    """The valid file with line `index` corrupted; and words its error must contain."""
    objs = [dict(o) for o in VALID]
    obj = objs[index]
    lines = [orjson.dumps(o) + b"\n" for o in objs]
    if kind == "break_json":
        lines[index] = lines[index][: len(lines[index]) // 2] + b"\n"
        return lines, "not valid JSON"
    if kind == "drop_field":
        fields = ["id", "type", "at", *SCHEMAS[obj["type"]][0]]
        field = fields[pick % len(fields)]
        del obj[field]
        words = repr(field)
    elif kind == "bad_enum":
        names = ENUM_FIELDS[obj["type"]]
        field = names[pick % len(names)]
        obj[field] = ["telepathy"] if field == "categories" else "telepathy"
        words = "unknown data category" if field == "categories" else f"unknown {field}"
    elif kind == "strip_offset":
        obj["at"] = obj["at"].replace("+00:00", "")
        words = "no UTC offset"
    else:
        key = "customer" if "customer" in obj else "order"
        obj[key] = f"{key[0].upper()}-nobody"
        words = f"unknown {key} '{obj[key]}'"
    lines[index] = orjson.dumps(obj) + b"\n"
    return lines, words


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(corruption=st.sampled_from(CORRUPTIONS), pick=st.integers(0, 20))
def test_corrupting_any_one_line_refuses_the_file_naming_that_line(
    ledger: Any, corruption: tuple[int, str], pick: int
) -> None:
    if count(ledger) == 0:
        import_objs(ledger, story(prefix="base-"))
    events, facts = count(ledger), count(ledger, "ledger_facts")
    index, kind = corruption
    lines, words = corrupt(index, kind, pick)
    error = refused(ledger, lines)
    first = min(error.errors, key=lambda e: e.line or 0)
    assert first.line == index + 1
    assert words in first.reason
    assert all((e.line or 0) >= index + 1 for e in error.errors)
    assert (count(ledger), count(ledger, "ledger_facts")) == (events, facts)


def test_the_uncorrupted_file_is_valid(ledger: Any) -> None:
    summary = import_objs(ledger, VALID)
    assert (summary.accepted, summary.duplicates, summary.rejected) == (len(VALID), 0, 0)
    assert count(ledger, "ledger_facts") == len(VALID)


# -- all or nothing, every error -------------------------------------------------------------


def test_an_invalid_line_after_the_first_chunk_still_records_nothing(ledger: Any) -> None:
    lines = list(generate_lines(CHUNK // 12, seed=3))
    assert len(lines) > CHUNK  # the first chunk was saved inside the transaction
    lines.append(b'{"id": "last", "type": "order.delivered"}\n')
    error = refused(ledger, lines)
    assert [(e.line, e.reason) for e in error.errors] == [
        (len(lines), "missing required field 'at'")
    ]
    assert count(ledger) == 0
    assert count(ledger, "ledger_facts") == 0
    assert list(ledger.customer_refs()) == []


def test_every_invalid_line_is_reported_not_just_the_first(ledger: Any) -> None:
    objs = story(prefix="a")
    lines = [orjson.dumps(o) + b"\n" for o in objs]
    for index in (3, 7, 11):
        lines[index] = orjson.dumps({**objs[index], "at": "2025-01-10T09:00:00"}) + b"\n"
    lines[15] = b"{oops\n"
    error = refused(ledger, lines)
    assert [e.line for e in error.errors] == [4, 8, 12, 16]
    assert str(error).startswith("line 4: field 'at' has no UTC offset")
    assert "(and 3 more invalid lines)" in str(error)
    assert count(ledger) == 0


def test_error_messages_carry_no_personal_data(ledger: Any) -> None:
    objs = story(prefix="p")
    name, email = objs[0]["name"], objs[0]["email"]
    objs[0] = {**objs[0], "email": name}  # a shifted column
    objs[2] = {**objs[2], "channel": name.split()[0], "name": name}
    objs[4] = {**objs[4], "currency": email}
    error = refused(ledger, jsonl(objs).splitlines(keepends=True))
    texts = [str(error), *(e.reason for e in error.errors)]
    assert len(error.errors) >= 3
    for text in texts:
        for value in (*PERSONAL_VALUES, name.split()[0]):
            assert value not in text


def test_blank_lines_are_skipped_and_counted_in_line_numbers(ledger: Any) -> None:
    objs = story(prefix="b")
    lines = [b"\n", *(orjson.dumps(o) + b"\n" for o in objs)]
    lines.insert(3, b"   \n")
    lines.append(b"{bad\n")
    error = refused(ledger, lines)
    assert [e.line for e in error.errors] == [len(lines)]


def test_a_customer_or_order_registered_later_in_the_file_is_seen(ledger: Any) -> None:
    # SPEC §2: invalid only if "never seen (in the file or before)". The registration and
    # the order's placing come last; the facts naming them wait for them, chained.
    objs = story(prefix="l")
    registration = objs.pop(0)
    placing = next(o for o in objs if o["type"] == "order.placed")
    objs.remove(placing)
    objs += [placing, registration]
    summary = import_objs(ledger, objs)
    assert (summary.accepted, summary.rejected) == (len(objs), 0)
    fold = ledger.customer_events("lC1")
    assert fold[0].FACT_TYPE == "customer.registered"
    streams = [o["id"] for o in objs if o["type"] != "transfer.initiated"]  # the acquirer's
    assert sorted(e.fact_id for e in fold) == sorted(streams)
    placed = [e.fact_id for e in fold].index(placing["id"])
    order_facts = [i for i, e in enumerate(fold) if e.__dict__.get("order") == placing["order"]]
    assert min(order_facts) == placed  # each of the order's facts after its placing
    # The same facts in file order, in another ledger's stream, give the same answers.
    in_order = story(prefix="k")
    import_objs(ledger, in_order)
    assert [v.rule for v in ledger.audit() if v.customer == "lC1"] == [
        v.rule for v in ledger.audit() if v.customer == "kC1"
    ]


def test_facts_that_waited_are_recorded_in_the_order_of_their_lines(ledger: Any) -> None:
    """Line 3 waits for the order that line 1 places, which waits for the registration on
    line 4. Ties at the same `at` are broken by recording order, so the facts that waited
    must keep their lines' order (1, 2, 3), not follow the chain they waited through (1, 3,
    2): the identity check must not move ahead of the transfer disclosure."""
    placing = line("order.placed", "q-1", 0, customer="qC2", order="qO2")
    disclosure = line("transfer.disclosure", "q-2", 5, customer="qC2")
    check = line("identity.check", "q-3", 5, order="qO2")
    registration = line("customer.registered", "q-4", 0, customer="qC2")
    summary = import_objs(ledger, [placing, disclosure, check, registration])
    assert (summary.accepted, summary.rejected) == (4, 0)
    stream = [e.fact_id for e in ledger.customer_events("qC2")]
    assert stream == ["q-4", "q-1", "q-2", "q-3"]


@pytest.mark.parametrize("registration_at", [0, 1, 2, 3])
def test_a_transfer_disclosure_that_waited_keeps_its_line_before_a_later_initiation(
    ledger: Any, registration_at: int
) -> None:
    """A transfer disclosure and its acquirer's initiation at the same `at`, in that line
    order: the disclosure had no earlier initiation (a violation), wherever the customer's
    registration sits in the file, though the disclosure waits for it. Another acquirer's
    initiation is not held back."""
    at = "2025-03-01T00:00:00Z"
    facts = [
        line("transfer.disclosure", "t-d1", customer="tC1", acquirer="Acme", at=at),
        line("transfer.initiated", "t-other", acquirer="Other", at=at),
        line("transfer.initiated", "t-i1", acquirer="Acme", at=at),
        line("transfer.disclosure", "t-d2", customer="tC1", acquirer="Other", at=at),
    ]
    facts.insert(registration_at, line("customer.registered", "t-r", customer="tC1"))
    summary = import_objs(ledger, facts)
    assert (summary.accepted, summary.rejected) == (5, 0)
    broken = [(v.rule, v.fact_id) for v in ledger.audit()]
    assert broken == [("transfer_without_initiation", "t-d1")]


_EXAMPLE_NUMBERS = iter(range(1_000_000))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_verdicts_do_not_depend_on_where_registrations_and_placings_sit(
    ledger: Any, data: st.DataObject
) -> None:
    """The same facts, many at the same `at`, with the registration and the orders' placings
    first, or anywhere in the file (the facts before them wait): the same violations. No
    rule judges a registration or a placing, so where they sit must not change a verdict."""

    def feed(prefix: str) -> list[dict[str, Any]]:
        objs = story(prefix=prefix)
        for obj, minute in zip(objs, minutes, strict=True):
            obj["at"] = at(minute)
            if "acquirer" in obj:
                obj["acquirer"] = prefix + obj["acquirer"]
        return objs

    def verdicts(prefix: str, objs: list[dict[str, Any]]) -> list[tuple[str, str]]:
        import_objs(ledger, objs)
        found = [(v.rule, v.fact_id) for v in ledger.audit() if v.customer.startswith(prefix)]
        return sorted((rule, fact_id.removeprefix(prefix)) for rule, fact_id in found)

    size = len(story())
    minutes = data.draw(st.lists(st.sampled_from([0, 10, 20]), min_size=size, max_size=size))
    movable = ("customer.registered", "order.placed")
    shuffled = data.draw(st.permutations(range(size - 3)))  # the lines that are not movable
    number = next(_EXAMPLE_NUMBERS)
    first, anywhere = f"vf{number}-", f"va{number}-"

    def split(objs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        rest = [o for o in objs if o["type"] not in movable]
        return [o for o in objs if o["type"] in movable], [rest[i] for i in shuffled]

    placed, rest = split(feed(first))
    try:
        expected = verdicts(first, placed + rest)
    except InvalidFeedError:  # a details update after the erasure: not this test's case
        assume(False)
    placed, rest = split(feed(anywhere))
    for obj in placed:
        rest.insert(data.draw(st.integers(0, len(rest))), obj)
    assert verdicts(anywhere, rest) == expected


def test_an_acquirers_transfer_facts_are_recorded_in_their_lines_order(ledger: Any) -> None:
    """Line 3's customer is registered before line 1's: line 3 must still be recorded after
    the initiation on line 2 (it was initiated then), and line 1 before it (it was not)."""
    at = "2025-03-01T00:00:00Z"
    facts = [
        line("transfer.disclosure", "o-d1", customer="oC1", acquirer="Acme", at=at),
        line("transfer.initiated", "o-i", acquirer="Acme", at=at),
        line("transfer.disclosure", "o-d2", customer="oC2", acquirer="Acme", at=at),
        line("customer.registered", "o-r2", customer="oC2"),
        line("customer.registered", "o-r1", customer="oC1"),
    ]
    summary = import_objs(ledger, facts)
    assert (summary.accepted, summary.rejected) == (5, 0)
    assert [(v.rule, v.fact_id) for v in ledger.audit()] == [
        ("transfer_without_initiation", "o-d1")
    ]


def test_an_initiation_held_behind_a_disclosure_never_released_is_judged_on_its_own(
    ledger: Any,
) -> None:
    facts = [
        line("transfer.disclosure", "h-d1", customer="hC9", acquirer="Acme"),
        line("transfer.initiated", "h-i1", acquirer="Acme"),
    ]
    error = refused(ledger, jsonl(facts).splitlines(keepends=True))
    assert [(e.line, e.reason) for e in error.errors] == [(1, "unknown customer 'hC9'")]
    assert error.accepted == 1


def test_a_reference_never_seen_in_the_file_is_invalid_at_its_line(ledger: Any) -> None:
    objs = story(prefix="u")
    stray = line("consent.given", "u-stray", 5, customer="uC9")
    objs.insert(2, stray)
    objs.append(line("customer.updated", "u-bad", 1, customer="uC1", email=7))
    error = refused(ledger, jsonl(objs).splitlines(keepends=True))
    # Reported in line order, though the stray line waited until the end of the file.
    assert [(e.line, e.reason) for e in error.errors] == [
        (3, "unknown customer 'uC9'"),
        (len(objs), "field 'email' must be a string, got int"),
    ]
    assert count(ledger) == 0


def test_facts_wait_for_their_customer_in_bounded_numbers(
    ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(application, "_WAITING_LIMIT", 2)
    objs = story(prefix="b")
    registration = objs.pop(0)
    error = refused(ledger, jsonl([*objs[:3], registration]).splitlines(keepends=True))
    # Two wait; the third is refused as it comes, naming its customer and why it could not
    # wait (the customer is registered later: "unknown" alone would be untrue).
    assert [(e.line, e.reason) for e in error.errors] == [
        (
            3,
            "unknown customer 'bC1' so far, and 2 facts of this file already wait for a "
            "customer or order that comes later in it (the most an import keeps): put the "
            "registrations and orders first, or import the file in parts",
        )
    ]


def test_initiations_held_behind_waiting_disclosures_count_as_waiting(
    ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(application, "_WAITING_LIMIT", 2)
    facts = [
        line("transfer.disclosure", "b-d", customer="bC1", acquirer="Acme"),
        line("transfer.initiated", "b-i1", acquirer="Acme"),
        line("transfer.initiated", "b-i2", acquirer="Acme"),
        line("customer.registered", "b-r", customer="bC1"),
    ]
    error = refused(ledger, jsonl(facts).splitlines(keepends=True))
    assert [(e.line, e.reason) for e in error.errors] == [
        (
            3,
            "transfer.initiated for acquirer 'Acme' follows transfer facts of that acquirer "
            "that wait for their customers so far, and 2 facts of this file already wait for a "
            "customer or order that comes later in it (the most an import keeps): put the "
            "registrations and orders first, or import the file in parts",
        )
    ]


def test_a_later_line_with_the_id_of_one_never_released_is_judged_on_its_own(
    ledger: Any,
) -> None:
    objs = story(prefix="c")
    stray = line("consent.given", "c-dup", 5, customer="cC9")
    same_id = line("consent.given", "c-dup", 6, customer="cC1")
    error = refused(ledger, jsonl([objs[0], stray, same_id]).splitlines(keepends=True))
    # Line 2 never finds its customer; line 3, the same id for a customer that exists, is no
    # duplicate of a fact never recorded, and is valid.
    assert [(e.line, e.reason) for e in error.errors] == [(2, "unknown customer 'cC9'")]
    assert (error.accepted, error.duplicates) == (2, 0)


def test_a_waiting_fact_sent_twice_is_recorded_once(ledger: Any) -> None:
    objs = story(prefix="w")
    registration = objs.pop(0)
    early = objs[0]
    summary = import_objs(ledger, [early, early, *objs[1:], registration])
    assert (summary.accepted, summary.duplicates) == (len(objs) + 1, 1)
    assert count(ledger, "ledger_facts") == len(objs) + 1


def test_registering_a_customer_twice_is_invalid(ledger: Any) -> None:
    import_objs(ledger, story(prefix="r"))
    again = line("customer.registered", "r-again", 0, customer="rC1")
    error = refused(ledger, jsonl([again]).splitlines())
    assert error.errors[0].reason == "customer 'rC1' is already registered"


def test_details_of_an_erased_customer_cannot_be_updated(ledger: Any) -> None:
    import_objs(ledger, story(prefix="e"))
    update = line("customer.updated", "e-late", 30, customer="eC1")
    error = refused(ledger, jsonl([update]).splitlines())
    assert (
        error.errors[0].reason == "customer 'eC1' has been erased: a details update is not accepted"
    )


# -- duplicates and re-imports ---------------------------------------------------------------


def test_reimporting_a_file_changes_nothing(ledger: Any) -> None:
    objs = story(prefix="x")
    first = import_objs(ledger, objs)
    events, trail = count(ledger), ledger.customer_events("xC1")
    again = import_objs(ledger, objs)
    assert (again.accepted, again.duplicates, again.rejected) == (0, len(objs), 0)
    assert count(ledger) == events
    assert [e.fact_id for e in ledger.customer_events("xC1")] == [e.fact_id for e in trail]
    assert first.accepted == len(objs)


def test_duplicates_in_another_file_months_later_are_skipped(ledger: Any) -> None:
    objs = story(prefix="m")
    import_objs(ledger, objs[:10])
    later = line("order.delivered", "m-new", 60 * 24 * 120, order="mO1")
    second = [*objs[5:10], later, objs[5]]
    summary = import_objs(ledger, second)
    assert (summary.accepted, summary.duplicates) == (1, 6)
    assert count(ledger, "ledger_facts") == 11


def test_a_duplicate_id_within_one_file_is_recorded_once(ledger: Any) -> None:
    objs = story(prefix="d")
    summary = import_objs(ledger, [*objs, objs[3]])
    assert (summary.accepted, summary.duplicates) == (len(objs), 1)


def test_a_duplicate_is_skipped_even_if_its_content_differs(ledger: Any) -> None:
    objs = story(prefix="c")
    import_objs(ledger, objs)
    changed = {**objs[2], "purpose": "market_research"}
    summary = import_objs(ledger, [changed])
    assert (summary.accepted, summary.duplicates) == (0, 1)


def test_the_database_refuses_a_fact_id_twice(ledger: Any) -> None:
    import_objs(ledger, story(prefix="u"))
    with pytest.raises(sa.exc.IntegrityError), ledger.database.writing() as tx:
        tx.connection.execute(
            sa.text(
                "INSERT INTO ledger_facts (fact_id, notification_id, fact_type, originator_id) "
                "SELECT fact_id, notification_id, fact_type, originator_id FROM ledger_facts "
                "WHERE fact_id = 'ue-00'"
            )
        )


def test_two_importers_racing_record_each_fact_once(ledger_url: str, ledger: Any) -> None:
    from ledger.config import open_ledger

    lines = list(generate_lines(30, seed=11, prefix="race-"))
    other = open_ledger(ledger_url)
    results: list[Any] = []

    def importer(app: Any) -> None:
        try:
            results.append(app.import_lines(lines))
        except Exception as error:  # a lost race may be refused; it must say so cleanly
            results.append(error)

    threads = [threading.Thread(target=importer, args=(app,)) for app in (ledger, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.database.dispose()
    summaries = sorted(
        (r for r in results if not isinstance(r, Exception)), key=lambda s: s.accepted
    )
    assert [s.accepted for s in summaries][-1] == len(lines)
    assert all(s.accepted in (0, len(lines)) for s in summaries)
    assert count(ledger, "ledger_facts") == len(lines)


# -- what earlier imports make valid ---------------------------------------------------------


def test_a_fact_naming_only_an_order_from_an_earlier_file_is_valid(ledger: Any) -> None:
    objs = story(prefix="o")
    import_objs(ledger, objs[:6])
    summary = import_objs(ledger, [line("order.delivered", "o-later", 100, order="oO1")])
    assert summary.accepted == 1
    assert ledger.customer_events("oC1")[-1].fact_id == "o-later"


def test_an_erasure_in_the_same_file_as_the_registration_destroys_the_key(ledger: Any) -> None:
    objs = story(prefix="k")
    import_objs(ledger, objs)
    customer, events = ledger.customer_with_events("kC1")
    assert customer.erased
    assert ledger.personal_data(customer, events) is None
    with ledger.database.reading() as conn:
        keys = conn.execute(
            sa.text("SELECT count(*) FROM ledger_data_keys WHERE wrapped_key IS NOT NULL")
        ).scalar()
    assert keys == 0


def test_dry_run_counts_and_records_nothing(ledger: Any) -> None:
    objs = story(prefix="y")
    summary = ledger.import_lines(jsonl(objs).splitlines(keepends=True), dry_run=True)
    assert (summary.accepted, summary.duplicates, summary.rejected) == (len(objs), 0, 0)
    assert count(ledger) == 0 and count(ledger, "ledger_data_keys") == 0
    assert import_objs(ledger, objs).accepted == len(objs)


def test_unknown_fields_are_kept_sealed_with_the_customer(ledger: Any) -> None:
    reg = line("customer.registered", "f-reg", 0, customer="F1", loyalty_tier="gold")
    consent = line("consent.given", "f-con", 1, customer="F1", source_system="pos-7")
    import_objs(ledger, [reg, consent])
    # Any fact, of a customer registered before the file: its key is read back to seal them.
    research = line(
        "consent.given", "f-res", 2, customer="F1", purpose="market_research", till="till-9"
    )
    placed = line("order.placed", "f-ord", 3, customer="F1", order="FO1", gift_note="for Ada")
    import_objs(ledger, [research, placed])
    customer, events = ledger.customer_with_events("F1")
    assert ledger.extra_fields(customer, events[1]) == {"source_system": "pos-7"}
    assert ledger.extra_fields(customer, events[2]) == {"till": "till-9"}
    assert ledger.extra_fields(customer, events[3]) == {"gift_note": "for Ada"}
    with ledger.database.reading() as conn:
        raw = b"".join(conn.execute(sa.text("SELECT state FROM ledger_events")).scalars())
    assert b"pos-7" not in raw and b"gold" not in raw
    assert b"till-9" not in raw and b"for Ada" not in raw
    for value in PERSONAL_VALUES:
        assert value.encode() not in raw


def test_a_transfer_initiations_unknown_fields_are_sealed_under_the_acquirers_key(
    ledger: Any,
) -> None:
    from ledger.domainmodel import Acquirer, acquirer_id

    first = line("transfer.initiated", "t-1", 0, board_contact="Jane Roe, +44 7700 900123")
    again = line("transfer.initiated", "t-2", 5, data_room="room 7 for Jane Roe")
    plain = line("transfer.initiated", "t-3", 9)
    import_objs(ledger, [first, again, plain])
    with ledger.database.reading() as conn:
        raw = b"".join(conn.execute(sa.text("SELECT state FROM ledger_events")).scalars())
    assert b"Jane Roe" not in raw and b"900123" not in raw
    acquirer = ledger.repository.get(acquirer_id("Northwind"))
    events = [
        e for e in ledger.events.get(acquirer.id) if isinstance(e, Acquirer.TransferInitiated)
    ]
    assert [ledger.extra_fields(acquirer, e) for e in events] == [
        {"board_contact": "Jane Roe, +44 7700 900123"},
        {"data_room": "room 7 for Jane Roe"},
        {},
    ]
    assert count(ledger, "ledger_data_keys") == 1  # one key for the acquirer's stream


def test_a_transfer_initiation_recorded_with_unsealed_extra_fields_still_reads(
    ledger: Any,
) -> None:
    # The same event shape as before extra fields were sealed: `extra` filled, `sealed` None.
    from ledger.domainmodel import Acquirer, _trigger
    from ledger.feed import validate

    acquirer = Acquirer.create("Northwind")
    fact = validate(line("transfer.initiated", "t-old", 0))
    fields = {"fact_id": fact.id, "at": fact.at, "sealed": None, "scope": "all customers"}
    _trigger(acquirer, Acquirer.TransferInitiated, {**fields, "extra": {"note": "kept"}})
    ledger.save(acquirer)
    loaded = ledger.repository.get(acquirer.id)
    event = list(ledger.events.get(acquirer.id))[-1]
    assert loaded.initiations == [fact.at]
    assert ledger.extra_fields(loaded, event) == {"note": "kept"}


# -- chunk boundaries ------------------------------------------------------------------------
# A file is recorded in chunks: each chunk's lookups (recorded ids, customers, orders) are
# queued before the previous chunk's writes, which they add from memory. Whatever the chunk
# size, a file must be judged as one sequence.


def _boundary_feed() -> list[dict[str, Any]]:
    """Two stories, with every line of the first repeated a few lines later (duplicates
    that fall in the same chunk or the next, depending on its size)."""
    first, second = story(prefix="p"), story(prefix="q")
    objs: list[dict[str, Any]] = []
    for index, obj in enumerate(first):
        objs.append(obj)
        if index >= 2:
            objs.append(first[index - 2])
    return objs + second


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_any_chunk_size_records_a_file_as_one_sequence(
    ledger: Any, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ledger.application.CHUNK", chunk)
    objs = _boundary_feed()
    summary = import_objs(ledger, objs)
    unique = {obj["id"] for obj in objs}
    assert (summary.accepted, summary.duplicates) == (len(unique), len(objs) - len(unique))
    assert count(ledger, "ledger_facts") == len(unique)
    # Each fact is in its customer's stream (a fact naming only an order: the order's owner).
    owner: dict[str, str] = {}
    expected: dict[str, list[str]] = {}
    seen: set[str] = set()
    for obj in objs:
        if obj["id"] in seen or ("customer" not in obj and "order" not in obj):
            continue
        seen.add(obj["id"])
        customer = obj.get("customer") or owner[obj["order"]]
        if obj["type"] == "order.placed":
            owner[obj["order"]] = customer
        expected.setdefault(customer, []).append(obj["id"])
    for customer, fact_ids in expected.items():
        assert [e.fact_id for e in ledger.customer_events(customer)] == fact_ids


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_a_second_registration_or_order_in_a_later_chunk_is_refused(
    ledger: Any, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ledger.application.CHUNK", chunk)
    objs = story(prefix="r")
    registration = next(o for o in objs if o["type"] == "customer.registered")
    placed = next(o for o in objs if o["type"] == "order.placed")
    objs += [registration | {"id": "again-1"}, placed | {"id": "again-2"}]
    error = refused(ledger, [orjson.dumps(o) + b"\n" for o in objs])
    assert [(e.line, e.reason) for e in error.errors] == [
        (len(objs) - 1, f"customer {registration['customer']!r} is already registered"),
        (len(objs), f"order {placed['order']!r} is already placed"),
    ]
    assert count(ledger) == 0


@pytest.mark.parametrize("chunk", [1, 3])
def test_a_fact_held_behind_a_waiting_one_finds_its_customer_recorded_before_the_file(
    ledger: Any, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transfer disclosure held behind an earlier one of its acquirer's (which waits for its
    customer's registration, later in the file) is applied when that one is, chunks later:
    its own customer, recorded by an earlier file, is still known then. A chunk only knows
    the customers its own lines name, and the customer read with the chunk that held the
    fact may have left memory since (a large feed reads more customers than it keeps):
    the fact waited for a registration that never came, and was refused at the end."""
    earlier = ["hC1", "hC3", "hC4", "hC5", "hC6"]
    import_objs(ledger, [registered(ref, 0) for ref in earlier])
    monkeypatch.setattr("ledger.application.CHUNK", chunk)
    monkeypatch.setattr("ledger.application._CUSTOMER_CACHE", 3)  # (20,000 in use)
    facts = [
        line("transfer.initiated", "h-i", 1, acquirer="Acme"),
        line("transfer.disclosure", "h-d2", 2, customer="hC2", acquirer="Acme"),  # waits
        line("transfer.disclosure", "h-d1", 3, customer="hC1", acquirer="Acme"),  # held
        *(
            line("subject.access_requested", f"h-a{n}", 4, customer=ref)
            for n, ref in enumerate(earlier[1:])
        ),
        registered("hC2", 5),  # releases h-d2, then h-d1
    ]
    summary = import_objs(ledger, facts)
    assert (summary.accepted, summary.rejected) == (len(facts), 0), summary.errors
    assert [e.fact_id for e in ledger.customer_events("hC1")] == ["hC1-r", "h-d1"]


def test_a_later_copy_of_a_refused_line_finds_its_order_placed_by_an_earlier_file(
    ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line with the id of one that waited and was refused is a fact of its own, judged
    at the end of the file: its order, placed by an earlier file, is no later chunk's to
    know (it was refused too, as naming an order never seen)."""
    import_objs(
        ledger, [registered("kC1", 0), line("order.placed", "k-o", 1, customer="kC1", order="kO1")]
    )
    monkeypatch.setattr("ledger.application.CHUNK", 1)
    facts = [
        line("subject.access_requested", "k-same", 2, customer="kC9"),  # never registered
        line("order.dispatched", "k-same", 3, order="kO1"),  # its id again: judged at the end
        line("subject.access_requested", "k-a", 4, customer="kC1"),
    ]
    error = refused(ledger, jsonl(facts).splitlines(keepends=True))
    assert [(e.line, e.reason) for e in error.errors] == [(1, "unknown customer 'kC9'")]
