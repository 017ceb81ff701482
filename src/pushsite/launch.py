"""The `pushsite` console script: a plain `deploy SOURCE --json` without loading the CLI.

Why: a one-file redeploy from CI is meant to take about 80 ms in all, and importing the CLI
(click, the model, the config) is ~60 ms of it before a byte is sent; on this machine a small
site's time to live is ~20 ms of click and the CLI module. A plain deploy with `--json` needs
none of it: its options are read here, and remote.py (`--server`) or quickdeploy.py (this
machine's home) does the rest. Any other command line (another command, --help, an option
this does not know, a value that may be wrong, output for people, a folder with a
pushsite.toml or netlify.toml) goes to the CLI, which keeps its help and its messages.
"""

from __future__ import annotations

import os
import sys
from collections import namedtuple

# importing typing and signal (its enums) is CPU at each start of a CI deploy: the names
# below are for the type checker only, and _signal is signal without its enums
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple, NoReturn

_VALUED = {"--site": "site", "--server": "server", "--token": "token", "--branch": "branch",
           "--message": "message", "-m": "message", "--timeout": "timeout"}
_FLAGS = {"--json": "as_json", "--create": "create"}
# a folder holding one of these may be linked, or name a build: the CLI warns (cli._deploy)
_FOLDER_SETTINGS = ("pushsite.toml", "netlify.toml")


if TYPE_CHECKING:
    class PlainDeploy(NamedTuple):
        """The options of a plain `deploy SOURCE --site S --json` this module runs itself;
        no server for one to this machine's home."""

        source: str
        site: str
        server: str
        token: str
        branch: str | None = None
        message: str = ""
        timeout: float = 900.0
        create: bool = False
else:  # the same tuple, without importing typing
    PlainDeploy = namedtuple("PlainDeploy", "source site server token branch message timeout "
                             "create", defaults=(None, "", 900.0, False))


def main() -> None:
    """Run a plain deploy here, anything else through the CLI."""
    plain = plain_remote_deploy(sys.argv[1:], os.environ)
    if plain is not None:
        run(plain)
    local = plain_local_deploy(sys.argv[1:], os.environ)
    if local is not None:
        from pushsite.quickdeploy import run_local

        run_local(local)
    from pushsite.cli import main as cli_main

    cli_main()


def plain_remote_deploy(argv: list[str], env: Any) -> PlainDeploy | None:
    """The deploy `argv` asks for when it is plain: `deploy SOURCE --site S --json` with a
    server and a token (options or PUSHSITE_SERVER / PUSHSITE_TOKEN); None otherwise."""
    plain = _plain_deploy(argv, env)
    if plain is None or not plain.server or not plain.token:
        return None
    return plain


def plain_local_deploy(argv: list[str], env: Any) -> PlainDeploy | None:
    """The deploy `argv` asks for when it is plain and to this machine's home: `deploy SOURCE
    --site S --json` with no server and no token, SOURCE a .tar.gz file, `-` or a folder
    without settings of its own, stderr no terminal (the CLI draws progress there); None
    otherwise."""
    plain = _plain_deploy(argv, env)
    if plain is None or plain.server or plain.token or sys.stderr.isatty():
        return None
    home = env.get("PUSHSITE_HOME")
    if home and os.path.exists(home) and not os.path.isdir(home):
        return None  # click's --home refuses it
    source = plain.source
    if source == "-":
        return plain
    if os.path.isdir(source):
        if any(os.path.lexists(os.path.join(source, name)) for name in _FOLDER_SETTINGS):
            return None
        return plain
    if source.endswith((".tar.gz", ".tgz")) and os.path.isfile(source):
        return plain
    return None


def _plain_deploy(argv: list[str], env: Any) -> PlainDeploy | None:
    """`deploy SOURCE --site S --json` with only the options above, each once, no value that
    looks like an option and no click setting in the environment; the server and the token
    from the options, else PUSHSITE_SERVER / PUSHSITE_TOKEN, else ""."""
    if len(argv) < 2 or argv[0] != "deploy":
        return None
    if "PUSHSITE_VERSION" in env or any(k.startswith("PUSHSITE_DEPLOY_") for k in env):
        return None  # click reads options from these (the group's auto_envvar_prefix)
    values: dict[str, Any] = {}
    positional: list[str] = []
    words = iter(argv[1:])
    for word in words:
        name, eq, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if name in _VALUED:
            value = inline if eq else next(words, None)
            if value is None or _VALUED[name] in values or value.startswith("-"):
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
    if len(positional) != 1 or not values.pop("as_json", False) \
            or "site" not in values or not values.get("branch", "x").strip():
        return None
    try:
        values["timeout"] = float(values.get("timeout", 900.0))
    except ValueError:
        return None
    return PlainDeploy(positional[0], server=server, token=token, **values)


def run(plain: PlainDeploy) -> NoReturn:
    """Deploy, print the deployment as JSON and exit as the CLI would (errors.py's codes);
    Ctrl-C cancels the deployment on the server. Never returns."""
    import gc

    # one deploy, then exit: the collector's passes over the modules imported here, the
    # list and the hash cache (some thousands of containers, no cycle among them) were
    # ~1.5-2 ms of a ~45 ms client; a collection still comes every 50,000 new containers,
    # so a big first deploy's memory stays bounded
    gc.set_threshold(50_000, 10, 10)

    from pushsite.errors import Interrupted, PushsiteError
    from pushsite.remote import deploy_source, report_data

    def interrupted(signum: int, frame: object) -> None:
        raise Interrupted("interrupted (Ctrl-C)")

    if TYPE_CHECKING:
        import signal as _signal
    else:
        import _signal  # signal's own functions, without its enums (and enum)

    _signal.signal(_signal.SIGINT, interrupted)
    code = 0
    try:
        deployment = deploy_source(plain.server, plain.token, plain.source, site=plain.site,
                                   branch=plain.branch, message=plain.message,
                                   timeout=plain.timeout, create=plain.create)
        print(_json(report_data(deployment, plain.server)))
    except PushsiteError as exc:
        if remote := getattr(exc, "deployment", None):  # remote._failure's, for `--json`
            print(_json(remote))
        from pushsite.present import report_error  # the CLI's own line, without click

        code = report_error(exc)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _json(data: Any) -> str:
    from pushsite import jsonlite

    return jsonlite.dumps(data)
