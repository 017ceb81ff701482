"""A real `pushsite serve` subprocess on a free 127.0.0.1 port, and free ports themselves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(plus_grpc: bool = False) -> int:
    """A free port on 127.0.0.1; with plus_grpc, port + 10000 is free too (SeaweedFS gRPC)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not plus_grpc:
            return port
        if port + 10000 < 65536 and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair found on 127.0.0.1")


@dataclass
class Server:
    port: int
    home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, host: str, path: str = "/", **kwargs: object) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
        headers["Host"] = host
        return httpx.get(self.url + path, headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]

    def new_token(self, *args: str) -> str:
        """`pushsite tokens create ARGS`, and the secret it printed."""
        done = self.cli("tokens", "create", *(args or ("--name", "test")))
        assert done.returncode == 0, done.stderr
        return done.stdout.decode().strip()

    def create_site(self, name: str, *args: str) -> None:
        """`pushsite sites create NAME ARGS` on this server's home, unless it has the site:
        deploys and pushes go only to sites created on purpose."""
        done = self.cli("sites", "create", name, *args)
        assert done.returncode == 0 or b"already exists" in done.stderr, done.stderr

    def cli(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "pushsite", *args], env=self.env,
                              input=input, capture_output=True, timeout=120)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(home: Path, port: int | None = None, extra_env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), log: Path | None = None) -> Server:
    """`log`: a file that gets the server's stderr (its log), else it is dropped."""
    port = port or free_port()
    env = {**os.environ, "PUSHSITE_HOME": str(home), **(extra_env or {})}
    with open(log or os.devnull, "ab") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "pushsite", "serve", "--host", "127.0.0.1", "--port",
             str(port), *args],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    server = Server(port, home, env, process)
    deadline = time.monotonic() + 60  # a loaded CI machine starts granian slowly
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pushsite serve exited with {process.returncode}")
        try:
            if httpx.get(f"{server.url}/api/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError("pushsite serve did not answer within 60 s")


@contextmanager
def serving(home: Path, extra_env: dict[str, str] | None = None,
            log: Path | None = None) -> Iterator[Server]:
    """A `pushsite serve` for the block (module-scoped fixtures share one this way)."""
    srv = start_server(home, extra_env=extra_env, log=log)
    try:
        yield srv
    finally:
        srv.stop()
