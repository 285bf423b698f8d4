"""Shared parameters: the ledger passed to commands, and times on the command line."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, time
from typing import Any, TypeVar

import click

from ledger.feed import in_utc

F = TypeVar("F", bound=Callable[..., Any])


def pass_ledger(func: F) -> F:
    """Give the command the opened ledger as its first argument."""

    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        return ctx.invoke(func, ctx.obj.ledger, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def pass_context(func: F) -> F:
    """Give the command the command line's `LedgerContext` (`cli.main`) as its first argument:
    for a command that reads stored facts (`customer_facts`) without opening the ledger."""

    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        return ctx.invoke(func, ctx.obj, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Moment(click.ParamType):  # type: ignore[type-arg]
    """ISO 8601 with a UTC offset, or a date (meaning the end of that day, UTC)."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        try:
            if len(text) == 10:
                day = datetime.fromisoformat(text).date()
                end = datetime.combine(day, time.max, tzinfo=UTC)
                return end
            moment = datetime.fromisoformat(text)
        except ValueError:
            # The value is not repeated: typed in the wrong place, it may be a name or an
            # email (errors never echo personal data), and the user has it in front of them.
            self.fail("not an ISO 8601 time or date (e.g. 2025-03-03T12:00:00Z)", param, ctx)
        if moment.tzinfo is None:
            self.fail("the time has no UTC offset (add Z or +00:00)", param, ctx)
        try:
            return in_utc(moment)
        except ValueError as error:
            self.fail(f"the time {error}", param, ctx)


MOMENT = Moment()

# `--known-at`, the same on every query that answers as the ledger stood at a recorded time.
known_at_option = click.option(
    "--known-at",
    "known_at",
    type=MOMENT,
    help="Answer as the ledger knew it at this recorded time (only facts recorded by then).",
)


class Choice(click.Choice):  # type: ignore[type-arg]
    """click's `Choice`, whose refusal names the choices but does not repeat the value given
    (as `Moment`: it may be personal data typed in the wrong place)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            choices = ", ".join(str(choice) for choice in self.choices)
            self.fail(f"not one of {choices}", param, ctx)


class IntRange(click.IntRange):
    """click's `IntRange`, whose refusal states what is expected without repeating the value
    (as `Choice`)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"not a whole number {_in_range(self)}", param, ctx)


class FloatRange(click.FloatRange):
    """click's `FloatRange`, whose refusal does not repeat the value (as `IntRange`)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"not a number {_in_range(self)}", param, ctx)


def _in_range(kind: click.IntRange | click.FloatRange) -> str:
    if kind.min is None and kind.max is None:
        return "(e.g. 7)"
    return f"in the range {kind._describe_range()}"
