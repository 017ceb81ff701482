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

import functools
import os
import signal
import socket
import threading
from typing import Any

from pushsite.config import Config
from pushsite.service import Service
from pushsite.service.worker import run_worker
from pushsite.web import listening
from pushsite.web.app import build_app
from pushsite.web.certificates import Certificate

_FACTORY = "pushsite.web.app:app_from_environment"
_HTTP = "pushsite.edge.uvicorn_shortcut:EdgeHttpToolsProtocol"  # uvicorn's, with the edge shortcut


def run_server(config: Config, *, host: str, port: int, workers: int = 1,
               debug: bool = False, tls: tuple[str, str] | None = None) -> None:
    """Serve until stopped, with where it listens recorded in the home meanwhile (listening.py:
    other commands on this home print the URLs actually served)."""
    previous = listening.running(config.home)  # kept if this one cannot bind its port
    # uvicorn re-raises SIGTERM after its graceful shutdown: with Python's default action the
    # process would die there, before the record is removed
    signal.signal(signal.SIGTERM, _exit_cleanly)
    listening.record(config.home, host=host, port=port, public_url=config.public_url,
                     url=listening.control_url(host, port, "https" if tls else "http"))
    try:
        _run(config, host=host, port=port, workers=max(workers, 1), debug=debug, tls=tls)
    finally:
        listening.forget(config.home, previous)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _run(config: Config, *, host: str, port: int, workers: int, debug: bool,
         tls: tuple[str, str] | None = None) -> None:
    certificate = Certificate(*tls) if tls else None  # a bad pair: one error, before binding
    if workers == 1:
        import uvicorn

        app = build_app(config, debug=debug)
        _freeze_heap()
        uvicorn.run(app, host=host, port=port, log_level="warning",
                    access_log=False, timeout_graceful_shutdown=3, http=_HTTP,
                    **_uvicorn_options(certificate))
        return
    _export(config, debug)
    service = Service(config)
    # the worker recovers expired leases at its start, then every lease (run_worker)
    threading.Thread(target=run_worker, args=(service,), kwargs={"wait": 0.5, "kind": "serve"},
                     daemon=True, name="pushsite-worker").start()
    from pushsite.web.processes import serve_processes

    serve_processes(host, port, workers, functools.partial(_serve_uvicorn, tls=tls),
                    forward_hangup=tls is not None)


def _freeze_heap() -> None:
    """Move what the start built (modules, the app, the service: ~80,000 objects) out of
    the collector's reach: a 1,000-file upload builds some 10,000 containers, and the
    collections they set off walked those objects too. Over 20 one-file redeploys of the
    bench's medium site (gc.callbacks timing each collection): 101 ms collecting, 60 of it
    in one full collection, against 36 ms with this."""
    import gc

    gc.collect()
    gc.freeze()


def _serve_uvicorn(sock: socket.socket, tls: tuple[str, str] | None = None) -> None:
    """One HTTP process: uvicorn with the edge shortcut, on its own listening socket."""
    import uvicorn

    certificate = Certificate(*tls) if tls else None
    config = uvicorn.Config(_FACTORY, factory=True, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=3, http=_HTTP,
                            **_uvicorn_options(certificate))
    uvicorn.Server(config).run(sockets=[sock])


def _uvicorn_options(certificate: Certificate | None) -> dict[str, Any]:
    """Proxy headers off in uvicorn (it would trust 127.0.0.1 by default): build_app applies
    them for the configured proxies only (web/forwarded.py). With a certificate, HTTPS from
    one live context that SIGHUP reloads (web/certificates.py)."""
    options: dict[str, Any] = {"proxy_headers": False}
    if certificate is not None:
        certificate.reload_on_hangup()
        options["ssl_context_factory"] = certificate.factory
    return options


def _export(config: Config, debug: bool) -> None:
    """Hand the settings to the HTTP processes, which rebuild the Config from PUSHSITE_*."""
    for name, value in (("HOME", config.home), ("STORE", config.store), ("STATE", config.state),
                        ("QUEUE", config.queue), ("BASE_DOMAIN", config.base_domain),
                        ("PUBLIC_URL", config.public_url), ("WAIT", config.wait),
                        ("WORKERS", config.workers), ("LEASE", config.lease),
                        ("TLS_PREVIEWS", config.tls_previews),
                        ("FORWARDED_ALLOW_IPS", config.forwarded_allow_ips)):
        os.environ[f"PUSHSITE_{name}"] = str(value)
    if debug:
        os.environ["PUSHSITE_DEBUG"] = "1"
