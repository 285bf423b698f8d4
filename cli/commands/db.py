"""`db upgrade`: create or migrate the database."""

from __future__ import annotations

import click

from cli.output import emit_json, json_option


@click.group("db")
def db() -> None:
    """Create or migrate the database schema."""


@db.command("upgrade")
@json_option
@click.pass_obj
def upgrade(obj: object, as_json: bool) -> None:
    """Create or migrate every table (Alembic) and create the key files a new ledger needs."""
    from ledger.config import upgrade as run_upgrade
    from ledger.persistence.database import Database, safe_url

    url = obj.url  # type: ignore[attr-defined]
    database = Database(url)
    database.on_lock_wait = obj.say_waiting  # type: ignore[attr-defined]
    result = run_upgrade(database)
    document = {
        "database": safe_url(url),
        "from": result.before,
        "to": result.after,
        "master_key": result.key_source,
    }
    if as_json:
        emit_json(document)
    elif result.before == result.after:
        click.echo(f"{document['database']} is up to date (schema {result.after})")
    else:
        click.echo(
            f"{document['database']} upgraded from {result.before or 'nothing'} to {result.after}"
        )


commands = [db]
