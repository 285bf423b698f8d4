"""Tampering with a real ledger, on SQLite and PostgreSQL: every alteration is caught and named.

To tamper, a test does what an intruder with database access would: it disables the
append-only triggers and rewrites rows with raw SQL. The signing key stays out of reach.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli.main import cli
from ledger import integrity
from ledger.persistence import seals

APPEND_ONLY = (
    "ledger_events",
    "ledger_tree_nodes",
    "ledger_checkpoints",
    "ledger_facts",
    "ledger_orders",
    "ledger_customers",
)


@pytest.fixture
def recorded(ledger: Any, feed_small: Path) -> Any:
    """The small feed recorded in two imports (two checkpoints: 13 and 27 events)."""
    lines = feed_small.read_bytes().splitlines()
    ledger.import_lines(lines[:13])
    ledger.import_lines(lines[13:])
    return ledger


def tamper(app: Any, *statements: tuple[str, dict[str, Any]]) -> None:
    """Run raw SQL with the triggers out of the way, as an intruder would."""
    with app.database.engine.begin() as conn:
        if app.database.is_sqlite:
            names = conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            ).scalars()
            for name in list(names):
                conn.exec_driver_sql(f"DROP TRIGGER {name}")
        else:
            for table in APPEND_ONLY:
                conn.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        for sql, params in statements:
            conn.execute(sa.text(sql), params)


def event_row(app: Any, notification_id: int) -> Any:
    with app.database.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT * FROM ledger_events WHERE notification_id = :n"),
            {"n": notification_id},
        ).one()


def problems(app: Any, **kwargs: Any) -> list[tuple[str, int | None]]:
    """(kind, the event it names, or the tree size of the checkpoint it names)."""
    result = seals.verify_ledger(app, **kwargs)
    assert result.ok == (not result.problems)
    return [(p["kind"], p.get("event", p.get("tree_size"))) for p in result.problems]


def test_an_untouched_ledger_verifies(recorded: Any) -> None:
    result = seals.verify_ledger(recorded)
    assert result.to_json() == {
        "ok": True,
        "facts": 26,
        "head": seals.latest_checkpoint(recorded)["root_hash"],
        "problems": [],
    }
    assert result.events == 27


@pytest.mark.parametrize("parallel", [False, True], ids=["one-pass", "workers"])
def test_an_untouched_ledger_is_verified_without_its_indexes_in_memory(
    recorded: Any, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    """The customer, order and fact indexes are held against the events by digests: their
    rows and the events' registrations and placings are read into memory only to name
    what disagrees. So `verify`'s memory does not grow with the ledger."""
    from ledger.persistence import index_audit

    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("an untouched ledger's rows were compared one by one")

    monkeypatch.setattr(index_audit.IndexRows, "read", refused)
    monkeypatch.setattr(seals, "audit_indexes", refused)
    monkeypatch.setattr(seals, "audit_fact_index", refused)
    kept = index_audit.Indexed.__init__

    def lean(self: Any, *, facts: bool = True, keep: bool = False) -> None:
        assert not keep, "an untouched ledger's events were kept to compare one by one"
        kept(self, facts=facts)

    monkeypatch.setattr(index_audit.Indexed, "__init__", lean)
    options: dict[str, Any] = {"workers": 2, "block_level": 2} if parallel else {"workers": 1}
    assert problems(recorded, **options) == []
    # ... and the digests see an index row changed, on this same path
    tamper(recorded, ("DELETE FROM ledger_orders", {}))
    with pytest.raises(AssertionError, match="one by one"):
        seals.verify_ledger(recorded, **options)


def test_one_flipped_byte_is_caught_and_the_event_named(recorded: Any) -> None:
    state = bytearray(event_row(recorded, 5).state)
    state[10] ^= 0x01
    tamper(
        recorded,
        ("UPDATE ledger_events SET state = :s WHERE notification_id = 5", {"s": bytes(state)}),
    )
    assert problems(recorded) == [("checkpoint_mismatch", 13), ("event_altered", 5)]


def test_a_deleted_event_is_caught(recorded: Any) -> None:
    tamper(recorded, ("DELETE FROM ledger_events WHERE notification_id = 20", {}))
    # Named once, as removed: the events after it are still there, so the log's end is not
    # said to be gone (the signed checkpoint of 27 events cannot be checked: 20 is missing).
    assert problems(recorded) == [("event_removed", 20)]
    assert seals.verify_ledger(recorded, workers=2, block_level=2).problems == (
        seals.verify_ledger(recorded, workers=1).problems
    )


@pytest.mark.parametrize("ids", [[0], [-7, 0]])
def test_events_stored_before_the_first_position_are_caught(recorded: Any, ids: list[int]) -> None:
    # Ids below 1 are outside the log's positions: the tree never hashed them, yet every
    # other read would take them for recorded facts.
    row = event_row(recorded, 8)
    forged = [
        (
            "INSERT INTO ledger_events VALUES (:n, :o, :v, :t, :s)",
            {"n": n, "o": row.originator_id, "v": 90 + n, "t": row.topic, "s": row.state},
        )
        for n in ids
    ]
    tamper(recorded, *forged)
    assert problems(recorded) == [("event_inserted", min(ids))]
    assert problems(recorded, workers=2, block_level=2) == [("event_inserted", min(ids))]
    done = run(recorded.database.url, "verify", "--json")
    assert done.exit_code == 4
    assert json.loads(done.stdout)["problems"][0]["kind"] == "event_inserted"


# Rows rewritten into values of other types or ranges than were recorded, as an intruder's
# plain SQL leaves them (SQLite's `replace()` on a blob stores text). PostgreSQL's column
# types refuse all but the negative version.
WRONG_SHAPES = {
    "state as text": ("state = CAST(state AS TEXT)", True),
    "state replaced as text": ("state = replace(state, 'consent', 'cons3nt')", True),
    "state as a number": ("state = 42", True),
    "originator id not hex": ("originator_id = 'zz'", True),
    "negative version": ("originator_version = -5", False),
    "version beyond 64 bits": ("originator_version = 18446744073709551616.0", True),
    "version as a real": ("originator_version = 1.5", True),
}


