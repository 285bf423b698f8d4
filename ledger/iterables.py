"""Small helpers over iterables, shared by the ledger and its read models."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

_T = TypeVar("_T")


def batched(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """`items` in lists of `size`, the last one shorter if need be (Python 3.12's
    `itertools.batched`, as lists): an import's chunks, a pass's batches of streams."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
