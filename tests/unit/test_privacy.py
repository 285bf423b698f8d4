"""ledger/privacy.py on in-memory aggregates: access packs, Art. 19 notifications, emails."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import privacy
from ledger.domainmodel import Customer, FactEvent
from ledger.feed import iso, validate
from ledger.rules import DISCLOSURE_TYPES
from ledger.vocabulary import DATA_CATEGORIES, DISCLOSURES

T0 = datetime(2025, 1, 10, 9, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Builder:
    """A customer built from feed facts in memory, as the application would record them."""

    def __init__(self, ref: str = "C1") -> None:
        self.ref = ref
        self.n = 0
        self.customer = Customer.register(
            self.fact("customer.registered", 0, name="N", email="e@x.org", address=_ADDRESS),
            None,
        )
        self.events: list[FactEvent] = []
        self._collect()

    def fact(self, kind: str, minutes: float, **fields: Any) -> Any:
        self.n += 1
        base = {"id": f"f{self.n}", "type": kind, "at": iso(at(minutes))}
        if kind not in _ORDER_FACTS:
            base["customer"] = self.ref
        return validate({**base, **fields})

    def add(self, kind: str, minutes: float, **fields: Any) -> str:
        fact = self.fact(kind, minutes, **fields)
        self.customer.record(fact, None)
        self._collect()
        return str(fact.id)

    def notify(self, recipient: str, minutes: float, regarding: list[str]) -> None:
        self.n += 1
        self.customer.record_notification(recipient, regarding, f"n{self.n}", at(minutes))
        self._collect()

    def _collect(self) -> None:
        self.events.extend(e for e in self.customer.collect_events() if isinstance(e, FactEvent))


_ADDRESS = {"line1": "1 A St", "city": "B", "postcode": "C1 1CC", "country": "GB"}
_ORDER_FACTS = {
    "order.confirmation_sent",
    "order.verification_contact",
    "payment.authorisation",
    "identity.check",
    "cra.disclosure",
    "order.dispatched",
    "order.delivered",
    "order.cancelled",
}


def test_normalise_email_folds_case_space_and_unicode_forms() -> None:
    assert privacy.normalise_email("  Ada@Example.ORG\n") == "ada@example.org"
    # Fullwidth letters, as some keyboards type them, are the same mailbox.
    assert privacy.normalise_email("\uff41\uff44\uff41@example.org") == "ada@example.org"
    assert privacy.normalise_email("ada@example.org") != privacy.normalise_email("ad@example.org")


def test_email_at_is_the_latest_email_at_that_time() -> None:
    history = privacy.EmailHistory(
        [
            (at(20), 6, {"email": "new@x.org"}),
            (at(0), 1, {"email": "old@x.org", "name": "N"}),
            (at(10), 5, {"phone": "1"}),
        ]
    )
    assert history.at(at(5)) == "old@x.org"
    assert history.at(at(20)) == "new@x.org"
    assert history.at(at(-5)) == "old@x.org"  # before any: the first known
    assert history.all() == {"old@x.org", "new@x.org"}
    assert privacy.EmailHistory().at(at(0)) is None


@settings(max_examples=200, deadline=None)
@given(
    given_first=st.lists(st.tuples(st.integers(0, 5), st.sampled_from("abc")), max_size=5),
    added=st.lists(st.tuples(st.integers(0, 5), st.sampled_from("abc")), max_size=8),
)
def test_an_email_history_answers_as_a_scan_of_every_details_fact_would(
    given_first: list[tuple[int, str]], added: list[tuple[int, str]]
) -> None:
    """Kept in order as details facts arrive, late ones included, the history's email at a
    moment is the latest (business time, then version) at or before it, else the first."""
    facts = [(at(m), version, f"{e}@x.org") for version, (m, e) in enumerate(given_first)]
    history = privacy.EmailHistory((when, v, {"email": email}) for when, v, email in facts)
    for version, (minutes, e) in enumerate(added, start=len(facts)):
        history.add(at(minutes), version, f"{e}@x.org")
        facts.append((at(minutes), version, f"{e}@x.org"))
    for minutes in range(-1, 7):
        earlier = [fact for fact in facts if fact[0] <= at(minutes)]
        expected = max(earlier)[2] if earlier else min(facts)[2] if facts else None
        assert history.at(at(minutes)) == expected
    assert history.all() == {email for _, _, email in facts}


def _shop(b: Builder) -> None:
    b.add("order.placed", 1, order="O1", total="10.00", currency="GBP")
    b.add("payment.authorisation", 2, order="O1", issuer="Visa", result="authorised")
    b.add("order.dispatched", 3, order="O1", carrier="DPD", tracking="T1")
    b.add(
        "consent.given",
        4,
        purpose="affiliate_sharing",
        channel="post",
        method="m",
        policy_version="1",
    )
    b.add("affiliate.disclosure", 5, affiliate="Offspring", categories=["email", "name"])


def test_erasure_is_due_to_every_recipient_of_the_data_also_one_after_it() -> None:
    """A disclosure after the erasure broke a rule (`after_erasure`), but that recipient
    holds the data all the same: it must be told too (Art. 19), and an erasure recorded
    late, dated before every disclosure, still calls for every notification."""
    b = Builder()
    _shop(b)
    erased = b.add("subject.erased", 100)
    b.add("order.placed", 101, order="O2", total="1.00", currency="GBP")
    b.add("payment.authorisation", 102, order="O2", issuer="Amex", result="authorised")
    dues = privacy.notifications("C1", b.events)
    assert [(d.recipient, d.reason, d.fact_id) for d in dues] == [
        ("Amex", "erasure", erased),
        ("DPD", "erasure", erased),
        ("Offspring", "erasure", erased),
        ("Visa", "erasure", erased),
    ]
    dues = dues[1:]  # (the carrier's, first below)
    assert dues[0].recipient_kinds == ("carrier",)
    assert dues[0].categories == ("name", "phone", "postal_address")
    assert all(d.notified_at is None and d.due_by == at(100) + timedelta(days=30) for d in dues)


def test_rectification_is_due_only_to_recipients_of_the_changed_category() -> None:
    b = Builder()
    _shop(b)
    updated = b.add("customer.updated", 50, email="new@x.org")
    dues = privacy.notifications("C1", b.events)
    assert [(d.recipient, d.reason, d.fact_id, d.categories) for d in dues] == [
        ("Offspring", "rectification", updated, ("email",))
    ]


def test_a_notification_answers_what_was_due_at_its_time_not_later_changes() -> None:
    b = Builder()
    _shop(b)
    first = b.add("customer.updated", 50, name="M")
    b.notify("DPD", 60, [first])
    second = b.add("customer.updated", 70, name="L")
    dues = privacy.notifications("C1", b.events)
    dpd = {d.fact_id: d.notified_at for d in dues if d.recipient == "DPD"}
    assert dpd == {first: at(60), second: None}
    assert {(d.recipient, d.fact_id) for d in privacy.outstanding(dues)} == {
        ("Offspring", first),
        ("Visa", first),
        ("DPD", second),
        ("Offspring", second),
        ("Visa", second),
    }


def test_a_due_notification_is_answered_by_the_first_sent_at_or_after_it() -> None:
    """Sent notifications are searched per recipient by time: one at the very time of the
    rectification answers it, one before does not, and of several the first is named."""
    b = Builder()
    _shop(b)
    b.notify("Visa", 40, [])
    updated = b.add("customer.updated", 50, name="M")
    b.notify("DPD", 50, [updated])
    dpd = f"n{b.n}"
    b.notify("Visa", 80, [updated])
    b.notify("Visa", 55, [updated])  # reported late: the first sent all the same
    visa = f"n{b.n}"
    dues = privacy.notifications("C1", b.events)
    told = {d.recipient: (d.notified_at, d.notified_fact_id) for d in dues}
    assert told == {
        "DPD": (at(50), dpd),
        "Offspring": (None, None),
        "Visa": (at(55), visa),
    }


def test_violation_only_after_thirty_days_and_once_per_fact() -> None:
    b = Builder()
    _shop(b)
    erased = b.add("subject.erased", 100)
    deadline = at(100) + timedelta(days=30)
    late = privacy.notification_violations("C1", b.events, now=deadline + timedelta(seconds=1))
    assert [(v.rule, v.customer, v.fact_id, v.at) for v in late] == [
        ("recipient_not_notified", "C1", erased, at(100))
    ]
    assert privacy.notification_violations("C1", b.events, now=deadline) == []
    # As of a time before the erasure, there was nothing to notify.
    before = privacy.notification_violations(
        "C1", b.events, now=deadline + timedelta(days=9), as_of=at(99)
    )
    assert before == []
    for recipient in ("DPD", "Offspring", "Visa"):
        b.notify(recipient, 200, [erased])
    assert privacy.notification_violations("C1", b.events, now=deadline + timedelta(days=1)) == []


# -- the access pack ---------------------------------------------------------------------------

_KINDS = st.sampled_from(
    sorted(
        DISCLOSURE_TYPES | {"order.placed", "consent.given", "marketing.contact", "subject.erased"}
    )
)
_RECIPIENTS = st.sampled_from(["Visa", "Experian", "DPD", "Offspring", "Northwind", "Ac me"])
_CATEGORIES = st.lists(st.sampled_from(sorted(DATA_CATEGORIES)), min_size=1, unique=True)


@st.composite
def customer_facts(draw: st.DrawFn) -> list[tuple[str, float, dict[str, Any]]]:
    """Facts about one customer after registration: orders and their disclosures, direct
    disclosures, consents, contacts, maybe an erasure, at random times (late ones too)."""
    facts: list[tuple[str, float, dict[str, Any]]] = []
    orders: list[str] = []
    for i in range(draw(st.integers(0, 12))):
        minute = draw(st.integers(1, 10_000))
        kind = draw(_KINDS)
        if kind == "order.placed" or (kind in _ORDER_FACTS and not orders):
            orders.append(f"O{i}")
            facts.append(
                ("order.placed", minute, {"order": f"O{i}", "total": "1.00", "currency": "GBP"})
            )
            if kind == "order.placed":
                continue
        who = draw(_RECIPIENTS)
        order = {"order": draw(st.sampled_from(orders))} if orders else {}
        fields: dict[str, Any] = {
            "payment.authorisation": {**order, "issuer": who, "result": "authorised"},
            "identity.check": {
                **order,
                "provider": who,
                "source": "electoral_roll",
                "result": "pass",
            },
            "cra.disclosure": {**order, "agency": who},
            "order.dispatched": {**order, "carrier": who, "tracking": "T"},
            "affiliate.disclosure": {"affiliate": who, "categories": draw(_CATEGORIES)},
            "transfer.disclosure": {"acquirer": who, "categories": draw(_CATEGORIES)},
            "consent.given": {
                "purpose": "marketing",
                "channel": "email",
                "method": "m",
                "policy_version": "1",
            },
            "marketing.contact": {"channel": "email", "campaign": "c"},
            "subject.erased": {},
        }[kind]
        facts.append((kind, minute, fields))
    return facts


@settings(max_examples=60, deadline=None)
@given(customer_facts())
def test_access_pack_lists_exactly_the_disclosures_of_the_trail(
    facts: list[tuple[str, float, dict[str, Any]]],
) -> None:
    b = Builder()
    expected: Counter[tuple[str, str, str, tuple[str, ...], str, str]] = Counter()
    erased = False
    for kind, minute, fields in facts:
        if erased and kind == "consent.given":
            continue  # refused after erasure, by design
        fact_id = b.add(kind, minute, **fields)
        erased = erased or kind == "subject.erased"
        rule = DISCLOSURES.get(kind)
        if rule is not None:
            categories = rule.categories or tuple(sorted(fields["categories"]))
            expected[
                (
                    fact_id,
                    fields[rule.recipient_field],
                    rule.recipient_kind,
                    tuple(sorted(categories)),
                    rule.purpose,
                    rule.basis,
                )
            ] += 1
    pack = privacy.access_pack(b.customer, b.events, None, [], at(0))
    listed = Counter(
        (
            d["fact_id"],
            d["recipient"],
            d["recipient_kind"],
            tuple(d["categories"]),
            d["purpose"],
            d["basis"],
        )
        for d in pack["disclosures"]
    )
    assert listed == expected
    assert [d["at"] for d in pack["disclosures"]] == sorted(d["at"] for d in pack["disclosures"])
    names = {key[1] for key in expected}
    assert {r["recipient"] for r in pack["recipients"]} == names
    assert sum(r["disclosures"] for r in pack["recipients"]) == sum(expected.values())
    assert pack["erased"] is erased


def test_access_pack_of_an_erased_customer_keeps_history_without_details() -> None:
    b = Builder()
    _shop(b)
    b.add("consent.withdrawn", 20, purpose="affiliate_sharing", channel="post", method="letter")
    b.add("subject.access_requested", 30)
    b.add("subject.erased", 40)
    pack = privacy.access_pack(b.customer, b.events, None, [], at(50))
    assert pack["erased"] is True and pack["erased_at"] == iso(at(40))
    assert pack["personal_data"] is None
    assert [(h["status"], h["method"], h["policy_version"]) for h in pack["consent_history"]] == [
        ("given", "m", "1"),
        ("withdrawn", "letter", None),
    ]
    assert [o["order"] for o in pack["orders"]] == ["O1"]
    assert [r["recipient"] for r in pack["recipients"]] == ["DPD", "Offspring", "Visa"]
    assert [a["at"] for a in pack["access_requests"]] == [iso(at(30))]
    text = privacy.access_pack_markdown(pack)
    assert "Erased on 2025-01-10T09:40:00Z" in text
    assert "| 2025-01-10T09:05:00Z | Offspring | affiliate | email, name |" in text


def test_markdown_escapes_table_breaking_values() -> None:
    b = Builder()
    b.add("affiliate.disclosure", 5, affiliate="Pipe | Co", categories=["name"])
    pack = privacy.access_pack(b.customer, b.events, {"name": "A|B"}, [], at(10))
    text = privacy.access_pack_markdown(pack)
    assert "Pipe \\| Co" in text and "A\\|B" in text


def test_an_erasure_dated_before_every_disclosure_is_due_to_all_their_recipients() -> None:
    b = Builder()
    _shop(b)
    b.add("subject.erased", 100)
    earlier = b.add("subject.erased", 0.5)  # the first erasure, reported late
    dues = privacy.notifications("C1", b.events)
    assert [(d.recipient, d.fact_id) for d in dues] == [
        ("DPD", earlier),
        ("Offspring", earlier),
        ("Visa", earlier),
    ]


def test_a_recipient_told_of_the_erasure_and_given_more_since_is_owed_a_notice_again() -> None:
    b = Builder()
    b.add(
        "consent.given",
        0.5,
        purpose="affiliate_sharing",
        channel="post",
        method="m",
        policy_version="1",
    )
    erased = b.add("subject.erased", 10)
    b.add("affiliate.disclosure", 20, affiliate="Offspring", categories=["name"])
    b.notify("Offspring", 30, [erased])
    b.add("affiliate.disclosure", 40, affiliate="Offspring", categories=["email", "phone"])
    [due] = privacy.notifications("C1", b.events)
    assert (due.recipient, due.fact_id, due.at) == ("Offspring", erased, at(10))
    assert due.notified_at is None  # told at 30, before it received email and phone at 40
    assert due.due_by == at(40) + timedelta(days=30)
    b.notify("Offspring", 50, [erased])
    [due] = privacy.notifications("C1", b.events)
    assert due.notified_at == at(50)


def test_a_key_file_that_cannot_be_written_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full key folder failed the write to the file's descriptor, an error naming no file:
    `keys rotate` then blamed its own output ("cannot write the command's output")."""
    import errno
    import os

    from ledger.persistence.keys import write_key_file

    def full(_fd: int) -> None:  # (as a full disk's delayed allocation fails the fsync)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    path = tmp_path / "keys" / "master.key"
    with pytest.raises(OSError) as raised:
        write_key_file(path, b"k" * 4096)
    assert (raised.value.filename, raised.value.strerror) == (str(path), "No space left on device")
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == []  # nothing left aside


def test_a_key_file_that_exists_already_is_named_not_its_temporary(tmp_path: Path) -> None:
    """The link into place failed naming the file written aside (`.master.key.<pid>.partial`)."""
    from ledger.persistence.keys import write_key_file

    path = tmp_path / "keys" / "master.key"
    write_key_file(path, b"first")
    with pytest.raises(FileExistsError) as raised:
        write_key_file(path, b"second")
    assert raised.value.filename == str(path)
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["master.key"]
