"""The client's memory of file hashes, so `deploy DIR --server` re-hashes only changed files.

A redeploy of a 70 MB folder with one file changed spent 0.2 s hashing the other thousand
files again. A file's sha256 is kept against what changes whenever its content can: its
device, inode, size, mtime_ns and ctime_ns (ctime cannot be set back by a tool, as mtime can
be by `touch -d` or a checkout). As git does with its index, a file whose timestamps are
within RACY_SECONDS of when its hash was taken is not remembered: it could still change in
the same clock tick without its timestamps moving.

One SQLite file, written best effort: a cache that cannot be read or written is only slower.
Two clients at once each keep what they wrote last; every row stands alone, so both are true.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

RACY_SECONDS = 2.0
Stamp = tuple[int, int, int, int, int]  # dev, inode, size, mtime_ns, ctime_ns
Known = tuple[str, str]  # sha256, mode


def stamp(info: os.stat_result) -> Stamp:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class HashCache:
    """The hashes known for the files under one folder (`lookup`), and the new ones to
    remember (`remember`, written by `save`)."""

    def __init__(self, path: Path | str, folder: str, racy: float = RACY_SECONDS) -> None:
        self._path = path
        self._racy = racy
        self.hits = 0  # files answered from the cache (said on the terminal, and tested)
        self._prefix = folder.rstrip(os.sep) + os.sep
        self._known: dict[str, tuple[Stamp, Known]] = {}
        self._new: list[tuple[str, Stamp, Known]] = []
        self._taken = time.time()
        with contextlib.suppress(sqlite3.Error, OSError), self._connect() as db:
            for row in db.execute("SELECT path, dev, ino, size, mtime, ctime, sha256, mode "
                                  "FROM hashes WHERE path >= ? AND path < ?",
                                  (self._prefix, self._prefix[:-1] + chr(ord(os.sep) + 1))):
                self._known[row[0]] = ((row[1], row[2], row[3], row[4], row[5]),
                                       (row[6], row[7]))

    def lookup(self, full: str, info: os.stat_result) -> Known | None:
        """The file's (sha256, mode) if it has not changed since it was hashed."""
        known = self._known.get(full)
        if known is None or known[0] != stamp(info):
            return None
        self.hits += 1
        return known[1]

    def remember(self, full: str, info: os.stat_result, known: Known) -> None:
        """Keep a fresh hash, unless the file changed too recently to be sure of it."""
        newest = max(info.st_mtime_ns, info.st_ctime_ns) / 1e9
        if self._taken - newest > self._racy and self._known.get(full) != (stamp(info),
                                                                              known):
            self._new.append((full, stamp(info), known))

    def save(self) -> None:
        if not self._new:
            return
        with contextlib.suppress(sqlite3.Error, OSError), self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(full, *s, *k) for full, s, k in self._new])
        self._new = []

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        db = sqlite3.connect(self._path, timeout=5.0)
        try:
            # no fsync: a cache lost to a crash is only slower, and a stale page holds rows
            # whose stamps no longer match their files (a commit's fsync was ~20 ms here)
            db.execute("PRAGMA synchronous=OFF")
            with db:
                db.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, dev INT, "
                           "ino INT, size INT, mtime INT, ctime INT, sha256 TEXT, mode TEXT)")
                yield db
        finally:
            db.close()
