"""The docs check themselves: every command has help, every setting is in the README."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from pushsite.cli import cli
from pushsite.config import SETTINGS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((prefix + name, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, prefix + name + " "))
    return found


@pytest.mark.parametrize("name, command", _commands(cli))
def test_every_command_has_help(name: str, command: click.Command) -> None:
    assert command.help and len(command.help.strip()) > 20, f"`pushsite {name}` needs help"
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"option {param.name} of `pushsite {name}` needs help"


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_documented(setting: object) -> None:
    name = setting.name  # type: ignore[attr-defined]
    assert f"PUSHSITE_{name.upper()}" in README


def test_readme_starts_with_the_two_commands() -> None:
    head = README[:800]
    assert "make run" in head and "make test" in head


def test_the_settings_table_says_where_each_setting_is_given() -> None:
    """A row names `serve --x` exactly when `pushsite serve --help` has that option."""
    from click.testing import CliRunner

    from pushsite.config import SETTINGS

    serve_help = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output
    table = README[README.index("## Settings"):]
    for setting in SETTINGS:
        option = "--" + setting.name.replace("_", "-")
        row = next(line for line in table.splitlines()
                   if line.startswith(f"| `PUSHSITE_{setting.name.upper()}` |"))
        if setting.name == "home":
            assert "`--home` (before any command)" in row
        elif f"{option} " in serve_help or f"{option}\n" in serve_help:
            assert f"`serve {option}`" in row, row
        else:
            assert "(variable only)" in row, row
