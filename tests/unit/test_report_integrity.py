"""The auditor's report states the ledger's integrity first."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from ledger.reports import auditor_report, to_html, to_markdown
from tests.unit.test_report_rendering import figures

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HEAD = "ab" * 32


def integrity(**changes: Any) -> dict[str, Any]:
    return {
        "ok": True,
        "facts": 12345,
        "head": HEAD,
        "problems": [],
        "checkpoint": {
            "tree_size": 12345,
            "root_hash": "cd" * 32,
            "time": "2026-01-01T00:00:00Z",
            "key_id": "ed25519:0f1e2d3c",
            "signature": "Zm9v" * 22 + "==",
        },
        "violations_from": "events",
        "read_models_agree": True,
        "disagreements": 0,
        **changes,
    }


def first_section(page: str) -> str:
    start = page.index("<h2>")
    return page[start : page.index("<h2>", start + 1)]


def test_a_verified_ledger_says_so_first_with_its_signed_checkpoint() -> None:
    page = to_html(auditor_report(figures(), NOW, integrity=integrity()))
    section = first_section(page)
    assert section.startswith("<h2>Integrity</h2>")
    assert (
        '<p class="notice ok"><strong>Verified:</strong> no recorded fact was altered, removed, '
        f"inserted or reordered (12,345 facts, head <code>{HEAD}</code>).</p>"
    ) in section
    assert '<td>tree size</td><td class="n">12,345</td>' in section
    for value in ("cd" * 32, "ed25519:0f1e2d3c", "Zm9v" * 22 + "=="):
        assert f'<code class="hash">{value}</code>' in section
    assert '<td class="t">2026-01-01T00:00:00Z</td>' in section
    assert "judged from the events; the read models agree with the events on them" in section
    assert "NOT VERIFIED" not in page
    assert page.index('href="#integrity"') < page.index('href="#headline-figures"')


def test_a_ledger_that_fails_verification_is_not_verified_with_every_problem_listed() -> None:
    problems = ["fact 17: digest does not match", "fact 18 <missing>: chain broken"]
    doc = auditor_report(
        figures(), NOW, integrity=integrity(ok=False, problems=problems, checkpoint=None)
    )
    section = first_section(to_html(doc))
    assert '<p class="notice alert" role="alert"><strong>NOT VERIFIED:</strong>' in section
    assert "found 2 problems" in section
    assert (
        "<ul><li>fact 17: digest does not match</li>"
        "<li>fact 18 &lt;missing&gt;: chain broken</li></ul>"
    ) in section
    assert "Verified:" not in section
    assert "No signed checkpoint" in section
    text = to_markdown(doc)
    assert "> **NOT VERIFIED:** checking 12,345 facts" in text
    assert "- fact 18 &lt;missing&gt;: chain broken" in text


def test_read_models_that_disagree_with_the_events_are_a_prominent_warning() -> None:
    page = to_html(
        auditor_report(
            figures(), NOW, integrity=integrity(read_models_agree=False, disagreements=3)
        )
    )
    section = first_section(page)
    assert re.search(
        r'<p class="notice alert" role="alert"><strong>The read models disagree with the '
        r"events</strong> on 3 violations: the violations shown are judged from the events\. "
        r"Rebuild the read models: <code>consent-ledger projections rebuild</code>\.</p>",
        section,
    )
    unchecked = first_section(
        to_html(auditor_report(figures(), NOW, integrity=integrity(read_models_agree=None)))
    )
    assert "the read models were not compared with the events" in unchecked


def test_a_report_made_without_checking_says_the_integrity_was_not_checked() -> None:
    for doc in (auditor_report(figures(), NOW), auditor_report(figures(), NOW, None)):
        section = first_section(to_html(doc))
        assert section.startswith("<h2>Integrity</h2>")
        assert "<strong>Integrity not checked.</strong>" in section
        assert "Verified" not in section
