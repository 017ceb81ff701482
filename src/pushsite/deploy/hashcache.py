"""The client's memory of file hashes, so `deploy DIR --server` re-hashes only changed files.

A redeploy of a 70 MB folder with one file changed spent 0.2 s hashing the other thousand
files again. A file's sha256 is kept against what changes whenever its content can: its
device, inode, size, mtime_ns and ctime_ns (ctime cannot be set back by a tool, as mtime can
be by `touch -d` or a checkout). As git does with its index, a file whose timestamps are
within RACY_SECONDS of when its hash was taken is not remembered: it could still change in
the same clock tick without its timestamps moving.

One JSON file per folder (the caller names it), written best effort: a cache that cannot be
read or written is only slower. It was an SQLite file: importing sqlite3 (and datetime with
it) and opening it was ~5 ms of a one-file redeploy meant to take well under 100 ms; JSON is
imported already. A save writes the rows of the files seen this time (a deleted file's row
goes) to a temporary file renamed over the old one, so a reader never sees half a file. Two
clients at once each leave what they saw; every row stands alone, so either is true.
"""

from __future__ import annotations

import contextlib
import os
import time

from pushsite import jsonlite

TYPE_CHECKING = False  # typing is not imported at run time (the client's start, launch.py)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

RACY_SECONDS = 2.0
Stamp = tuple[int, int, int, int, int]  # dev, inode, size, mtime_ns, ctime_ns
Known = tuple[str, str]  # sha256, mode


def stamp(info: os.stat_result) -> Stamp:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class HashCache:
    """The hashes known for the files under one folder (`lookup`), and the new ones to
    remember (`remember`, written by `save`)."""

    def __init__(self, path: Path | str, folder: str, racy: float = RACY_SECONDS) -> None:
        self._path = os.fspath(path)
        self._racy = racy
        self.hits = 0  # files answered from the cache (said on the terminal, and tested)
        self._folder = folder.rstrip(os.sep) + os.sep
        self._known: dict[str, Any] = {}  # full path -> [*stamp, sha256, mode]
        self._kept: dict[str, list[Any]] = {}  # rows to save: hits and new hashes
        self._taken = time.time()
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            with open(self._path, "rb") as handle:
                doc = jsonlite.loads(handle.read())
            if doc.get("folder") == self._folder and isinstance(doc.get("files"), dict):
                self._known = doc["files"]

    def lookup(self, full: str, info: os.stat_result) -> Known | None:
        """The file's (sha256, mode) if it has not changed since it was hashed."""
        row = self._known.get(full)
        # stamp(info) compared field by field, the likeliest to differ first (no tuples made:
        # asked for every file of every redeploy)
        if (not isinstance(row, list) or len(row) != 7 or row[3] != info.st_mtime_ns
                or row[4] != info.st_ctime_ns or row[2] != info.st_size
                or row[1] != info.st_ino or row[0] != info.st_dev
                or not isinstance(row[5], str) or not isinstance(row[6], str)):
            return None
        self.hits += 1
        self._kept[full] = row
        return row[5], row[6]

    def remember(self, full: str, info: os.stat_result, known: Known) -> None:
        """Keep a fresh hash, unless the file changed too recently to be sure of it."""
        newest = max(info.st_mtime_ns, info.st_ctime_ns) / 1e9
        if self._taken - newest > self._racy:
            self._kept[full] = [*stamp(info), *known]
            self._changed = True

    _changed = False

    @property
    def unsaved(self) -> bool:
        """Whether `save` has anything to write (a new hash was remembered)."""
        return self._changed

    def save(self) -> None:
        """Write the rows seen this time, if any is new (a redeploy of unchanged files
        writes nothing)."""
        if not self._changed:
            return
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
            part = f"{self._path}.{os.getpid()}.{id(self):x}.part"
            try:
                with open(part, "w") as handle:
                    handle.write(jsonlite.dumps({"folder": self._folder, "files": self._kept},
                                                separators=(",", ":")))
                os.replace(part, self._path)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(part)
        self._changed = False
