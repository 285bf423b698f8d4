"""Every command in README.md's ```sh blocks runs as written ("keep every command in the
README working"), in the README's order, in a fresh folder.

The Commands section's examples use the default ledger (`consent-ledger.db` in the current
folder) and the sample feed copied to `feed.jsonl` (README: "`cp tests/data/feed-small.jsonl
feed.jsonl` first"): C100, C101, O500, s-0002, Offspring, Mastercard and "Electoral Roll
Check Ltd" are that feed's. The demo's ledger (`consent-ledger-demo.db`) names its customers
C0000001 and so on, and its facts after them: none of those examples would find them there.
So the folder gets `feed.jsonl` first and every line runs there, the demo's lines building
their own file beside it, as the README says they do.

Each line of a ```sh block is one of:

- a `consent-ledger` command (or `.venv/bin/consent-ledger`): run in-process through click's
  CliRunner, or, when it needs the shell (`$(...)`, `>`), as `bash -c` with the installed
  command on PATH. It must exit 0 but where EXPECTED_EXIT says otherwise, with a reason;
  where its comment names the keys of its JSON document (`# {"ok", "facts", ...}`), its
  document has exactly those;
- a command of SKIPPED, by its exact text, with the reason it is not run here.

Anything else fails the test: a line of another kind, or what looks like a placeholder (a
word in capitals, `[...]`, `<...>`, `...`) that OPTIONAL, PLACEHOLDERS or LITERALS do not
name. The example server of EXAMPLE_URLS becomes a new schema of CONSENT_LEDGER_TEST_POSTGRES's
server, or without one the line is skipped; REWRITES runs a command otherwise. Lines joined
by `&&` are taken one by one. `test_readme_lines_not_run_say_why` lists each line not run as
written with its reason, as a pytest skip (shown in the summary: `-ra`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from tests.cli_helpers import run
from tests.conftest import POSTGRES_ENV, postgres_schema, postgres_server

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FEED = ROOT / "tests" / "data" / "feed-small.jsonl"
BIN = Path(sys.executable).parent  # the virtualenv's bin: `consent-ledger` is installed there
PROGRAM = "consent-ledger"

# Lines (or `&&` parts) not run here, by their exact text, each with its reason.
SKIPPED = {
    "python3 -m venv .venv": "installation: the test runs in the environment it made",
    ".venv/bin/pip install -e .": "installation: the test runs in the environment it made",
    ".venv/bin/pip install -e '.[test]'": "installation: the test runs in the environment it made",
    ".venv/bin/pytest": "the test suite itself: this test is part of it",
    "CONSENT_LEDGER_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5432/test .venv/bin/pytest": (
        "the test suite itself, on PostgreSQL: this test is part of it"
    ),
    ".venv/bin/python benchmarks/run.py": (
        "benchmarks (minutes to hours): tests/e2e/test_benchmarks.py runs benchmarks/run.py "
        "at a tiny size"
    ),
    ".venv/bin/python benchmarks/run.py --facts 30000 --backends sqlite": (
        "benchmarks (minutes): tests/e2e/test_benchmarks.py runs benchmarks/run.py at a tiny size"
    ),
}

# Placeholders: what each is replaced with. An optional part `[...]` gives variants: the
# command without it (as the commands after it expect), then once with each alternative.
OPTIONAL = {
    "[NAME]": ["violations"],
    "[--as-of 2025-06-30]": ["--as-of 2025-06-30"],
    "[--format jsonl|csv|parquet]": ["--format jsonl", "--format csv", "--format parquet"],
}
# A required placeholder: its value, found in the folder's state when the command runs.
PLACEHOLDERS: dict[str, Callable[[State], str]] = {
    "EXPORT_ID": lambda state: state.export()[0],
    "PSEUDONYM": lambda state: state.export()[1],
}
# Words in capitals that are real values, not placeholders.
LITERALS = {"DPD"}
# Example addresses of a server this test does not have.
EXAMPLE_URLS = {"postgresql://shop@db.example/ledger"}

# A command (one holding this text, after `consent-ledger`) that does not exit 0 here, and why.
EXPECTED_EXIT: dict[str, tuple[int, str, str]] = {}
if importlib.util.find_spec("pyarrow") is None:
    EXPECTED_EXIT["--format parquet"] = (
        1,
        "the parquet format needs pyarrow",
        "pyarrow is the optional 'parquet' extra (CI does not install it): exit 1 saying so",
    )

# A command (its words after `consent-ledger`, exactly) run otherwise, and why.
REWRITES = {
    "demo --customers 5000": (
        "demo --customers 300",
        "5,000 customers are 75k facts (7 s on a 2-core machine): a smaller demo checks the "
        "option, and the README's first block runs the default demo (1,000 customers)",
    ),
}

SHELL = set("$`><|;&()*?~")


@dataclass
class Line:
    number: int  # in README.md
    text: str  # the command, its comment left out
    comment: str = ""

    def __str__(self) -> str:
        return f"README.md:{self.number}: {self.text}"


@dataclass
class State:
    folder: Path
    exports: list[Path] = field(default_factory=list)  # each `export due-diligence --out`

    def export(self) -> tuple[str, str]:
        """The last export the README's commands wrote (as `export list --json` names it)
        and a pseudonym from its files."""
        assert self.exports, "EXPORT_ID: no `export due-diligence` ran before this line"
        folder = self.exports[-1]
        manifest = hashlib.sha256((folder / "MANIFEST.json").read_bytes()).hexdigest()
        result = run(None, "export", "list", "--json")
        assert result.exit_code == 0, result.stderr
        listed = orjson.loads(result.stdout)["exports"]
        (export_id,) = [e["export_id"] for e in listed if e["manifest_sha256"] == manifest]
        first = (folder / "customers.jsonl").read_bytes().splitlines()[0]
        return str(export_id), str(orjson.loads(first)["customer"])


# ---- reading the README --------------------------------------------------------------------


def _unquoted(text: str) -> Iterator[tuple[int, str, str]]:
    """Each character of a shell line and what quotes it: "" outside quotes, else the quote
    (`'` or `"`) or `\\` (escaped), the quote characters themselves counting as quoted."""
    quote = ""
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
            yield index, char, "\\"
        elif quote == "'":
            quote = "" if char == "'" else quote
            yield index, char, "'"
        elif quote == '"':
            if char == "\\":
                escaped = True
            elif char == '"':
                quote = ""
            yield index, char, '"'
        elif char == "\\":
            escaped = True
            yield index, char, "\\"
        elif char in "'\"":
            quote = char
            yield index, char, char
        else:
            yield index, char, ""


def split_comment(text: str) -> tuple[str, str]:
    """The line's command and its `# comment`: a `#` outside quotes that starts a word
    (after an unescaped blank, or at the line's start)."""
    word_start = True
    for index, char, quote in _unquoted(text):
        if not quote and char == "#" and word_start:
            return text[:index].rstrip(), text[index + 1 :].strip()
        word_start = not quote and char.isspace()
    return text.rstrip(), ""


def strip_comment(text: str) -> str:
    return split_comment(text)[0]


def promised_keys(comment: str) -> set[str] | None:
    """The keys a comment such as `{"ok", "facts", "head", "problems"}; exit 4 if not ok`
    says the command's JSON document has."""
    found = re.match(r'\{("\w+"(?:, "\w+")*)\}', comment)
    return set(re.findall(r'"(\w+)"', found.group(1))) if found else None


def split_and(text: str) -> list[str]:
    """`a && b` as its commands."""
    parts: list[str] = []
    start = 0
    for index, _char, quote in _unquoted(text):
        if not quote and text.startswith("&&", index) and index >= start:
            parts.append(text[start:index].strip())
            start = index + 2
    parts.append(text[start:].strip())
    return parts


def bare_text(text: str) -> str:
    """The line's characters outside quotes (quoted ones as spaces)."""
    return "".join(" " if quote else char for _, char, quote in _unquoted(text))


def needs_shell(text: str) -> bool:
    """Whether the line uses the shell: `$(...)`, `>`, a pipe, a glob... (`$` and a backquote
    expand inside double quotes too)."""
    return any(
        (not quote and char in SHELL) or (quote == '"' and char in "$`")
        for _, char, quote in _unquoted(text)
    )


def readme_lines(readme: Path = README) -> list[Line]:
    """Every command of the ```sh blocks, in order (`&&` parts apart; a `\\` continues)."""
    lines: list[Line] = []
    inside = False
    pending = ""
    for number, raw in enumerate(readme.read_text().splitlines(), start=1):
        if raw.startswith("```"):
            inside = raw.strip() == "```sh"
            continue
        if not inside or not raw.strip():
            continue
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        (text, comment), pending = split_comment(pending.strip()), ""
        if text:
            lines.extend(Line(number, part, comment) for part in split_and(text))
    return lines


def _ours(text: str) -> str | None:
    """A `consent-ledger` command's words after the program name; None for any other."""
    for program in (PROGRAM, f".venv/bin/{PROGRAM}"):
        if text.startswith(program + " "):
            return text[len(program) + 1 :]
    return None


def variants(args: str) -> list[str]:
    """The command with each optional part left out, then with each alternative alone."""
    for part in OPTIONAL:
        args = args.replace(" " + part, "\0" + part)
    found = [part for part in OPTIONAL if "\0" + part in args]
    base = args
    for part in found:
        base = base.replace("\0" + part, "")
    result = [base]
    for part in found:
        others = args
        for other in found:
            if other != part:
                others = others.replace("\0" + other, "")
        for alternative in OPTIONAL[part]:
            result.append(others.replace("\0" + part, " " + alternative))
    return result


def unknown_placeholders(args: str) -> list[str]:
    """What in the command looks like a placeholder and is in no table of this test."""
    text = bare_text(args)
    for known in [*OPTIONAL, *PLACEHOLDERS, *LITERALS, *EXAMPLE_URLS]:
        text = re.sub(rf"(?<![\w/.-]){re.escape(known)}(?![\w/.-])", " ", text)
    patterns = [r"\[[^\]]*\]", r"<[^>]*>", r"\.\.\.", r"(?<![\w/.-])[A-Z][A-Z_]*[A-Z](?![\w/.-])"]
    return [m.group(0) for pattern in patterns for m in re.finditer(pattern, text)]


def not_run(line: Line) -> str | None:
    """Why `line` is not run here, or None if it is."""
    if line.text in SKIPPED:
        return SKIPPED[line.text]
    args = _ours(line.text)
    if args is not None and any(url in args for url in EXAMPLE_URLS) and not postgres_server():
        return f"an example PostgreSQL server: it copies into one only when {POSTGRES_ENV} is set"
    return None


def run_otherwise(line: Line) -> str | None:
    """How and why `line` runs other than as written, if it does."""
    args = _ours(line.text)
    if args in REWRITES:
        instead, why = REWRITES[args]
        return f"run as `{PROGRAM} {instead}`: {why}"
    return None


# ---- running it ----------------------------------------------------------------------------


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run_shell(args: str, folder: Path) -> tuple[int, str, str]:
    if "$(date" in args:
        # `date -u +%FT%TZ` drops the fraction of its second: a fact recorded earlier in the
        # same second would not yet be known at that moment. A person types slower than that.
        time.sleep(1.05 - time.time() % 1)
    done = subprocess.run(
        ["bash", "-c", f"{PROGRAM} {args}"],
        cwd=folder,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def _has_open(pid: int, name: str) -> bool:
    folder = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd).endswith(name) for fd in folder.iterdir())
    except OSError:  # the process ended, or a descriptor closed meanwhile
        return False


