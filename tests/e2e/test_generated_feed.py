"""End to end on each backend: a generated feed imported in several files (duplicates, an
invalid file, late facts dated earlier), every answer checked against an independent fold of
the accepted lines written here from SPEC.md alone."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.samplefeed import generate
from ledger.vocabulary import RULES
from tests.cli_helpers import run, run_json

# SPEC §2: type -> (recipient field, recipient kind, categories (None: listed), purpose, basis)
DISCLOSES: dict[str, tuple[str, str, list[str] | None, str, str]] = {
    "payment.authorisation": (
        "issuer", "card_issuer", ["name", "card", "postal_address"], "payment", "contract"
    ),
    "identity.check": (
        "provider", "identity_verification", ["name", "postal_address"],
        "identity_verification", "consent",
    ),
    "cra.disclosure": (
        "agency", "credit_reference_agency", ["name", "postal_address", "order_details"],
        "fraud_prevention", "legitimate_interests",
    ),
    "order.dispatched": (
        "carrier", "carrier", ["name", "postal_address", "phone"], "delivery", "contract"
    ),
    "affiliate.disclosure": ("affiliate", "affiliate", None, "affiliate_marketing", "consent"),
    "transfer.disclosure": (
        "acquirer", "acquirer", None, "business_transfer", "legitimate_interests"
    ),
}  # fmt: skip
CONTACTS = {
    "marketing.contact",
    "research.contact",
    "order.confirmation_sent",
    "order.verification_contact",
}
SPEC_RULES = set(RULES)  # the names of SPEC §3 rules (others may add more)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Fold:
    """What SPEC.md says the ledger knows, folded from the accepted lines in order."""

    by_customer: dict[str, list[tuple[datetime, int, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    owner: dict[str, str] = field(default_factory=dict)
    # Acquirer -> (at, position) of its initiations.
    initiations: dict[str, list[tuple[datetime, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    seen: set[str] = field(default_factory=set)
    position: int = 0

    def record(self, objs: list[dict[str, Any]]) -> None:
        for obj in objs:
            if obj["id"] in self.seen:
                continue
            self.seen.add(obj["id"])
            self.position += 1
            if obj["type"] == "transfer.initiated":
                self.initiations[obj["acquirer"]].append((when(obj["at"]), self.position))
                continue
            if obj["type"] == "order.placed":
                self.owner[obj["order"]] = obj["customer"]
            ref = obj.get("customer") or self.owner[obj["order"]]
            self.by_customer[ref].append((when(obj["at"]), self.position, obj))

    def business_order(self, ref: str) -> list[tuple[datetime, int, dict[str, Any]]]:
        return sorted(self.by_customer[ref], key=lambda e: (e[0], e[1]))

    def trail(self, ref: str) -> list[dict[str, Any]]:
        rows = []
        for at, _, obj in self.business_order(ref):
            if obj["type"] not in DISCLOSES:
                continue
            recipient, kind, categories, purpose, basis = DISCLOSES[obj["type"]]
            rows.append(
                {
                    "at": z(at),
                    "recipient": obj[recipient],
                    "recipient_kind": kind,
                    "purpose": purpose,
                    "basis": basis,
                    "categories": sorted(categories or obj["categories"]),
                    "order": obj.get("order"),
                    "fact_id": obj["id"],
                }
            )
        return rows

    def consents(self, ref: str, as_of: datetime) -> list[dict[str, Any]]:
        history: dict[tuple[str, str], list[tuple[datetime, str]]] = defaultdict(list)
        for at, _, obj in self.business_order(ref):
            if obj["type"] in ("consent.given", "consent.withdrawn") and at <= as_of:
                status = "given" if obj["type"] == "consent.given" else "withdrawn"
                history[(obj["purpose"], obj["channel"])].append((at, status))
        rows = []
        for (purpose, channel), entries in history.items():
            status = entries[-1][1]
            since = entries[-1][0]
            for at, earlier in reversed(entries):
                if earlier != status:
                    break
                since = at
            rows.append(
                {"purpose": purpose, "channel": channel, "status": status, "since": z(since)}
            )
        return sorted(rows, key=lambda r: (r["purpose"], r["channel"]))

    def violations(self) -> set[tuple[str, str, str, str]]:
        found: set[tuple[str, str, str, str]] = set()
        for ref, entries in self.by_customer.items():
            erasures = [at for at, _, obj in entries if obj["type"] == "subject.erased"]
            for at, pos, obj in entries:
                kind = obj["type"]
                if kind not in DISCLOSES and kind not in CONTACTS:
                    continue
                key = (at, pos)
                earlier = [(a, p, o) for a, p, o in entries if (a, p) < key]

                def given(purpose: str, channel: str, earlier: Any = earlier) -> bool:
                    facts = [
                        (a, p, o["type"])
                        for a, p, o in earlier
                        if o["type"] in ("consent.given", "consent.withdrawn")
                        and (o["purpose"], o["channel"]) == (purpose, channel)
                    ]
                    return bool(facts) and max(facts)[2] == "consent.given"

                broken = []
                if kind == "affiliate.disclosure" and not (
                    given("affiliate_sharing", "email") or given("affiliate_sharing", "post")
                ):
                    broken.append("affiliate_without_consent")
                if kind == "marketing.contact" and not given("marketing", obj["channel"]):
                    broken.append("marketing_without_consent")
                if kind == "research.contact" and not given("market_research", obj["channel"]):
                    broken.append("research_without_consent")
                if kind == "order.dispatched":
                    mine = [(a, p, o) for a, p, o in earlier if o.get("order") == obj["order"]]
                    if not any(
                        o["type"] == "payment.authorisation" and o["result"] == "authorised"
                        for _, _, o in mine
                    ):
                        broken.append("dispatch_without_payment")
                    checks = [(a, p, o) for a, p, o in mine if o["type"] == "identity.check"]
                    if checks and max(checks, key=lambda c: (c[0], c[1]))[2]["result"] == "fail":
                        broken.append("dispatch_after_failed_verification")
                if kind == "transfer.disclosure" and not any(
                    initiation < key for initiation in self.initiations[obj["acquirer"]]
                ):
                    broken.append("transfer_without_initiation")
                if erasures and at >= min(erasures):
                    broken.append("after_erasure")
                found.update((rule, ref, obj["id"], z(at)) for rule in broken)
        return found


def write(path: Path, objs: list[dict[str, Any]], extra: bytes = b"") -> Path:
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in objs) + extra)
    return path


def clean_contacts_and_dispatches(
    objs: list[dict[str, Any]], violating: set[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Marketing emails and dispatches that broke no rule (so far)."""
    contacts = [
        o
        for o in objs
        if o["type"] == "marketing.contact" and o["channel"] == "email" and o["id"] not in violating
    ]
    dispatches = [o for o in objs if o["type"] == "order.dispatched" and o["id"] not in violating]
    return contacts, dispatches


