"""The README's shell blocks as a newcomer reads them: which heading each sits under, and its
commands (a trailing `\\` joins the next line; comments after two spaces are dropped)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
SHELL_LANGUAGES = ("sh", "bash", "shell", "console", "")
_FENCE = re.compile(r"^```(\w*)\s*$")
_HEADING = re.compile(r"^#{1,6} (.+?)\s*$")


@dataclass(frozen=True)
class Block:
    heading: str
    language: str
    commands: tuple[str, ...]


def blocks(text: str | None = None) -> list[Block]:
    """Every fenced block, in order, with the nearest heading above it."""
    found: list[Block] = []
    heading, language, lines = "", None, list[str]()
    for line in (README.read_text() if text is None else text).splitlines():
        fence = _FENCE.match(line)
        if fence and language is None:
            language, lines = fence.group(1), []
        elif fence or (line.startswith("```") and language is not None):
            found.append(Block(heading, language or "", tuple(_commands(lines))))
            language = None
        elif language is not None:
            lines.append(line)
        elif match := _HEADING.match(line):
            heading = match.group(1)
    return found


def shell_blocks() -> list[Block]:
    return [block for block in blocks() if block.language in SHELL_LANGUAGES]


def block(heading: str, starts: str = "") -> Block:
    """The one shell block under `heading` whose first command starts with `starts`."""
    matching = [b for b in shell_blocks()
                if b.heading == heading and b.commands and b.commands[0].startswith(starts)]
    assert len(matching) == 1, f"README has {len(matching)} shell blocks under {heading!r}"
    return matching[0]


def _commands(lines: list[str]) -> list[str]:
    commands: list[str] = []
    pending = ""
    for raw in lines:
        line = raw.split("  #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip() and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        commands.append((pending + line.strip()).strip())
        pending = ""
    return commands
