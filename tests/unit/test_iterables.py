"""`ledger.iterables.batched`: an import's chunks and a read-model pass's batches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ledger.iterables import batched


def test_batches_keep_order_and_only_the_last_is_short() -> None:
    assert list(batched(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(batched(iter([]), 3)) == []


@given(st.lists(st.integers()), st.integers(min_value=1, max_value=10))
def test_batches_put_together_are_the_items(items: list[int], size: int) -> None:
    batches = list(batched(iter(items), size))
    assert [item for batch in batches for item in batch] == items
    assert all(len(batch) == size for batch in batches[:-1])
    assert all(0 < len(batch) <= size for batch in batches)
