"""Running the `consent-ledger` command in-process, as a user would, for the CLI tests."""

from __future__ import annotations

from typing import Any

import orjson
from click.testing import CliRunner, Result

from cli.main import cli


def run(url: str | None, *args: str, stdin: str | bytes | None = None) -> Result:
    """`consent-ledger [--db URL] ARGS…`; click ≥ 8.2 keeps stdout and stderr apart."""
    prefix = ["--db", url] if url is not None else []
    return CliRunner().invoke(cli, [*prefix, *args], input=stdin, catch_exceptions=False)


def run_json(url: str | None, *args: str, code: int = 0) -> Any:
    """The one JSON document a `--json` command prints, after checking its exit code."""
    result = run(url, *args, "--json")
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return orjson.loads(result.stdout)


def error_line(result: Result) -> str:
    """The one `Error: …` line on stderr (logs are the other lines)."""
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def log_pseudonym(url: str, ref: str) -> str:
    """How the ledger at `url` names customer `ref` in its logs (`cli.logs.hashed`)."""
    import base64

    from cli import logs
    from ledger.persistence import sqlite_reads
    from ledger.persistence.database import Database

    database = Database(url)
    try:
        rows = database.fetch_on_driver(sqlite_reads.SELECT_META, (sqlite_reads.LOG_KEY_NAME,))
    finally:
        database.dispose()
    return logs.keyed_hash(ref, base64.b64decode(rows[0][0]))
