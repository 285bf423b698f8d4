"""The whole CLI over a realistic feed with debug logging: no name, email, phone or address
from the feed appears in any log line or error message (SPEC §4: logs never contain
personal data)."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from ledger.crypto import new_key
from ledger.samplefeed import generate_lines
from tests.cli_helpers import run
from tests.personal import found_in, personal_values


def test_no_command_logs_or_reports_personal_data(
    tmp_path: Path, feed_small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = list(generate_lines(40, seed=11))
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"".join(lines) + feed_small.read_bytes())
    values = personal_values(feed.read_bytes().splitlines())
    assert len(values) > 100
    refs = sorted({orjson.loads(x)["customer"] for x in lines if b'"customer.registered"' in x})
    first, erased = refs[0], refs[1]
    email = next(orjson.loads(x)["email"] for x in lines if f'"{first}"'.encode() in x)
    bad = tmp_path / "bad.jsonl"
    # Invalid lines full of personal data: their errors must name fields, not values.
    bad.write_text(
        '{"id": "b1", "type": "customer.registered", "at": "2025-01-01T00:00:00Z", '
        '"customer": "B1", "name": "Ada Lovelace", "email": "ada at example", '
        '"address": {"line1": "12 Analytical Row"}}\n'
        '{"id": "b2", "type": "customer.updated", "at": "2025-01-01", "customer": "C100", '
        '"phone": "+44 7700 900001"}\n'
        '{"id": "b3", "type": "customer.updated", "at": "2025-01-01T00:00:00Z", '
        '"customer": "C101", "name": "Alan Turing"}\n'
    )
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    pack = tmp_path / "pack.json"
    commands: list[tuple[int, list[str]]] = [
        (0, ["db", "upgrade"]),
        (0, ["import", str(feed)]),
        (0, ["import", str(feed), "--json"]),
        (1, ["import", str(bad)]),
        (1, ["import", str(bad), "--json"]),
        (0, ["customer", "show", first]),
        (0, ["customer", "show", first, "--json"]),
        (0, ["customer", "trail", first]),
        (0, ["consent", "show", first, "--json"]),
        (0, ["consent", "withdraw", first, "marketing", "post", "--method", "letter"]),
        (0, ["customer", "access-export", first, "--out", str(pack)]),
        (0, ["suppression", "check", email]),
        (0, ["suppression", "check", email, "--json"]),
        (0, ["customer", "erase", erased]),
        (0, ["customer", "show", erased]),
        (
            1,
            [
                "record",
                orjson.dumps(
                    {
                        "type": "customer.updated",
                        "customer": erased,
                        "email": "back.again@example.org",
                    }
                ).decode(),
            ],
        ),
        (0, ["customer", "access-export", erased, "--out", str(tmp_path / "erased.json")]),
        (0, ["recipients", "notifications"]),
        (0, ["recipients", "notifications", "--json"]),
        (0, ["audit", "check"]),
        (0, ["audit", "check", "--json"]),
        (0, ["projections", "rebuild"]),
        (0, ["order", "show", "O500"]),
        (0, ["verify"]),
        (
            0,
            [
                "export",
                "due-diligence",
                "--acquirer",
                "Northwind Retail Group",
                "--out",
                str(tmp_path / "dd"),
            ],
        ),
        (
            0,
            [
                "export",
                "due-diligence",
                "--acquirer",
                "Northwind Retail Group",
                "--out",
                str(tmp_path / "dd-identified"),
                "--identified",
            ],
        ),
        (0, ["keys", "rotate"]),
        (0, ["customer", "show", first]),
        (0, ["demo", "--customers", "20", "--path", str(tmp_path / "demo.db")]),
    ]
    stderr: list[str] = []
    for code, args in commands:
        result = run(url, "--log-level", "debug", *args)
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        stderr.append(result.stderr)
    monkeypatch.setenv("CONSENT_LEDGER_MASTER_KEY", base64.b64encode(new_key()).decode())
    wrong = run(url, "--log-level", "debug", "customer", "show", first)
    assert wrong.exit_code == 1
    stderr.append(wrong.stderr)

    logged = "\n".join(stderr)
    assert logged.count("\n") > len(commands)  # every command logged something
    assert '"level": "debug"' in logged or '"level": "info"' in logged
    assert "Error: " in logged  # the refusals and invalid lines were reported
    assert found_in(logged.encode(), values | {"ada at example", "back.again@example.org"}) == []
    # ...while the access pack, written for the customer, carries theirs: the search works.
    assert found_in(pack.read_bytes(), values)
    # The pseudonymous data-room export carries none; the identified one does.
    assert found_in(_folder_bytes(tmp_path / "dd"), values) == []
    assert found_in(_folder_bytes(tmp_path / "dd-identified"), values)


def _folder_bytes(folder: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())
