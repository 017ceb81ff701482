"""Driving a Service in-process: bundles (also in two gzip members), streams that stop between
them, and reads of a deployment's state, with bounded waits that fail rather than hang."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import random
import sys
import tarfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from pushsite.config import load_config
from pushsite.model import PRODUCTION, Deployment, Status, blob_key
from pushsite.service import Service

WAIT = 60.0  # how long a helper waits for another thread or process before giving up


# bundles ---------------------------------------------------------------------------------------
def split_bundle(first: dict[str, bytes], rest: dict[str, bytes]) -> tuple[bytes, bytes]:
    """A bundle as two gzip members (valid gzip): `first`'s files, then `rest` and the end."""
    raw = io.BytesIO()
    split = 0
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for group in (first, rest):
            for name, data in group.items():
                info = tarfile.TarInfo(f"site/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            split = split or tar.offset
    data = raw.getvalue()
    return gzip.compress(data[:split], 1), gzip.compress(data[split:], 1)


def bundle(files: dict[str, bytes]) -> bytes:
    """A whole bundle of `files` under one top folder, as `git archive` makes it."""
    first, rest = split_bundle(files, {})
    return first + rest


def big_files(tag: str, count: int = 3, size: int = (1 << 20) + 4096) -> dict[str, bytes]:
    """Incompressible files above the local store's pack limit: written at once, as files."""
    return {f"big/{tag}{i}.bin": random.Random(f"{tag}{i}").randbytes(size)
            for i in range(count)}


def site_files(text: str) -> dict[str, bytes]:
    return {"index.html": f"<h1>{text}</h1>".encode(), "about.html": f"<p>{text}</p>".encode()}


class GatedStream:
    """A bundle arriving like a slow upload: the second part waits until `go` is set."""

    def __init__(self, first: bytes, rest: bytes) -> None:
        self._buf = first
        self._rest = rest
        self.waiting = threading.Event()  # the reader has consumed the first part
        self.go = threading.Event()

    def read(self, size: int = -1) -> bytes:
        if not self._buf and self._rest:
            self.waiting.set()
            if not self.go.wait(WAIT):
                return b""  # never released: the reader sees a truncated bundle
            self._buf, self._rest = self._rest, b""
        size = len(self._buf) if size < 0 else size
        out, self._buf = self._buf[:size], self._buf[size:]
        return out


class FifoFeeder:
    """Serves a bundle through a named pipe in staging, so a server's worker reads the first
    part and then waits: a deployment that is reliably `running` while a test acts."""

    def __init__(self, path: Path, first: bytes, rest: bytes) -> None:
        self.path = path
        os.mkfifo(path)
        self._parts = (first, rest)
        self.first_written = threading.Event()
        self.go = threading.Event()
        self.abandon = threading.Event()
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _feed(self) -> None:
        deadline = time.monotonic() + WAIT
        fd = -1
        while fd < 0 and time.monotonic() < deadline and not self.abandon.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.02)
        if fd < 0:
            return
        os.set_blocking(fd, True)
        with contextlib.suppress(OSError), os.fdopen(fd, "wb") as out:
            out.write(self._parts[0])
            out.flush()
            self.first_written.set()
            while not self.go.wait(0.05):
                if self.abandon.is_set():
                    return
            out.write(self._parts[1])

    def stop(self) -> None:
        self.abandon.set()
        self.go.set()
        self.thread.join(WAIT)


# waiting and reading state ---------------------------------------------------------------------
def wait_for(what: str, check: Callable[[], bool]) -> None:
    """Poll until `check` holds; fails (never hangs) when it does not within WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def status(service: Service, deployment_id: str) -> Status:
    return service.state.get_deployment(deployment_id).status


def log_text(service: Service, deployment_id: str) -> str:
    return "\n".join(line.message for line in service.state.get_logs(deployment_id))


def alias_of(service: Service, site: str, name: str = PRODUCTION) -> str | None:
    alias = service.state.get_alias(site, name)
    return alias.deployment_id if alias else None


def accept(service: Service, site: str, files: dict[str, bytes], branch: str | None = None,
           enqueue: bool = False) -> Deployment:
    return service.accept(site, io.BytesIO(bundle(files)), branch=branch, enqueue=enqueue)


def deploy(service: Service, site: str, files: dict[str, bytes],
           branch: str | None = None) -> Deployment:
    return service.run(accept(service, site, files, branch).id)


def stores_blobs(service: Service, files: dict[str, bytes]) -> Callable[[], bool]:
    """Whether this actor's store has each of these files' blobs, whoever wrote them: a
    large file's row commits once it is durable in place (stores/local.py adopt_file), so
    another actor sees it as soon as the writer stored it."""
    keys = [blob_key(hashlib.sha256(data).hexdigest()) for data in files.values()]
    return lambda: len(service.store.has(keys)) == len(keys)


def run_in_thread(service: Service, deployment_id: str, **kwargs: object,
                  ) -> tuple[threading.Thread, list[BaseException]]:
    """Service.run in another thread; what it raised lands in the returned list."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            service.run(deployment_id, **kwargs)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def joined(thread: threading.Thread) -> None:
    """Wait for a runner thread; if it hangs, fail with where it is stuck."""
    thread.join(WAIT)
    if thread.is_alive():
        frame = sys._current_frames().get(thread.ident or 0)
        stack = "".join(traceback.format_stack(frame)) if frame else "(no frame)"
        raise AssertionError(f"the runner thread is stuck:\n{stack}")


@contextlib.contextmanager
def open_service() -> Iterator[Service]:
    """A Service on this test's PUSHSITE_HOME (the one `pushsite serve` there would use)."""
    svc = Service(load_config())
    try:
        yield svc
    finally:
        svc.close()
