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
    # read its older events.
    assert getattr(event_class, "class_version", 1) == 1


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
