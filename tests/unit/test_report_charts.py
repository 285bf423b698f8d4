"""The charts: every month at its place, the same range in both, fixed styles, no warnings,
text as text, and the same bytes for the same figures."""

from __future__ import annotations

import base64
import re
import warnings
from datetime import UTC, datetime

import pytest

from ledger.reports import (
    KIND_STYLE,
    all_months,
    auditor_report,
    consent_chart,
    disclosure_chart,
    to_html,
)
from tests.unit.test_report_rendering import figures

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def texts(svg: str) -> list[str]:
    return re.findall(r"<text\b[^>]*>([^<]*)</text>", svg)


def months_on_axis(svg: str) -> list[str]:
    return [t for t in texts(svg) if re.fullmatch(r"\d{4}-\d{2}", t)]


def test_every_month_from_the_first_to_the_last_is_a_place_on_the_axis() -> None:
    assert all_months([("2024-11", 1), ("2025-02", 2)], [("2024-12", 3)]) == [
        "2024-11",
        "2024-12",
        "2025-01",
        "2025-02",
    ]
    assert all_months([], []) == []
    gaps = [("2025-01", "carrier", 4), ("2025-02", "card_issuer", 1), ("2025-06", "carrier", 2)]
    assert months_on_axis(disclosure_chart(gaps)) == [f"2025-{m:02d}" for m in range(1, 7)]
    consent = [
        ("2025-01", "marketing", "email", "given", 2),
        ("2025-04", "marketing", "post", "withdrawn", 1),
    ]
    assert months_on_axis(consent_chart(consent)) == ["2025-01", "2025-02", "2025-03", "2025-04"]


def test_both_charts_of_the_report_share_one_range_of_months() -> None:
    page = to_html(
        auditor_report(
            figures(
                consent_by_month=[("2024-10", "marketing", "email", "given", 2)],
                disclosures_by_month=[("2025-01", "carrier", 4), ("2025-03", "carrier", 1)],
            ),
            NOW,
        )
    )
    charts = [
        base64.b64decode(c).decode()
        for c in re.findall(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)
    ]
    expected = ["2024-10", "2024-11", "2024-12", "2025-01", "2025-02", "2025-03"]
    assert [months_on_axis(c) for c in charts] == [expected, expected]


def test_counts_are_whole_numbers_from_zero() -> None:
    svg = disclosure_chart([("2025-01", "carrier", 1), ("2025-02", "carrier", 2)])
    ticks = [t for t in texts(svg) if re.fullmatch(r"[\d.\u2212]+", t)]
    assert ticks and all(re.fullmatch(r"\d+", t) for t in ticks), ticks
    assert ticks[0] == "0"
    # A panel of zeros (no consent for this purpose) too.
    svg = consent_chart([("2025-01", "marketing", "email", "given", 12)])
    ticks = [t for t in texts(svg) if re.fullmatch(r"[\d.\u2212]+", t)]
    assert ticks and all(re.fullmatch(r"\d+", t) for t in ticks), ticks


def test_each_recipient_kind_has_its_colour_and_hatch_whatever_kinds_have_data() -> None:
    alone = disclosure_chart([("2025-01", "acquirer", 1)])
    together = disclosure_chart([("2025-01", "carrier", 3), ("2025-01", "acquirer", 1)])
    colour, _ = KIND_STYLE["acquirer"]
    for svg in (alone, together):
        assert re.search(f'fill(: |=")({colour.lower()})', svg.lower())
        assert "<pattern" in svg  # (hatching: colour is not the only cue)
    assert len({c for c, _ in KIND_STYLE.values()}) == len(KIND_STYLE)
    assert len({h for _, h in KIND_STYLE.values()}) == len(KIND_STYLE)


@pytest.mark.parametrize("chart", [consent_chart, disclosure_chart])
def test_an_empty_ledger_says_no_data_without_a_warning(
    chart: object, capfd: pytest.CaptureFixture[str]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        svg = chart([])  # type: ignore[operator]
    assert "no data" in texts(svg)
    assert capfd.readouterr().err == ""


def test_the_same_figures_make_the_same_bytes() -> None:
    first = to_html(auditor_report(figures(), NOW))
    second = to_html(auditor_report(figures(), NOW))
    assert first == second
    svg = disclosure_chart([("2025-01", "carrier", 1)])
    assert "<dc:date>" not in svg


def test_a_business_time_far_off_does_not_spread_the_charts_over_millennia() -> None:
    """One fact at 0001-01-01 (a typo in a feed) made `audit report` run for minutes: every
    month from year 1 to now, 24,000 of them, in each chart and its table."""
    far = [("0001-01", "carrier", 1), ("2025-01", "carrier", 4), ("2025-03", "carrier", 1)]
    assert all_months(far) == ["0001-01", "2025-01", "2025-03"]
    assert len(all_months([("1990-01", "carrier", 1), ("2025-12", "carrier", 1)])) == 432
    assert months_on_axis(disclosure_chart(far)) == ["0001-01", "2025-01", "2025-03"]
