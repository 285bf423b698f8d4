"""The read models' time stamps: fixed-width text that sorts like the time it stands for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from ledger.feed import iso
from projections.base import stamp, stamp_to_iso, unstamp

moments = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(moments, moments)
def test_stamps_sort_like_times_and_read_back(a: datetime, b: datetime) -> None:
    assert (stamp(a) < stamp(b)) == (a < b)
    assert unstamp(stamp(a)) == a
    assert stamp_to_iso(stamp(a)) == iso(a)
    assert len(stamp(a)) == 27


def test_a_stamp_is_in_utc_whatever_the_offset() -> None:
    paris = timezone(timedelta(hours=1))
    assert stamp(datetime(2025, 3, 1, 10, 0, tzinfo=paris)) == "2025-03-01T09:00:00.000000Z"
    assert stamp_to_iso("2025-03-01T09:00:00.000000Z") == "2025-03-01T09:00:00Z"
    assert stamp_to_iso("2025-03-01T09:00:00.250000Z") == "2025-03-01T09:00:00.250000Z"
