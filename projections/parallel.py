"""A pass from event zero on SQLite, folded by worker processes.

Folding the events and deriving the rows is Python and holds one core; writing them is
SQLite's. For a large pass (a rebuild, or a model caught up from event zero) worker
processes (`python -m projections.parallel`) each read and fold a share of the streams, on
their own read-only connection, and hand back the rows each model's `replace` would insert;
the pass's own process inserts them in its transaction, stream order kept (the same rows,
in the same order, as a pass in one process), and merges what the models accumulate across
streams (`ReadModel.handover`). The pass's write lock was taken before its head was read,
so a worker's snapshot holds every event up to the head, and no other. A worker sends a
range's rows a batch of streams at a time, so neither side holds a range's rows at once.

The streams are cut into ranges of the stream id (hex text; the first range has no lower
bound, the last no upper one, so every stream falls in exactly one), dealt to the workers
in turn; the pass takes the ranges' rows back in range order.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
import struct
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import orjson

from ledger.errors import (
    WORKERS_ENV,
    ConfigurationError,
    ReadModelWorkerError,
    UnreadableEventError,
)
from ledger.iterables import batched
from projections.base import STREAMS_PER_BATCH, Pass, SlotTable

if TYPE_CHECKING:
    from pathlib import Path

    from projections.base import ReadModel, Writer

# A pass from event zero up to a head at least this large is folded by workers (below it,
# the workers' start-up, about half a second, would cost about what they save).
MIN_EVENTS = 200_000
RANGES = 64  # ranges of stream ids (a range is about 1,000 streams at 1M facts)
PIECE = STREAMS_PER_BATCH  # a worker sends the rows of this many streams at a time
_SPAN = 16**3  # the ranges cut the space of the ids' first three hex digits
_HEADER = struct.Struct("<Q")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EVENTS_SQL = (
    "SELECT originator_id, originator_version, topic, state, notification_id FROM ledger_events "
    "WHERE {where} AND notification_id <= ? ORDER BY originator_id, originator_version"
)


def worker_count() -> int:
    """Workers for a pass: one per core this process may run on, if there are two or more
    (at most 4); `CONSENT_LEDGER_WORKERS` sets the number (0: fold in this process)."""
    configured = os.environ.get(WORKERS_ENV, "").strip()
    if configured:
        try:
            return max(int(configured), 0)
        except ValueError:
            raise ConfigurationError(
                f"{WORKERS_ENV} must be a whole number of worker processes, not {configured!r}"
            ) from None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return min(cores, 4) if cores > 1 else 0


def ranges(count: int) -> list[tuple[str | None, str | None]]:
    """`count` ranges [low, high) of stream ids that together hold every text."""
    bounds: list[str | None] = [None]
    bounds += [format(i * _SPAN // count, "03x") for i in range(1, count)]
    bounds.append(None)
    return [(bounds[i], bounds[i + 1]) for i in range(count)]


def _range_sql(low: str | None, high: str | None) -> tuple[str, tuple[str, ...]]:
    where, params = [], []
    if low is not None:
        where.append("originator_id >= ?")
        params.append(low)
    if high is not None:
        where.append("originator_id < ?")
        params.append(high)
    return _EVENTS_SQL.format(where=" AND ".join(where) or "1"), tuple(params)


# -- the pass's side -------------------------------------------------------------------------


class Workers:
    """Worker processes folding a pass's streams; started early so that their start-up
    overlaps the pass's own preparations."""

    def __init__(self, count: int) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.results: list[IO[bytes]] = []
        for _ in range(count):
            read_fd, write_fd = os.pipe()
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "projections.parallel", str(write_fd)],
                    # Run from the folder this package was imported from, so that the
                    # worker imports the same code (`-m` looks in its working folder first).
                    cwd=_ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(write_fd,),
                    close_fds=True,
                )
            except BaseException:
                os.close(read_fd)
                raise
            finally:
                os.close(write_fd)
            self.processes.append(process)
            self.results.append(os.fdopen(read_fd, "rb"))

    def run(
        self,
        path: Path,
        head: int,
        models: Sequence[ReadModel],
        writers: Sequence[Writer],
        folder_flags: dict[str, bool],
        skip: set[Any],
        progress: Any,
    ) -> int:
        """Fold every stream but `skip` up to `head`; insert each model's rows with its
        writer; returns how many streams were folded."""
        count = len(self.processes)
        dealt = ranges(RANGES)
        names = [type(model).name for model in models]
        for index, process in enumerate(self.processes):
            task = self._task(path, head, names, folder_flags, skip, dealt[index::count])
            assert process.stdin is not None
            try:
                process.stdin.write(pickle.dumps(task))
                process.stdin.close()
            except BrokenPipeError:
                pass  # the worker is gone: `_receive` says so
        tables = [{table.name: table for table in model.tables} for model in models]
        streams = 0
        for index in range(len(dealt)):
            # A range's rows come in pieces (a batch of streams' each), then its counts: in
            # memory, one piece at a time, whatever the size of the ledger.
            while (message := self._receive(index % count))[0] == "rows":
                for target, name, rows in orjson.loads(message[1]):
                    writers[target].insert(tables[target][name], rows)
            kind, *body = message
            if kind != "range":
                raise ReadModelWorkerError("a read-model worker sent an unexpected message")
            folded, events = body
            streams += folded
            if progress is not None and events:
                progress(events)
        for index in range(count):
            kind, *body = self._receive(index)
            if kind != "end":
                raise ReadModelWorkerError("a read-model worker sent an unexpected message")
            for model, state in zip(models, body[0], strict=True):
                model.take_over(state)
        return streams

    def _task(
        self,
        path: Path,
        head: int,
        names: list[str],
        folder_flags: dict[str, bool],
        skip: set[Any],
        dealt: list[tuple[str | None, str | None]],
    ) -> dict[str, Any]:
        return {
            "path": os.path.abspath(path),
            "head": head,
            "models": names,
            "folder": folder_flags,
            "skip": sorted(ident.hex for ident in skip),
            "ranges": dealt,
            "piece": PIECE,
        }

    def _receive(self, index: int) -> list[Any]:
        stream = self.results[index]
        header = stream.read(_HEADER.size)
        if len(header) < _HEADER.size:
            code = self.processes[index].wait()
            raise ReadModelWorkerError(f"a read-model worker ended early (exit status {code})")
        message: list[Any] = pickle.loads(stream.read(_HEADER.unpack(header)[0]))
        if message[0] == "unreadable":
            raise UnreadableEventError(message[1])
        if message[0] == "error":
            raise ReadModelWorkerError(f"a read-model worker failed: {message[1]}")
        return message

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (at once, if they have not finished) and reap them."""
        for stream in self.results:
            stream.close()
        for process in self.processes:
            if process.stdin is not None and not process.stdin.closed:
                process.stdin.close()
            if process.poll() is None:
                process.kill()
            process.wait()


# -- the worker's side -----------------------------------------------------------------------


class _Capture:
    """A writer for a worker's models: keeps the rows each insert would write."""

    connection: Any = None
    is_sqlite = True
    slot = "a"
    inserts: Any = None

    def __init__(self) -> None:
        self.target = 0
        self.rows: list[tuple[int, str, list[tuple[Any, ...]]]] = []

    def table(self, logical: SlotTable) -> Any:
        return logical[self.slot]

    def insert(self, logical: SlotTable, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self.rows.append((self.target, logical.name, rows))


def _work(task: dict[str, Any], send: Any) -> None:
    import gc

    from ledger.persistence.recorder import LedgerMapper, LedgerTranscoder
    from projections.fold import Folder
    from projections.runner import MODELS

    gc.disable()  # folding makes no reference cycles (see `runner._without_cyclic_gc`)
    by_name = {model.name: model for model in MODELS}
    models = [by_name[name]() for name in task["models"]]
    folder = Folder(LedgerMapper(LedgerTranscoder()), **task["folder"])
    head = task["head"]
    skip = set(task["skip"])
    uri = f"file:{urllib.parse.quote(task['path'])}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=120)
    try:
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("BEGIN")  # one snapshot for every range
        marks = ", ".join("?" for _ in skip)
        acquirers = list(
            folder.fold(
                conn.execute(_EVENTS_SQL.format(where=f"originator_id IN ({marks})"), (*skip, head))
            )
            if skip
            else ()
        )
        from ledger.persistence import sqlite_reads as reads

        meta = conn.execute(reads.SELECT_META, (reads.STREAM_ORDERED_NAME,)).fetchall()
        ordered = reads.stream_ordered_until(meta)
        capture = _Capture()
        for model in models:
            model.begin(
                Pass(capture, acquirers, fresh=True, stream_ordered_until=ordered)  # type: ignore[arg-type]
            )
        for low, high in task["ranges"]:
            sql, params = _range_sql(low, high)
            folded = events = 0
            streams = folder.fold(conn.execute(sql, (*params, head)))
            unskipped = (stream for stream in streams if stream.key not in skip)
            for batch in batched(unskipped, task["piece"]):
                for target, model in enumerate(models):
                    capture.target = target
                    model.replace(capture, batch, fresh=True)  # type: ignore[arg-type]
                folded += len(batch)
                events += sum(stream.events for stream in batch)
                if capture.rows:
                    send(["rows", orjson.dumps(capture.rows)])
                    capture.rows = []
            send(["range", folded, events])
        send(["end", [model.handover() for model in models]])
    finally:
        conn.close()


def main() -> None:
    out = os.fdopen(int(sys.argv[1]), "wb")

    def send(message: list[Any]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(_HEADER.pack(len(data)))
        out.write(data)
        out.flush()

    try:
        task = pickle.loads(sys.stdin.buffer.read())
        _work(task, send)
    except BrokenPipeError:  # the pass ended (or was killed) first
        return
    except UnreadableEventError as error:  # the ledger's own finding, not the worker's fault
        with contextlib.suppress(BrokenPipeError):
            send(["unreadable", error.where])
    except BaseException as error:
        try:
            send(["error", f"{type(error).__name__}: {error}"])
        except BrokenPipeError:
            return
    finally:
        with contextlib.suppress(BrokenPipeError):
            out.close()


if __name__ == "__main__":
    main()
