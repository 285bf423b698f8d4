"""Read connections of one database, one per thread and process, opened on first use.

The query commands read through the driver itself (`sqlite_reads`, `postgres_reads`), not
SQLAlchemy. A driver connection is not shared across threads, nor inherited across a fork:
each thread of each process opens its own, and `close()` closes this process's.
"""

from __future__ import annotations

import os
import threading
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
        held: tuple[int, _C] | None = getattr(self._local, "held", None)
        if held is not None and held[0] == os.getpid() and self._usable(held[1]):
            return held[1]
        conn = self._open()
        held = (os.getpid(), conn)
        self._local.held = held
        with self._lock:
            self._opened.append(held)
        return conn

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
