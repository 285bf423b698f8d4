"""The root command loads each command's modules when it runs; the table of which modules
build which command matches what the modules define."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest

from cli.commands import COMMAND_MODULES, MODULES
from tests.cli_helpers import run


def defined() -> dict[str, set[str]]:
    """Root command name -> the modules whose code builds it (its subcommands' too)."""
    found: dict[str, set[str]] = {}
    for name in MODULES:
        for command in importlib.import_module(name).commands:
            modules = found.setdefault(str(command.name), set())
            pending = [command]
            while pending:
                current = pending.pop()
                callback = current.callback
                if callback is not None:
                    modules.add(getattr(callback, "__module__", name))
                if isinstance(current, click.Group):
                    pending.extend(current.commands.values())
    return found


def test_every_command_is_listed_with_every_module_that_builds_it() -> None:
    found = defined()
    assert set(COMMAND_MODULES) == set(found)
    for name, modules in found.items():
        assert modules <= set(COMMAND_MODULES[name]), name
    assert set(MODULES) == {m for ms in COMMAND_MODULES.values() for m in ms}


@pytest.mark.parametrize("name", sorted(COMMAND_MODULES))
def test_running_a_command_loads_it_whole(name: str) -> None:
    # In a fresh interpreter: the command as loaded alone has every subcommand it has
    # when every module is loaded.
    probe = f"""
import click, sys
from cli.main import cli
ctx = click.Context(cli)
command = cli.get_command(ctx, {name!r})
subs = sorted(command.commands) if isinstance(command, click.Group) else []
loaded = sorted(m for m in sys.modules if m.startswith("cli.commands."))
print(command.name, ",".join(subs), ",".join(loaded))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    command_name, subs, loaded = done.stdout.split(" ")
    assert command_name == name
    full = importlib.import_module("cli.main").cli
    command = full.get_command(click.Context(full), name)
    expected = sorted(command.commands) if isinstance(command, click.Group) else []
    assert (subs.split(",") if subs else []) == expected
    assert set(loaded.strip().split(",")) <= set(COMMAND_MODULES[name]) | {
        # modules a command's module imports from another (consent records as `record` does)
        "cli.commands.recording",
        "cli.commands.customer",
        "cli.commands.audit",
    }


def test_help_lists_every_command() -> None:
    from click.testing import CliRunner

    from cli.main import cli

    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = {
        line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()
    }
    assert listed == set(COMMAND_MODULES)


def test_help_names_every_read_model_and_every_purposes_channels() -> None:
    """Help text written by hand, held to the vocabulary it names."""
    from ledger.vocabulary import PURPOSE_CHANNELS
    from projections.runner import NAMES

    rebuild = " ".join(run(None, "projections", "rebuild", "--help").stdout.split())
    assert all(name in rebuild for name in NAMES)
    for command in ("give", "withdraw"):
        text = " ".join(run(None, "consent", command, "--help").stdout.split())
        assert "personalisation on web" in text and PURPOSE_CHANNELS["personalisation"] == {"web"}
        others = sorted(set(PURPOSE_CHANNELS) - {"personalisation"})
        assert all(PURPOSE_CHANNELS[p] == {"email", "post"} for p in others)
        assert "marketing, affiliate_sharing and market_research on email or post" in text
