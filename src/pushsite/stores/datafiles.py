"""Blob bytes in append-only data files beside the local store's SQLite index.

Why: written into SQLite, each blob byte was copied three times (bound, paged, put in the WAL)
and written to disk twice (the WAL, then the checkpoint); that was a fifth of a cold deploy.
Here a batch of blobs is one buffered append to the writer's own file, `data/<n>.dat`, and
SQLite keeps only where each blob is: (file, offset, length) in its `blob_data` row.

What keeps readers right:
- A batch's bytes are appended and made durable (fdatasync) before the rows naming them
  commit, so a committed row never points at bytes a crash could still lose.
- A writer holds an exclusive flock on its file from its first append not yet committed until
  the rows of every such append committed (`held`, `release`: a writer appends several
  batches, then makes them durable with one fdatasync and commits their rows at once).
  Compaction takes that lock without waiting, so it never moves a file someone is writing,
  and a writer whose file was compacted away meanwhile (its inode has no name left) starts a
  new one.
- Compaction copies a file's live spans into the compacting process's own file, repoints
  their rows in one transaction, then unlinks the old file. A reader that looked a span up
  just before finds the file gone and looks again (`LocalStore.get`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pushsite.sqlite_setup import write_transaction

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS data_files (no INTEGER PRIMARY KEY AUTOINCREMENT)",
    "CREATE INDEX IF NOT EXISTS blob_data_file ON blob_data (file, offset) "
    "WHERE file IS NOT NULL",
)
ROLL_BYTES = 1 << 30  # a writer starts a new file past this, so compaction moves at most this


class Appender:
    """Appends to one locked data file; `add` returns where the bytes went."""

    def __init__(self, no: int, handle: BinaryIO, size: int) -> None:
        self.no = no
        self._handle = handle
        self.start = size  # where this holder's appends begin
        self.size = size

    def add(self, data: bytes) -> tuple[int, int, int]:
        """(file, offset, length) of `data`, appended."""
        offset = self.size
        self._handle.write(data)
        self.size += len(data)
        return self.no, offset, len(data)

    def flush(self) -> None:
        """Hand what is buffered to the file, so a pread finds it (not durable yet)."""
        self._handle.flush()

    def sync(self) -> None:
        self._handle.flush()
        os.fdatasync(self._handle.fileno())


class DataFiles:
    """The data files of one store, and this process's own file for appending."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._handle: BinaryIO | None = None
        self._no: int | None = None
        self._held: Appender | None = None  # locked across batches until `release`

    def path(self, no: int) -> Path:
        return self.folder / f"{no}.dat"

    def read(self, no: int, offset: int, length: int) -> bytes:
        """The bytes of a span; FileNotFoundError when compaction moved them meanwhile."""
        fd = os.open(self.path(no), os.O_RDONLY)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise OSError(f"data file {no} ends before the {length} bytes at {offset}")
        return data

    def held(self, db: sqlite3.Connection) -> Appender:
        """This process's file, locked until `release` (the caller appends batches, syncs
        once and commits their rows, then releases)."""
        if self._held is None:
            handle = self._locked_own_file(db)
            assert self._no is not None
            self._held = Appender(self._no, handle, os.fstat(handle.fileno()).st_size)
        return self._held

    def release(self) -> None:
        """Unlock the held file (its rows committed); after an error, `drop` it instead."""
        held, self._held = self._held, None
        if held is not None and self._handle is not None and not self._handle.closed:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)

    def drop(self) -> None:
        """Give up the held file after an error: what was appended since `held` is cut off
        (no committed row names it; on a full disk that is the room the retry needs), and the
        next batch starts a new file, so its offsets never follow what a failed write left
        in the buffer (closing unlocks)."""
        held, self._held = self._held, None
        if held is not None and self._handle is not None and not self._handle.closed:
            with contextlib.suppress(OSError):
                os.ftruncate(self._handle.fileno(), held.start)
        self._drop_own_file()

    @contextmanager
    def appending(self, db: sqlite3.Connection, wait: bool = True) -> Iterator[Appender]:
        """This process's file, locked for one batch (the caller commits its rows inside).
        Without `wait`, BlockingIOError when another holds it (`_compact_one`)."""
        assert self._held is None, "release the held file first: this unlocks it"
        handle = self._locked_own_file(db, wait)
        assert self._no is not None
        try:
            yield Appender(self._no, handle, os.fstat(handle.fileno()).st_size)
        finally:
            try:  # a failed batch's bytes too, so the next batch's offsets start after them
                handle.flush()
            except OSError:
                self._drop_own_file()  # the next batch starts a new file
            if not handle.closed:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _locked_own_file(self, db: sqlite3.Connection, wait: bool = True) -> BinaryIO:
        """This process's file, locked, and checked after the lock, each time: another's
        compaction may have taken it (a file no row uses goes first) between its making and
        this lock; it unlinks the file (its inode has no name left) or, when the file was
        not there yet, drops its `data_files` row (the file made after is not one any
        compaction will find). Either way a new file is made, and checked again: a second
        compaction in quick succession did the same to the first new one."""
        how = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        while True:
            handle = self._own_file(db)
            fcntl.flock(handle.fileno(), how)
            stat = os.fstat(handle.fileno())
            if stat.st_nlink == 0:  # compacted away
                pass
            elif not self._listed(db):  # its row is gone: only this process knows it
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path(self._no or 0))
            elif stat.st_size < ROLL_BYTES:
                return handle
            self._drop_own_file()  # closing it releases its lock

    def _listed(self, db: sqlite3.Connection) -> bool:
        return db.execute("SELECT 1 FROM data_files WHERE no = ?",
                          (self._no,)).fetchone() is not None

    def _own_file(self, db: sqlite3.Connection) -> BinaryIO:
        if self._handle is None:
            with write_transaction(db):
                no = int(db.execute("INSERT INTO data_files DEFAULT VALUES").lastrowid or 0)
            self.folder.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path(no), "ab", buffering=1 << 20)  # noqa: SIM115
            self._no = no
        return self._handle

    def _drop_own_file(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):  # a full disk fails the close's flush too
                self._handle.close()
        self._handle = None
        self._no = None

    def close(self) -> None:
        self._held = None
        self._drop_own_file()

    # compaction --------------------------------------------------------------------------
    def compact(self, db: sqlite3.Connection) -> int:
        """Remove files no row uses and rewrite those less than half used; bytes freed.

        Call with the store's write lock held and no transaction open."""
        freed = 0
        # files no row uses first: on a full disk they free the room the copies need
        for (no,) in db.execute("SELECT no FROM data_files ORDER BY (SELECT count(*) FROM "
                                "blob_data WHERE file = no) > 0, no").fetchall():
            if no != self._no:
                freed += self._compact_one(db, int(no))
        return freed

    def _compact_one(self, db: sqlite3.Connection, no: int) -> int:
        path = self.path(no)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            fd = -1
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return 0  # a writer is appending to it right now
                size = os.fstat(fd).st_size
            else:
                size = 0
            (used,) = db.execute("SELECT coalesce(sum(length), 0) FROM blob_data "
                                 "WHERE file = ?", (no,)).fetchone()
            if used and used * 2 >= size:
                return 0
            if used:
                # this process's own file without waiting: another compaction holding it
                # may be waiting for this one's (it holds `no`), and flock never breaks the
                # cycle; a later prune compacts `no`
                try:
                    with self.appending(db, wait=False) as out:  # rows commit while locked
                        moved = self._copy_spans(db, no, fd, out)
                        self._forget(db, no, moved)
                except BlockingIOError:
                    return 0
            else:
                self._forget(db, no, [])
            path.unlink(missing_ok=True)
            return int(size - used)
        finally:
            if fd >= 0:
                os.close(fd)

    @staticmethod
    def _copy_spans(db: sqlite3.Connection, no: int, fd: int,
                    out: Appender) -> list[tuple[int, int, int]]:
        """Copy a file's live spans to `out`; the (new file, offset, id) of each row."""
        rows = db.execute("SELECT id, offset, length FROM blob_data WHERE file = ? "
                          "ORDER BY offset", (no,)).fetchall()
        moved: list[tuple[int, int, int]] = []
        for row_id, offset, length in rows:
            target, new_offset, _ = out.add(os.pread(fd, length, offset))
            moved.append((target, new_offset, row_id))
        out.sync()
        return moved

    @staticmethod
    def _forget(db: sqlite3.Connection, no: int, moved: list[tuple[int, int, int]]) -> None:
        """Repoint the moved rows and drop the file's row, in one transaction."""
        with write_transaction(db):
            db.executemany("UPDATE blob_data SET file = ?, offset = ? WHERE id = ?", moved)
            db.execute("DELETE FROM data_files WHERE no = ?", (no,))
