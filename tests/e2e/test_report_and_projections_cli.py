"""`projections status/rebuild`, `audit check --known-at`, `consent show --known-at`,
`audit report` and `report processing` as a user runs them, on each backend."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ledger.feed import iso
from ledger.vocabulary import RULES
from projections.runner import NAMES
from tests.cli_helpers import error_line, run, run_json
from tests.examples import jsonl, line

SMALL = Path(__file__).parents[1] / "data" / "feed-small.jsonl"
PERSONAL = ("Ada", "Lovelace", "ada@example.org", "Alan", "Turing", "Analytical", "900001")


@pytest.fixture
def url(ledger_url: str) -> str:
    run_json(ledger_url, "db", "upgrade")
    run_json(ledger_url, "import", str(SMALL))
    return ledger_url


def test_projections_status_json(url: str) -> None:
    document = run_json(url, "projections", "status")
    assert list(document) == ["head", "projections"]
    head = document["head"]
    assert head > 0
    assert [p["name"] for p in document["projections"]] == list(NAMES)
    for entry in document["projections"]:
        assert entry == {
            "name": entry["name"],
            "position": 0,
            "head": head,
            "lag": head,
            "slot": "a",
            "rebuilt_at": None,
        }
    run_json(url, "audit", "check")
    after = {p["name"]: p for p in run_json(url, "projections", "status")["projections"]}
    assert (after["violations"]["position"], after["violations"]["lag"]) == (head, 0)


def test_projections_rebuild_one_and_all(url: str) -> None:
    one = run_json(url, "projections", "rebuild", "violations")
    assert one["rebuilt"] == ["violations"]
    assert one["events"] == run_json(url, "projections", "status")["head"]
    status = {p["name"]: p for p in run_json(url, "projections", "status")["projections"]}
    assert status["violations"]["slot"] == "b"
    assert status["current_consent"]["slot"] == "a"
    every = run_json(url, "projections", "rebuild")
    assert every["rebuilt"] == list(NAMES)
    plain = run(url, "projections", "rebuild", "order_status")
    assert plain.exit_code == 0
    assert plain.stdout.startswith("rebuilt order_status: ")


def test_projections_rebuild_of_an_unknown_model_is_a_usage_error(url: str) -> None:
    result = run(url, "projections", "rebuild", "Zebulon Quixoteson")
    assert (result.exit_code, result.stdout) == (2, "")
    assert "Invalid value for NAME: unknown read model (expected one of consent_history" in (
        result.stderr
    )
    assert "Zebulon" not in result.stderr  # (a name typed in the wrong place is not repeated)
    typo = run(url, "projections", "rebuild", "order_stauts")
    assert typo.exit_code == 2
    assert "unknown read model 'order_stauts' (did you mean 'order_status'?)" in typo.stderr


def test_a_bad_number_of_read_model_workers_is_one_error_line(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not url.startswith("sqlite"):
        pytest.skip("worker processes fold SQLite passes only")
    monkeypatch.setenv("CONSENT_LEDGER_WORKERS", "two")
    result = run(url, "projections", "rebuild")
    assert result.exit_code == 1
    assert error_line(result) == (
        "Error: CONSENT_LEDGER_WORKERS must be a whole number of worker processes, not 'two'"
    )
    monkeypatch.setenv("CONSENT_LEDGER_WORKERS", "0")
    assert run_json(url, "projections", "rebuild")["rebuilt"] == list(NAMES)


def test_known_at_answers_as_the_ledger_knew_it(url: str, tmp_path: Path) -> None:
    time.sleep(0.01)
    before_late = iso(datetime.now(UTC))
    time.sleep(0.01)
    late = line("consent.withdrawn", "late-1", 0, customer="C100", at="2025-02-02T00:00:00Z")
    late |= {"purpose": "marketing", "channel": "email"}
    feed = tmp_path / "late.jsonl"
    feed.write_bytes(jsonl([late]))
    assert run_json(url, "import", str(feed))["accepted"] == 1

    def found(*args: str) -> set[tuple[str, str]]:
        document = run_json(url, "audit", "check", *args)
        return {(v["rule"], v["fact_id"]) for v in document["violations"] if v["rule"] in RULES}

    assert ("marketing_without_consent", "s-0012") in found()
    assert ("marketing_without_consent", "s-0012") not in found("--known-at", before_late)
    assert found("--known-at", before_late) == found(
        "--known-at", before_late, "--as-of", "2099-12-31"
    )
    assert found("--known-at", "2000-01-01") == set()

    def marketing_email(*args: str) -> str:
        document = run_json(url, "consent", "show", "C100", "--as-of", "2025-02-15", *args)
        assert list(document) == ["customer", "as_of", "consents"]
        (row,) = [r for r in document["consents"] if r["purpose"] == "marketing"]
        return str(row["status"])

    assert marketing_email() == "withdrawn"
    assert marketing_email("--known-at", before_late) == "given"
    refused = run(url, "consent", "show", "C100", "--known-at", "2000-01-01")
    assert refused.exit_code == 1
    assert error_line(refused) == (
        "Error: customer 'C100' was not in the ledger as known at 2000-01-01T23:59:59.999999Z:"
        " nothing about them had been recorded by then"
    )


def test_audit_report_is_one_self_contained_html_file(url: str, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = run(url, "audit", "report", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    # Nothing to fetch: no external sources, links or scripts (links within the page only).
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", page)
    assert "<script" not in page
    charts = re.findall(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(charts) == 2
    assert all(base64.b64decode(c).lstrip().startswith(b"<?xml") for c in charts)
    for expected in (
        "Headline figures",
        "marketing_without_consent (2)",
        "research_without_consent (1)",
        "after_erasure (1)",
        "s-0013",
        "s-0020",
        "Recipient registry",
        "Northwind Retail Group",
        "Electoral Roll Check Ltd",
    ):
        assert expected in page
    for secret in PERSONAL:
        assert secret not in page


def test_a_report_leaves_no_thread_that_would_take_ctrl_c_from_a_write(
    url: str, tmp_path: Path
) -> None:
    """Making a report's charts loads numpy, whose OpenBLAS starts threads that live as long
    as the process. Each must block SIGINT and SIGTERM, as the ledger's own threads do: a
    thread that does not takes a signal that a write holds off between its commit and what
    completes it (`signals_held`), and it was handled at once. In a fresh process, as a
    command's (numpy loads once per process)."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc to read each thread's signal mask")
    probe = f"""
import os, signal
from tests.cli_helpers import run
done = run({url!r}, "audit", "report", "--out", {str(tmp_path / "r.html")!r})
assert done.exit_code == 0, done.stderr
held = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
main = str(os.getpid())
for task in os.listdir("/proc/self/task"):
    status = open(f"/proc/self/task/{{task}}/status").read()
    blocked = int(status.split("SigBlk:")[1].split()[0], 16)
    print(task == main, blocked & held == held)
"""
    root = Path(__file__).parents[2]
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, timeout=300
    )
    assert done.returncode == 0, done.stderr
    threads = [
        line.split() for line in done.stdout.splitlines() if line.startswith(("True", "False"))
    ]
    others = [blocks for is_main, blocks in threads if is_main == "False"]
    assert others, "the report started no thread: nothing to check (numpy not loaded?)"
    assert all(blocks == "True" for blocks in others), threads


