"""The read models fold stored rows directly (`projections.fold`), not domain objects. Here
every table of every model, rebuilt and caught up, equals the rows the models made when they
were written over replayed aggregates and domain events (kept below as the reference, built
on `ledger.views`, `ledger.rules.audit_customer` and `ledger.privacy.notifications`), over a
generated feed with erasures, rectifications, transfers and Art. 19 notifications."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from ledger import domainmodel, privacy, views
from ledger.domainmodel import (
    Acquirer,
    Customer,
    DisclosureEvent,
    FactEvent,
    acquirer_id,
    customer_id,
)
from ledger.rules import Initiations, audit_customer
from ledger.samplefeed import generate_lines
from projections.base import stamp
from projections.fold import EVENT_CODES, fast_stamp


def _model_rows(ledger: Any) -> dict[str, set[tuple[Any, ...]]]:
    with ledger.read_models.snapshot() as (conn, slots):
        found: dict[str, set[tuple[Any, ...]]] = {}
        for name, model in ledger.read_models.models.items():
            for table in model.all_tables():
                rows = [tuple(r) for r in conn.execute(sa.select(table[slots[name]]))]
                assert len(rows) == len(set(rows)), table.name
                found[table.name] = set(rows)
        return found


def _reference(ledger: Any, acquirers: list[str]) -> dict[str, set[tuple[Any, ...]]]:
    """Every model's rows from replayed aggregates (the models' code before the fold)."""
    # Each event's position in the log, and each acquirer's initiations with theirs.
    positions: dict[tuple[Any, int], int] = {}
    initiated = Initiations()
    for notification in ledger.recorder.iter_notifications():
        positions[(notification.originator_id, notification.originator_version)] = notification.id
    expected: dict[str, set[tuple[Any, ...]]] = {
        name: set()
        for name in (
            "current_consent",
            "consent_history",
            "disclosure_trail",
            "order_status",
            "recipient_links",
            "recipients",
            "violations",
            "violation_transfers",
            "transfer_initiations",
            "violation_notices",
        )
    }
    for name in acquirers:
        aggregate = ledger.repository.get(acquirer_id(name))
        assert isinstance(aggregate, Acquirer)
        found = [
            (event.at, positions[(aggregate.id, event.originator_version)])
            for event in ledger.repository.event_store.get(aggregate.id)
            if isinstance(event, Acquirer.TransferInitiated)
        ]
        initiated.add(name, found)
        expected["transfer_initiations"].update(
            (aggregate.id.hex, name, stamp(at), position) for at, position in found
        )

    totals: dict[tuple[str, str], list[Any]] = {}  # (recipient, kind) -> figures, customers
    for ref in ledger.customer_refs():
        customer, events = ledger.customer_with_events(ref)
        key = customer.id.hex
        for row in views.consent_rows(events):
            expected["current_consent"].add(
                (key, ref, row["purpose"], row["channel"], row["status"], row["since"])
            )
        for event in events:
            at = stamp(event.at)
            if isinstance(event, (Customer.ConsentGiven, Customer.ConsentWithdrawn)):
                expected["consent_history"].add(
                    (
                        key,
                        ref,
                        at,
                        event.originator_version,
                        event.purpose,
                        event.channel,
                        views.consent_status(event),
                        event.method,
                        event.__dict__.get("policy_version"),
                        event.fact_id,
                        at[:7],
                    )
                )
            if isinstance(event, DisclosureEvent):
                expected["disclosure_trail"].add(
                    (
                        key,
                        ref,
                        at,
                        event.originator_version,
                        event.recipient,
                        event.recipient_kind,
                        event.purpose,
                        event.basis,
                        ",".join(sorted(event.categories)),
                        event.__dict__.get("order"),
                        event.fact_id,
                        at[:7],
                    )
                )
        for order_ref, order in customer.orders.items():
            expected["order_status"].add(
                (
                    key,
                    order_ref,
                    ref,
                    stamp(order.placed_at),
                    str(order.total),
                    order.currency,
                    order.status,
                )
            )
        links: dict[tuple[str, str], list[Any]] = {}
        for event in events:
            if isinstance(event, DisclosureEvent):
                at = stamp(event.at)
                link = links.setdefault(
                    (event.recipient, event.recipient_kind), [0, at, at, set(), set(), set()]
                )
                link[0] += 1
                link[1], link[2] = min(link[1], at), max(link[2], at)
                link[3].update(event.categories)
                link[4].add(event.purpose)
                link[5].add(event.basis)
        for (recipient, kind), link in links.items():
            joined = tuple(",".join(sorted(values)) for values in link[3:])
            expected["recipient_links"].add((key, recipient, kind, *link[:3], *joined))
            total = totals.setdefault(
                (recipient, kind), [0, link[1], link[2], set(), set(), set(), 0]
            )
            total[0] += link[0]
            total[1], total[2] = min(total[1], link[1]), max(total[2], link[2])
            for index in (3, 4, 5):
                total[index] |= link[index]
            total[6] += 1
        at_positions = [positions[(customer.id, e.originator_version)] for e in events]
        for v in audit_customer(customer, events, at_positions, initiated):
            expected["violations"].add((key, v.customer, v.rule, v.fact_id, stamp(v.at)))
        for name in {e.acquirer for e in events if isinstance(e, Customer.TransferDisclosed)}:
            expected["violation_transfers"].add((key, name))
        if privacy.notifications(ref, events):
            expected["violation_notices"].add((key,))
    for (recipient, kind), total in totals.items():
        joined = tuple(",".join(sorted(values)) for values in total[3:6])
        expected["recipients"].add((recipient, kind, *total[:3], *joined, total[6]))
    return expected


def _acquirers(ledger: Any) -> list[str]:
    with ledger.read_models.snapshot() as (conn, slots):
        from projections.violations import transfer_initiations

        table = transfer_initiations[slots["violations"]]
        return sorted({row[0] for row in conn.execute(sa.select(table.c.acquirer))})


def test_folded_models_equal_the_models_over_replayed_aggregates(ledger: Any) -> None:
    ledger.import_lines(generate_lines(60, seed=11))
    ledger.import_lines(_rectifications())
    notified = 0
    for due in privacy.outstanding(ledger.notifications()):
        if notified < 2:  # some answered, some left late
            ledger.record_notification(due.customer, due.recipient, datetime.now(UTC))
            notified += 1
    assert notified, "the feed should call for some Art. 19 notifications"
    ledger.read_models.catch_up()
    acquirers = _acquirers(ledger)
    assert acquirers, "the feed should initiate a transfer"
    expected = _reference(ledger, acquirers)
    assert all(expected[name] for name in expected), [n for n in expected if not expected[n]]
    # A rectification of a disclosed category calls for notices; of an undisclosed one, not.
    assert (customer_id("R1").hex,) in expected["violation_notices"]
    assert (customer_id("R2").hex,) not in expected["violation_notices"]
    caught_up = _model_rows(ledger)
    assert caught_up == expected
    ledger.read_models.rebuild()
    assert _model_rows(ledger) == expected
    _assert_art19_violations(ledger)
    # More facts for the same customers (late ones included), caught up incrementally.
    ledger.import_lines(_more(ledger))
    ledger.read_models.catch_up()
    assert _model_rows(ledger) == _reference(ledger, _acquirers(ledger))


def _assert_art19_violations(ledger: Any) -> None:
    """`audit check`'s late notifications (Art. 19) equal a direct judgement of each
    customer's replayed events, now and as of a time in the feed."""
    now = datetime.now(UTC)
    for as_of in (None, datetime(2024, 9, 1, tzinfo=UTC)):
        expected = set()
        for ref in ledger.customer_refs():
            _customer, events = ledger.customer_with_events(ref)
            expected.update(privacy.notification_violations(ref, events, now, as_of))
        found = {v for v in ledger.audit(as_of) if v.rule == privacy.NOTIFICATION_RULE}
        assert found == expected
        if as_of is None:
            assert expected