@pytest.mark.parametrize("shape", sorted(WRONG_SHAPES))
def test_a_row_rewritten_into_other_types_is_named_not_crashed_on(
    recorded: Any, shape: str
) -> None:
    change, sqlite_only = WRONG_SHAPES[shape]
    if sqlite_only and not recorded.database.is_sqlite:
        pytest.skip("PostgreSQL's column types refuse this value")
    event = 5 if "state" in shape else 6
    tamper(recorded, (f"UPDATE ledger_events SET {change} WHERE notification_id = {event}", {}))
    expected = [("checkpoint_mismatch", 13), ("event_altered", event)]
    assert problems(recorded) == expected
    assert problems(recorded, workers=2, block_level=2) == expected
    done = run(recorded.database.url, "verify", "--json")
    assert done.exit_code == 4, done.output
    assert json.loads(done.stdout)["ok"] is False


def test_a_forged_event_is_caught(recorded: Any) -> None:
    row = event_row(recorded, 27)
    tamper(
        recorded,
        (
            "INSERT INTO ledger_events VALUES (28, :o, :v, :t, :s)",
            {
                "o": row.originator_id,
                "v": row.originator_version + 1,
                "t": row.topic,
                "s": row.state,
            },
        ),
    )
    assert problems(recorded) == [("event_inserted", 28)]


def test_two_swapped_events_are_caught_as_reordered(recorded: Any) -> None:
    a, b = event_row(recorded, 3), event_row(recorded, 9)
    insert = "INSERT INTO ledger_events VALUES (:n, :o, :v, :t, :s)"
    tamper(
        recorded,
        ("DELETE FROM ledger_events WHERE notification_id IN (3, 9)", {}),
        (
            insert,
            {"n": 3, "o": b.originator_id, "v": b.originator_version, "t": b.topic, "s": b.state},
        ),
        (
            insert,
            {"n": 9, "o": a.originator_id, "v": a.originator_version, "t": a.topic, "s": a.state},
        ),
    )
    assert problems(recorded) == [("checkpoint_mismatch", 13), ("events_reordered", 3)]


def test_a_truncated_tail_is_caught(recorded: Any) -> None:
    tamper(recorded, ("DELETE FROM ledger_events WHERE notification_id > 24", {}))
    assert ("log_truncated", 25) in problems(recorded)


def test_a_tail_cut_off_with_its_checkpoint_and_fact_row_is_caught_by_what_it_left(
    recorded: Any,
) -> None:
    """The last write cut off whole (event, checkpoint, fact index row): its leaf in the
    tree, and a read model that had applied it, still show the log was longer."""
    recorded.read_models.violations()  # caught up: applied every event
    last = seals.latest_checkpoint(recorded)["tree_size"]
    cut = (
        ("DELETE FROM ledger_events WHERE notification_id = :n", {"n": last}),
        ("DELETE FROM ledger_checkpoints WHERE tree_size >= :n", {"n": last}),
        ("DELETE FROM ledger_facts WHERE notification_id = :n", {"n": last}),
    )
    tamper(recorded, *cut)
    found = problems(recorded)
    assert found.count(("log_truncated", last)) == 2, found  # the leaf, the read model
    tamper(
        recorded, ("DELETE FROM ledger_tree_nodes WHERE level = 0 AND idx >= :i", {"i": last - 1})
    )
    assert ("log_truncated", last) in problems(recorded)  # the read model's position


def test_a_clean_rollback_to_an_earlier_checkpoint_is_caught(recorded: Any) -> None:
    kept = seals.latest_checkpoint(recorded)
    # Events, seals and checkpoints all cut back to the first import, consistently.
    tamper(
        recorded,
        ("DELETE FROM ledger_events WHERE notification_id > 13", {}),
        ("DELETE FROM ledger_checkpoints WHERE tree_size > 13", {}),
        (
            "DELETE FROM ledger_tree_nodes WHERE (level = 0 AND idx >= 13) "
            "OR (level = 1 AND idx >= 6) OR (level = 2 AND idx >= 3) "
            "OR (level = 3 AND idx >= 1) OR level >= 4",
            {},
        ),
    )
    whole = problems(recorded)
    assert ("log_truncated", 27) in whole  # the facts index still points there
    # The kept checkpoint names the cut; the whole log is then checked, as plain verify does,
    # and the head given is the log's as it is (SPEC §5: a hex head, ok or not).
    assert problems(recorded, since=kept) == [("log_truncated", 14), *whole]
    result = seals.verify_ledger(recorded, since=kept)
    assert result.head == seals.verify_ledger(recorded).head
    assert len(result.head) == 64 and int(result.head, 16) >= 0


def test_a_replaced_checkpoint_is_caught(recorded: Any) -> None:
    first = seals.checkpoint_by_size(recorded, 13)
    forger = Ed25519PrivateKey.generate()
    forged = integrity.sign_checkpoint(forger, 13, bytes.fromhex(first["root_hash"]), first["time"])
    tamper(
        recorded,
        (
            "UPDATE ledger_checkpoints SET signature = :s WHERE tree_size = 13",
            {"s": forged.signature},
        ),
    )
    assert problems(recorded) == [("checkpoint_signature", 13)]


def test_an_event_rewritten_with_its_sealed_leaf_still_fails_the_signed_root(
    recorded: Any,
) -> None:
    row = event_row(recorded, 2)
    state = bytearray(row.state)
    state[5] ^= 0x01
    originator = row.originator_id
    originator = originator.bytes if hasattr(originator, "bytes") else bytes.fromhex(originator)
    leaf = integrity.event_leaf_hash(
        2, originator, row.originator_version, row.topic.encode(), bytes(state)
    )
    tamper(
        recorded,
        ("UPDATE ledger_events SET state = :s WHERE notification_id = 2", {"s": bytes(state)}),
        ("UPDATE ledger_tree_nodes SET hash = :h WHERE level = 0 AND idx = 1", {"h": leaf}),
    )
    assert problems(recorded) == [("checkpoint_mismatch", 13)]


