"""Alembic owns the schema. `upgrade_connection` runs the migrations on a connection the
application already holds, so `db upgrade` and a newcomer's first command share one path."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

HERE = Path(__file__).resolve().parent


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    return config


def upgrade_connection(connection: Connection, revision: str = "head") -> None:
    restamp_placeholders(connection)
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


# The first version (6d6c7e8) shipped 0002-0005 as empty placeholders: a ledger it wrote is
# stamped 0005 with none of their tables, and 0006 failed on it ('unexpected
# NoSuchTableError'). A table each of them creates, in order, tells how far it really is.
_PLACEHOLDER_TABLES = (
    ("0002", "rm_tracking"),
    ("0003", "ledger_checkpoints"),
    ("0004", "ledger_suppressions"),
    ("0005", "ledger_export_secrets"),
)


def restamp_placeholders(connection: Connection) -> None:
    """Stamp a ledger at 0002-0005 back to the last of them whose table it has (0001 if
    none), so that the revisions the first version left empty run for real: a ledger that
    version wrote is then upgraded like any other."""
    inspector = sa.inspect(connection)
    if not inspector.has_table("alembic_version"):
        return
    stamped = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    if stamped is None or not ("0002" <= str(stamped) <= "0005"):
        return
    actual = "0001"
    for revision, table in _PLACEHOLDER_TABLES:
        if revision > str(stamped) or not inspector.has_table(table):
            break
        actual = revision
    if actual != stamped:
        connection.execute(
            sa.text("UPDATE alembic_version SET version_num = :actual"), {"actual": actual}
        )


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


_SLOTS = ("a", "b")
_VIOLATIONS_TABLES = (
    "violations",
    "violation_transfers",
    "transfer_initiations",
    "violation_notices",
)


def reset_violations_model(bind: Connection) -> None:
    """Empty the violations read model in both slots and set it back to event zero: the next
    query that reads it rebuilds it from the events (read models are disposable: see 0002)."""
    reset_read_model(bind, "violations", _VIOLATIONS_TABLES)


def reset_read_model(bind: Connection, model: str, tables: tuple[str, ...]) -> None:
    """Empty read model `model` (its `tables`) in both slots and set it back to event zero:
    the next query that reads it rebuilds it from the events."""
    present = set(sa.inspect(bind).get_table_names())
    for name in tables:
        for slot in _SLOTS:
            table = f"rm_{name}_{slot}"
            if table in present:
                bind.execute(sa.text(f"DELETE FROM {table}"))
    if "rm_tracking" in present:
        bind.execute(
            sa.text("UPDATE rm_tracking SET position = 0 WHERE name = :name"), {"name": model}
        )
