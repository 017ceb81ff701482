"""A full disk: recognising it where the embedded backends write, and the room that lets the
writes which settle things (marking a deployment failed, a cancel, a prune) commit on it.

Measured on an 8 MiB tmpfs filled to its last byte, SQLite in WAL mode (tests/test_full_disk.py
keeps the first two as tests):
- a process opening a database whose -wal and -shm went with the last connection (every
  one-shot CLI process) fails at once with SQLITE_IOERR "disk I/O error": the -shm cannot grow
  to its 32 KiB. Not SQLITE_FULL: so an I/O error is read as a full disk when the file system
  has less than `NEARLY_FULL` free;
- a connection whose WAL was checkpointed with TRUNCATE fails a one-row UPDATE with
  SQLITE_FULL ("database or disk is full");
- a connection whose WAL kept its size after a checkpoint commits small UPDATEs and a 100-row
  DELETE: new frames overwrite the WAL from its start. Luck, not a plan: nothing keeps a WAL
  around for a fresh process, and it is truncated whenever the last connection closes;
- with a 1 MiB file beside the database truncated first, the open and a one-row UPDATE
  succeed (WAL 4 KiB, -shm 32 KiB), and so does a DELETE of 200 rows (WAL 113 KiB).

So "keeping the writes small" is not enough; a reserve is. Each SQLite database of the
embedded backends keeps a `Reserve` file beside it (allocated with posix_fallocate, so it holds
real blocks; zeros written where fallocate is not supported). A write that settles something
(inside `settling()`, or `room(settling=True)`) on a nearly full disk truncates the reserve
first and grows it back after, as far as the space allows; what it could not grow back is
grown back the next time the database is opened or a prune frees space. A reserve that
holds nothing (used while the disk stayed full, e.g. by a failed deploy's blobs, which stay
until a prune) borrows a sibling's on the same file system (the state's from the store's
and back): a prune on a full disk must not depend on which database settled last. Other
writes (a new deploy's blobs, a new deployment's record) never touch the reserve: they fail
with DiskFull.
A copy-on-write file system that compresses zeros and ignores fallocate (ZFS) gets no room.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

from pushsite.errors import DiskFull

NEARLY_FULL = 1 << 20  # bytes free under which an I/O error is read as a full disk
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_SQLITE_FULL = 13
_SQLITE_IOERR = 10
_SQLITE_CANTOPEN = 14
_CHUNK = 64 << 10  # the reserve grows back this much at a time, as far as the space allows
_PAGE = 4096  # then this much, when a chunk no longer fits

T = TypeVar("T")

_settling: ContextVar[bool] = ContextVar("pushsite_settling", default=False)
_logger = logging.getLogger("pushsite.diskspace")


@contextmanager
def settling() -> Iterator[None]:
    """Writes in this block settle something (a failure recorded, a cancel, a prune): on a
    nearly full disk they may use the reserve. Per thread (a context variable)."""
    token = _settling.set(True)
    try:
        yield
    finally:
        _settling.reset(token)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path` (the
    nearest existing folder above it); a large number when it cannot be told."""
    for folder in (path, *path.parents):
        try:
            stat = os.statvfs(folder)
        except OSError:
            continue
        return stat.f_bavail * stat.f_frsize
    return 1 << 62


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_full(exc: BaseException, path: Path | None = None) -> bool:
    """Whether an error (or one it was raised from) says the disk is full: ENOSPC or EDQUOT,
    SQLite's SQLITE_FULL, or (with `path`) an SQLite I/O or open error on a file system with
    almost nothing free (see the module docstring)."""
    for cause in _causes(exc):
        if isinstance(cause, DiskFull):
            return True
        if isinstance(cause, OSError) and cause.errno in _FULL_ERRNOS:
            return True
        if isinstance(cause, sqlite3.Error):
            code = (getattr(cause, "sqlite_errorcode", 0) or 0) & 0xFF
            if code == _SQLITE_FULL or "database or disk is full" in str(cause):
                return True
            if (path is not None and code in (_SQLITE_IOERR, _SQLITE_CANTOPEN)
                    and free_bytes(path) < NEARLY_FULL):
                return True
    return False


def as_disk_full(exc: BaseException, path: Path) -> BaseException:
    """`exc` itself, or a DiskFull about `path` when it says the disk is full."""
    if isinstance(exc, DiskFull) or not isinstance(exc, Exception) or not is_full(exc, path):
        return exc
    full = DiskFull.holding(path)
    full.__cause__ = exc
    return full