def test_verify_since_a_kept_checkpoint_catches_a_rewrite_after_it(recorded: Any) -> None:
    kept = seals.checkpoint_by_size(recorded, 13)
    state = bytearray(event_row(recorded, 20).state)
    state[3] ^= 0x80
    tamper(
        recorded,
        ("UPDATE ledger_events SET state = :s WHERE notification_id = 20", {"s": bytes(state)}),
    )
    assert problems(recorded, since=kept) == [("checkpoint_mismatch", 27), ("event_altered", 20)]


def test_growth_since_a_kept_checkpoint_verifies(ledger: Any, feed_small: Path) -> None:
    lines = feed_small.read_bytes().splitlines()
    ledger.import_lines(lines[:13])
    kept = seals.latest_checkpoint(ledger)
    ledger.import_lines(lines[13:])
    assert problems(ledger, since=kept) == []
    stranger = integrity.sign_checkpoint(
        Ed25519PrivateKey.generate(), 13, bytes.fromhex(kept["root_hash"]), kept["time"]
    )
    assert problems(ledger, since=stranger.to_json()) == [("checkpoint_signature", 13)]


def index_kinds(app: Any) -> list[tuple[str, int | None]]:
    found = problems(app)
    assert found == problems(app, workers=2, block_level=2)  # the hashing processes agree
    return found


def test_swapped_customer_references_in_the_index_are_caught(recorded: Any) -> None:
    # `customer trail C100` would answer with C101's disclosures; the events are untouched.
    rows = {ref: position for ref, position in _index_rows(recorded, "customer_ref")}
    tamper(
        recorded,
        ("UPDATE ledger_customers SET customer_ref = 'swap' WHERE customer_ref = 'C100'", {}),
        ("UPDATE ledger_customers SET customer_ref = 'C100' WHERE customer_ref = 'C101'", {}),
        ("UPDATE ledger_customers SET customer_ref = 'C101' WHERE customer_ref = 'swap'", {}),
    )
    assert sorted(index_kinds(recorded)) == [
        ("index_altered", rows["C100"]),
        ("index_altered", rows["C101"]),
    ]
    done = run(recorded.database.url, "verify", "--json")
    assert done.exit_code == 4
    messages = [p["message"] for p in json.loads(done.stdout)["problems"]]
    assert any("customer 'C101'" in m and "not that customer's registration" in m for m in messages)
    # Meanwhile the queries refuse to answer from the wrong stream.
    trail = run(recorded.database.url, "customer", "trail", "C100", "--json")
    assert (trail.exit_code, trail.stdout) == (4, "")
    assert "the customer index does not lead to the registration of customer 'C100'" in (
        trail.stderr
    )


def test_a_customer_missing_from_the_index_is_caught(recorded: Any) -> None:
    position = dict(_index_rows(recorded, "customer_ref"))["C101"]
    tamper(recorded, ("DELETE FROM ledger_customers WHERE customer_ref = 'C101'", {}))
    assert index_kinds(recorded) == [("index_altered", position)]
    # Support staff asking about C101 are not told "not in the ledger": the index is altered
    # (`customer show` reads the stream by the customer's id, and answers from it)
    for command in (("customer", "trail"), ("consent", "show")):
        answer = run(recorded.database.url, *command, "C101", "--json")
        assert (answer.exit_code, answer.stdout) == (4, ""), command
        assert "the customer index has no row for customer 'C101'" in answer.stderr
    answer = run(recorded.database.url, "customer", "trail", "C101", "--known-at", "2000-01-01")
    assert answer.exit_code == 4 and "has no row for customer 'C101'" in answer.stderr
    # A customer never recorded is still an error in use
    unknown = run(recorded.database.url, "customer", "trail", "C999", "--json")
    assert unknown.exit_code == 1 and "customer 'C999' is not in the ledger" in unknown.stderr


def test_an_order_moved_to_another_customer_in_the_index_is_caught(recorded: Any) -> None:
    with recorded.database.engine.connect() as conn:
        order, owner = conn.execute(
            sa.text("SELECT order_ref, customer_id FROM ledger_orders")
        ).first()
        other = conn.execute(
            sa.text("SELECT customer_id FROM ledger_customers WHERE customer_id != :c"),
            {"c": owner},
        ).scalar()
    tamper(
        recorded,
        (
            "UPDATE ledger_orders SET customer_id = :c WHERE order_ref = :o",
            {"c": other, "o": order},
        ),
    )
    [(kind, _position)] = index_kinds(recorded)
    assert kind == "index_altered"
    tamper(recorded, ("DELETE FROM ledger_orders WHERE order_ref = :o", {"o": order}))
    [(kind, _position)] = index_kinds(recorded)
    assert kind == "index_altered"


@pytest.mark.parametrize("table", ["ledger_orders", "ledger_customers"])
def test_an_index_rows_stream_id_rewritten_as_a_blob_is_caught(recorded: Any, table: str) -> None:
    """SQLite keeps a blob in a text column: a stream id rewritten as a blob of its own 32
    digits reads as the same bytes under `CAST(... AS BLOB)`, yet no lookup by the id finds
    it, and the ledger's own reads of the row fail (an import naming the order or customer
    stopped with an unexpected TypeError, whose message sends the user to `verify`)."""
    if not recorded.database.is_sqlite:
        pytest.skip("SQLite keeps any type in any column")
    tamper(recorded, (f"UPDATE {table} SET customer_id = CAST(customer_id AS BLOB)", {}))
    assert "index_altered" in {kind for kind, _ in index_kinds(recorded)}


@pytest.mark.parametrize("column", ["originator_id", "topic"])
def test_an_events_stream_id_or_topic_rewritten_as_a_blob_is_caught(
    recorded: Any, column: str
) -> None:
    """SQLite keeps a blob in a text column: an event's stream id (or topic) rewritten as a
    blob of its own text cast to the same bytes, so the tree verified, while every read by
    the stream missed the event (`customer trail` said an event of the stream is missing,
    and sent the user to `verify`, which said nothing). It is an altered event."""
    if not recorded.database.is_sqlite:
        pytest.skip("SQLite keeps any type in any column")
    position = _fact_row(recorded, "s-0011")  # C100's disclosure to Offspring
    tamper(
        recorded,
        (
            f"UPDATE ledger_events SET {column} = CAST({column} AS BLOB) "
            "WHERE notification_id = :p",
            {"p": position},
        ),
    )
    found = problems(recorded)
    assert ("event_altered", position) in found
    assert found == problems(recorded, workers=2, block_level=2)  # the workers agree


