"""The background writer of an import on PostgreSQL: jobs in order, errors never lost."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ledger.persistence.database import _BackgroundWriter


def test_jobs_run_in_order_and_a_query_sees_the_jobs_queued_before_it() -> None:
    writer = _BackgroundWriter()
    done: list[int] = []

    def append(number: int) -> Callable[[], None]:
        return lambda: done.append(number)

    for number in range(50):
        writer.submit(append(number))
    seen = writer.submit_query(lambda: list(done))
    writer.submit(lambda: done.append(50))
    assert seen.result() == list(range(50))
    writer.close(discard=False)
    assert done == list(range(51))


def test_the_first_error_reaches_the_caller_and_later_jobs_are_skipped() -> None:
    writer = _BackgroundWriter()
    done: list[str] = []

    def fail() -> None:
        raise ValueError("insert failed")

    writer.submit(fail)
    with pytest.raises(ValueError, match="insert failed"):
        writer.wait()
    writer.submit(lambda: done.append("after"))
    query = writer.submit_query(lambda: "answer")
    with pytest.raises(RuntimeError, match="an earlier write failed"):
        query.result()
    writer.close(discard=False)
    assert done == []


def test_an_error_is_raised_at_close_and_discarding_skips_what_is_queued() -> None:
    writer = _BackgroundWriter()
    writer.submit(lambda: (_ for _ in ()).throw(KeyError("late")))
    with pytest.raises(KeyError):
        writer.close(discard=False)

    discarded = _BackgroundWriter()
    done: list[int] = []
    discarded.submit(lambda: done.append(1))
    discarded.wait()
    discarded.close(discard=True)
    assert done == [1]
