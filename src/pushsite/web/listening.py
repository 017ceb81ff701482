"""Where a `pushsite serve` listens, recorded in its home so every other command on that home
prints the URLs actually served (the port, the public URL) and `pushsite status` can say
whether a server runs there.

The record is a small JSON file written whole under a temporary name and renamed into place,
removed when the server exits cleanly. A record whose process is gone is stale and ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RECORD = "server.json"


@dataclass(frozen=True)
class Listening:
    """A running server: its control plane's URL (dashboard, API, git remote), the public URL
    its sites answer under, and the process that serves them."""

    url: str
    public_url: str
    host: str
    port: int
    pid: int
    started: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def control_url(host: str, port: int, scheme: str = "http") -> str:
    """How a client on this machine reaches a server bound to `host` (https when it serves
    TLS itself)."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def record(home: Path, *, host: str, port: int, public_url: str, pid: int | None = None,
           started: float | None = None, url: str | None = None) -> Listening:
    """Write this process's record into `home` (atomically: readers see all of it or none);
    `url` is the control plane's, else plain HTTP on `host`."""
    listening = Listening(url or control_url(host, port), public_url.rstrip("/"), host, port,
                          pid or os.getpid(), started or time.time())
    home.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=home, prefix=f".{RECORD}-")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(listening.to_dict(), out)
        os.replace(tmp, home / RECORD)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return listening


def forget(home: Path, previous: Listening | None = None) -> None:
    """Remove the record if it is this process's (a newer server's record stays); `previous`,
    a server that was running on this home before this one and still is, gets its back."""
    current = _read(home)
    if current is None or current.pid != os.getpid():
        return
    if previous is not None and _alive(previous.pid):
        record(home, host=previous.host, port=previous.port, public_url=previous.public_url,
               pid=previous.pid, started=previous.started, url=previous.url)
        return
    with contextlib.suppress(FileNotFoundError):
        (home / RECORD).unlink()


def running(home: Path) -> Listening | None:
    """The server listening on `home`, or None when there is none (no record, or a stale one
    whose process is gone)."""
    current = _read(home)
    if current is None or not _alive(current.pid):
        return None
    return current


def _read(home: Path) -> Listening | None:
    try:
        data = json.loads((home / RECORD).read_text())
        return Listening(str(data["url"]), str(data["public_url"]), str(data["host"]),
                         int(data["port"]), int(data["pid"]), float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none, or not one we wrote: as good as none


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True
