"""What the command line shows, without click: its consoles, its one error line (errors.py's
exit codes) and a deployment as `--json` prints it.

Why a module of its own: the console script's quick paths (launch.py: a plain `deploy --json`
to a server or to this machine) print what the CLI prints, and importing the CLI for that
would load click (~13 ms) and the CLI module (~6 ms) before anything is deployed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pushsite.errors import PushsiteError
from pushsite.names import branch_label

if TYPE_CHECKING:
    from pushsite.config import Config
    from pushsite.model import Deployment


class _LazyConsole:
    """A rich Console made on first use: importing rich costs ~20 ms, a tenth of a one-shot
    `deploy --json` in CI, which never prints through it."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Any = None

    def real(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


out = _LazyConsole()
err = _LazyConsole(stderr=True)


def escape(text: str) -> str:
    """`text` shown as written: rich would take `[status]` in a message for markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def report_error(exc: PushsiteError) -> int:
    """Print `exc` as the one line users see and return the exit code it maps to."""
    err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    return exc.exit_code


def deployment_urls(config: Config, deployment: Deployment, production: bool) -> dict[str, str]:
    urls = {"deployment": config.site_url(f"{deployment.id}--{deployment.site}"),
            "branch": config.site_url(f"{branch_label(deployment.branch)}--{deployment.site}")}
    if production:
        urls["production"] = config.site_url(deployment.site)
    return urls


def deployment_json(config: Config, deployment: Deployment, service: Any) -> dict[str, Any]:
    """What `deploy --json` (and `status --json`) prints of a deployment: its record, its
    context and every URL it answers at."""
    site = service.state.get_site(deployment.site)
    data = deployment.to_dict()
    production = deployment.branch == site.production_branch
    data["context"] = ("draft" if deployment.draft else
                       "production" if production else "preview")
    # a locked production (`pushsite lock`) left it ready: no production URL serves it
    held = production and site.settings.locked and deployment.status != "live"
    urls = deployment_urls(config, deployment, production and not held)
    if deployment.draft or held:  # no alias moved: its own URL is the only one
        urls = {"deployment": urls["deployment"]}
    urls["log"] = f"{control_url(config)}/deployments/{deployment.id}"
    data["urls"] = urls
    return data


def control_url(config: Config) -> str:
    """The control plane (dashboard, API) of the server on this home, else the default one."""
    from pushsite.web.listening import running

    served = running(config.home)
    return served.url if served else "http://127.0.0.1:8000"


def locked_out(data: dict[str, Any]) -> bool:
    """A production-branch deployment that a locked production left ready: deployment_json
    and the API give it no production URL."""
    return (data.get("context") == "production" and data.get("status") == "ready"
            and not (data.get("urls") or {}).get("production"))
