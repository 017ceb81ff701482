"""Running the app: uvicorn, one or more HTTP processes, and always exactly one deploy worker
per `pushsite serve`.

uvicorn runs the ASGI app with the protocol of pushsite.edge.uvicorn_shortcut, which writes
cached edge answers straight from its parser. granian (with an RSGI app) used to be offered
beside it and was removed: on the edge benchmark (2 processes, 2 cores, wrk on the same
machine) uvicorn's shortcut measured about 1.5 times granian's RSGI requests/s, since granian
hands every request from its Rust thread to the Python event loop thread and back, which costs
more than the whole cached answer.

With one uvicorn process the worker thread lives in the app's lifespan. Otherwise the HTTP
processes are built from the environment (`app_from_environment`, worker=False) and the
worker thread runs in this parent process, beside the server's supervisor.
"""

from __future__ import annotations

import os
import socket
import threading

from pushsite.config import Config
from pushsite.service import Service
from pushsite.service.worker import run_worker
from pushsite.web.app import build_app

_FACTORY = "pushsite.web.app:app_from_environment"
_HTTP = "pushsite.edge.uvicorn_shortcut:EdgeHttpToolsProtocol"  # uvicorn's, with the edge shortcut


def run_server(config: Config, *, host: str, port: int, workers: int = 1,
               debug: bool = False) -> None:
    workers = max(workers, 1)
    if workers == 1:
        import uvicorn

        uvicorn.run(build_app(config, debug=debug), host=host, port=port, log_level="warning",
                    access_log=False, timeout_graceful_shutdown=3, http=_HTTP)
        return
    _export(config, debug)
    service = Service(config)
    # the worker recovers expired leases at its start, then every lease (run_worker)
    threading.Thread(target=run_worker, args=(service,), kwargs={"wait": 0.5, "kind": "serve"},
                     daemon=True, name="pushsite-worker").start()
    from pushsite.web.processes import serve_processes

    serve_processes(host, port, workers, _serve_uvicorn)


def _serve_uvicorn(sock: socket.socket) -> None:
    """One HTTP process: uvicorn with the edge shortcut, on its own listening socket."""
    import uvicorn

    config = uvicorn.Config(_FACTORY, factory=True, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=3, http=_HTTP)
    uvicorn.Server(config).run(sockets=[sock])


def _export(config: Config, debug: bool) -> None:
    """Hand the settings to the HTTP processes, which rebuild the Config from PUSHSITE_*."""
    for name, value in (("HOME", config.home), ("STORE", config.store), ("STATE", config.state),
                        ("QUEUE", config.queue), ("BASE_DOMAIN", config.base_domain),
                        ("PUBLIC_URL", config.public_url), ("WAIT", config.wait),
                        ("WORKERS", config.workers), ("LEASE", config.lease)):
        os.environ[f"PUSHSITE_{name}"] = str(value)
    if debug:
        os.environ["PUSHSITE_DEBUG"] = "1"