def _fact_row(app: Any, fact_id: str) -> int:
    with app.database.engine.connect() as conn:
        query = "SELECT notification_id FROM ledger_facts WHERE fact_id = :f"
        return int(conn.execute(sa.text(query), {"f": fact_id}).scalar_one())


def test_a_fact_deleted_from_the_fact_index_is_caught_before_it_is_recorded_twice(
    recorded: Any, feed_small: Path
) -> None:
    """The fact index is what keeps a line from being recorded twice (SPEC §2): a row
    deleted from it would let the same line in again, sealed like a new fact."""
    fact_id = json.loads(feed_small.read_bytes().splitlines()[8])["id"]
    position = _fact_row(recorded, fact_id)
    tamper(recorded, ("DELETE FROM ledger_facts WHERE fact_id = :f", {"f": fact_id}))
    assert index_kinds(recorded) == [("index_altered", position)]
    # An export's own check leaves the fact index out (it reads the events by stream).
    assert problems(recorded, fact_index=False) == []
    assert problems(recorded, fact_index=False, workers=2, block_level=2) == []
    done = run(recorded.database.url, "verify", "--json")
    assert done.exit_code == 4
    [problem] = json.loads(done.stdout)["problems"]
    assert problem["message"] == (
        f"fact {fact_id!r}, recorded at event {position}, has no row in the fact index: "
        "the same fact could be recorded again"
    )


def test_a_fact_index_row_moved_or_added_is_caught(recorded: Any, feed_small: Path) -> None:
    lines = feed_small.read_bytes().splitlines()
    first, second = (json.loads(lines[i])["id"] for i in (1, 2))
    moved_to = _fact_row(recorded, second)
    tamper(
        recorded,
        (
            "UPDATE ledger_facts SET notification_id = :n WHERE fact_id = :f",
            {"n": moved_to, "f": first},
        ),
    )
    found = index_kinds(recorded)
    assert found == [("index_altered", _position_of(recorded, first))]
    tamper(
        recorded,
        (
            "UPDATE ledger_facts SET notification_id = :n WHERE fact_id = :f",
            {"n": _position_of(recorded, first), "f": first},
        ),
        (
            "INSERT INTO ledger_facts (fact_id, notification_id, fact_type, originator_id) "
            "SELECT 'made-up', notification_id, fact_type, originator_id FROM ledger_facts "
            "WHERE fact_id = :f",
            {"f": second},
        ),
    )
    assert index_kinds(recorded) == [("index_altered", moved_to)]


def test_two_fact_ids_swapped_in_the_fact_index_are_caught_every_time(recorded: Any) -> None:
    """Each row moved onto the other's event: a digest summing a hash of each (position,
    fact id) tuple missed that about half the time (a tuple's hash is no keyed function of
    its items together)."""
    first, second = "s-0012", "s-0013"
    tamper(
        recorded,
        ("UPDATE ledger_facts SET fact_id = 'swapping' WHERE fact_id = :f", {"f": first}),
        ("UPDATE ledger_facts SET fact_id = :a WHERE fact_id = :b", {"a": first, "b": second}),
        ("UPDATE ledger_facts SET fact_id = :b WHERE fact_id = 'swapping'", {"b": second}),
    )
    expected = sorted(("index_altered", _position_of(recorded, f)) for f in (first, second))
    assert sorted(index_kinds(recorded)) == expected


@pytest.mark.parametrize(
    ("column", "value"), [("fact_type", "'order.placed'"), ("originator_id", "another")]
)
def test_a_fact_index_row_of_another_type_or_stream_is_caught(
    recorded: Any, column: str, value: str
) -> None:
    """The type drives the rules (the transfer initiations are found by it), the stream
    which customer's the fact is."""
    fact_id = "s-0022"  # the transfer initiation
    if value == "another":  # another stream: C101's
        value = "(SELECT customer_id FROM ledger_customers WHERE customer_ref = 'C101')"
    tamper(
        recorded, (f"UPDATE ledger_facts SET {column} = {value} WHERE fact_id = :f", {"f": fact_id})
    )
    assert index_kinds(recorded) == [("index_altered", _position_of(recorded, fact_id))]


@pytest.mark.parametrize(
    "how",
    [
        "UPDATE ledger_data_keys SET wrapped_key = NULL WHERE customer_id = ({who})",
        "DELETE FROM ledger_data_keys WHERE customer_id = ({who})",
    ],
)
def test_an_erasure_faked_on_the_key_rows_is_caught(recorded: Any, how: str) -> None:
    """C100 would read as erased (and their data be lost for good) with no erasure recorded;
    C101's key, destroyed by the erasure the feed records, is as it should be."""
    who = "SELECT customer_id FROM ledger_customers WHERE customer_ref = 'C100'"
    assert problems(recorded) == []
    tamper(recorded, (how.format(who=who), {}))
    result = seals.verify_ledger(recorded)
    assert [(p["kind"], p["message"].split(" has ")[0]) for p in result.problems] == [
        ("key_altered", "customer 'C100'")
    ]
    # What support staff would read: not "ERASED" (C100 never asked), but an integrity
    # failure naming verify; C101, erased, reads as erased.
    url = recorded.database.url
    for command in (("customer", "show", "C100"), ("customer", "show", "C100", "--json")):
        done = run(url, *command)
        assert done.exit_code == 4, (command, done.stdout, done.stderr)
        assert done.stdout == ""  # (not "ERASED", nor a document saying so)
        assert "no erasure of theirs is recorded" in done.stderr.splitlines()[-1]
    erased = run(url, "customer", "show", "C101")
    assert erased.exit_code == 0 and "personal data: ERASED" in erased.stdout


