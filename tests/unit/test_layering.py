"""The domain imports no infrastructure: SQLAlchemy, click and structlog stay outside
`ledger/` (its `persistence/` package aside), as the house style requires."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LEDGER = Path(__file__).resolve().parents[2] / "ledger"
FORBIDDEN = ("sqlalchemy", "click", "structlog", "alembic", "psycopg")
DOMAIN_MODULES = sorted(p for p in LEDGER.glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_domain_modules_are_found() -> None:
    names = {p.name for p in DOMAIN_MODULES}
    assert {"domainmodel.py", "rules.py", "feed.py", "views.py", "vocabulary.py"} <= names


@pytest.mark.parametrize("path", DOMAIN_MODULES, ids=lambda p: p.name)
def test_domain_module_imports_no_infrastructure(path: Path) -> None:
    bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in FORBIDDEN)
    assert bad == [], f"{path.name} imports {bad}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom sqlalchemy.orm import Session\nimport click as c\n")
    assert imported_modules(sample) == {"os", "sqlalchemy.orm", "click"}
