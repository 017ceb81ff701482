"""Files that hand the kernel at most 64 KiB per write(), whatever their buffer holds.

Why: on the machines this project is measured on (a Firecracker VM, Linux 6.18, ext4), a
1 MiB write() into the page cache costs several times the system time of the same bytes in
64 KiB writes: 700 MiB appended and fdatasync-ed took 1.9 s of system time and 5.6-8.2 s
against 0.31-0.33 s and 1.6-1.9 s (alternated, load ~9; the kernel's time goes to copying
into freshly allocated large folios). A cold deploy of the large corpus wrote ~600 of its
~700 MiB in 1 MiB writes: the data file's 1 MiB buffer and the large files' spools. The
buffers stay as large as they were (as few Python-level flushes); only each system call is
cut, and BufferedWriter writes the rest of a short write itself.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

PIECE = 64 << 10


class _Pieces(io.FileIO):
    """A raw file whose write() takes at most PIECE bytes (a short write, as POSIX allows)."""

    def write(self, data: ReadableBuffer, /) -> int:
        with memoryview(data) as view:
            if view.nbytes <= PIECE:
                return super().write(view)
            with view.cast("B") as flat:
                return super().write(flat[:PIECE])


def append(path: str | os.PathLike[str], buffer: int) -> BinaryIO:
    """A file opened to append (as open(path, "ab", buffering=buffer))."""
    return io.BufferedWriter(_Pieces(path, "a"), buffer_size=buffer)


def from_fd(fd: int) -> BinaryIO:
    """An open descriptor as a read-write file (as os.fdopen(fd, "w+b"), which does not
    truncate a descriptor either)."""
    return io.BufferedRandom(_Pieces(fd, "r+"))
