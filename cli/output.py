"""One output option and one renderer for every command (the sqlite-utils pattern)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from ledger.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])


def json_option(func: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print exactly one JSON document on stdout."
    )(func)


def emit_json(document: Any) -> None:
    click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2, default=str).decode())


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], empty: str = "(none)") -> str:
    """A plain text table a support agent can read."""
    if not rows:
        return f"  {empty}"
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    header = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    lines = ["  " + header.rstrip()]
    for r in cells:
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def progress_enabled() -> bool:
    return sys.stderr.isatty()


def check_writable(path: Path, *, keep_off: Sequence[Path] = ()) -> None:
    """Refuse, before any work, a file that cannot be written where it is asked for: its
    folder missing or not a folder, a folder or anything but a file in its place (a device
    would be replaced by a file), or one of `keep_off` (the ledger's own files, such as its
    database and key folder: `ledger.persistence.database.own_files`) or inside one."""
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder")
    if path.exists() and not path.is_file():
        raise InputError(f"cannot write {path}: it is not a regular file")
    target = path.resolve()
    for own in keep_off:
        own = own.resolve()
        if target == own:
            raise InputError(f"cannot write {path}: it is one of the ledger's own files")
        if own in target.parents:
            raise InputError(f"cannot write {path}: it is in the ledger's own folder {own}")


def discard(path: Path) -> None:
    """Remove what a failed write left, if it can be: a cleanup never hides the failure."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def write_file(
    path: Path, content: bytes, *, private: bool = False, shown: Path | None = None
) -> None:
    """Write `content` to `path`; `private`: readable by its owner only (personal data).
    A failure is the user's to fix (a full disk, no permission): an input error naming the
    file (`shown`, if `path` is a temporary name for it), not an internal one."""
    try:
        if private:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.chmod(path, 0o600)
        else:
            path.write_bytes(content)
    except OSError as error:
        raise InputError(f"cannot write {shown or path}: {error.strerror or error}") from None


def put_file(path: Path, content: bytes) -> None:
    """Write `content` to `path` whole or not at all: under a temporary name beside it, put
    in place once written. A full disk left a truncated report, over an earlier good one."""
    from ledger.temporaries import FILE_TEMPORARY, partial_name, remove_abandoned

    remove_abandoned(path.parent, FILE_TEMPORARY)  # what a killed command left there
    temporary = partial_name(path)
    try:
        write_file(temporary, content, shown=path)
        try:
            os.replace(temporary, path)
        except OSError as error:
            raise InputError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        discard(temporary)
