"""Running the `consent-ledger` command in-process, as a user would, for the CLI tests."""

from __future__ import annotations

from pathlib import Path
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


def import_facts(url: str, facts: list[dict[str, Any]], path: Path) -> None:
    """Write `facts` as a feed file at `path` and import it: every one accepted."""
    from tests.examples import jsonl

    path.write_bytes(jsonl(facts))
    assert run_json(url, "import", str(path))["accepted"] == len(facts)


def due_diligence_export(url: str, acquirer: str, out: Path, *options: str) -> dict[str, Any]:
    """`export due-diligence` to `acquirer` into `out`; the export as `export list` names it."""
    document = run_json(
        url, "export", "due-diligence", "--acquirer", acquirer, "--out", str(out), *options
    )
    listed = run_json(url, "export", "list")["exports"]
    (recorded,) = [e for e in listed if e["export_id"] == document["export_id"]]
    return recorded