def _run_until_stopped(args: str, folder: Path) -> tuple[int, str, str]:
    """`projections follow` runs until stopped: Ctrl-C once it has started; the README says
    it then ends with exit 0. It logs nothing until it ends: it has started a moment after
    it opened the ledger (it sets its Ctrl-C handler right after; one sent before would end
    it as any other command, exit 1)."""
    process = subprocess.Popen(
        [str(BIN / PROGRAM), *shlex.split(args)],
        cwd=folder,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if not Path("/proc/self/fd").exists():  # no /proc: give it time enough
            time.sleep(5)
            break
        if _has_open(process.pid, "consent-ledger.db"):
            time.sleep(1)
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def run_line(args: str, state: State, stack: ExitStack, base: bool) -> tuple[int, str, str]:
    """Run `consent-ledger ARGS` in the state's folder: (exit code, stdout, stderr). The
    folder of an export the README's form (`base`, no optional part) writes is kept for
    EXPORT_ID and PSEUDONYM."""
    for url in EXAMPLE_URLS:
        if url in args:
            args = args.replace(url, shlex.quote(stack.enter_context(postgres_schema())))
    if args == "projections follow" or args.startswith("projections follow "):
        return _run_until_stopped(args, state.folder)
    words = shlex.split(args)
    if base and words[:2] == ["export", "due-diligence"] and "--out" in words:
        state.exports.append(state.folder / words[words.index("--out") + 1])
    if needs_shell(args):
        return _run_shell(args, state.folder)
    result = run(None, *words)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.postgres  # (and SQLite: the README's PostgreSQL lines when a server is set)
def test_every_readme_command_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's defaults: keys beside the ledger (`consent-ledger.db.keys/signing.pub`).
    monkeypatch.delenv("CONSENT_LEDGER_KEY_DIR", raising=False)
    folder = tmp_path / "readme"
    folder.mkdir()
    monkeypatch.chdir(folder)
    (folder / "feed.jsonl").write_bytes(FEED.read_bytes())  # the README: `cp ... feed.jsonl`
    state = State(folder)
    ran = 0
    with ExitStack() as stack:
        for line in readme_lines():
            if not_run(line) is not None:
                continue
            args = _ours(line.text)
            assert args is not None, (
                f"{line}\nneither a {PROGRAM} command nor in SKIPPED: run it here or skip it "
                "with a reason"
            )
            unknown = unknown_placeholders(args)
            assert not unknown, (
                f"{line}\nunknown placeholder(s) {unknown}: add each to OPTIONAL or "
                "PLACEHOLDERS (or LITERALS, if a real value)"
            )
            for number, variant in enumerate(variants(args)):
                for name, value in PLACEHOLDERS.items():
                    if name in variant:
                        variant = variant.replace(name, shlex.quote(value(state)))
                variant = REWRITES.get(variant, (variant, ""))[0]
                if number and " --out " in variant:  # an export refuses a folder not empty
                    out = shlex.split(variant)[shlex.split(variant).index("--out") + 1]
                    variant = variant.replace(f" {out}", f" {out.rstrip('/')}-{number}/", 1)
                code, stdout, stderr = run_line(variant, state, stack, base=number == 0)
                expected, says = 0, ""
                for key, (code_there, message, _why) in EXPECTED_EXIT.items():
                    if key in variant:
                        expected, says = code_there, message
                assert code == expected and says in stderr, (
                    f"{line}\nran: {PROGRAM} {variant}\nexit {code}, expected {expected}"
                    f"\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
                )
                keys = promised_keys(line.comment)
                if keys is not None and not needs_shell(variant):  # (a `>` file: not here)
                    document = orjson.loads(stdout)
                    assert set(document) == keys, (f"{line}  # {line.comment}", sorted(document))
                print(f"README.md:{line.number}: exit {code}: {PROGRAM} {variant}")
                ran += 1
    assert ran >= 40, f"only {ran} README commands ran: is README.md's sh-block syntax changed?"


def _not_run() -> list[tuple[Line, str]]:
    lines = readme_lines()
    return [(line, why) for line in lines if (why := not_run(line) or run_otherwise(line))]


@pytest.mark.parametrize(
    ("line", "why"), _not_run(), ids=[f"line{line.number}" for line, _ in _not_run()]
)
def test_readme_lines_not_run_say_why(line: Line, why: str) -> None:
    """Each README line the test above does not run (or runs otherwise), with its reason (a
    skip, so `-ra` lists them)."""
    pytest.skip(f"{line} -- {why}")


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("consent-ledger audit check   # a comment", "consent-ledger audit check"),
        ('consent-ledger record \'{"id": "#1"}\'  # c', 'consent-ledger record \'{"id": "#1"}\''),
        (
            'consent-ledger recipients notified "A # B" # c',
            'consent-ledger recipients notified "A # B"',
        ),
        ("consent-ledger customer show a#b", "consent-ledger customer show a#b"),
        ("consent-ledger customer show a\\ #b", "consent-ledger customer show a\\ #b"),
    ],
)
def test_a_hash_is_a_comment_only_outside_quotes_at_a_words_start(line: str, command: str) -> None:
    assert strip_comment(line) == command
