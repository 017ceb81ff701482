"""The `pushsite` console script: `deploy SOURCE --server URL --json` without loading the CLI.

Why: a one-file redeploy from CI is meant to take about 80 ms in all, and importing the CLI
(click, the model, the config) is ~60 ms of it before a byte is sent. A plain remote deploy
with `--json` needs none of it: its options are read here and remote.py does the rest. Any
other command line (another command, --help, an option this does not know, a value that may
be wrong, output for people) goes to the CLI, which keeps its help and its messages.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, NamedTuple

_VALUED = {"--site": "site", "--server": "server", "--token": "token", "--branch": "branch",
           "--message": "message", "-m": "message", "--timeout": "timeout"}
_FLAGS = {"--json": "as_json", "--create": "create"}


class PlainDeploy(NamedTuple):
    """The options of a `deploy SOURCE --server URL --json` this module runs itself."""

    source: str
    site: str
    server: str
    token: str
    branch: str | None = None
    message: str = ""
    timeout: float = 900.0
    create: bool = False


def main() -> None:
    """Run a plain remote deploy here, anything else through the CLI."""
    plain = plain_remote_deploy(sys.argv[1:], os.environ)
    if plain is None:
        from pushsite.cli import main as cli_main

        cli_main()
        return
    run(plain)


def plain_remote_deploy(argv: list[str], env: Any) -> PlainDeploy | None:
    """The deploy `argv` asks for when it is plain: `deploy SOURCE --site S --json` with a
    server and a token (options or PUSHSITE_SERVER / PUSHSITE_TOKEN); None otherwise."""
    if len(argv) < 2 or argv[0] != "deploy":
        return None
    values: dict[str, Any] = {}
    positional: list[str] = []
    words = iter(argv[1:])
    for word in words:
        name, eq, inline = word.partition("=")
        if name in _VALUED:
            value = inline if eq else next(words, None)
            if value is None or _VALUED[name] in values:
                return None
            values[_VALUED[name]] = value
        elif word in _FLAGS:
            values[_FLAGS[word]] = True
        elif word.startswith("-") and word != "-":
            return None  # --help, --draft, --build, a typo: the CLI answers those
        else:
            positional.append(word)
    server = values.pop("server", env.get("PUSHSITE_SERVER") or "")
    token = values.pop("token", env.get("PUSHSITE_TOKEN") or "")
    if len(positional) != 1 or not values.pop("as_json", False) or not server or not token \
            or "site" not in values or not values.get("branch", "x").strip():
        return None
    try:
        values["timeout"] = float(values.get("timeout", 900.0))
    except ValueError:
        return None
    return PlainDeploy(positional[0], server=server, token=token, **values)


def run(plain: PlainDeploy) -> None:
    """Deploy, print the deployment as JSON and exit as the CLI would (errors.py's codes);
    Ctrl-C cancels the deployment on the server. Never returns."""
    from pushsite.errors import Interrupted, PushsiteError
    from pushsite.remote import deploy_source, report_data

    def interrupted(signum: int, frame: object) -> None:
        raise Interrupted("interrupted (Ctrl-C)")

    signal.signal(signal.SIGINT, interrupted)
    code = 0
    try:
        deployment = deploy_source(plain.server, plain.token, plain.source, site=plain.site,
                                   branch=plain.branch, message=plain.message,
                                   timeout=plain.timeout, create=plain.create)
        print(_json(report_data(deployment, plain.server)))
    except PushsiteError as exc:
        if remote := getattr(exc, "deployment", None):  # remote._failure's, for `--json`
            print(_json(remote))
        from pushsite.cli import err, escape  # the CLI's own one line (errors are rare)

        err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
        code = exc.exit_code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _json(data: Any) -> str:
    import json

    return json.dumps(data)