def _rectifications() -> list[bytes]:
    """Two customers who change their email: R1 had disclosed it (a notice is due), R2 not."""
    import orjson

    facts: list[dict[str, Any]] = []
    for ref, categories in (("R1", ["name", "email"]), ("R2", ["name"])):
        facts += [
            {
                "id": f"{ref}-1",
                "type": "customer.registered",
                "customer": ref,
                "name": "Grace Hopper",
                "email": "grace@navy.example",
                "address": {"line1": "7 Row", "city": "Leeds", "postcode": "LS1", "country": "GB"},
                "at": "2024-01-01T00:00:00Z",
            },
            {
                "id": f"{ref}-2",
                "type": "affiliate.disclosure",
                "customer": ref,
                "affiliate": "Offspring",
                "categories": categories,
                "at": "2024-01-02T00:00:00Z",
            },
            {
                "id": f"{ref}-3",
                "type": "customer.updated",
                "customer": ref,
                "email": "g2@navy.example",
                "at": "2024-01-03T00:00:00Z",
            },
        ]
    return [orjson.dumps(f) for f in facts]


def _more(ledger: Any) -> list[bytes]:
    import orjson

    refs = sorted(ledger.customer_refs())[:10]
    facts = []
    for index, ref in enumerate(refs):
        facts.append(
            {
                "id": f"more-{index}-w",
                "type": "consent.withdrawn",
                "customer": ref,
                "purpose": "marketing",
                "channel": "email",
                "method": "unsubscribe-link",
                "at": "2020-01-01T00:00:00Z",
            }
        )
        facts.append(
            {
                "id": f"more-{index}-m",
                "type": "marketing.contact",
                "customer": ref,
                "channel": "email",
                "campaign": "late",
                "at": "2020-01-02T00:00:00.250000Z",
            }
        )
    return [orjson.dumps(f) for f in facts]


