"""An identified export's own disclosures, recorded without reading back the streams of the
customers it names (`Customer.at_head`, `import_lines`' `heads`), are those the plain import
records; a write racing the export is still caught, on each backend."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger import exports
from ledger.application import ConsentLedger
from ledger.domainmodel import Customer, customer_id
from ledger.errors import ConcurrencyError
from ledger.exports import Exporter, ExportRequest, Pseudonyms
from ledger.persistence import seals
from ledger.samplefeed import ACQUIRER, generate
from tests.examples import line

NOW = datetime(2026, 1, 1, tzinfo=UTC)
EXPORT_ID = uuid.UUID("0e0e0e0e-0e0e-4e0e-8e0e-0e0e0e0e0e0e")


def _load(ledger: Any, feed_small: Path) -> None:
    """The small feed and a generated one (erasures, rectifications, violations among them),
    and a rectification and a disclosure to the acquirer before its initiation (a violation)
    of a customer the export will name."""
    facts = [orjson.loads(raw) for raw in feed_small.read_bytes().splitlines() if raw]
    facts += generate(30, seed=5, prefix="R")
    ledger.import_lines(orjson.dumps(fact) for fact in facts)
    ledger.import_lines(
        [
            orjson.dumps(line("customer.updated", "R-u", 5, customer="C100", name="Ada R")),
            orjson.dumps(
                line(
                    "transfer.disclosure",
                    "R-early",
                    6,
                    customer="C100",
                    acquirer="Late Initiator Ltd",
                    categories=["name"],
                )
            ),
        ]
    )


def _exporter(ledger: Any, out: Path) -> Exporter:
    """An identified export whose id, secret (the customers' order) and time are fixed, so
    that two runs from the same ledger record the same facts in the same order."""
    exporter = Exporter(ledger, ExportRequest(out=out, acquirer=ACQUIRER, identified=True), now=NOW)
    exporter.export_id = EXPORT_ID
    exporter.fact_id = f"export-{EXPORT_ID}"
    exporter.secret = b"\x07" * len(exporter.secret)
    exporter.pseudonyms = Pseudonyms(exporter.secret)
    return exporter


def _recorded_since(ledger: Any, position: int) -> tuple[list[Any], list[Any]]:
    """The events and fact index rows after `position`, read on the write's own connection:
    each event as stored but its recording time (`timestamp`, naturally fresh)."""
    tx = ledger.database.current
    assert tx is not None
    driver = tx.driver
    events = []
    for row in driver.execute(
        "SELECT notification_id, originator_id, originator_version, topic, state "
        f"FROM ledger_events WHERE notification_id > {int(position)} ORDER BY notification_id"
    ):
        number, stream, version, topic, state = row
        stored = orjson.loads(bytes(state))
        assert stored.pop("timestamp")
        events.append((number, _hex(stream), version, topic, stored))
    facts = [
        (fact_id, number, kind, _hex(stream))
        for fact_id, number, kind, stream in driver.execute(
            "SELECT fact_id, notification_id, fact_type, originator_id FROM ledger_facts "
            f"WHERE notification_id > {int(position)} ORDER BY notification_id"
        )
    ]
    return events, facts


def _hex(stream: Any) -> str:
    return stream.hex if isinstance(stream, uuid.UUID) else uuid.UUID(str(stream)).hex


class _RolledBack(Exception):
    pass


def test_the_disclosures_recorded_by_their_heads_are_those_the_plain_import_records(
    ledger: Any, feed_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _load(ledger, feed_small)
    position = seals.verify_ledger(ledger).events
    assert ledger.audit()  # violations among the facts the export reads
    made = []
    at_head = Customer.at_head.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Customer], *args: Any) -> Customer:
        made.append(args[0])
        return at_head(cls, *args)

    monkeypatch.setattr(Customer, "at_head", classmethod(counted))
    plain_import = ConsentLedger.import_lines
    runs: dict[str, Any] = {}

    def recording(name: str, heads: bool, roll_back: bool) -> Any:
        def import_lines(app: Any, lines: Any, **kwargs: Any) -> Any:
            if not heads:
                kwargs["heads"] = None
            summary = plain_import(app, lines, **kwargs)
            runs[name] = _recorded_since(app, position)
            if roll_back:
                raise _RolledBack
            return summary

        return import_lines

    # By their heads first, rolled back; then the plain import, from the same ledger
    monkeypatch.setattr(ConsentLedger, "import_lines", recording("heads", True, True))
    with pytest.raises(_RolledBack):
        _exporter(ledger, tmp_path / "a").run()
    assert seals.verify_ledger(ledger).events == position  # nothing of it kept
    named = len(made)
    monkeypatch.setattr(ConsentLedger, "import_lines", recording("plain", False, False))
    result = _exporter(ledger, tmp_path / "b").run()
    assert len(made) == named  # the plain import read every stream back
    assert named == result.identified_customers > 20
    heads_events, heads_facts = runs["heads"]
    plain_events, plain_facts = runs["plain"]
    disclosures = [e for e in plain_events if e[3].endswith("Customer.TransferDisclosed")]
    assert len(disclosures) == named
    assert heads_events == plain_events
    assert heads_facts == plain_facts
    assert seals.verify_ledger(ledger).ok


def test_a_write_racing_the_identified_export_is_read_back(
    ledger: Any, feed_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # C100's consent is recorded by another writer after the export read the ledger, before
    # it recorded itself: its disclosure is recorded after that fact, at the next version
    _load(ledger, feed_small)
    before = ledger.customer_events("C100")
    record = Exporter._record
    made: list[Any] = []
    monkeypatch.setattr(Customer, "at_head", lambda *args: made.append(args))

    def racing(exporter: Exporter, *args: Any) -> None:
        given = line(
            "consent.given",
            "C100-race",
            30,
            customer="C100",
            purpose="market_research",
            channel="email",
            method="web_form",
            policy_version="v9",
        )
        exporter.app.import_lines([orjson.dumps(given)])
        record(exporter, *args)

    monkeypatch.setattr(Exporter, "_record", racing)
    result = _exporter(ledger, tmp_path / "dd").run()
    assert made == []
    events = ledger.customer_events("C100")
    assert [e.fact_id for e in events] == [
        *(e.fact_id for e in before),
        "C100-race",
        f"{result.fact_id}/" + events[-1].fact_id.rsplit("/", 1)[1],
    ]
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
    assert seals.verify_ledger(ledger).ok


def test_an_erasure_racing_the_identified_export_fails_it_whole(
    ledger: Any, feed_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _load(ledger, feed_small)
    record = Exporter._record

    def racing(exporter: Exporter, *args: Any) -> None:
        erased = line("subject.erased", "C100-x", 30, customer="C100")
        exporter.app.import_lines([orjson.dumps(erased)])
        record(exporter, *args)

    monkeypatch.setattr(Exporter, "_record", racing)
    with pytest.raises(ConcurrencyError):
        _exporter(ledger, tmp_path / "dd").run()
    # The erasure alone was recorded: no export, no disclosure
    assert ledger.customer_events("C100")[-1].fact_id == "C100-x"
    assert exports.recorded_exports(ledger) == []
    assert not (tmp_path / "dd").exists()
    assert ledger.keys.get(customer_id("C100")) is None
