"""A plain `pushsite deploy SOURCE --site S --json` on this machine, without click or the CLI.

Why: time to live is what a deploy from CI waits for, and on a small site the CLI's import
(click ~13 ms, the CLI module ~6 ms) is a tenth of it. launch.py sends here only the command
lines it is sure of (a .tar.gz, stdin or a folder with nothing to build, the JSON output,
no tty); it runs the one sequence of service verbs cli.py's `deploy` runs (localdeploy.py)
and prints the same bytes: the deployment the moment it is live, then the optimisation is
finished here or left to a server running on this home (live first, service/optimising.py).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

from pushsite.config import load_config
from pushsite.errors import Interrupted, PushsiteError
from pushsite.present import deployment_json, report_error
from pushsite.web.listening import running

if TYPE_CHECKING:
    from pushsite.launch import PlainDeploy
    from pushsite.model import Deployment
    from pushsite.service import Service


def run_local(plain: PlainDeploy) -> NoReturn:
    """Deploy `plain` to this machine's home and exit as the CLI would: its JSON on stdout,
    its one error line and exit code (present.py), Ctrl-C cancelling the deployment. The
    backends are flushed, not closed, and the process ends without teardown (cli.main)."""

    def interrupted(signum: int, frame: Any) -> None:
        raise Interrupted("interrupted (Ctrl-C)")

    previous = signal.signal(signal.SIGINT, interrupted)
    service: Service | None = None
    reported = False
    code = 0
    try:
        try:
            service = _service()
            _deploy(service, plain)
        finally:
            signal.signal(signal.SIGINT, previous)
    except PushsiteError as exc:
        reported = True
        code = report_error(exc)
    except BaseException:  # a bug: its traceback, after the backends are closed (as click)
        if service is not None:
            with suppress(PushsiteError):
                service.close(exiting=True)
        raise
    if service is not None:
        try:
            service.close(exiting=True)
        except PushsiteError as exc:  # none after the deploy's own error (cli._close)
            if not reported:
                code = report_error(exc)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _service() -> Service:
    """cli._service: the settings, with the public URL of a server running on this home."""
    config = load_config()
    if not os.environ.get("PUSHSITE_PUBLIC_URL"):
        served = running(config.home)
        if served is not None:
            config = replace(config, public_url=served.public_url)
    from pushsite.service import Service

    return Service(config)


def _deploy(service: Service, plain: PlainDeploy) -> None:
    """cli._deploy for a local source without --build or --draft: the same function."""
    from pushsite.localdeploy import deploy_here

    def show(deployment: Deployment) -> None:
        _print_json(deployment_json(service.config, deployment, service))

    deploy_here(service, plain.source, plain.site, branch=plain.branch, message=plain.message,
                timeout=plain.timeout, create=plain.create, show=show, show_failed=show)


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data), flush=True)  # as click.echo: one line, flushed