def late_facts(objs: list[dict[str, Any]], violating: set[str]) -> list[dict[str, Any]]:
    """Facts learned months later, dated earlier: withdrawals before marketing emails, a
    failed identity check before a dispatch, an erasure before a contact."""
    late: list[dict[str, Any]] = []
    contacts, dispatches = clean_contacts_and_dispatches(objs, violating)
    for n, contact in enumerate(contacts[:6]):
        late.append(
            {
                "id": f"late-w{n}",
                "type": "consent.withdrawn",
                "at": z(when(contact["at"]) - timedelta(hours=1)),
                "customer": contact["customer"],
                "purpose": "marketing",
                "channel": "email",
                "method": "phone-call",
                "noted_by": "support",
            }
        )
    # An erasure learned late, dated before the customer's last contact.
    last = contacts[-1]
    late.append(
        {
            "id": "late-x",
            "type": "subject.erased",
            "at": z(when(last["at"]) - timedelta(days=1)),
            "customer": last["customer"],
        }
    )
    for n, dispatch in enumerate(dispatches[:3]):
        late.append(
            {
                "id": f"late-i{n}",
                "type": "identity.check",
                "at": z(when(dispatch["at"]) - timedelta(minutes=1)),
                "order": dispatch["order"],
                "provider": "Experian",
                "source": "credit_reference",
                "result": "fail",
            }
        )
    return late


