"""`ledger.views` tells events apart the same way for the domain's events and stored facts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from ledger import views
from ledger.domainmodel import Acquirer, Customer, DisclosureEvent
from ledger.persistence.stored_state import decode_state


def event_classes() -> list[type[Aggregate.Event]]:
    return [
        value
        for aggregate in (Customer, Acquirer)
        for value in vars(aggregate).values()
        if isinstance(value, type) and issubclass(value, Aggregate.Event)
    ]


EVENT_CLASSES = event_classes()


@pytest.mark.parametrize("event_class", EVENT_CLASSES, ids=lambda c: c.__qualname__)
def test_a_disclosure_is_an_event_that_records_a_recipient_kind(
    event_class: type[Aggregate.Event],
) -> None:
    fields = set(getattr(event_class, "__dataclass_fields__", {}))
    assert ("recipient_kind" in fields) == issubclass(event_class, DisclosureEvent)


@pytest.mark.parametrize("event_class", EVENT_CLASSES, ids=lambda c: c.__qualname__)
def test_stored_topics_name_the_class_as_views_do(event_class: type[Aggregate.Event]) -> None:
    assert get_topic(event_class) == "ledger.domainmodel:" + event_class.__qualname__


@pytest.mark.parametrize("event_class", EVENT_CLASSES, ids=lambda c: c.__qualname__)
def test_stored_facts_need_no_upcasting(event_class: type[Aggregate.Event]) -> None:
    # Stored facts are read without the domain model, so without its upcasters. A class
    # that gets a class_version must teach `views.stored_facts` (or `LedgerContext`) to
    # read its older events. The exports are read by `views.export_rows`, which reads each
    # of their versions itself (the test below): a version 3 must be taught to it.
    if event_class is Acquirer.DueDiligenceExported:
        assert event_class.class_version == 2
        return
    assert getattr(event_class, "class_version", 1) == 1


def _export_state(version: int, **changes: Any) -> bytes:
    state: dict[str, Any] = {
        "timestamp": "2026-01-02T00:00:00+00:00",
        "fact_id": "export-7f8d66f1-0084-4899-b80e-655984be6627",
        "at": "2026-01-02T00:00:00+00:00",
        "sealed": None,
        "recipient": "Northwind",
        "recipient_kind": "acquirer",
        "categories": ["order_details"],
        "purpose": "business_transfer",
        "basis": "legitimate_interests",
        "export_id": "7f8d66f1-0084-4899-b80e-655984be6627",
        "customers": 1,
        "identified": False,
        "as_of": None,
        "export_format": "jsonl",
        "manifest_sha256": "0" * 64,
    }
    if version == 2:
        state.update(class_version=2, tree_size=10)
    return orjson.dumps({**state, **changes})


def test_export_rows_read_each_version_of_the_export_event() -> None:
    """Version 1 kept no tree size (it held every customer registered before its own
    event, which the query finds); version 2 held those among its first `tree_size`."""
    registered = views.StoredFact(
        "Customer.Registered",
        {"at": datetime(2025, 1, 1, tzinfo=UTC), "fact_id": "r", "originator_version": 1},
    )
    held = views.export_rows([(20, 30, _export_state(1), {1: 20})], [registered])
    assert [row["fact_id"] for _, _, row in held] == ["export-7f8d66f1-0084-4899-b80e-655984be6627"]
    assert len(views.export_rows([(10, 30, _export_state(2), {1: 10})], [registered])) == 1
    assert views.export_rows([(11, 30, _export_state(2), {1: 11})], [registered]) == []
    # Made as of a time before the registration: not held
    as_of = _export_state(2, as_of="2024-12-31T00:00:00Z")
    assert views.export_rows([(5, 30, as_of, {1: 5})], [registered]) == []


def test_only_an_identified_exports_own_disclosure_keeps_it_off_a_trail() -> None:
    """A customer an identified export named has its `transfer.disclosure` (fact id
    `<export's>/<n>`, to its acquirer) on their trail: the export is not listed again. A fact
    id of that shape alone (a feed's id can be any string) hides no export."""
    registered = views.StoredFact(
        "Customer.Registered",
        {"at": datetime(2025, 1, 1, tzinfo=UTC), "fact_id": "r", "originator_version": 1},
    )
    fact_id = "export-7f8d66f1-0084-4899-b80e-655984be6627"

    def disclosure(recipient: str, day: int = 2) -> views.StoredFact:
        return views.StoredFact(
            "Customer.TransferDisclosed",
            {
                "at": datetime(2026, 1, day, tzinfo=UTC),
                "fact_id": f"{fact_id}/0000001",
                "originator_version": 2,
                "recipient": recipient,
                "recipient_kind": "acquirer",
            },
        )

    def held(identified: bool, recipient: str, day: int = 2) -> int:
        state = _export_state(2, identified=identified)
        events = [registered, disclosure(recipient, day)]
        return len(views.export_holdings([(5, 30, state, {1: 5, 2: 6})], events))

    assert held(identified=True, recipient="Northwind") == 0  # named: its disclosure is listed
    assert held(identified=False, recipient="Northwind") == 1  # a pseudonymous export
    assert held(identified=True, recipient="Other Bidder") == 1  # to another acquirer
    # a feed's, with the export's id and acquirer, but not dated when the export was made
    assert held(identified=True, recipient="Northwind", day=3) == 1


def test_an_export_showed_an_erasure_it_read_whatever_its_as_of() -> None:
    """`ExportHolding.conveyed`: the erasure among the events the export read (its tree
    size, 10, included); made as of a time or not (its `erased` column is today's truth,
    so an erasure dated after its as-of shows too)."""
    registered = views.StoredFact(
        "Customer.Registered",
        {"at": datetime(2025, 1, 1, tzinfo=UTC), "fact_id": "r", "originator_version": 1},
    )
    (today,) = views.export_holdings([(5, 30, _export_state(2), {1: 5})], [registered])
    assert today.conveyed(10) and not today.conveyed(11)
    dated = _export_state(2, as_of="2025-01-02T00:00:00Z")
    (then,) = views.export_holdings([(5, 30, dated, {1: 5})], [registered])
    assert then.conveyed(10) and not then.conveyed(11)
    # Every erasure after what an export read may be unshown, made as of a time or not
    assert views.erasures_unshown_after(30, _export_state(2)) == 10
    assert views.erasures_unshown_after(30, _export_state(1)) == 29
    assert views.erasures_unshown_after(30, dated) == 10


@pytest.mark.parametrize(
    "changes",
    [
        {"tree_size": "10"},
        {"tree_size": None},
        {"at": 5},
        {"as_of": "yesterday"},
        {"categories": "x"},
        # Review of 2d05fea: each of these was read as if it were the ledger's, or crashed
        # (a naive time compared with the others: 'unexpected TypeError', exit 1)
        {"at": "2026-01-02T00:00:00"},
        {"as_of": "2025-12-31T00:00:00"},
        {"tree_size": True},
        {"tree_size": -1},
        {"class_version": 3},
    ],
)
def test_an_export_state_of_another_shape_is_unreadable(changes: dict[str, Any]) -> None:
    from ledger.errors import UnreadableEventError

    registered = views.StoredFact(
        "Customer.Registered",
        {"at": datetime(2025, 1, 1, tzinfo=UTC), "fact_id": "r", "originator_version": 1},
    )
    with pytest.raises(UnreadableEventError, match="position 30"):
        views.export_rows([(5, 30, _export_state(2, **changes), {1: 5})], [registered])


def test_a_version_2_export_state_without_its_tree_size_is_unreadable() -> None:
    from ledger.errors import UnreadableEventError

    registered = views.StoredFact(
        "Customer.Registered",
        {"at": datetime(2025, 1, 1, tzinfo=UTC), "fact_id": "r", "originator_version": 1},
    )
    state = orjson.loads(_export_state(2))
    del state["tree_size"]  # (read as a version 1 export's, it held more customers)
    with pytest.raises(UnreadableEventError, match="position 30"):
        views.export_rows([(5, 30, orjson.dumps(state), {1: 5})], [registered])


def test_the_consent_classes_are_named_as_recorded() -> None:
    given = views.StoredFact("Customer.ConsentGiven", {})
    withdrawn = views.StoredFact("Customer.ConsentWithdrawn", {})
    assert views.consent_status(given) == "given"
    assert views.consent_status(withdrawn) == "withdrawn"
    assert views.event_name(given) == Customer.ConsentGiven.__qualname__
    assert views.event_name(withdrawn) == Customer.ConsentWithdrawn.__qualname__


def row(version: int, name: str, **state: Any) -> tuple[int, str, bytes]:
    return version, "ledger.domainmodel:" + name, orjson.dumps(state)


def test_stored_rows_become_facts_with_their_fields_decoded() -> None:
    at = "2025-01-02T03:04:05+00:00"
    facts = views.stored_facts(
        [row(1, "Customer.OrderPlaced", at=at, timestamp=at, total="10.50", order="O1")]
    )
    assert facts is not None
    (fact,) = facts
    assert fact.event_name == "Customer.OrderPlaced"
    assert fact.originator_version == 1
    assert fact.at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert fact.__dict__ == {
        **decode_state(orjson.dumps({"at": at, "timestamp": at, "total": "10.50"})),
        "order": "O1",
        "originator_version": 1,
    }


def test_a_row_that_needs_the_domain_model_is_not_read_as_a_stored_fact() -> None:
    upcast = row(2, "Customer.ConsentGiven", at="2025-01-02T03:04:05+00:00", class_version=2)
    plain = row(1, "Customer.AccessRequested", at="2025-01-02T03:04:05+00:00")
    assert views.stored_facts([plain, upcast]) is None
    foreign = (1, "elsewhere:Thing", orjson.dumps({}))
    assert views.stored_facts([foreign]) is None
    assert views.stored_facts([plain]) is not None


def test_consent_history_rows_are_in_time_order_not_text_order() -> None:
    """A withdrawal half a second after a consent comes after it, though its time as text
    ("…00.500000Z") sorts before the consent's ("…00Z")."""
    consent = {"purpose": "marketing", "channel": "email", "method": "web"}
    facts = views.stored_facts(
        [
            row(
                1,
                "Customer.ConsentGiven",
                at="2025-01-02T10:00:00+00:00",
                fact_id="g",
                policy_version="v1",
                **consent,
            ),
            row(
                2,
                "Customer.ConsentWithdrawn",
                at="2025-01-02T10:00:00.500000+00:00",
                fact_id="w",
                **consent,
            ),
        ]
    )
    assert facts is not None
    rows = views.consent_history_rows(facts)
    assert [(r["fact_id"], r["status"]) for r in rows] == [("g", "given"), ("w", "withdrawn")]
