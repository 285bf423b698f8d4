"""Temporary files and folders written beside an output, and what a killed command left.

An export stages its folder, and an access pack its files, beside where they go, under
names that carry this machine (a hash of its host name: containers sharing a folder have
process ids of their own) and this process. A later command in that folder removes such a
temporary once it sees that its process, on this machine, is gone: it may hold personal
data, or an export that was never recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
from pathlib import Path

# The names' tails: `.<name>.partial-<12 hex>-<mark>` (an export's staging folder, and its
# `disclosures-` list and `parts-` folder), `.<name>.consent-ledger-<mark>.partial` (a file).
_MARK = r"(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,9})"
EXPORT_TEMPORARY = re.compile(rf"\..+\.(?:partial|disclosures|parts)-[0-9a-f]{{12}}-{_MARK}")
FILE_TEMPORARY = re.compile(rf"\..+\.consent-ledger-{_MARK}\.partial")


def leave_stopping_to_the_parent() -> None:
    """In a forked worker process, first thing: a terminal's Ctrl-C reaches the whole
    process group, and SIGTERM may too; each worker raised KeyboardInterrupt and printed
    its traceback before the command's one `Error: interrupted` line. A worker ignores
    Ctrl-C (its parent, interrupted itself, terminates it and removes what it left) and
    ends quietly on SIGTERM: by `SystemExit`, which a process ends with silently, and which
    lets go of the locks the worker holds on the way out (killed outright, by the signal's
    default action, a worker holding its pool's queue lock left the parent waiting for it
    for good)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_quietly)
    # And out of the command's process group, so that a signal to the group (a terminal's,
    # a supervisor's) reaches the parent only: a worker of a pool that ended on it was
    # replaced by the pool with a new one while the parent terminated it, and the two
    # could wait on each other for good. The parent stops its workers itself.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    # Forked with both held off (`signals_held`): what was sent meanwhile arrives now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _end_quietly(signum: int, frame: object) -> None:
    # Once: a second SIGTERM (the parent's, after the group's) ends it outright, where it
    # would interrupt the first's clean-up with a printed "Exception ignored".
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(1)


def process_mark() -> str:
    """This machine and process, as the names of temporaries carry them."""
    return f"{_host()}-{os.getpid()}"


def partial_name(path: Path) -> Path:
    """A temporary name for the file `path` while it is written, beside it."""
    tail = f".consent-ledger-{process_mark()}.partial"
    return path.with_name(f".{fitted(path.name, f'.{tail}')}{tail}")


NAME_MAX = 255  # bytes in a file's name, on the file systems this runs on


def fitted(name: str, around: str) -> str:
    """`name`, cut short (at a character) so that it fits a file name beside `around`, the
    rest of a temporary's name: an output named near the limit was refused ("File name too
    long") for its temporary's sake. A name cut short ends with a hash of the whole, so the
    temporaries of two outputs that differ only past the cut (an access pack's `x.json`
    and `x.json.md`) stay apart."""
    room = NAME_MAX - len(os.fsencode(around))
    encoded = os.fsencode(name)
    if len(encoded) <= room:
        return name
    whole = hashlib.sha256(encoded).hexdigest()[:8]
    return f"{encoded[: room - 9].decode('utf-8', 'ignore')}~{whole}"


def remove_abandoned(folder: Path, names: re.Pattern[str]) -> None:
    """Remove the temporaries in `folder` whose names match `names` (with its groups `host`
    and `pid`), if they are this machine's and their process is gone."""
    try:
        candidates = list(folder.glob(".*"))
    except OSError:
        return
    for path in candidates:
        if not _abandoned(names.fullmatch(path.name)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)


def _abandoned(found: re.Match[str] | None) -> bool:
    if found is None or found["host"] != _host():
        return False
    try:
        os.kill(int(found["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # another user's process; no such pid
        return False
    return False


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
