"""`projections status`, `projections rebuild [NAME]`, `projections follow`: the read models."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from cli import logs
from cli.output import emit_json, json_option, progress_enabled, table
from cli.params import FloatRange


@click.group("projections")
def projections() -> None:
    """The read models: where each stands, rebuild from the events, keep live."""


@projections.command("status")
@json_option
@click.pass_obj
def status(context: Any, as_json: bool) -> None:
    """Each read model's position in the event log, the head, and the lag."""
    states = context.ledger.read_models.status()
    head = states[0].head if states else 0
    rows = [s.to_json() for s in states]
    if as_json:
        emit_json({"head": head, "projections": rows})
        return
    click.echo(f"Event log head: {head}")
    click.echo(table(rows, ["name", "position", "lag", "slot", "rebuilt_at"]))


@projections.command("rebuild")
@click.argument("name", required=False)
@json_option
@click.pass_obj
def rebuild(context: Any, name: str | None, as_json: bool) -> None:
    """Rebuild NAME (default: every read model) from event zero, beside the one in use;
    queries switch to it only when it is complete.

    \b
    NAME: current_consent, consent_history, disclosure_trail, recipient_registry,
    order_status or violations."""
    models = context.ledger.read_models
    if name is not None and name not in models.models:
        from ledger.feed import unknown_value  # (the value is repeated only if a typo)

        refusal = unknown_value("read model", name, models.models)
        raise click.BadParameter(refusal, param_hint="NAME")
    names = [models.model(name).name] if name else list(models.models)
    total = models.status()[0].head
    if progress_enabled():
        with click.progressbar(
            length=total, label=f"rebuilding {name or 'every read model'}", file=sys.stderr
        ) as bar:
            result = models.rebuild(names, progress=bar.update)
            bar.update(max(0, total - bar.pos))  # the acquirers' streams, folded first
    else:
        result = models.rebuild(names)
    rate = result.events / result.seconds if result.seconds else 0.0
    logs.log.info("projections.rebuild", names=list(result.names), events=result.events)
    document = {
        "rebuilt": list(result.names),
        "events": result.events,
        "streams": result.streams,
        "seconds": round(result.seconds, 3),
        "events_per_second": round(rate),
    }
    if as_json:
        emit_json(document)
        return
    click.echo(
        f"rebuilt {', '.join(result.names)}: {result.events} events, {result.streams} streams "
        f"in {result.seconds:.2f} s ({rate:,.0f} events/s)"
    )


@projections.command("follow")
@click.option(
    "--interval",
    type=FloatRange(0.05, 3600),
    default=1.0,
    show_default=True,
    help="Seconds between checks (PostgreSQL wakes at once on each recording).",
)
@click.pass_obj
def follow(context: Any, interval: float) -> None:
    """Keep every read model at the head of the log until stopped (Ctrl-C or SIGTERM).
    PostgreSQL: LISTEN/NOTIFY; SQLite: polling. A connection lost on the way (a server
    restart) is warned of and tried again, after 1 s doubling to 30 s."""
    models = context.ledger.read_models
    stopping: list[bool] = []

    def stop(_signum: int, _frame: Any) -> None:
        stopping.append(True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logs.log.info("projections.follow", interval=interval)
    models.follow(
        interval=interval,
        stop=lambda: bool(stopping),
        applied=lambda count: logs.log.info("projections.caught_up", events=count),
        lost=lambda reason, wait: logs.log.warning(
            "projections.retrying", reason=reason, retry_in_seconds=wait
        ),
    )


commands = [projections]
