"""The command line starts light: what a command does not need, it does not import."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sqlalchemy", "alembic", "ledger.application", "ledger.domainmodel", "eventsourcing")


def imported_after(code: str) -> set[str]:
    """The heavy modules in `sys.modules` after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_importing_the_cli_imports_no_database_or_domain_code() -> None:
    assert imported_after("import cli.main") == set()


def test_the_probe_sees_a_heavy_import() -> None:
    assert "sqlalchemy" in imported_after("import sqlalchemy")