@pytest.mark.parametrize("seed", [5])
def test_generated_feed_answers_match_an_independent_fold(
    ledger_url: str, tmp_path: Path, seed: int
) -> None:
    objs = list(generate(50, seed=seed))
    half = len(objs) // 2
    first, second = objs[:half], objs[half:]
    fold = Fold()
    run_json(ledger_url, "db", "upgrade")

    # File A, then file B repeating 40 lines of A (a resend months later).
    assert run_json(ledger_url, "import", str(write(tmp_path / "a.jsonl", first))) == {
        "accepted": len(first),
        "duplicates": 0,
        "rejected": 0,
        "errors": [],
    }
    fold.record(first)
    resent = first[-40:] + second
    summary = run_json(ledger_url, "import", str(write(tmp_path / "b.jsonl", resent)))
    assert (summary["accepted"], summary["duplicates"], summary["rejected"]) == (len(second), 40, 0)
    fold.record(resent)

    # File C: new customers and one invalid line: nothing from it is recorded.
    newcomers = list(generate(3, seed=seed + 1, prefix="c-"))
    newcomer = next(o["customer"] for o in newcomers if o["type"] == "customer.registered")
    bad = {
        "id": "c-bad",
        "type": "marketing.contact",
        "at": newcomers[7]["at"],
        "customer": newcomer,
        "channel": "carrier-pigeon",
        "campaign": "spring",
    }
    invalid = [*newcomers[:8], bad, *newcomers[8:]]
    result = run(ledger_url, "import", str(write(tmp_path / "c.jsonl", invalid)), "--json")
    assert result.exit_code == 1
    report = orjson.loads(result.stdout)
    assert report["accepted"] == 0
    assert [e["line"] for e in report["errors"]] == [9]
    assert run(ledger_url, "customer", "show", newcomer).exit_code == 1

    def audited() -> set[tuple[str, str, str, str]]:
        rows = run_json(ledger_url, "audit", "check")["violations"]
        return {
            (v["rule"], v["customer"], v["fact_id"], v["at"])
            for v in rows
            if v["rule"] in SPEC_RULES
        }

    before_late = fold.violations()
    assert audited() == before_late

    # File D: late facts dated earlier.
    violating = {fact_id for _, _, fact_id, _ in before_late}
    late = late_facts(objs, violating)
    assert run_json(ledger_url, "import", str(write(tmp_path / "d.jsonl", late)))[
        "accepted"
    ] == len(late)
    fold.record(late)

    # Re-importing everything changes nothing.
    everything = write(tmp_path / "all.jsonl", [*objs, *late])
    again = run_json(ledger_url, "import", str(everything))
    assert (again["accepted"], again["duplicates"]) == (0, len(objs) + len(late))

    # Audit: exactly the fold's violations (rules of SPEC §3), late facts included.
    expected = fold.violations()
    assert audited() == expected
    turned = {(rule, fact_id) for rule, _, fact_id, _ in expected - before_late}
    contacts, dispatches = clean_contacts_and_dispatches(objs, violating)
    for contact in contacts[:6]:
        assert ("marketing_without_consent", contact["id"]) in turned
    for dispatch in dispatches[:3]:
        assert ("dispatch_after_failed_verification", dispatch["id"]) in turned
    assert ("after_erasure", contacts[-1]["id"]) in turned
    assert {rule for rule, *_ in expected} == SPEC_RULES

    # Trails and consents as of a past time, for customers touched by late facts and others.
    refs = sorted({o["customer"] for o in late if "customer" in o})
    refs += [ref for ref in list(fold.by_customer)[:4] if ref not in refs]
    for ref in refs:
        assert run_json(ledger_url, "customer", "trail", ref) == {
            "customer": ref,
            "disclosures": fold.trail(ref),
        }
        contact_at = max(at for at, _, _ in fold.by_customer[ref])
        for as_of in (contact_at - timedelta(days=30), contact_at):
            document = run_json(ledger_url, "consent", "show", ref, "--as-of", z(as_of))
            assert document["as_of"] == z(as_of)
            rows = sorted(document["consents"], key=lambda r: (r["purpose"], r["channel"]))
            assert rows == fold.consents(ref, as_of)
