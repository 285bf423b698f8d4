"""Alembic environment: run with the application's connection when it gives one.

`fileConfig` is applied only when Alembic's own command line runs this file with an ini file;
from the application it would replace the application's logging configuration.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine

config = context.config

connection = config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    url = os.environ.get("CONSENT_LEDGER_DB", "sqlite:///consent-ledger.db")
    engine = create_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
