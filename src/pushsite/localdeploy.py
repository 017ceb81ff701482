"""A deploy to this machine's home: the service verbs in their order, for both entry points
that run one, `pushsite deploy` (cli.py) and the console script's quick path (quickdeploy.py).

Why one function: the two each wrote the sequence (source, deploy_target, accept, run, the
outcome, the optimisation unless a server runs here, Ctrl-C settling), and two copies of a
verb drift. What differs is presentation only, so the callers pass it in: how a deployment is
shown (JSON, or the CLI's URL lines), a progress display, a warning. No click here: the quick
path must not import it (tests/test_quick_local_deploy.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from pushsite.errors import ConfigError, Interrupted, PushsiteError
from pushsite.web.listening import running

if TYPE_CHECKING:
    from pushsite.deploy.builder import Counters
    from pushsite.model import Deployment
    from pushsite.service import Service

Show = Callable[["Deployment"], None]


def deploy_here(service: Service, source: str, site: str, *, branch: str | None,
                message: str, timeout: float, create: bool, show: Show,
                show_failed: Show | None = None, draft: bool = False, build: bool = False,
                progress: Callable[[Counters], None] | None = None,
                showing: AbstractContextManager[object] | None = None,
                unbuilt: Callable[[Path], None] | None = None) -> Deployment:
    """Deploy SOURCE (a folder, a .tar.gz, or - for stdin) to `site` on this home.

    `show` gets the live deployment the moment it is live: from inside the run (unless a
    progress display is `showing`), once the alias moved and the optimising message is
    queued, before the metrics, notifications and the run's threads are settled, and
    before the brotli pass (which runs here unless a
    server runs on this home to take its queued message); `show_failed` gets the
    deployment's record when the run failed, before the error is raised again.
    `showing` is held open while the run goes (a progress bar), `progress` gets its
    counters, `unbuilt` is told of a folder deployed without `build`. The caller makes
    Ctrl-C raise Interrupted while this runs: it cancels the deployment, and the error
    raised says the live site is unchanged."""
    from pushsite.deploy.folder import open_source

    # a folder is read in place; a tar.gz file or stdin is read as a stream
    folder = Path(source) if source != "-" and Path(source).is_dir() else None
    if build and folder is None:
        raise ConfigError("--build needs a folder to build; a .tar.gz is deployed as it is")
    if folder is not None and not build and unbuilt is not None:
        unbuilt(folder)
    stream = None if folder else open_source(source)
    shown: list[Deployment] = []
    unsaid: list[BaseException] = []  # show's own error (a closed stdout), raised after the run

    def said(live: Deployment) -> None:
        shown.append(live)
        try:
            show(live)
            sys.stdout.flush()
        except BaseException as exc:  # noqa: BLE001 - raised below; inside the run it would
            unsaid.append(exc)  # fail a deployment that is live

    service.deploy_target(site, create)  # once the source is there: a typo makes no site
    deployment = service.accept(site, None, branch=branch, message=message, enqueue=False,
                                draft=draft)
    try:
        try:
            with showing or nullcontext():
                deployment = service.run(deployment.id, timeout=timeout, progress=progress,
                                         bundle=stream, folder=folder, build=build,
                                         optimise=False,
                                         live=said if showing is None else None)
        finally:
            if build:
                from pushsite.deploy.build import finish_removals

                finish_removals()  # the work folder goes before a quick exit
    except PushsiteError as exc:
        if shown:  # it is live and was said so: what failed after (Ctrl-C too) is its own
            raise
        if isinstance(exc, Interrupted):  # cancelled by the run, or here if it had not begun
            with suppress(ConfigError, Interrupted):  # already settled; or a second Ctrl-C
                service.cancel(deployment.id)
        if show_failed is not None:
            show_failed(service.state.get_deployment(deployment.id))
        if isinstance(exc, Interrupted):
            raise Interrupted(f"deployment {deployment.id} cancelled: interrupted (Ctrl-C); "
                              "the live site is unchanged") from None
        raise
    if unsaid:
        raise unsaid[0]
    if not shown:  # a run that found it already settled (another runner's)
        show(deployment)
        sys.stdout.flush()
    if running(service.config.home) is None:  # else that server takes the queued message
        service.optimise_now(deployment.id)
    return deployment
