"""Several HTTP processes on one port, each with its own listening socket (SO_REUSEPORT).

Why not uvicorn's own `workers`: its processes share one socket, and whichever wakes first
accepts, so 50 keep-alive connections opened at once split unevenly (40/10 was seen under
wrk) and one core idles while the other is the bottleneck. With a socket per process the
kernel spreads new connections across them by a hash of the addresses.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

from pushsite.errors import ConfigError


def listening_socket(host: str, port: int, listen: bool = True) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT, so each process can have its own."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror} (is another "
                          "server using that port? pick another with --port)") from None
    if listen:
        sock.listen(2048)
    return sock


def _child(host: str, port: int, serve: Callable[[socket.socket], None]) -> None:
    serve(listening_socket(host, port))


def serve_processes(host: str, port: int, count: int, serve: Callable[[socket.socket], None],
                    forward_hangup: bool = False) -> None:
    """Run `serve` in `count` processes until one stops or this one is told to stop.

    With forward_hangup, a SIGHUP to this process goes to each of them (they reload their
    certificate: web/certificates.py) instead of ending it."""
    # bound here first (not listening: no connection may wait on it), so a port already in
    # use is one clear error, not `count` tracebacks
    probe = listening_socket(host, port, listen=False)
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_child, args=(host, port, serve), daemon=False,
                                name=f"pushsite-http-{n}") for n in range(count)]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.is_alive():
                child.terminate()

    def hangup(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGHUP)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    if forward_hangup:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hangup)
    try:
        for child in children:
            child.start()
        probe.close()  # the children listen now
        from multiprocessing.connection import wait

        wait([child.sentinel for child in children])  # the first that ends ends them all
        stop(signal.SIGTERM, None)
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [child for child in children if child.exitcode not in (0, -signal.SIGTERM)]
    if failed and not stopping:
        sys.exit(f"error: an HTTP process stopped (exit {failed[0].exitcode}); see above")
