"""Counters every process of one home adds to, for /metrics: a small SQLite file, metrics.db.

Why a file and not each process's memory: `pushsite serve --http-workers N` answers a scrape
from any one of N processes, deployments run in its parent (or in a CLI process, or in a
`pushsite worker`), so a scrape must see what all of them counted. Every process adds its
deltas in one transaction; a scrape sums the rows. Apart from the state database on purpose:
the edge watches that one for commits (state/sqlite.py change_token), and a counter flushed
every few seconds must not empty its caches.

A counter is a name and sorted label pairs; a histogram is counters too (a `_bucket` per
bound, `_sum`, `_count`), so it adds up across processes the same way.

`Tally` is the edge's: per-process integer slots incremented on the hot path (a list item
`+= 1`), written out by a daemon thread every `every` seconds, only when something changed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from pushsite.diskspace import is_full
from pushsite.sqlite_setup import setting_up

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]

_log = logging.getLogger("pushsite.metrics")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL, labels TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (name, labels));
"""


def key(name: str, **labels: str) -> Key:
    return name, tuple(sorted(labels.items()))


class CounterFile:
    """Named counters summed over every process that opens the same file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with setting_up(self.path):
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                     timeout=10)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def open(self) -> None:
        """Open the file now, making it in a fresh home (six fdatasyncs: the deploy that
        counts first does this on a thread while it reads files, service/running.py). Not
        after `close`: that thread may come after its service closed."""
        with self._lock:
            if not self._closed:
                self._open()

    def add(self, deltas: dict[Key, float]) -> None:
        """Add every delta in one transaction (nothing to write: no transaction)."""
        rows = [(name, json.dumps(labels), value) for (name, labels), value in deltas.items()
                if value]
        if not rows:
            return
        with self._lock:
            db = self._open()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT (name, labels)"
                               " DO UPDATE SET value = value + excluded.value", rows)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # a failed COMMIT (the disk full) rolled back already
                    db.execute("ROLLBACK")
                raise

    def add_quietly(self, deltas: dict[Key, float]) -> None:
        """`add` where counting must never fail what it counts (a deploy, a delivery). A full
        disk is not said again here: what failed for it says so in its own one line."""
        try:
            self.add(deltas)
        except Exception as exc:  # noqa: BLE001 - logged: metrics are never worth a failure
            level = logging.DEBUG if is_full(exc, self.path.parent) else logging.WARNING
            _log.log(level, "could not record metrics in %s: %s", self.path, exc)

    def read(self) -> dict[Key, float]:
        with self._lock:
            rows = self._open().execute("SELECT name, labels, value FROM counters").fetchall()
        return {(name, tuple(tuple(pair) for pair in json.loads(labels))): value
                for name, labels, value in rows}

    def close(self) -> None:
        """Close the connection (a later `add` or `read` opens it again; `open` does not)."""
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None


def histogram(name: str, value: float, bounds: Iterable[float], **labels: str) -> dict[Key, float]:
    """The deltas one observation adds to a cumulative histogram (Prometheus' layout)."""
    deltas = {key(f"{name}_bucket", le=_bound(b), **labels): 1.0 for b in bounds if value <= b}
    deltas[key(f"{name}_bucket", le="+Inf", **labels)] = 1.0
    deltas[key(f"{name}_sum", **labels)] = value
    deltas[key(f"{name}_count", **labels)] = 1.0
    return deltas


def _bound(bound: float) -> str:
    return repr(float(bound))


class Tally:
    """The edge's request counts by status class and answer-cache hit, in plain integers.

    slot = status // 100 * 2 + hit (0..11); `count` is the hot path. `start` runs a daemon
    thread that adds what changed to a CounterFile every `every` seconds.
    """

    def __init__(self) -> None:
        self.slots = [0] * 12
        self._flushed = [0] * 12
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: CounterFile | None = None
        self._flushing = threading.Lock()

    def count(self, status: int, hit: bool) -> None:
        self.slots[(status // 100) * 2 + hit] += 1

    def start(self, file: CounterFile, every: float = 2.0) -> None:
        self._file = file
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True,
                                        name="pushsite-edge-tally")
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.flush()

    def flush(self) -> None:
        """Add the counts since the last flush (a failed write is kept for the next one)."""
        if self._file is None:
            return
        with self._flushing:
            now = list(self.slots)
            deltas: dict[Key, float] = {}
            for slot, (new, old) in enumerate(zip(now, self._flushed, strict=True)):
                if new != old:
                    status_class = f"{slot // 2}xx" if slot // 2 else "other"
                    cache = "hit" if slot % 2 else "miss"
                    deltas[key("pushsite_edge_requests_total", code=status_class,
                               cache=cache)] = float(new - old)
            if not deltas:
                return
            with contextlib.suppress(Exception):  # the file busy or gone: next time
                self._file.add(deltas)
                self._flushed = now

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
