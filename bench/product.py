"""Driving pushsite itself the way a user does: its command line and its HTTP server.

Every figure that needs a feature first asks `missing_*()`; a non-empty answer is the reason the
figure is reported as "not available" instead of measured. Nothing here fakes a feature.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import measure
from bench.corpora import scratch_dir
from bench.errors import BenchError


def pushsite_argv() -> list[str]:
    """The pushsite command next to this Python (the project's virtualenv)."""
    exe = Path(sys.executable).with_name("pushsite")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pushsite"]


def _help(*words: str) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            [*pushsite_argv(), *words, "--help"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def missing_command(*words: str, option: str | None = None) -> str:
    """Why `pushsite WORDS` cannot be used yet, or "" if it can."""
    code, text = _help(*words)
    cmd = " ".join(["pushsite", *words])
    if code != 0:
        last = text.splitlines()[-1] if text else f"exit {code}"
        return f"`{cmd}` does not run yet ({last[:120]})"
    if option and option not in text:
        return f"`{cmd}` has no {option} option yet"
    return ""


def fresh_home(tag: str) -> Path:
    """An empty PUSHSITE_HOME on the cache's disk (the same disk the baselines write to)."""
    return Path(tempfile.mkdtemp(prefix=f"home-{tag}-", dir=scratch_dir()))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Deploy:
    """One `pushsite deploy` run: the measurement and the JSON it printed."""

    run: measure.Run
    doc: dict[str, object]


def deploy(
    source: Path, home: Path, site: str = "bench", env: dict[str, str] | None = None
) -> Deploy:
    """Run `pushsite deploy SOURCE --site NAME --json` and check it went live."""
    argv = [*pushsite_argv(), "deploy", str(source), "--site", site, "--json", "--create"]
    result = measure.run(argv, env={"PUSHSITE_HOME": str(home), **(env or {})})
    if result.returncode != 0:
        raise BenchError(
            f"pushsite deploy of {source.name} failed with exit {result.returncode}: "
            f"{result.stderr.strip()[-400:]}"
        )
    try:
        doc = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise BenchError(
            f"pushsite deploy --json printed no JSON ({result.stdout[:200]!r}); fix the CLI."
        ) from exc
    return Deploy(result, doc)


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Terminate a server the bench started; kill it if it is still there after `grace` s."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll until something listens on the port; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"The server on port {port} exited with {proc.returncode} at start.")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"Nothing listened on port {port} after {timeout:.0f} s.")


class Server:
    """`pushsite serve` on a free loopback port, stopped on exit."""

    def __init__(self, home: Path, extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.home = home
        self.extra = extra
        self.env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "serve.log"

    def __enter__(self) -> Server:
        argv = [*pushsite_argv(), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += self.extra
        env = {**os.environ, "PUSHSITE_HOME": str(self.home), **self.env}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, self.proc)
        except BenchError as exc:
            self.__exit__()
            tail = self.log.read_text(errors="replace")[-400:]
            raise BenchError(f"{exc} Its log ends: {tail}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def get(self, client: httpx.Client, site: str, path: str) -> httpx.Response:
        """GET a page of a site as a browser would, through the Host header."""
        return client.get(
            f"http://127.0.0.1:{self.port}/{path}", headers={"Host": f"{site}.localhost"}
        )

    def wait_content(
        self, site: str, path: str, marker: bytes, timeout: float = 120.0
    ) -> float:
        """Poll until the page answers 200 with `marker` in it; the monotonic time it did."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                try:
                    resp = self.get(client, site, path)
                    if resp.status_code == 200 and marker in resp.content:
                        return time.monotonic()
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
        raise BenchError(f"{site}/{path} never served the new content within {timeout:.0f} s.")

    def create_site(self, name: str) -> None:
        """`pushsite sites create NAME`: pushes go only to sites created on purpose."""
        subprocess.run([*pushsite_argv(), "sites", "create", name],
                       env={**os.environ, "PUSHSITE_HOME": str(self.home)},
                       capture_output=True, text=True, check=True)

    def create_token(self) -> str:
        """A push token from `pushsite tokens create` (its last printed word)."""
        proc = subprocess.run(
            [*pushsite_argv(), "tokens", "create"],
            env={**os.environ, "PUSHSITE_HOME": str(self.home)},
            capture_output=True,
            text=True,
        )
        words = proc.stdout.split()
        if proc.returncode != 0 or not words:
            raise BenchError(
                f"pushsite tokens create failed with exit {proc.returncode}: "
                f"{proc.stderr.strip()[-300:]}"
            )
        return words[-1]
