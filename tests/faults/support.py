"""What the fault tests share: generated feeds on disk, the real command, the recorded ids."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

import cli.main
from ledger.samplefeed import generate

# The console script of this environment: the fault tests run the product as a user does.
COMMAND = Path(sys.executable).with_name("consent-ledger")


def feed_lines(customers: int, *, prefix: str, seed: int = 7) -> list[bytes]:
    """A realistic feed (about fifteen facts per customer), one JSON line each."""
    return [orjson.dumps(fact) + b"\n" for fact in generate(customers, seed=seed, prefix=prefix)]


def write_feed(path: Path, lines: Sequence[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def fact_id(line: bytes) -> str:
    return str(orjson.loads(line)["id"])


def customer_of(fact: str) -> str | None:
    """The sample feed names fact ids `<customer>-<serial>`; the transfer initiation has none."""
    ref, _, serial = fact.rpartition("-")
    return ref if serial.isdigit() and ref else None


def start(url: str, *args: str) -> subprocess.Popen[bytes]:
    """`consent-ledger --db URL ARGS…` as a separate process (logs at warning and above)."""
    env = {**os.environ, "CONSENT_LEDGER_LOG_LEVEL": "warning"}
    return subprocess.Popen(
        [str(COMMAND), "--db", url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def fork(url: str, *args: str, out: Path | None = None, err: Path | None = None) -> int:
    """`consent-ledger --db URL ARGS…` in a forked child of this process; returns its pid.

    The same entry point as the console script, minus the interpreter's start-up (already
    paid here), so a kill at a random moment lands in the command's own work rather than in
    importing modules. The child shares nothing it uses with this process: the command opens
    its own database connections, and it ends with `os._exit`, running no inherited cleanup.
    Its stdout goes to `out`, its stderr to `err` (if given; else nowhere).
    """
    return fork_commands(url, [list(args)], out=out, err=err)


def fork_commands(
    url: str, commands: Sequence[Sequence[str]], *, out: Path | None = None, err: Path | None = None
) -> int:
    """Like `fork`, running several commands one after the other in the child.

    Call it with no database connection of this process open (`Database.dispose()` first):
    SQLite's locks are per process, and a connection must not be carried across a fork.
    """
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        os.dup2(os.open(out or os.devnull, flags, 0o600), 1)
        os.dup2(os.open(err or os.devnull, flags, 0o600), 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (the child never returns)
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        code = 0
        for args in commands:
            sys.argv = ["consent-ledger", "--db", url, "--log-level", "warning", *args]
            try:
                cli.main.main()
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else 1
            if code:
                break
    except BaseException:
        code = 70
        traceback.print_exc()  # what the interpreter would print for an uncaught error
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_forked(url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`fork` to completion, with what it printed."""
    handle, name = tempfile.mkstemp(prefix="consent-ledger-")
    os.close(handle)
    out, err = Path(name), Path(name + ".err")
    try:
        code = wait(fork(url, *args, out=out, err=err))
        return subprocess.CompletedProcess(args, code, out.read_bytes(), err.read_bytes())
    finally:
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)


def wait(pid: int) -> int:
    """The exit status of a forked command: its code, or minus the signal that killed it."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    process = start(url, *args)
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def recorded_ids(url: str) -> list[str]:
    """Every fact id the ledger holds, read straight from its table (duplicates kept)."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.exec_driver_sql("SELECT fact_id FROM ledger_facts")]
    finally:
        engine.dispose()


def event_count(url: str) -> int:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM ledger_events").scalar() or 0)
    finally:
        engine.dispose()


def summary(process: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The JSON summary an `import --json` printed, after checking it succeeded."""
    assert process.returncode == 0, process.stderr.decode(errors="replace")
    document = orjson.loads(process.stdout)
    assert isinstance(document, dict)
    return document
