"""The one ASGI app `pushsite serve` runs: site hosts go to the edge, others to the control
plane; a background worker thread runs queued deployments."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pushsite.config import Config
from pushsite.edge.respond import Edge, make_edge_or_control_app
from pushsite.service import Service
from pushsite.service.worker import run_worker
from pushsite.state.counters import Tally
from pushsite.web import tls
from pushsite.web.forwarded import trusting_proxies
from pushsite.web.gitremote import HOOK_HEADER, HOOK_PATH


def build_app(config: Config, debug: bool = False, worker: bool = True) -> Any:
    """The ASGI app: the edge for site hosts, the Starlette control plane for the rest."""
    edge, control = _parts(config, debug, worker)
    app = trusting_proxies(hook_first(make_edge_or_control_app(edge, control), control),
                           config.forwarded_allow_ips)
    # an attribute on the ASGI app: whoever embeds build_app's app finds its service there
    app.service = control.state.service
    return app


def hook_first(app: Any, control: Any) -> Any:
    """The git hook's call-back (its path and its secret header) goes to the control plane
    before any host routing: whatever a site claims, it cannot answer a push's hook."""
    header = HOOK_HEADER.encode()

    async def routed(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == HOOK_PATH and any(
                name == header for name, _ in scope["headers"]):
            await control(scope, receive, send)
            return
        await app(scope, receive, send)

    routed.app = app  # type: ignore[attr-defined]  # for uvicorn_shortcut.find_edge
    return routed


def _parts(config: Config, debug: bool, worker: bool) -> tuple[Edge, Starlette]:
    service = Service(config)
    service.runner_kind = "serve"  # in the leases of what it runs (a redeploy, its worker's)
    edge = Edge(service.state, service.store, base_domain=config.base_domain,
                stale_seconds=config.edge_stale)
    service.manifest_listeners.append(edge.warm)
    if config.metrics:  # this process's edge counts, added to metrics.db every 2 s
        edge.tally = Tally()
        edge.tally.start(service.counters)
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        thread = None
        if worker:  # it recovers expired leases first, then every lease (run_worker)
            thread = threading.Thread(target=run_worker, args=(service,),
                                      kwargs={"stop": stop, "wait": 0.5, "kind": "serve"},
                                      daemon=True, name="pushsite-worker")
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=5)
            if edge.tally is not None:  # the last seconds' counts, else lost with the process
                edge.tally.stop()

    routes = control_routes(service)
    routes.extend(tls.routes(service, edge.hosts))  # Caddy's ask, through the edge's resolver
    control = Starlette(debug=debug, routes=routes, lifespan=lifespan)
    control.state.service = service
    return edge, control


def app_from_environment() -> Any:
    """The app for each process of `pushsite serve --http-workers N` (settings from env).

    The parent process runs the deploy worker; these processes only serve HTTP.
    """
    import os

    from pushsite.config import load_config

    _die_with_parent()
    return build_app(load_config(), debug=os.environ.get("PUSHSITE_DEBUG") == "1", worker=False)


def _die_with_parent() -> None:
    """An HTTP process ends when its `pushsite serve` parent does, even on kill -9 (Linux):
    an orphan would keep the port and serve without a deploy worker."""
    import contextlib
    import ctypes
    import ctypes.util
    import signal

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def control_routes(service: Service) -> list[Any]:
    routes: list[Any] = [Route("/api/health", health)]
    for module_name in ("pushsite.web.api", "pushsite.web.dashboard", "pushsite.web.gitremote",
                        "pushsite.web.hooks", "pushsite.web.metrics"):
        module = __import__(module_name, fromlist=["routes"])
        routes.extend(module.routes(service))
    return routes


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})
