"""Read connections of one database, one per thread and process, opened on first use.

The query commands read through the driver itself (`sqlite_reads`, `postgres_reads`), not
SQLAlchemy. A driver connection is not shared across threads, nor inherited across a fork:
each thread of each process opens its own, and `close()` closes this process's.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

_C = TypeVar("_C")


class PerThread(Generic[_C]):
    """The bookkeeping; a subclass opens a connection (`_open`) and may say when a held
    one can no longer be used (`_usable`)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._opened: list[tuple[int, _C]] = []
        self._lock = threading.Lock()

    def _open(self) -> _C:
        raise NotImplementedError

    def _usable(self, conn: _C) -> bool:
        return True

    def connection(self) -> _C:
        pinned: _C | None = getattr(self._local, "pinned", None)
        if pinned is not None:  # inside `snapshot()`: its connection, whatever became of it
            return pinned
        held: tuple[int, _C] | None = getattr(self._local, "held", None)
        if held is not None and held[0] == os.getpid() and self._usable(held[1]):
            return held[1]
        conn = self._open()
        held = (os.getpid(), conn)
        self._local.held = held
        with self._lock:
            self._opened.append(held)
        return conn

    @property
    def in_snapshot(self) -> bool:
        """Whether this thread's reads are inside `snapshot()`."""
        return getattr(self._local, "pinned", None) is not None

    def _begin(self) -> _C:
        """Begin a transaction that reads one snapshot on this thread's connection (in
        autocommit until then); that connection."""
        raise NotImplementedError

    def _end(self, conn: _C) -> None:
        """End `_begin`'s transaction (nothing was written in it)."""
        raise NotImplementedError

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read of this thread inside the block (`fetch`) sees one snapshot: they run
        in one transaction on one connection (nested blocks join the outer one)."""
        if self.in_snapshot:
            yield
            return
        conn = self._begin()
        self._local.pinned = conn
        try:
            yield
        finally:
            self._local.pinned = None
            self._end(conn)

    def discard(self, conn: _C) -> None:
        """Close this thread's connection `conn`: the next read opens another."""
        self._local.held = None
        with contextlib.suppress(Exception):  # (broken already: closed is all that is asked)
            conn.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close this process's connections (of every thread); a later read reopens."""
        with self._lock:
            opened, self._opened = self._opened, []
            self._local = threading.local()
        pid = os.getpid()
        for owner, conn in opened:
            if owner == pid:
                conn.close()  # type: ignore[attr-defined]


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