def test_report_processing_markdown_and_html(url: str, tmp_path: Path) -> None:
    result = run(url, "report", "processing")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert text.startswith("# Records of processing activities (GDPR Art. 30)\n")
    for heading in (
        "## Data subjects",
        "## Purposes based on consent (opt-in per channel)",
        "## Purposes of disclosure to third parties",
        "## Categories of personal data",
        "## Recipients by kind",
        "## Recipients by name",
        "## Lawful bases",
        "## Transfers (sale or merger of the business)",
    ):
        assert heading in text
    assert "| customers of the online shop | 2 | 1 |" in text
    assert "| Offspring | affiliate | 1 | 1 |" in text
    assert (
        "| Northwind Retail Group | 2025-06-01T00:00:00Z | 1 | 1 | 0 | 0 "
        "| email, name, order_details |" in text
    )
    for secret in PERSONAL:
        assert secret not in text
    out = tmp_path / "art30.html"
    assert run(url, "report", "processing", "--format", "html", "--out", str(out)).exit_code == 0
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<h2>Recipients by name</h2>" in page


def test_audit_report_lists_each_due_diligence_export(url: str, tmp_path: Path) -> None:
    made = run_json(
        url,
        "export",
        "due-diligence",
        "--acquirer",
        "Northwind Retail Group",
        "--out",
        str(tmp_path / "dd"),
    )
    out = tmp_path / "report.html"
    assert run(url, "audit", "report", "--out", str(out)).exit_code == 0
    page = out.read_text(encoding="utf-8")
    section = page[page.index("Due-diligence exports") :]
    manifest = (tmp_path / "dd" / "MANIFEST.json").read_bytes()
    assert hashlib.sha256(manifest).hexdigest() in section
    assert "Northwind Retail Group" in section and "pseudonymous" in section
    assert made["customers"] == 2


@pytest.mark.parametrize(
    "command",
    [["audit", "report"], ["report", "processing"], ["report", "processing", "--format", "html"]],
)
def test_a_report_to_a_missing_folder_is_an_input_error(
    url: str, tmp_path: Path, command: list[str]
) -> None:
    out = tmp_path / "missing" / "report.html"
    result = run(url, *command, "--out", str(out))
    assert result.exit_code == 1
    assert error_line(result) == f"Error: cannot write {out}: folder {out.parent} does not exist"
    assert not out.parent.exists()


@pytest.mark.parametrize(
    "command",
    [["audit", "report"], ["report", "processing"], ["report", "processing", "--format", "html"]],
)
def test_a_report_that_cannot_be_written_whole_leaves_the_earlier_one(
    url: str, tmp_path: Path, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk left a truncated report (or an empty file) over an earlier good one."""
    import errno

    (tmp_path / "reports").mkdir()
    out = tmp_path / "reports" / "report.out"
    assert run(url, *command, "--out", str(out)).exit_code == 0
    earlier = out.read_bytes()
    written = Path.write_bytes

    def disk_full(path: Path, data: bytes) -> int:  # writes half, then the disk is full
        written(path, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    result = run(url, *command, "--out", str(out))
    monkeypatch.undo()
    assert result.exit_code == 1
    assert error_line(result) == f"Error: cannot write {out}: No space left on device"
    assert out.read_bytes() == earlier
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.out"]  # no temporary left
