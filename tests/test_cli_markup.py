"""Messages reach the terminal as written: rich would take `[status]` in a message for markup
and drop it. Every error message in the source that holds a `[` goes through the CLI's own
printing path, and a real deploy's error with one arrives whole."""

from __future__ import annotations

import ast
import io
from pathlib import Path

from rich.console import Console

from pushsite.cli import escape
from support.cli import create_site, pushsite
from support.sites import write_files

SRC = Path(__file__).resolve().parents[1] / "src" / "pushsite"


def raised_messages() -> list[str]:
    """The first argument of every `raise SomeError(...)` in src/, its {fields} shown as X."""
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                    and node.exc.args):
                continue
            arg = node.exc.args[0]
            parts = arg.values if isinstance(arg, ast.JoinedStr) else [arg]
            text = "".join(p.value if isinstance(p, ast.Constant) and isinstance(p.value, str)
                           else "X" for p in parts)
            found.append(text)
    return found


def printed(message: str) -> str:
    console = Console(file=io.StringIO(), width=10_000, color_system=None)
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_every_message_with_a_bracket_is_printed_whole() -> None:
    bracketed = [m for m in raised_messages() if "[" in m]
    assert len(bracketed) >= 3  # the scan sees them (e.g. `[build]`, `[status]`)
    for message in bracketed:
        assert printed(message) == f"error: {message}\n"


def test_a_deploy_error_keeps_its_brackets(tmp_path: Path) -> None:
    create_site("blog")
    folder = write_files(tmp_path / "site", {"index.html": "x",
                                             "_redirects": "/from /to [status]\n"})
    done = pushsite("deploy", str(folder), "--site", "blog")
    assert done.returncode == 3, done.stderr
    assert "[status]" in done.stderr