def test_a_data_key_rewritten_as_text_is_a_key_altered_not_an_unexpected_error(
    recorded: Any,
) -> None:
    """SQLite keeps text in the blob column: reading C100's key failed in the cipher with
    "unexpected TypeError", exit 1; it is a key row changed outside consent-ledger (exit 4)."""
    if not recorded.database.is_sqlite:
        pytest.skip("PostgreSQL's bytea column refuses text")
    who = "SELECT customer_id FROM ledger_customers WHERE customer_ref = 'C100'"
    tamper(
        recorded,
        (f"UPDATE ledger_data_keys SET wrapped_key = 'text' WHERE customer_id = ({who})", {}),
    )
    done = run(recorded.database.url, "customer", "show", "C100")
    assert done.exit_code == 4, (done.stdout, done.stderr)
    assert "the key row was changed outside consent-ledger" in done.stderr.splitlines()[-1]


def test_an_erased_customers_key_put_back_is_caught(recorded: Any) -> None:
    """C101's key (the feed erases C101) restored as C100's wrapped key is, as from a backup:
    their data would read again (SPEC §4)."""
    who = "SELECT customer_id FROM ledger_customers WHERE customer_ref = '{}'"
    tamper(
        recorded,
        (
            f"UPDATE ledger_data_keys SET wrapped_key = (SELECT wrapped_key FROM "
            f"ledger_data_keys WHERE customer_id = ({who.format('C100')})) "
            f"WHERE customer_id = ({who.format('C101')})",
            {},
        ),
    )
    result = seals.verify_ledger(recorded)
    assert [(p["kind"], p["message"].split(" was ")[0]) for p in result.problems] == [
        ("key_altered", "customer 'C101'")
    ]


def _position_of(app: Any, fact_id: str) -> int:
    """The event that recorded `fact_id`, found from the events themselves."""
    with app.database.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT notification_id, state FROM ledger_events")).all()
    [position] = [int(n) for n, state in rows if json.loads(bytes(state)).get("fact_id") == fact_id]
    return position


def _index_rows(app: Any, column: str) -> list[tuple[str, int]]:
    with app.database.engine.connect() as conn:
        query = f"SELECT {column}, notification_id FROM ledger_customers"
        return [(row[0], int(row[1])) for row in conn.execute(sa.text(query))]


def test_a_read_of_a_row_rewritten_as_text_fails_in_one_line_naming_verify(
    recorded: Any,
) -> None:
    # Not a traceback, and not a driver's message (it could quote the data it failed on):
    # one line saying the database was changed, exit 4, on each read path.
    if not recorded.database.is_sqlite:
        pytest.skip("PostgreSQL's bytea column refuses text")
    tamper(recorded, ("UPDATE ledger_events SET state = CAST(state AS TEXT)", {}))
    for command in (("customer", "trail", "C100"), ("customer", "show", "C100")):
        done = run(recorded.database.url, *command, "--json")
        assert (done.exit_code, done.stdout) == (4, ""), (command, done.stderr)
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1
        assert errors[0].startswith("Error: a stored event cannot be read as the ledger wrote it")
        assert "'consent-ledger verify' names what changed" in errors[0]


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ledger_checkpoints SET signature = 'abc' WHERE tree_size = 13",
        "UPDATE ledger_checkpoints SET tree_size = 'x' WHERE tree_size = 13",
        "UPDATE ledger_facts SET notification_id = 'abc' WHERE fact_id = 's-0002'",
        "UPDATE ledger_customers SET notification_id = 'x' WHERE customer_ref = 'C100'",
    ],
)
def test_a_row_beside_the_events_of_another_type_fails_verify_with_exit_4(
    recorded: Any, sql: str
) -> None:
    """SQLite keeps any type in any column: `verify` meeting such a row says the database was
    changed (exit 4), not 'unexpected TypeError' (exit 1)."""
    if not recorded.database.is_sqlite:
        pytest.skip("PostgreSQL's columns refuse values of another type")
    tamper(recorded, (sql, {}))
    done = run(str(recorded.database.url), "verify", "--json")
    assert done.exit_code == 4, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("Error: verify cannot read a row of the ledger's tables")
    # `--json` still gives the one document a script reads: not ok, and why
    problem = {"kind": "row_unreadable", "message": errors[0].removeprefix("Error: ")}
    assert json.loads(done.stdout) == {"ok": False, "facts": 0, "head": None, "problems": [problem]}


def _rewritten_state(app: Any, position: int, how: str) -> bytes:
    state = orjson.loads(bytes(event_row(app, position).state))
    if how == "not json":
        return b"not json"
    if how == "not an object":
        return b"[]"
    if how == "a time without its offset":  # (the ledger writes every time with one)
        return orjson.dumps({**state, "at": state["at"][:19]})
    assert how == "a bad time"
    return orjson.dumps({**state, "at": "garbage"})


@pytest.mark.parametrize(
    "how", ["not json", "not an object", "a bad time", "a time without its offset"]
)
@pytest.mark.parametrize("workers", [False, True])
def test_an_event_state_the_ledger_cannot_have_written_fails_reads_with_exit_4(
    recorded: Any, monkeypatch: pytest.MonkeyPatch, how: str, workers: bool
) -> None:
    """Queries, the read models' rebuild (in this process, or in worker processes) and the
    audit meet an event the ledger cannot have written: one line saying the database was
    changed outside it (exit 4), on each read path; never 'unexpected' (exit 1)."""
    if workers:
        if not recorded.database.is_sqlite:
            pytest.skip("worker processes fold SQLite passes only")
        from projections import parallel, runner

        monkeypatch.setattr(parallel, "MIN_EVENTS", 0)
        monkeypatch.setattr(runner, "worker_count", lambda: 2)
    position = _position_of(recorded, "s-0003")
    rewrite = "UPDATE ledger_events SET state = :s WHERE notification_id = :n"
    tamper(recorded, (rewrite, {"s": _rewritten_state(recorded, position, how), "n": position}))
    url = recorded.database.url
    commands: list[tuple[str, ...]] = [("projections", "rebuild"), ("audit", "check")]
    if not workers:
        commands += [
            ("customer", "trail", "C100"),  # the driver's read path
            ("consent", "show", "C100"),
            ("customer", "show", "C100"),  # the domain model's (eventsourcing's mapper)
        ]
    for command in commands:
        done = run(url, *command)
        lines = [line for line in done.stderr.splitlines() if not line.startswith("{")]
        assert done.exit_code == 4, (command, done.stderr)
        assert len(lines) == 1, (command, done.stderr)  # nothing else: no stray traceback
        assert lines[0].startswith("Error: a stored event"), (command, lines)
        assert (
            "cannot be read as the ledger wrote it: the database was changed outside " in (lines[0])
        )
        assert "'consent-ledger verify' names what changed" in lines[0], (command, lines)


