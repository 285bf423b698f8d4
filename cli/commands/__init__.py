"""Every command of the root, loaded when it runs: a command imports its module, no other.

Each module exposes `commands`: the click commands or groups it adds to the root. A module
may add subcommands to another module's group (`customer access-export` lives with the
privacy commands, `audit report` with the reports), so a name lists every module that
builds its command. `tests/unit/test_cli_commands.py` checks this table against what the
modules define.
"""

from __future__ import annotations

import importlib
from typing import Final

import click

MODULES: Final = (
    "cli.commands.db",
    "cli.commands.recording",
    "cli.commands.customer",
    "cli.commands.consent",
    "cli.commands.order",
    "cli.commands.audit",
    "cli.commands.report",
    "cli.commands.projections",
    "cli.commands.demo",
    "cli.commands.export",
    "cli.commands.integrity",
    "cli.commands.privacy",
)

# Root command name -> the modules that build it (the first one defines it).
COMMAND_MODULES: Final[dict[str, tuple[str, ...]]] = {
    "db": ("cli.commands.db",),
    "import": ("cli.commands.recording",),
    "record": ("cli.commands.recording",),
    "disclose": ("cli.commands.recording",),
    "customer": ("cli.commands.customer", "cli.commands.privacy"),
    "consent": ("cli.commands.consent",),
    "order": ("cli.commands.order",),
    "audit": ("cli.commands.audit", "cli.commands.report"),
    "report": ("cli.commands.report",),
    "projections": ("cli.commands.projections",),
    "demo": ("cli.commands.demo",),
    "export": ("cli.commands.export",),
    "verify": ("cli.commands.integrity",),
    "checkpoint": ("cli.commands.integrity",),
    "prove": ("cli.commands.integrity",),
    "verify-proof": ("cli.commands.integrity",),
    "recipients": ("cli.commands.privacy",),
    "suppression": ("cli.commands.privacy",),
    "keys": ("cli.commands.privacy",),
}


class LazyGroup(click.Group):
    """A group whose commands are imported from `COMMAND_MODULES` when first asked for
    (running one command imports only its modules; `--help` imports them all)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            load(self, COMMAND_MODULES[cmd_name])
        return self.commands.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMAND_MODULES))


def load(root: click.Group, modules: tuple[str, ...] = MODULES) -> None:
    """Import `modules` and add the commands they define to `root`."""
    for name in modules:
        module = importlib.import_module(name)
        for command in module.commands:
            if command.name not in root.commands:
                root.add_command(command)
