"""`order show`."""

from __future__ import annotations

from typing import Any

import click

from cli import logs
from cli.output import emit_json, json_option, table
from cli.params import pass_ledger


@click.group("order")
def order() -> None:
    """Orders and their verification and delivery facts."""


@order.command("show")
@click.argument("ref")
@json_option
@pass_ledger
def show(ledger: Any, ref: str, as_json: bool) -> None:
    """Order REF: its customer, status and every fact about it in business time."""
    customer_ref = ledger.customer_of_order(ref)
    from ledger import views

    rows = views.order_rows(*ledger.customer_with_events(customer_ref))  # (one read: one moment)
    row = next(r for r in rows if r["order"] == ref)
    document = {"customer": customer_ref, **row}
    logs.summarise(customer=logs.hashed(customer_ref), facts=len(row["facts"]))
    if as_json:
        emit_json(document)
        return
    click.echo(
        f"Order {ref} of customer {customer_ref}: {row['total']} {row['currency']}, {row['status']}"
    )
    facts = [
        {
            "at": f["at"],
            "type": f["type"],
            "fact_id": f["fact_id"],
            "detail": " ".join(
                f"{k}={v}" for k, v in f.items() if k not in ("at", "type", "fact_id")
            ),
        }
        for f in row["facts"]
    ]
    click.echo(table(facts, ["at", "type", "fact_id", "detail"]))


commands = [order]
