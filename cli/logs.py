"""Logging: configured once, here, by the CLI. structlog to stderr; stdout carries data only.

JSON lines when stderr is not a terminal (machines read it), a readable console otherwise.
Log events carry ids and counts, never personal data: customer references are hashed.
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib
import logging
import sys
import types
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
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


def configure(level: str = "info") -> None:
    # psycopg warns through stdlib logging when it abandons a pipeline or COPY on a lost
    # connection; the command already reports that failure in its one `Error:` line.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
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
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
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
    """Add ids and counts (never personal data) to the command's one summary line."""
    current = _summary.get()
    if current is None:  # outside the CLI (a library caller): log it on its own
        log.info("summary", **fields)
    else:
        current.update(fields)


def hashed(ref: str) -> str:
    """A stable stand-in for a customer reference in logs."""
    return "h:" + hashlib.sha256(ref.encode()).hexdigest()[:12]


log = structlog.get_logger("consent_ledger")
