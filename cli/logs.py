"""Logging: configured once, here, by the CLI. structlog to stderr; stdout carries data only.

JSON lines when stderr is not a terminal (machines read it), a readable console otherwise.
Log events carry ids and counts, never personal data: customer references are hashed.
"""

from __future__ import annotations

import hashlib
import logging
import sys

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure(level: str = "info") -> None:
    renderer: structlog.typing.Processor
    if sys.stderr.isatty():
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
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


def hashed(ref: str) -> str:
    """A stable stand-in for a customer reference in logs."""
    return "h:" + hashlib.sha256(ref.encode()).hexdigest()[:12]


log = structlog.get_logger("consent_ledger")