# An event's field given a value of another JSON type than the ledger writes there, the state
# still JSON that decodes: (the fact whose event is altered, or "named": the acquirer's naming,
# the field, its new value, the commands that fail on it). Each fails as the ledger failing to
# read an event it cannot have written (exit 4, naming `verify`), not as "unexpected" (exit 1).
# (A command that does not use the field, or only passes it on, answers: the readers take the
# fields unchecked, as they take any altered value; `verify` is what finds alterations.)
_TRAIL = ("customer", "trail", "C100")
_CONSENTS = ("consent", "show", "C100")
_SHOW = ("customer", "show", "C100")
_ACCESS = ("customer", "access-export", "C100", "--out")
_AUDIT = ("audit", "check")
_AUDIT_KNOWN = ("audit", "check", "--known-at")  # (then now: a direct fold of the events)
_REBUILD = ("projections", "rebuild")
_EXPORT = ("export", "due-diligence", "--acquirer", "Northwind Retail Group", "--out")
_WRONG_TYPES: dict[str, tuple[str, str, Any, list[tuple[str, ...]]]] = {
    "a disclosure's categories as text": (  # (listed as its letters, before)
        "s-0011",
        "categories",
        "name,postal_address",
        [_TRAIL, _ACCESS, _AUDIT, _REBUILD, _EXPORT],
    ),
    "a consent's purpose as a number": (
        "s-0002",
        "purpose",
        7,
        [_CONSENTS, _SHOW, _ACCESS, _REBUILD, _EXPORT],
    ),
    "a disclosure's fact id as null": ("s-0006", "fact_id", None, [_REBUILD, _EXPORT]),
    "an order's total as a number": (  # (read as an inexact Decimal, before)
        "s-0004",
        "total",
        89.99,
        [_TRAIL, _CONSENTS, _SHOW, _ACCESS, _AUDIT_KNOWN, _EXPORT],
    ),
    "a registration's sealed data as a number": ("s-0001", "sealed", 12345, [_SHOW, _ACCESS]),
    "an erasure's fact id as a list": (
        "s-0025",
        "fact_id",
        ["s-0025"],
        [_AUDIT, _AUDIT_KNOWN, _EXPORT],
    ),
    "an acquirer's name as a list": (
        "named",
        "name",
        ["Northwind"],
        [_AUDIT, _AUDIT_KNOWN, _REBUILD, _EXPORT],
    ),
}
_PERSONAL = ("Ada", "Lovelace", "ada@example.org", "Analytical", "7700", "Alan", "Turing")


def _named_position(app: Any) -> int:
    """The event that named the acquirer (it records no fact: found by its topic)."""
    with app.database.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT notification_id FROM ledger_events WHERE topic = :t"),
                {"t": "ledger.domainmodel:Acquirer.Named"},
            ).scalar_one()
        )


@pytest.mark.parametrize("case", sorted(_WRONG_TYPES))
@pytest.mark.parametrize("workers", [False, True])
def test_a_field_of_another_type_fails_each_read_with_exit_4_naming_verify(
    recorded: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str, workers: bool
) -> None:
    """A field of an event's stored state altered to another JSON type (a list where the
    ledger writes text, a number, null, ...): every command that fails on it says, in one
    line with no personal data, that an event (named by stream and version) cannot be read
    as the ledger wrote it and that `verify` names what changed (exit 4). The read models'
    rebuild and the audit too, in this process or in worker processes."""
    fact, field, value, commands = _WRONG_TYPES[case]
    if workers:
        if not recorded.database.is_sqlite:
            pytest.skip("worker processes fold SQLite passes only")
        from projections import parallel, runner

        monkeypatch.setattr(parallel, "MIN_EVENTS", 0)
        monkeypatch.setattr(runner, "worker_count", lambda: 2)
        commands = [c for c in commands if c in (_AUDIT, _REBUILD)]
        if not commands:
            pytest.skip("no command of this case folds in worker processes")
    position = _named_position(recorded) if fact == "named" else _position_of(recorded, fact)
    state = orjson.loads(bytes(event_row(recorded, position).state))
    assert field in state
    rewrite = "UPDATE ledger_events SET state = :s WHERE notification_id = :n"
    tamper(recorded, (rewrite, {"s": orjson.dumps({**state, field: value}), "n": position}))
    url = recorded.database.url.render_as_string(hide_password=False)
    for command in commands:
        arguments = command
        if command is _EXPORT:
            arguments = (*command, str(tmp_path / "dd"))
        elif command is _ACCESS:
            arguments = (*command, str(tmp_path / "access.json"))
        elif command is _AUDIT_KNOWN:
            arguments = (*command, datetime.now(UTC).isoformat())
        done = run(url, *arguments)
        lines = [line for line in done.stderr.splitlines() if not line.startswith("{")]
        assert (done.exit_code, done.stdout) == (4, ""), (command, done.stderr)
        assert len(lines) == 1, (command, done.stderr)  # one line: no traceback
        if command is _EXPORT:  # (it verifies the ledger before it reads an event)
            assert lines[0].startswith("Error: the ledger fails verification"), (command, lines)
            assert "run 'consent-ledger verify'" in lines[0], (command, lines)
        else:
            assert lines[0].startswith("Error: a stored event"), (command, lines)
            assert "cannot be read as the ledger wrote it: the database was changed " in lines[0]
            assert "'consent-ledger verify' names what changed" in lines[0], (command, lines)
        assert not any(word in done.stderr for word in _PERSONAL), (command, done.stderr)
        if isinstance(value, str | list):
            assert str(value) not in done.stderr, (command, done.stderr)


