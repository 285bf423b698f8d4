"""Every command group, registered on the root command in one place."""

from __future__ import annotations

import importlib

import click

# Each module exposes `commands`: the click commands or groups it adds to the root.
MODULES = (
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


def register(root: click.Group) -> None:
    for name in MODULES:
        module = importlib.import_module(name)
        for command in module.commands:
            root.add_command(command)