@contextmanager
def translating(path: Path) -> Iterator[None]:
    """Raise DiskFull (about `path`) for an error that says the disk is full."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if is_full(exc, path):
            raise DiskFull.holding(path) from exc
        raise


def _is_reserve(path: Path) -> bool:
    """Whether `path` is a database's reserve: `<database>-reserve` beside an SQLite file, so
    that a stranger's file that happens to end in -reserve is never truncated."""
    database = path.with_name(path.name.removesuffix("-reserve"))
    try:
        with open(database, "rb") as header:
            return header.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


class Reserve:
    """A file of `size` bytes beside a database, given back to the file system for writes that
    settle something on a nearly full disk (see the module docstring)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    def held(self) -> int:
        try:
            return os.stat(self.path).st_blocks * 512
        except OSError:
            return 0

    def restore(self) -> None:
        """Grow the reserve back to its size, as far as the space allows; never raises."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            return
        try:
            have = os.fstat(fd).st_size
            if have >= self.size:
                return
            try:  # the whole rest in one call while the disk has room (a fresh home's case)
                os.posix_fallocate(fd, have, self.size - have)
                return
            except OSError:  # full, or no fallocate here: step by step below, from what
                have = os.fstat(fd).st_size  # the failed call may have kept
            chunk = _CHUNK
            while have < self.size:
                step = min(chunk, self.size - have)
                try:
                    os.posix_fallocate(fd, have, step)
                except OSError as exc:
                    if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                        os.pwrite(fd, bytes(step), have)  # no fallocate here: real zeros
                        os.fdatasync(fd)
                    elif chunk > _PAGE:  # full: take back what is left, to the last page,
                        chunk = _PAGE  # so that no write that settles nothing fits in it
                        continue
                    else:
                        return  # the rest grows back later
                have += step
        except OSError:
            return
        finally:
            os.close(fd)

    def release(self) -> bool:
        """Give the whole reserve back to the file system; False when it held nothing."""
        try:
            held = os.stat(self.path).st_size
            if held:
                os.truncate(self.path, 0)
        except OSError:
            return False
        if held:
            _logger.info("the disk holding %s is nearly full: released %d bytes kept in "
                            "reserve to record a settling write", self.path.parent, held)
        return held > 0

    def siblings(self) -> Iterator[Path]:
        """The other reserves of the same home on the same file system: those beside this
        one, one folder down (the store's), and one folder up (the state's, from the
        store's)."""
        folder = self.path.parent
        try:
            device = os.stat(folder).st_dev
        except OSError:
            return
        seen = {self.path.resolve()}
        for pattern in ("*-reserve", "*/*-reserve", "../*-reserve"):
            for candidate in sorted(folder.glob(pattern)):
                resolved = candidate.resolve()
                try:
                    same = os.stat(resolved).st_dev == device and resolved.is_file()
                except OSError:
                    continue
                if same and resolved not in seen and _is_reserve(resolved):
                    seen.add(resolved)
                    yield resolved

    def release_or_borrow(self) -> bool:
        """Release this reserve; when it holds nothing (an earlier settling write used it
        while the disk stayed full, so it could not grow back), a sibling's on the same
        file system: they are one pool of room, and what is taken grows back at its owner's
        next open or after a prune. False when no reserve there holds anything."""
        if self.release():
            return True
        return any(Reserve(sibling, 0).release() for sibling in self.siblings())

    @contextmanager
    def room(self, *, settling: bool | None = None) -> Iterator[None]:
        """Around one write: when it settles something (`settling`, default: inside a
        `settling()` block) and the disk has less free than the reserve holds, release the
        reserve first; afterwards grow it back as far as the space allows."""
        settles = _settling.get() if settling is None else settling
        released = (settles and free_bytes(self.path.parent) < self.size
                    and self.release_or_borrow())
        try:
            yield
        finally:
            if released:
                with contextlib.suppress(Exception):
                    self.restore()


def opened_with_room(reserve: Reserve, path: Path, open_it: Callable[[], T]) -> T:
    """`open_it()`; when the disk is too full to open the database (its -wal and -shm need
    room), once more with the reserve released, then the reserve grown back as far as it
    goes. A database that opens keeps serving reads, and settling writes, on a full disk."""
    try:
        return open_it()
    except Exception as exc:
        if not is_full(exc, path) or not reserve.release_or_borrow():
            raise
    try:
        return open_it()
    finally:
        reserve.restore()
