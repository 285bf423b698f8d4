"""`db upgrade`: create or migrate the database; `db copy`: the ledger into a new one."""

from __future__ import annotations

import sys
from typing import Any

import click

from cli import logs
from cli.output import emit_json, json_option, progress_enabled


@click.group("db")
def db() -> None:
    """Create or migrate the database schema; copy the ledger into a new database."""


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
    encoding = database.server_encoding()
    if encoding is not None:  # a ledger an earlier version made there (a new one is refused)
        click.echo(
            f"Warning: the PostgreSQL database is encoded in {encoding}, which cannot hold "
            "every text a feed may name; move the ledger into a new database created with "
            "ENCODING 'UTF8' ('db copy')",
            err=True,
        )
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


@db.command("copy")
@click.argument("target", metavar="TARGET_URL")
@click.option(
    "--public-key-only",
    is_flag=True,
    help="Copy the public key alone, not the master or signing key: a copy for an auditor, "
    "which verifies and answers but opens no personal data and records nothing.",
)
@json_option
@click.pass_obj
def copy(context: Any, target: str, public_key_only: bool, as_json: bool) -> None:
    """Copy the ledger, as recorded, into TARGET_URL: a new SQLite file or an empty
    PostgreSQL database (to move to PostgreSQL when one machine is outgrown, or to give an
    auditor a file of their own). Every event, fact, wrapped key and signed checkpoint goes
    across as stored; the copy's read models are rebuilt and the copy is verified (exit 4 if
    it does not verify). The key files go into the copy's key folder (beside an SQLite file;
    else CONSENT_LEDGER_KEY_DIR or the folder for that URL)."""
    from ledger.application import ConsentLedger
    from ledger.config import open_database
    from ledger.persistence.copying import copy_ledger, row_counts
    from ledger.persistence.database import Database, safe_url
    from ledger.persistence.seals import verify_ledger

    source = open_database(context.url, create=False, on_lock_wait=context.say_waiting)
    destination = Database(target)
    shown = progress_enabled()
    if shown:
        total = sum(row_counts(source).values())
        with click.progressbar(length=total, label="copying", file=sys.stderr) as bar:
            copied = copy_ledger(source, destination, bar.update, public_only=public_key_only)
    else:
        copied = copy_ledger(source, destination, public_only=public_key_only)
    copy_of = ConsentLedger(destination)
    models = copy_of.read_models
    if shown:
        head = models.status()[0].head
        label = "rebuilding the copy's read models"
        with click.progressbar(length=head, label=label, file=sys.stderr) as bar:
            rebuilt = models.rebuild(progress=bar.update).names
            bar.update(max(0, head - bar.pos))
        click.echo("verifying the copy", err=True)
    else:
        rebuilt = models.rebuild().names
    verified = verify_ledger(copy_of)
    # Closed once done. A failure leaves them to the process's end: a rebuild cut short
    # closes its own reads first (disposed under it, they complained on stderr).
    source.dispose()
    destination.dispose()
    logs.summarise(rows=sum(copied.rows.values()), facts=verified.facts, ok=verified.ok)
    document = {
        "from": safe_url(source.url),
        "to": safe_url(destination.url),
        "rows": copied.rows,
        "key_files": [str(path) for path in copied.key_files],
        "rebuilt": list(rebuilt),
        "verify": verified.to_json(),
    }
    if as_json:
        emit_json(document)
    else:
        click.echo(
            f"copied {document['from']} to {document['to']}: {verified.facts} facts "
            f"({verified.events} events), {sum(copied.rows.values())} rows in all"
        )
        for path in copied.key_files:
            click.echo(f"key file written: {path}")
        click.echo(f"read models rebuilt: {', '.join(rebuilt)}")
        if verified.ok:
            click.echo(f"the copy verifies: head {verified.head}")
        else:
            click.echo(f"the copy FAILED verification: {len(verified.problems)} problem(s)")
            for problem in verified.problems:
                click.echo(f"  {problem['kind']}: {problem['message']}")
    if not verified.ok:
        from ledger.errors import IntegrityFailure

        raise IntegrityFailure(
            "the copy failed verification: run 'consent-ledger verify' on the source too"
        )


commands = [db]
