"""Shared fixtures: an isolated PUSHSITE_HOME per test, sites and git repos built in tmp, and a
real `pushsite serve` subprocess on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pushsite.model import Manifest

GIT_ENV = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("PUSHSITE_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("PUSHSITE_HOME", str(home))
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    return home


def write_files(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
    return root

def deploy(*args: str, input: bytes | None = None) -> tuple[int, str, str]:
    """`pushsite deploy ARGS` in this process: exit code, stdout, stderr."""
    from click.testing import CliRunner

    from pushsite.cli import cli

    result = CliRunner().invoke(cli, ["deploy", *args], input=input, obj={},
                                catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def live_manifest(site: str) -> Manifest:
    """The manifest a site's production alias points at."""
    from pushsite.config import load_config
    from pushsite.model import manifest_key
    from pushsite.service import Service

    service = Service(load_config())
    alias = service.state.get_alias(site, "production")
    assert alias is not None
    return Manifest.from_bytes(service.store.get(manifest_key(alias.deployment_id)))


@pytest.fixture
def make_site(tmp_path: Path) -> Callable[..., Path]:
    """A folder holding the given files (default: a tiny site)."""
    counter = [0]

    def make(files: dict[str, str | bytes] | None = None) -> Path:
        counter[0] += 1
        root = tmp_path / f"site{counter[0]}"
        root.mkdir()
        return write_files(root, files or {"index.html": "<h1>hello</h1>",
                                           "css/a.css": "body{color:red}" * 40})

    return make


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """A git repository with the given files committed on `main`."""
    counter = [0]

    def make(files: dict[str, str | bytes]) -> Path:
        counter[0] += 1
        repo = tmp_path / f"repo{counter[0]}"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        write_files(repo, files)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "first")
        return repo

    return make


def git_bundle(repo: Path, out: Path, rev: str = "HEAD") -> Path:
    """A bundle exactly as `git archive` makes one: one top folder, pax header with commit."""
    subprocess.run(["git", "archive", "--format=tar.gz", f"--prefix={repo.name}/", "-o",
                    str(out), rev], cwd=repo, check=True)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
                 args: tuple[str, ...] = ()) -> Server:
    port = port or free_port()
    env = {**os.environ, "PUSHSITE_HOME": str(home), **(extra_env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "pushsite", "serve", "--host", "127.0.0.1", "--port", str(port),
         *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
def serving(home: Path, extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """A `pushsite serve` for the block (module-scoped fixtures share one this way)."""
    srv = start_server(home, extra_env=extra_env)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server(_isolated_env: Path) -> Iterator[Server]:
    with serving(_isolated_env) as srv:
        yield srv