@pytest.mark.parametrize("where", ["query", "rebuild"])
def test_a_bug_on_an_untouched_ledger_is_still_unexpected(
    recorded: Any, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The events are checked only after a command failed, and a failure they do not explain
    (every event as the ledger wrote it) is reported as the bug it is (exit 1)."""
    from ledger import views
    from projections.current_consent import CurrentConsent

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    if where == "query":
        monkeypatch.setattr(views, "consent_rows", broken)
        command: tuple[str, ...] = _CONSENTS
    else:
        monkeypatch.setattr(CurrentConsent, "replace", broken)
        command = _REBUILD
    done = run(recorded.database.url.render_as_string(hide_password=False), *command)
    assert done.exit_code == 1, done.stderr
    assert done.stderr.startswith("Error: unexpected KeyError at "), done.stderr


# -- the database refuses ----------------------------------------------------------------------


def test_the_database_refuses_to_change_history(recorded: Any) -> None:
    engine = recorded.database.engine
    for table in APPEND_ONLY:
        with engine.connect() as conn:
            first = next(iter(conn.execute(sa.text(f"SELECT * FROM {table}")).keys()))
        for operation, sql in (
            ("UPDATE", f"UPDATE {table} SET {first} = {first}"),
            ("DELETE", f"DELETE FROM {table}"),
        ):
            with pytest.raises(sa.exc.DBAPIError) as caught, engine.begin() as conn:
                conn.exec_driver_sql(sql)
            assert f"{table} is append-only: {operation} is refused" in str(caught.value)
    if not recorded.database.is_sqlite:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE ledger_events CASCADE")
    assert seals.verify_ledger(recorded).ok


def test_data_keys_stay_updatable_and_erasure_keeps_the_ledger_verifiable(
    recorded: Any,
) -> None:
    before = seals.verify_ledger(recorded)
    recorded.record_fact({"type": "subject.erased", "customer": "C100"})
    with recorded.database.engine.connect() as conn:
        destroyed = conn.execute(
            sa.text("SELECT count(*) FROM ledger_data_keys WHERE wrapped_key IS NULL")
        ).scalar()
    assert destroyed == 2  # C101 in the feed, C100 now
    after = seals.verify_ledger(recorded)
    assert after.ok and after.facts == before.facts + 1
    proof = seals.prove_consistency(recorded, seals.checkpoint_by_size(recorded, 27))
    assert integrity.verify_proof(proof, seals.load_public_key(recorded.database)) == []


# -- the commands ------------------------------------------------------------------------------


def run(url: str, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--log-level", "error", "--db", url, *args])


def test_verify_exits_4_with_the_json_document_on_stdout(recorded: Any) -> None:
    url = recorded.database.url.render_as_string(hide_password=False)
    ok = run(url, "verify", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True
    tamper(recorded, ("DELETE FROM ledger_events WHERE notification_id = 27", {}))
    failed = run(url, "verify", "--json")
    assert failed.exit_code == 4
    document = json.loads(failed.stdout)
    assert document["ok"] is False and document["facts"] == 26
    assert document["problems"][0]["kind"] == "log_truncated"
    assert set(document) == {"ok", "facts", "head", "problems"}


def test_prove_and_verify_proof_offline(recorded: Any, tmp_path: Path) -> None:
    url = recorded.database.url.render_as_string(hide_password=False)
    proof = run(url, "prove", "s-0007", "--json")
    assert proof.exit_code == 0, proof.output
    (tmp_path / "proof.json").write_text(proof.stdout)
    public = seals.public_key_path(recorded.database)
    checked = CliRunner().invoke(
        cli, ["verify-proof", str(tmp_path / "proof.json"), "--public-key", str(public), "--json"]
    )
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["ok"] is True
    document = json.loads(proof.stdout)
    document["leaf_index"] += 1
    bad = CliRunner().invoke(
        cli, ["verify-proof", json.dumps(document), "--public-key", str(public), "--json"]
    )
    assert bad.exit_code == 4
    assert json.loads(bad.stdout)["ok"] is False
    kept = tmp_path / "kept.json"
    kept.write_text(json.dumps(seals.checkpoint_by_size(recorded, 13)))
    consistency = run(url, "prove", "--consistency", str(kept), "latest", "--json")
    assert consistency.exit_code == 0, consistency.output
    (tmp_path / "consistency.json").write_text(consistency.stdout)
    offline = CliRunner().invoke(
        cli, ["verify-proof", str(tmp_path / "consistency.json"), "--public-key", str(public)]
    )
    assert offline.exit_code == 0, offline.output
    assert offline.stdout.startswith("OK: consistency proof holds")
    assert "Warning" not in offline.stderr
    # Without the auditor's own key: the proof's key is used, and that is said plainly.
    unpinned = CliRunner().invoke(cli, ["verify-proof", str(tmp_path / "proof.json"), "--json"])
    assert unpinned.exit_code == 0
    assert json.loads(unpinned.stdout)["key_pinned"] is False
    assert "Warning: no --public-key: checked against the key inside the proof" in (unpinned.stderr)


def test_verification_in_parallel_blocks_agrees_with_one_pass(recorded: Any) -> None:
    # Blocks of 4 events, so the small feed's 27 events take the parallel path on SQLite.
    parallel = seals.verify_ledger(recorded, workers=2, block_level=2)
    assert parallel.to_json() == seals.verify_ledger(recorded, workers=1).to_json()
    assert parallel.ok
    tamper(recorded, ("DELETE FROM ledger_events WHERE notification_id = 9", {}))
    assert seals.verify_ledger(recorded, workers=2, block_level=2).problems == (
        seals.verify_ledger(recorded, workers=1).problems
    )


def test_a_failing_verification_worker_is_raised_in_the_parent(
    recorded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pool is closed and joined, not left with tasks in flight (which could hang).
    real = seals._hash_block_of

    def failing(start: int, end: int, stops: list[int]) -> Any:
        if start == 8:
            raise ValueError("the disk is on fire")
        return real(start, end, stops)

    with monkeypatch.context() as patched:
        patched.setattr(seals, "_hash_block_of", failing)  # the workers fork with it
        with pytest.raises(ValueError, match="the disk is on fire"):
            seals.verify_ledger(recorded, workers=2, block_level=2)
    assert seals.verify_ledger(recorded, workers=2, block_level=2).ok


def test_events_recorded_before_sealing_existed_are_sealed_by_upgrade(
    ledger: Any, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger.config import upgrade
    from ledger.persistence import recorder

    lines = feed_small.read_bytes().splitlines()
    with monkeypatch.context() as patched:  # as a ledger made before revision 0003 was
        patched.setattr(recorder, "seal_inserted", lambda tx, rows: None)
        ledger.import_lines(lines[:13])
    assert problems(ledger) == [("event_inserted", 1)]
    upgrade(ledger.database)
    assert problems(ledger) == []
    with monkeypatch.context() as patched:
        patched.setattr(recorder, "seal_inserted", lambda tx, rows: None)
        ledger.import_lines(lines[13:20])
    ledger.import_lines(lines[20:])  # the next sealed write seals what came before it
    assert problems(ledger) == []
    assert seals.verify_ledger(ledger).events == 27


def test_queries_of_a_stream_with_an_event_deleted_exit_4_naming_verify(recorded: Any) -> None:
    """A deleted event would drop out of `customer trail` unseen; the stream's versions
    must run from 1 without a gap, on the fast read path and through the domain model."""
    with recorded.database.engine.connect() as conn:
        query = (
            "SELECT e.notification_id FROM ledger_events e JOIN ledger_customers c "
            "ON e.originator_id = c.customer_id WHERE c.customer_ref = 'C100' "
            "AND e.originator_version = 3"
        )
        position = conn.execute(sa.text(query)).scalar_one()
    tamper(recorded, ("DELETE FROM ledger_events WHERE notification_id = :n", {"n": position}))
    url = recorded.database.url
    for command in (
        ("customer", "trail", "C100"),
        ("consent", "show", "C100"),
        ("customer", "show", "C100"),
    ):
        done = run(url, *command)
        assert done.exit_code == 4, (command, done.stderr)
        assert "consent-ledger verify" in done.stderr.splitlines()[-1], command


@pytest.mark.parametrize(
    "topic",
    [
        "this:s",  # importing `this` prints the Zen of Python: a module with side effects
        "ledger.domainmodel:Customer.Nothing",
        "ledger.domainmodel:Customer.__init__",
        "ledger.domainmodelx:Customer.Registered",
    ],
)
def test_a_topic_naming_no_event_class_of_the_ledger_is_unreadable_and_imports_nothing(
    recorded: Any, topic: str, tmp_path: Path
) -> None:
    """The library's `resolve_topic` imports any module a topic names: reading a ledger whose
    topic was rewritten to name another module would run that module. Only the ledger's own
    event classes are resolved; the rest is an unreadable event (exit 4)."""
    import sys

    sys.modules.pop("this", None)
    tamper(
        recorded, ("UPDATE ledger_events SET topic = :t WHERE notification_id = 5", {"t": topic})
    )
    url = recorded.database.url
    for command in (("audit", "check"), ("audit", "report", "--out", str(tmp_path / "r.html"))):
        done = run(url, *command)
        assert done.exit_code == 4, (command, done.stdout, done.stderr)
        assert "cannot be read as the ledger wrote it" in done.stderr.splitlines()[-1]
        assert "Beautiful is better than ugly" not in done.stdout + done.stderr
    stream = seals.verify_ledger(recorded)  # verify names the change, as ever
    assert "event_altered" in {p["kind"] for p in stream.problems}
    assert "this" not in sys.modules


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
@pytest.mark.parametrize("command", [["verify", "--json"], ["audit", "check"]])
def test_a_damaged_sqlite_file_is_an_integrity_failure_in_one_line(
    tmp_path: Path, feed_small: Path, damage: str, command: list[str]
) -> None:
    """SQLite's own "database disk image is malformed" read as "cannot connect" (exit 1) or
    "unexpected DatabaseError ... a bug": the ledger's file is damaged, exit 4."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert CliRunner().invoke(cli, ["--db", url, "import", str(feed_small)]).exit_code == 0
    path = tmp_path / "ledger.db"
    size = path.stat().st_size
    if damage == "truncated":
        with path.open("r+b") as handle:
            handle.truncate(size // 2)
    else:  # the pages between a quarter and three quarters of the file
        with path.open("r+b") as handle:
            handle.seek(size // 4)
            handle.write(b"\xa5" * (size // 2))
    result = CliRunner().invoke(cli, ["--db", url, *command], catch_exceptions=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert result.exit_code == 4, result.stderr
    assert errors == [
        f"Error: the database file of {url} is damaged (SQLite: database disk image is "
        "malformed), so the ledger cannot be read, nor verified: restore it from a backup (a "
        "disk fault, a copy taken while it was written, or its -wal file removed while in "
        "use can do this)"
    ]
    if command[0] == "verify":  # `--json`: the document says not ok, and why
        problem = {"kind": "database_damaged", "message": errors[0].removeprefix("Error: ")}
        document = {"ok": False, "facts": 0, "head": None, "problems": [problem]}
        assert json.loads(result.stdout) == document
    else:
        assert result.stdout == ""


@pytest.mark.parametrize("value", ["abc", "-5", "1e3"])
def test_a_meta_position_the_ledger_never_writes_is_an_integrity_failure(
    recorded: Any, value: str
) -> None:
    """`stream_ordered_until` (how far an old import stored its lines out of order) is read by
    every judgement of the rules: a value that is not a position failed them all with
    "unexpected ValueError", exit 1."""
    tamper(
        recorded,
        ("DELETE FROM ledger_meta WHERE name = 'stream_ordered_until'", {}),
        (
            "INSERT INTO ledger_meta (name, value) VALUES ('stream_ordered_until', :v)",
            {"v": value},
        ),
    )
    done = run(recorded.database.url, "audit", "check")
    assert done.exit_code == 4, (done.stdout, done.stderr)
    assert (
        "meta row stream_ordered_until holds a value the ledger never writes"
        in (done.stderr.splitlines()[-1])
    )
