"""Logging: configured once, here, by the CLI. structlog to stderr; stdout carries data only.

JSON lines when stderr is not a terminal (machines read it), a readable console otherwise.
Log events carry ids and counts, never personal data: customer references are replaced by a
keyed hash (`hashed`).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import importlib
import logging
import sys
import types
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any


class _DeferredAsyncio(types.ModuleType):
    """Stands in for `asyncio` in the modules structlog imports, until one of them uses it.

    structlog imports asyncio at import time (~30 ms, a tenth of a query command's process)
    for its async logging methods only, which the CLI never calls. Its modules are handed
    this placeholder instead; the first attribute they read imports the real asyncio and
    answers from it. Nothing else ever sees the placeholder: it is in `sys.modules` only
    while structlog is being imported.
    """

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get("asyncio") is self:  # asked during structlog's own import
            del sys.modules["asyncio"]
        return getattr(importlib.import_module("asyncio"), name)


def _import_structlog() -> types.ModuleType:
    if "asyncio" in sys.modules:
        return importlib.import_module("structlog")
    placeholder = _DeferredAsyncio("asyncio")
    sys.modules["asyncio"] = placeholder
    try:
        return importlib.import_module("structlog")
    finally:
        if sys.modules.get("asyncio") is placeholder:
            del sys.modules["asyncio"]


if TYPE_CHECKING:
    import structlog
else:
    structlog = _import_structlog()

LEVELS = ("debug", "info", "warning", "error")


class _Unfailing:
    """stderr for the logs, whose writing never fails a command (stderr on a full disk, or
    a closed pipe): a log line is never worth a command's result."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        with suppress(OSError, ValueError):
            self.stream.write(text)

    def flush(self) -> None:
        with suppress(OSError, ValueError):
            self.stream.flush()


def configure(level: str = "info") -> None:
    # psycopg warns through stdlib logging when it abandons a pipeline or COPY on a lost
    # connection; the command already reports that failure in its one `Error:` line.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    # SQLAlchemy's pool logs, with a traceback, a connection it could not reset on its way
    # back (the server gone, a session timed out): the command's own line says what failed.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    renderer: structlog.typing.Processor
    if sys.stderr.isatty():
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _fold_into_summary,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.WriteLoggerFactory(file=_Unfailing(sys.stderr)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


_summary: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "consent_ledger_command_summary", default=None
)


@contextmanager
def summary() -> Iterator[dict[str, Any]]:
    """Collect what the running command reports; the CLI logs it as one line at the end."""
    fields: dict[str, Any] = {}
    token = _summary.set(fields)
    try:
        yield fields
    finally:
        _summary.reset(token)


def _fold_into_summary(
    _logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Inside a command, an info line becomes part of the command's summary line, so a
    command logs one line however its steps report; warnings and errors still print."""
    current = _summary.get()
    if current is None or method not in ("debug", "info"):
        return event
    current.update({k: v for k, v in event.items() if k != "event"})
    raise structlog.DropEvent


def summarise(**fields: Any) -> None:
    """Add ids and counts (never personal data) to the command's one summary line (a field
    whose value is None is left out)."""
    fields = {name: value for name, value in fields.items() if value is not None}
    current = _summary.get()
    if current is None:  # outside the CLI (a library caller): log it on its own
        log.info("summary", **fields)
    else:
        current.update(fields)


def hashed(ref: str) -> str | None:
    """The stand-in for a customer reference, or a fact id (a shop's ids may embed its
    customer references, or be emails), in a command's logs: `keyed_hash` under the
    ledger's log key, so one customer's lines match each other, yet no one holding only the
    logs can recover a reference by hashing likely ones. None (the field is left out) for a
    ledger without a log key, or outside a command."""
    import click

    ctx = click.get_current_context(silent=True)
    source = getattr(ctx.find_root().obj, "log_key", None) if ctx is not None else None
    key = source() if source is not None else None
    return keyed_hash(ref, key) if key is not None else None


def keyed_hash(ref: str, key: bytes) -> str:
    return "k:" + hmac.new(key, ref.encode(), hashlib.sha256).hexdigest()[:16]


log = structlog.get_logger("consent_ledger")
