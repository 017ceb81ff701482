"""The embedded queue: a table in SQLite, so accepted work survives a restart.

An item received is hidden until `visible_at`; a consumer that dies without acking lets it
reappear after the visibility timeout, which is how `pushsite serve` killed mid-deploy resumes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pushsite.diskspace import Reserve, is_full, opened_with_room
from pushsite.errors import BackendUnavailable, ConfigError, DiskFull
from pushsite.queues import QueueItem
from pushsite.sqlite_setup import setting_up

_RESERVE_BYTES = 256 << 10  # diskspace.py; an ack is one page of WAL

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY, body TEXT NOT NULL, visible_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, receipt TEXT);
"""


class LocalQueue:
    """A durable FIFO queue in a SQLite file (`local:///path/queue.db`)."""

    def __init__(self, path: Path, visibility: float = 300.0, poll: float = 0.05) -> None:
        # room to ack and release on a full disk (diskspace.py): those settle, never add
        self._reserve = Reserve(path.with_name(path.name + "-reserve"), _RESERVE_BYTES)
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = opened_with_room(self._reserve, path, lambda: self._open(path))
        except (OSError, sqlite3.Error) as exc:
            if is_full(exc, path):
                raise DiskFull.holding(path) from exc
            raise BackendUnavailable(f"cannot open the queue {path}: {exc}") from exc
        self._reserve.restore()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.visibility = visibility
        self._poll = poll

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        with setting_up(path):
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
            except BaseException:
                db.close()
                raise
        return db

    @contextmanager
    def _writing(self, *, settling: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, locked, for one statement; a full disk is DiskFull, another
        SQLite error BackendUnavailable (never a bare sqlite3 error: an API 500)."""
        with self._lock:
            try:
                with self._reserve.room(settling=settling):
                    yield self._db
            except sqlite3.Error as exc:
                if is_full(exc, self.path):
                    raise DiskFull.holding(self.path) from exc
                raise BackendUnavailable(f"queue database error: {exc}") from exc

    @classmethod
    def from_url(cls, url: str) -> LocalQueue:
        parts = urlsplit(url)
        if not parts.path:
            raise ConfigError(f"invalid queue URL {url!r}: expected local:///path/queue.db")
        options = parse_qs(parts.query)
        visibility = float(options.get("visibility", ["300"])[0])
        return cls(Path(unquote(parts.path)), visibility=visibility)

    def send(self, body: dict[str, Any], delay: float = 0.0) -> None:
        visible_at = time.time() + delay if delay > 0 else 0.0
        with self._writing() as db:
            db.execute(
                "INSERT INTO queue (body, visible_at) VALUES (?, ?)",
                (json.dumps(body), visible_at),
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
        import uuid  # here: a deploy that only sends never pays its import (platform, ~5 ms)

        receipt = uuid.uuid4().hex
        now = time.time()
        with self._writing() as db:
            row = db.execute(
                "UPDATE queue SET visible_at = ?, attempts = attempts + 1, receipt = ? "
                "WHERE id = (SELECT id FROM queue WHERE visible_at <= ? ORDER BY id LIMIT 1) "
                "RETURNING body, attempts",
                (now + self.visibility, receipt, now),
            ).fetchone()
        if row is None:
            return None
        return QueueItem(json.loads(row[0]), receipt, row[1])

    def ack(self, item: QueueItem) -> None:
        with self._writing(settling=True) as db:
            db.execute("DELETE FROM queue WHERE receipt = ?", (item.receipt,))

    def release(self, item: QueueItem) -> None:
        with self._writing(settling=True) as db:
            db.execute(
                "UPDATE queue SET visible_at = 0 WHERE receipt = ?", (item.receipt,)
            )
        self._wake.set()

    def extend(self, item: QueueItem, seconds: float) -> None:
        with self._writing() as db:
            db.execute(
                "UPDATE queue SET visible_at = ? WHERE receipt = ?",
                (time.time() + seconds, item.receipt),
            )

    def pending(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
