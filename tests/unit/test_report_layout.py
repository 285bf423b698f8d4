"""The auditor's report reads from the top: a table of contents, what to know at a glance
first, long lists folded (nothing lost), each chart's numbers as a table, print and narrow
windows taken care of."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from ledger.reports import Document, auditor_report, to_html, to_markdown
from ledger.rules import Violation
from tests.unit.test_report_rendering import figures

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def many(n: int) -> list[Violation]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return [
        Violation("marketing_without_consent", f"C{i}", f"f{i}", start + timedelta(hours=i))
        for i in range(n)
    ]


def test_the_glance_comes_first_then_the_details_with_contents_linking_each_section() -> None:
    page = to_html(auditor_report(figures(violations=many(3)), NOW))
    order = [
        "<h2>Headline figures</h2>",
        "<h2>Violations by rule</h2>",
        "<h2>Consent over time</h2>",
        "<h2>Disclosures over time</h2>",
        "<h3>marketing_without_consent (3)</h3>",
        "<h2>Orders</h2>",
        "<h2>Recipient registry</h2>",
        "<h2>Due-diligence exports</h2>",
    ]
    places = [page.index(h) for h in order]
    assert places == sorted(places)
    assert page.index('<nav class="toc"') < places[0]
    assert page.count("<main>") == 1 and page.index("<main>") < page.index("<h1>")
    assert page.index("</main>") > places[-1]
    anchors = re.findall(r'<a href="#([^"]+)">', page)
    ids = re.findall(r'<section id="([^"]+)">', page)
    assert anchors == ids and len(set(ids)) == len(ids)
    assert "headline-figures" in ids and "violations-marketing_without_consent" in ids
    assert page.count("<section") == page.count("</section>")
    markdown = to_markdown(auditor_report(figures(), NOW))
    assert "- [Headline figures](#headline-figures)" in markdown
    link = "(#violations-marketing_without_consent)"
    assert f"  - [marketing_without_consent (1)]{link}" in markdown
    assert '<a id="violations-marketing_without_consent"></a>' in markdown


def test_a_rules_section_keeps_its_anchor_whatever_its_count() -> None:
    """A link to a rule's violations (bookmarked, sent to a colleague) still leads there in
    next month's report, though its count in the heading changed."""
    ids = [
        re.findall(
            r'<section id="([^"]+)">', to_html(auditor_report(figures(violations=many(n)), NOW))
        )
        for n in (3, 250)
    ]
    assert ids[0] == ids[1]
    assert "violations-marketing_without_consent" in ids[0]


def test_a_rule_shows_its_first_100_violations_and_folds_the_rest_away() -> None:
    page = to_html(auditor_report(figures(violations=many(250)), NOW))
    section = page[page.index("<h3>marketing_without_consent (250)</h3>") :]
    section = section[: section.index("</section>")]
    assert (
        "<p>First 100 of 250; <code>consent-ledger audit check --json</code> lists all.</p>"
        in section
    )
    shown, folded = section.split("<details>")
    assert shown.count("<tr><td") == 100 and "<td>f99</td>" in shown
    assert folded.startswith("<summary>The other 150 rows (101 to 250)</summary>")
    assert folded.count("<tr><td") == 150 and "<td>f100</td>" in folded
    assert "<td>f249</td>" in folded
    assert '<td class="t">2025-01-01T00:00:00Z</td>' in shown
    small = to_html(auditor_report(figures(violations=many(100)), NOW))
    assert "<details><summary>The other" not in small and "First 100 of" not in small
    # Markdown has no folding: all rows.
    text = to_markdown(auditor_report(figures(violations=many(250)), NOW))
    assert "| f249 |" in text


def test_each_chart_says_what_it_shows_and_has_its_numbers_in_a_table() -> None:
    page = to_html(
        auditor_report(
            figures(disclosures_by_month=[("2025-01", "carrier", 4), ("2025-03", "carrier", 1200)]),
            NOW,
        )
    )
    alts = re.findall(r'<img alt="([^"]*)"', page)
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", page)
    assert len(alts) == 2 and all(a not in captions for a in alts)
    assert "from 2025-01 to 2025-03" in alts[1] and "1,204 in all" in alts[1]
    figures_html = re.findall(r"<figure>.*?</figure>", page, re.S)
    assert len(figures_html) == 2
    for figure in figures_html:
        assert "<details><summary>The numbers in this chart</summary>" in figure
    disclosures = figures_html[1]
    assert "<th>month</th><th>carrier</th><th>total</th>" in disclosures.replace("\n", "")
    assert '<tr><td>2025-02</td><td class="n">0</td><td class="n">0</td></tr>' in disclosures
    assert '<td class="n">1,200</td>' in disclosures
    assert disclosures.count("<tr><td") == 3  # 2025-01, 2025-02 (zero), 2025-03
    consent = figures_html[0]
    assert '<td>marketing</td><td>email</td><td class="n">2</td><td class="n">0</td>' in consent


def test_css_wraps_cells_keeps_times_whole_and_prints_what_is_folded() -> None:
    doc = Document("T")
    doc.table(
        ["at", "sha256", "n"],
        [["2025-01-02T03:04:05.123456Z", "ab" * 32, 1234567]],
    )
    page = to_html(doc)
    css = page[page.index("<style>") : page.index("</style>")]
    assert re.search(r"td\{[^}]*overflow-wrap:anywhere", css)
    assert re.search(r"td\.t\{[^}]*white-space:nowrap", css)
    assert re.search(r"\.hash\{[^}]*word-break:break-all", css)
    assert "@media print{" in css and "details::details-content" in css
    assert '<td class="t">2025-01-02T03:04:05.123456Z</td>' in page
    assert f'<td><code class="hash">{"ab" * 32}</code></td>' in page
    assert '<td class="n">1,234,567</td>' in page
    assert "| 1,234,567 |" in to_markdown(doc)


def test_each_rule_is_said_in_words_beside_its_count() -> None:
    """An auditor reads what a violation of each rule is (SPEC §3's words, and the
    notification rule beyond it) without the SPEC at hand."""
    from ledger.privacy import NOTIFICATION_DEADLINE, NOTIFICATION_RULE
    from ledger.vocabulary import RULE_MEANINGS, RULES

    assert set(RULE_MEANINGS) == {*RULES, NOTIFICATION_RULE}
    assert f"within {NOTIFICATION_DEADLINE.days} days" in RULE_MEANINGS[NOTIFICATION_RULE]
    found = [Violation(NOTIFICATION_RULE, "C1", "x1", datetime(2025, 1, 1, tzinfo=UTC))]
    markdown = to_markdown(auditor_report(figures(violations=found), NOW))
    for rule, meaning in RULE_MEANINGS.items():
        count = 1 if rule == NOTIFICATION_RULE else 0
        assert f"| {rule} | {count} | {meaning} |" in markdown
