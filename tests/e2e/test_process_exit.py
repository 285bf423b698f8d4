"""The console script's end: the command's exit code and whole output, its connections
closed, with or without the interpreter's teardown (`cli.main.run`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

COMMAND = Path(sys.executable).with_name("consent-ledger")
TRANSFER = '{"type": "transfer.initiated", "id": "t-1", "acquirer": "Acme", "scope": "all"}'


def _run(
    url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMAND), "--db", url, "--log-level", "warning", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.mark.parametrize("teardown", ["skipped", "kept"])
def test_a_command_ends_with_its_code_its_output_and_its_connections_closed(
    ledger_url: str, feed_small: Path, tmp_path: Path, teardown: str
) -> None:
    env = {}
    if teardown == "kept":  # a finalizer that runs at exit: the interpreter's exit, as ever
        probe = tmp_path / "probe"
        probe.mkdir()
        (probe / "sitecustomize.py").write_text(
            "import tempfile, weakref\n_kept = tempfile.TemporaryDirectory()\n"
        )
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(probe), os.environ.get("PYTHONPATH")])
        )
    assert _run(ledger_url, "db", "upgrade", env=env).returncode == 0
    done = _run(ledger_url, "import", str(feed_small), "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accepted"] == 26
    recorded = _run(ledger_url, "record", TRANSFER, "--json", env=env)
    assert recorded.returncode == 0 and json.loads(recorded.stdout)["recorded"] is True
    # A refusal keeps its exit code (3) and its one error line.
    nobody = ("disclose", "acquirer", "Nobody Ltd", "--customer", "C100", "--categories", "name")
    refused = _run(ledger_url, *nobody, env=env)
    assert refused.returncode == 3, refused.stderr
    assert refused.stdout == "" and refused.stderr.count("Error: ") == 1
    # Every connection was closed: SQLite checkpointed its write-ahead log into the file.
    if ledger_url.startswith("sqlite:///"):
        wal = Path(ledger_url.removeprefix("sqlite:///") + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0
    verified = _run(ledger_url, "verify", "--json", env=env)
    assert verified.returncode == 0 and json.loads(verified.stdout)["facts"] == 27