def test_every_event_class_has_a_fold() -> None:
    """A new event class must say what it does to the read models (`projections.fold`)."""
    classes = {
        value
        for owner in (domainmodel.Customer, domainmodel.Acquirer)
        for value in vars(owner).values()
        if isinstance(value, type) and issubclass(value, (FactEvent, Acquirer.Named))
    }
    assert classes == set(EVENT_CODES)


def test_fast_stamp_equals_stamp() -> None:
    for text in (
        "2024-10-14T19:28:00+00:00",
        "2024-10-14T19:28:00.123456+00:00",
        "2024-10-14T21:28:00+02:00",
        "2024-10-14T19:28:00.5+00:00",
    ):
        assert fast_stamp(text) == stamp(datetime.fromisoformat(text))


def test_a_rebuild_gives_the_connection_back_its_settings(ledger: Any, ledger_url: str) -> None:
    if not ledger_url.startswith("sqlite"):
        pytest.skip("SQLite's connection settings")
    ledger.import_lines(generate_lines(3, seed=5))

    def settings() -> tuple[Any, ...]:
        with ledger.database.connect() as conn:
            return tuple(
                conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("secure_delete", "cache_size")
            )

    before = settings()
    assert before[0] == 1  # the ledger's own: deleted content is overwritten
    ledger.read_models.rebuild()
    ledger.read_models.rebuild()
    assert settings() == before


def test_the_mappers_path_folds_as_the_fast_path(ledger: Any) -> None:
    """Events the fast path must not decode (an upcast class, a cipher) go through the
    library's mapper: folding every event that way gives every model the same rows."""
    from projections.fold import Folder
    from projections.runner import _E, _STREAM_COLUMNS, MODELS

    ledger.import_lines(generate_lines(15, seed=9))
    with ledger.database.reading() as conn:
        query = sa.select(*_STREAM_COLUMNS).order_by(_E.c.originator_id, _E.c.originator_version)
        rows = conn.execute(query).all()
    fast = list(Folder(ledger.mapper).fold(rows))
    slow_folder = Folder(ledger.mapper)
    slow_folder.plain = False
    slow = list(slow_folder.fold(rows))
    assert [s.events for s in slow] == [s.events for s in fast]
    for model_class in MODELS:
        model = model_class()
        if hasattr(model, "know_acquirers"):
            model.know_acquirers((s.acquirer, s.initiations) for s in fast if s.acquirer)
        assert [model.rows(s) for s in slow] == [model.rows(s) for s in fast], model.name
