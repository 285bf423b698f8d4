"""Properties of the read models over random fact sequences, on each backend.

Facts arrive in random recording order relative to their business time (late and
out-of-order facts), in several imports with catch-ups at random points between them. Then:
the incrementally updated models equal the same models rebuilt from scratch, and equal a
direct fold of each customer's events; `audit check` equals the small evaluator below,
written from SPEC §3 over the raw facts (it shares no code with `ledger.rules`); and
`--known-at` after any import equals the evaluator over the facts recorded by then.

Each example adds customers and acquirers under a fresh prefix to one ledger per test, so
the models are compared over everything recorded so far, as in a ledger that lives on.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ledger import views
from ledger.feed import iso
from ledger.vocabulary import PURPOSE_CHANNELS, RULES
from projections.base import metadata
from projections.consent_history import consent_history_of
from projections.current_consent import current_consents_of
from projections.disclosure_trail import trail_of
from projections.order_status import orders
from projections.recipient_registry import registry

START = datetime(2025, 1, 1, tzinfo=UTC)
_prefixes = itertools.count()

# -- random facts ------------------------------------------------------------------------------

CONSENTS = [(p, c) for p, channels in PURPOSE_CHANNELS.items() for c in sorted(channels)]


def _registration(ref: str) -> dict[str, Any]:
    return {
        "type": "customer.registered",
        "customer": ref,
        "name": "Ada Lovelace",
        "email": "ada@example.org",
        "address": {"line1": "1 Way", "city": "Leeds", "postcode": "LS1 1AA", "country": "GB"},
        "at": iso(START),
    }


@st.composite
def customer_facts(draw: st.DrawFn, prefix: str, index: int, acquirers: list[str]) -> list[Any]:
    """One customer's facts as (recording key, fact) pairs: registration first, the rest in a
    random recording order, each at a random business time (so some arrive late)."""
    ref = f"{prefix}C{index}"
    minute = st.integers(0, 400)

    def at() -> str:
        return iso(START + timedelta(minutes=draw(minute)))

    register = _registration(ref)
    facts: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 5))):
        purpose, channel = draw(st.sampled_from(CONSENTS))
        kind = draw(st.sampled_from(["consent.given", "consent.withdrawn"]))
        fact = {"type": kind, "customer": ref, "purpose": purpose, "channel": channel}
        fact["method"] = "web-form"
        if kind == "consent.given":
            fact["policy_version"] = "2024-01"
        facts.append(fact | {"at": at()})
    orders: list[list[dict[str, Any]]] = []
    for number in range(draw(st.integers(0, 2))):
        order = f"{ref}-O{number}"
        placed = [
            {
                "type": "order.placed",
                "order": order,
                "customer": ref,
                "total": "9.99",
                "currency": "GBP",
                "at": at(),
            }
        ]
        tail: list[dict[str, Any]] = []
        for _ in range(draw(st.integers(0, 2))):
            result = draw(st.sampled_from(["authorised", "refused"]))
            tail.append(
                {
                    "type": "payment.authorisation",
                    "order": order,
                    "issuer": "Visa",
                    "result": result,
                    "at": at(),
                }
            )
        for _ in range(draw(st.integers(0, 2))):
            result = draw(st.sampled_from(["pass", "fail"]))
            tail.append(
                {
                    "type": "identity.check",
                    "order": order,
                    "provider": "Experian",
                    "source": "credit_reference",
                    "result": result,
                    "at": at(),
                }
            )
        if draw(st.booleans()):
            tail.append({"type": "cra.disclosure", "order": order, "agency": "Equifax", "at": at()})
        if draw(st.booleans()):
            tail.append(
                {
                    "type": "order.dispatched",
                    "order": order,
                    "carrier": "DPD",
                    "tracking": "T1",
                    "at": at(),
                }
            )
        if draw(st.booleans()):
            tail.append({"type": "order.delivered", "order": order, "at": at()})
        if draw(st.booleans()):
            tail.append(
                {"type": "order.confirmation_sent", "order": order, "channel": "email", "at": at()}
            )
        orders.append(placed + tail)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(
            st.sampled_from(
                [
                    "marketing.contact",
                    "research.contact",
                    "affiliate.disclosure",
                    "transfer.disclosure",
                ]
            )
        )
        # Often at the very `at` of a consent change: a tie, broken by recording order.
        consent_times = [f["at"] for f in facts if f["type"].startswith("consent.")]
        tied = consent_times and draw(st.booleans())
        fact = {
            "type": kind,
            "customer": ref,
            "at": draw(st.sampled_from(consent_times)) if tied else at(),
        }
        if kind == "marketing.contact":
            fact |= {"channel": draw(st.sampled_from(["email", "post"])), "campaign": "spring"}
        elif kind == "research.contact":
            fact |= {"channel": draw(st.sampled_from(["email", "post"]))}
        elif kind == "affiliate.disclosure":
            fact |= {"affiliate": "Offspring", "categories": ["name", "postal_address"]}
        else:
            fact |= {"acquirer": draw(st.sampled_from(acquirers)), "categories": ["name"]}
        facts.append(fact)
    # Random recording order; an order's own facts stay after its placing.
    keyed = [(draw(st.floats(0, 1)), f) for f in facts]
    for group in orders:
        first = draw(st.floats(0, 1))
        keyed.append((first, group[0]))
        keyed += [(draw(st.floats(first, 1)), f) for f in group[1:]]
    keyed.sort(key=lambda kv: kv[0])
    ordered = [register] + [f for _, f in keyed]
    if draw(st.booleans()):
        ordered.append({"type": "subject.erased", "customer": ref, "at": at()})
        if draw(st.booleans()):
            ordered.append(
                {
                    "type": "marketing.contact",
                    "customer": ref,
                    "channel": "email",
                    "campaign": "late",
                    "at": at(),
                }
            )
    return ordered


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[int], list[bool]]:
    prefix = f"P{next(_prefixes)}-"
    acquirers = [f"{prefix}Northwind", f"{prefix}Contoso"]
    per_customer = [
        draw(customer_facts(prefix, i, acquirers)) for i in range(draw(st.integers(1, 4)))
    ]
    # An initiation is often at the very `at` of a transfer to its acquirer: a tie, broken
    # by recording order (SPEC §1), which the interleaving below varies.
    transfer_times = {
        name: sorted(
            f["at"]
            for facts in per_customer
            for f in facts
            if f["type"] == "transfer.disclosure" and f["acquirer"] == name
        )
        for name in acquirers
    }
    initiations = [
        {
            "type": "transfer.initiated",
            "acquirer": name,
            "scope": "all",
            "at": draw(st.sampled_from(transfer_times[name]))
            if transfer_times[name] and draw(st.booleans())
            else iso(START + timedelta(minutes=draw(st.integers(0, 400)))),
        }
        for name in acquirers
        if draw(st.booleans())
    ]
    # Interleave customers' facts (each customer's own order kept) and the initiations,
    # which often come last: after the transfers they make lawful have been judged.
    last = [f for f in initiations if draw(st.booleans())]
    queues = [list(q) for q in per_customer] + [[f] for f in initiations if f not in last]
    facts: list[dict[str, Any]] = []
    while any(queues):
        queue = draw(st.sampled_from([q for q in queues if q]))
        facts.append(queue.pop(0))
    facts += last
    for number, fact in enumerate(facts):
        fact["id"] = f"{prefix}f{number}"
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(facts) - 1)), min_size=1, max_size=3)))
    catch_ups = [draw(st.booleans()) for _ in range(len(cuts) + 1)]
    return facts, cuts, catch_ups


# -- the independent evaluator of SPEC §3 ------------------------------------------------------

CONTACTS = {
    "marketing.contact",
    "research.contact",
    "order.confirmation_sent",
    "order.verification_contact",
}
DISCLOSING = {
    "payment.authorisation",
    "identity.check",
    "cra.disclosure",
    "order.dispatched",
    "affiliate.disclosure",
    "transfer.disclosure",
}


def evaluate(facts: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(rule, customer, fact_id, at) for every violation, from the raw facts in recording order."""
    owner = {f["order"]: f["customer"] for f in facts if f["type"] == "order.placed"}

    def who(f: dict[str, Any]) -> str:
        return str(f.get("customer") or owner[f["order"]])

    def when(f: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(f["at"])

    position = {id(f): i for i, f in enumerate(facts)}

    def given(customer: str, purpose: str, channel: str, moment: datetime, index: int) -> bool:
        """SPEC §3's "given" at the time of the fact at `index`: a consent change at the same
        `at` counts only if recorded before it (SPEC §1)."""
        changes = [
            f
            for f in facts
            if f["type"] in ("consent.given", "consent.withdrawn")
            and who(f) == customer
            and f["purpose"] == purpose
            and f["channel"] == channel
            and (when(f), position[id(f)]) < (moment, index)
        ]
        if not changes:
            return False
        latest = max(changes, key=lambda f: (when(f), position[id(f)]))
        return latest["type"] == "consent.given"

    erased: dict[str, datetime] = {}
    for f in facts:
        if f["type"] == "subject.erased":
            erased[who(f)] = min(erased.get(who(f), when(f)), when(f))
    found: set[tuple[str, str, str, str]] = set()
    for i, f in enumerate(facts):
        kind, at = f["type"], when(f)
        if kind not in CONTACTS | DISCLOSING:
            continue
        customer = who(f)
        broken = []
        if kind == "affiliate.disclosure" and not (
            given(customer, "affiliate_sharing", "email", at, i)
            or given(customer, "affiliate_sharing", "post", at, i)
        ):
            broken.append("affiliate_without_consent")
        if kind == "marketing.contact" and not given(customer, "marketing", f["channel"], at, i):
            broken.append("marketing_without_consent")
        if kind == "research.contact" and not given(
            customer, "market_research", f["channel"], at, i
        ):
            broken.append("research_without_consent")
        if kind == "order.dispatched":
            before = [
                g
                for j, g in enumerate(facts)
                if g.get("order") == f["order"] and (when(g), j) < (at, i)
            ]
            if not any(
                g["type"] == "payment.authorisation" and g["result"] == "authorised" for g in before
            ):
                broken.append("dispatch_without_payment")
            checks = [
                (when(g), j, g)
                for j, g in enumerate(facts)
                if g in before and g["type"] == "identity.check"
            ]
            if checks and max(checks, key=lambda c: (c[0], c[1]))[2]["result"] == "fail":
                broken.append("dispatch_after_failed_verification")
        if kind == "transfer.disclosure" and not any(
            g["type"] == "transfer.initiated"
            and g["acquirer"] == f["acquirer"]
            and (when(g), j) < (at, i)  # a tie at the same `at`: recorded first
            for j, g in enumerate(facts)
        ):
            broken.append("transfer_without_initiation")
        if customer in erased and at >= erased[customer]:
            broken.append("after_erasure")
        found.update((rule, customer, f["id"], iso(at)) for rule in broken)
    return found


def spec_rules(violations: list[Any]) -> set[tuple[str, str, str, str]]:
    return {(v.rule, v.customer, v.fact_id, iso(v.at)) for v in violations if v.rule in RULES}


# -- comparing models --------------------------------------------------------------------------


def dump(ledger: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every read model, from the slot each model answers from."""
    with ledger.read_models.snapshot() as (conn, slots):
        found: dict[str, list[tuple[Any, ...]]] = {}
        for name, model in ledger.read_models.models.items():
            for table in model.all_tables():
                rows = conn.execute(sa.select(table[slots[name]])).all()
                found[f"{name}.{table.name}"] = sorted(tuple(r) for r in rows)
        return found


_LIFECYCLE = {
    "order.dispatched": "dispatched",
    "order.delivered": "delivered",
    "order.cancelled": "cancelled",
}


def order_status(events: list[Any], order: str) -> str:
    """An order's status from its events: its latest dispatch, delivery or cancellation in
    business time, ties by recording order (SPEC §1); `placed` if none."""
    lifecycle = [
        (e.at, e.originator_version, _LIFECYCLE[e.FACT_TYPE])
        for e in events
        if e.FACT_TYPE in _LIFECYCLE and e.order == order
    ]
    return max(lifecycle)[2] if lifecycle else "placed"


def direct_fold(ledger: Any) -> None:
    """Each customer's rows in the models equal the views over a replay of their events."""
    registry_counts: Counter[tuple[str, str]] = Counter()
    registry_customers: Counter[tuple[str, str]] = Counter()
    with ledger.read_models.snapshot() as (conn, slots):
        for ref in ledger.customer_refs():
            customer, events = ledger.customer_with_events(ref)
            trail = views.trail_rows(events)
            assert trail_of(conn, slots["disclosure_trail"], ref) == trail
            history = consent_history_of(conn, slots["consent_history"], ref)
            assert sorted((r["fact_id"], r["status"]) for r in history) == sorted(
                (r["fact_id"], r["status"]) for r in views.consent_history_rows(events)
            )
            table = orders[slots["order_status"]]
            rows = conn.execute(
                sa.select(table.c.order_ref, table.c.status, table.c.total).where(
                    table.c.customer == ref
                )
            )
            assert sorted(tuple(r) for r in rows) == sorted(
                (o.ref, order_status(events, o.ref), str(o.total)) for o in customer.orders.values()
            )
            assert sorted(
                current_consents_of(conn, slots["current_consent"], ref),
                key=lambda r: (r["purpose"], r["channel"]),
            ) == sorted(views.consent_rows(events), key=lambda r: (r["purpose"], r["channel"]))
            for row in trail:
                registry_counts[(row["recipient"], row["recipient_kind"])] += 1
            for key in {(r["recipient"], r["recipient_kind"]) for r in trail}:
                registry_customers[key] += 1
        recipients = registry(conn, slots["recipient_registry"])
    assert {(r["recipient"], r["recipient_kind"]): r["disclosures"] for r in recipients} == dict(
        registry_counts
    )
    assert {(r["recipient"], r["recipient_kind"]): r["customers"] for r in recipients} == dict(
        registry_customers
    )


def _import(ledger: Any, facts: list[dict[str, Any]]) -> None:
    import orjson

    ledger.import_lines([orjson.dumps(f) for f in facts])


# Everything recorded in each test's ledger, keyed by its database URL (unique per test: an
# `id()` of a ledger freed by an earlier test can be reused, and its facts counted twice).
ALL_FACTS: dict[str, list[dict[str, Any]]] = {}


def _tie_example() -> tuple[list[dict[str, Any]], list[int], list[bool]]:
    """Contacts and disclosures each at the very `at` of a consent change or initiation
    recorded after them (SPEC §1: ties are broken by recording order), and one recorded
    before them: found once by a saved Hypothesis example, now always run."""
    ref, at = "EX-C0", iso(START + timedelta(minutes=5))
    register = _registration(ref)
    consent = {"type": "consent.given", "customer": ref, "method": "web", "policy_version": "1"}
    facts = [
        register,
        {"type": "affiliate.disclosure", "customer": ref, "affiliate": "Offspring"}
        | {"categories": ["name"], "at": at},
        consent | {"purpose": "affiliate_sharing", "channel": "email", "at": at},
        {
            "type": "marketing.contact",
            "customer": ref,
            "channel": "post",
            "campaign": "x",
            "at": at,
        },
        consent | {"purpose": "marketing", "channel": "post", "at": at},
        {
            "type": "marketing.contact",
            "customer": ref,
            "channel": "post",
            "campaign": "y",
            "at": at,
        },
        {"type": "transfer.disclosure", "customer": ref, "acquirer": "EX-Northwind"}
        | {"categories": ["name"], "at": at},
        {"type": "transfer.initiated", "acquirer": "EX-Northwind", "scope": "all", "at": at},
    ]
    for number, fact in enumerate(facts):
        fact["id"] = f"EX-f{number}"
    return facts, [3], [False, True]


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
@example(scenario=_tie_example())
def test_incremental_equals_rebuilt_equals_direct_fold_and_audit_equals_evaluator(
    ledger: Any, scenario: tuple[list[dict[str, Any]], list[int], list[bool]]
) -> None:
    facts, cuts, catch_ups = scenario
    recorded = ALL_FACTS.setdefault(str(ledger.database.url), [])
    bounds = [0, *cuts, len(facts)]
    known: list[tuple[datetime, int]] = []
    for (start, stop), catch_up in zip(itertools.pairwise(bounds), catch_ups, strict=True):
        _import(ledger, facts[start:stop])
        recorded.extend(facts[start:stop])
        known.append((datetime.now(UTC), len(recorded)))
        if catch_up:
            ledger.read_models.catch_up()
    # audit check reads the violations model (catching up), and equals the evaluator.
    expected = evaluate(recorded)
    assert spec_rules(ledger.audit()) == expected
    moment = datetime.fromisoformat(facts[len(facts) // 2]["at"])
    assert spec_rules(ledger.audit(moment)) == {v for v in expected if v[3] <= iso(moment)}
    incremental = dump(ledger)
    direct_fold(ledger)
    # As the ledger knew it after each import.
    for known_at, count in known:
        assert spec_rules(ledger.audit(None, known_at)) == evaluate(recorded[:count])
    ledger.read_models.rebuild()
    assert dump(ledger) == incremental
    assert spec_rules(ledger.audit()) == expected


def test_read_model_tables_hold_no_personal_data(ledger: Any) -> None:
    facts = [
        {
            "id": "r1",
            "type": "customer.registered",
            "customer": "C1",
            "name": "Grace Hopper",
            "email": "grace@navy.example",
            "phone": "+44 7700 900123",
            "address": {
                "line1": "7 Cobol Row",
                "city": "Arlington",
                "postcode": "VA1 2BB",
                "country": "US",
            },
            "at": "2025-01-01T00:00:00Z",
        },
        {
            "id": "r2",
            "type": "customer.updated",
            "customer": "C1",
            "email": "g2@navy.example",
            "at": "2025-01-02T00:00:00Z",
        },
        {
            "id": "r3",
            "type": "affiliate.disclosure",
            "customer": "C1",
            "affiliate": "Offspring",
            "categories": ["name", "email"],
            "at": "2025-01-03T00:00:00Z",
        },
    ]
    _import(ledger, facts)
    ledger.read_models.catch_up()
    text = repr(dump(ledger))
    assert "Offspring" in text  # the dump does show the models' contents
    for secret in ("Grace", "Hopper", "navy.example", "7700", "Cobol", "Arlington", "VA1"):
        assert secret not in text
    assert {t.name for t in metadata.sorted_tables} >= {"rm_tracking", "rm_violations_a"}
