"""The embedded queue: a table in SQLite, so accepted work survives a restart.

An item received is hidden until `visible_at`; a consumer that dies without acking lets it
reappear after the visibility timeout, which is how `pushsite serve` killed mid-deploy resumes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pushsite.errors import BackendUnavailable, ConfigError
from pushsite.queues import QueueItem
from pushsite.sqlite_setup import setting_up

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY, body TEXT NOT NULL, visible_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, receipt TEXT);
"""


class LocalQueue:
    """A durable FIFO queue in a SQLite file (`local:///path/queue.db`)."""

    def __init__(self, path: Path, visibility: float = 300.0, poll: float = 0.05) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with setting_up(path):
                self._db = sqlite3.connect(
                    path, check_same_thread=False, isolation_level=None, timeout=30
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise BackendUnavailable(f"cannot open the queue {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.visibility = visibility
        self._poll = poll

    @classmethod
    def from_url(cls, url: str) -> LocalQueue:
        parts = urlsplit(url)
        if not parts.path:
            raise ConfigError(f"invalid queue URL {url!r}: expected local:///path/queue.db")
        options = parse_qs(parts.query)
        visibility = float(options.get("visibility", ["300"])[0])
        return cls(Path(unquote(parts.path)), visibility=visibility)

    def send(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO queue (body, visible_at) VALUES (?, ?)", (json.dumps(body), 0.0)
            )
        self._wake.set()

    def receive(self, wait_seconds: float = 0.0) -> QueueItem | None:
        deadline = time.monotonic() + wait_seconds
        while True:
            item = self._try_receive()
            if item is not None or time.monotonic() >= deadline:
                return item
            # a send from this process wakes us at once; one from another process (a CLI,
            # another server process) is seen within one poll
            self._wake.wait(min(self._poll, max(deadline - time.monotonic(), 0)))
            self._wake.clear()

    def _try_receive(self) -> QueueItem | None:
        receipt = uuid.uuid4().hex
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "UPDATE queue SET visible_at = ?, attempts = attempts + 1, receipt = ? "
                "WHERE id = (SELECT id FROM queue WHERE visible_at <= ? ORDER BY id LIMIT 1) "
                "RETURNING body, attempts",
                (now + self.visibility, receipt, now),
            ).fetchone()
        if row is None:
            return None
        return QueueItem(json.loads(row[0]), receipt, row[1])

    def ack(self, item: QueueItem) -> None:
        with self._lock:
            self._db.execute("DELETE FROM queue WHERE receipt = ?", (item.receipt,))

    def release(self, item: QueueItem) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE queue SET visible_at = 0 WHERE receipt = ?", (item.receipt,)
            )
        self._wake.set()

    def extend(self, item: QueueItem, seconds: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE queue SET visible_at = ? WHERE receipt = ?",
                (time.time() + seconds, item.receipt),
            )

    def pending(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
