"""The real parts a chaos round drives: a home, `pushsite` subprocesses killed with SIGKILL,
`pushsite serve` on 127.0.0.1, and the checks every round ends with (the live site over HTTP,
byte for byte; `pushsite verify`; no deployment left running or queued once leases ran out)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pushsite.config import load_config
from pushsite.model import PRODUCTION, Status
from pushsite.service import Service

LEASE = 2.0  # seconds: PUSHSITE_LEASE of every process a round starts
WAIT = 60.0  # seconds any one step may take before the round is a failure
SITE = "chaos"


class ChaosFailure(AssertionError):
    """A broken site, a stuck record, or a step that never ended: what the suite counts."""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def version_files(version: int, count: int = 60) -> dict[str, bytes]:
    """A site's files at `version`: some shared by every version (reused blobs), some of
    the version before (reused by the next one), some new; one large file now and then."""
    rng = random.Random(version)
    files = {f"shared/{n}.css": f"body{{--n:{n}}}\n".encode() * 40 for n in range(count // 3)}
    files |= {f"pages/{version % 7}-{n}.txt": f"v{version % 7} page {n}\n".encode() * 50
              for n in range(count // 3)}
    files |= {f"new/{n}.txt": f"version {version} file {n}\n".encode() * 30
              for n in range(count // 3)}
    files["index.html"] = f"<h1>version {version}</h1>".encode()
    if version % 4 == 0:
        files["big.bin"] = rng.randbytes(2 << 20)
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@dataclass
class Home:
    """One PUSHSITE_HOME and the environment of every process started on it."""

    root: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.root / "home"

    @property
    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSITE_")}
        return {**keep, "PUSHSITE_HOME": str(self.path), "PUSHSITE_LEASE": str(LEASE),
                "PUSHSITE_PRUNE_GRACE": "0", "PUSHSITE_METRICS": "0",
                "XDG_DATA_HOME": str(self.root / "xdg"), **self.extra}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pushsite", *args]

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.command(*args), env=self.env, capture_output=True,
                              text=True, timeout=WAIT * 2)
        if ok and done.returncode != 0:
            raise ChaosFailure(f"pushsite {' '.join(args)} exited {done.returncode}: "
                               f"{done.stderr.strip()[-3000:]}")
        return done

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(*args), env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def folder(self, version: int) -> Path:
        folder = self.root / "sources" / f"v{version}"
        if not folder.exists():
            write_folder(folder, version_files(version))
        return folder

    def deploy_args(self, version: int, *extra: str) -> list[str]:
        return ["deploy", str(self.folder(version)), "--site", SITE, "-m", f"v{version}",
                *extra]

    def service(self) -> Service:
        return Service(load_config(home=str(self.path), store=self.extra.get("PUSHSITE_STORE"),
                                   lease=LEASE))


@dataclass
class Window:
    """When to kill: a random moment in [low, high] s after the start. A process that ends
    before its moment narrows the window to that process's life, so on a fast machine the
    kills still land (a fixed window made the short suite loop until its timeout there)."""

    low: float
    high: float

    def missed(self, lived: float) -> None:
        self.high = max(0.02, min(self.high, lived * 0.8))
        self.low = min(self.low, self.high / 2)


_WINDOWS: dict[tuple[int, float, float], Window] = {}


def kill_at_random(process: subprocess.Popen[str], rng: random.Random, low: float,
                   high: float) -> bool:
    """SIGKILL the process at a random moment in [low, high] s, narrowed to how long such a
    process lived when one ended first (Window); True when it was killed (False: it ended
    before)."""
    window = _WINDOWS.setdefault((id(rng), low, high), Window(low, high))
    started = time.monotonic()
    deadline = started + rng.uniform(window.low, window.high)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            window.missed(time.monotonic() - started)
            return False
        time.sleep(0.005)
    if process.poll() is not None:
        window.missed(time.monotonic() - started)
        return False
    process.send_signal(signal.SIGKILL)
    process.wait(WAIT)
    return True


@dataclass
class Ended:
    code: int
    out: str
    err: str


def finish(process: subprocess.Popen[str]) -> Ended:
    """Wait for a process started by Home.start; its exit code and output."""
    try:
        out, err = process.communicate(timeout=WAIT * 2)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise ChaosFailure("a pushsite process never ended") from None
    return Ended(process.returncode, out or "", err or "")


class Serve:
    """`pushsite serve` on 127.0.0.1 that can be killed and started again on its port."""

    def __init__(self, home: Home, port: int | None = None) -> None:
        self.home = home
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Serve:
        log = open(self.home.root / f"serve-{self.port}.log", "ab")  # noqa: SIM115 - kept
        with log:
            self.process = subprocess.Popen(
                self.home.command("serve", "--host", "127.0.0.1", "--port", str(self.port)),
                env=self.home.env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ChaosFailure(f"pushsite serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise ChaosFailure("pushsite serve did not answer")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(WAIT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Host": f"{SITE}.localhost",
                                                   "Accept-Encoding": "identity"}, timeout=10)


def settle(home: Home) -> None:
    """Wait out the leases, let a worker recover what was left, and fail the round if any
    deployment is still running or queued."""
    time.sleep(LEASE + 0.2)
    deadline = time.monotonic() + WAIT
    service = home.service()
    try:
        while True:
            home.run("worker", "--once")
            stuck = [d for d in service.state.list_deployments(SITE, limit=10_000)
                     if d.status in (Status.RUNNING, Status.QUEUED)]
            if not stuck:
                return
            if time.monotonic() > deadline:
                raise ChaosFailure(f"{len(stuck)} deployments stuck: "
                                   f"{', '.join(f'{d.id} {d.status}' for d in stuck)}")
            time.sleep(0.5)
    finally:
        service.close()


def live_version(home: Home) -> int | None:
    """The version production serves, from its deployment's message (-m vN)."""
    service = home.service()
    try:
        alias = service.state.get_alias(SITE, PRODUCTION)
        if alias is None:
            return None
        return int(service.state.get_deployment(alias.deployment_id).message.removeprefix("v"))
    finally:
        service.close()


def check(home: Home, last_ok: int | None, serve: Serve | None = None) -> int | None:
    """The round's verdict: `pushsite verify` clean; production serves, over HTTP and byte
    for byte, the version of a deployment no older than the last one that exited 0. The
    version served."""
    done = home.run("verify", ok=False)
    if done.returncode != 0:
        raise ChaosFailure(f"pushsite verify: {done.stdout.strip()[-500:]} "
                           f"{done.stderr.strip()[-3000:]}")
    version = live_version(home)
    if last_ok is not None and (version is None or version < last_ok):
        raise ChaosFailure(f"production serves v{version}, older than v{last_ok}, which "
                           "went live")
    if version is None:
        return None
    own = serve is None
    server = serve or Serve(home).start()
    try:
        for path, data in version_files(version).items():
            url = "/" if path == "index.html" else f"/{path}"
            response = server.get(url)
            if response.status_code != 200 or response.content != data:
                raise ChaosFailure(f"GET {url} of v{version} answered "
                                   f"{response.status_code}, {len(response.content)} bytes "
                                   f"(expected {len(data)})")
    finally:
        if own:
            server.stop()
    return version
