"""Keep a deploy's resident memory flat: hand freed heap pages back to the kernel.

A deploy allocates and frees tens of thousands of buffers (file contents, gzip and brotli
output) from several threads. glibc gives each thread its own arena and keeps freed pages,
so resident memory grew with the number of files (170 MB on a 35,000-file site) although
the live data stayed small. Capping the arenas at two (`cap_arenas`, when a deploy starts)
and calling malloc_trim twice a second (`trimmed_heap`) brought that to about 140 MB for a
few percent more system time; a lower mmap threshold did better on memory but cost five
times the system time (measured with `make bench`, large corpus). On other C libraries
this is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator

_M_ARENA_MAX = -8
_TRIM_EVERY = 0.5


def _libc() -> ctypes.CDLL | None:
    # the process's own symbols, libc's among them: ctypes.util.find_library("c") would run
    # ldconfig, 25 ms of every command's start-up
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim  # noqa: B018 - glibc only
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()
_capped = threading.Lock()  # held for good once the arenas are capped


def cap_arenas() -> None:
    """Cap glibc's malloc arenas at two in this process, once: called when a deploy starts,
    before its threads do, so only deploying processes pay for it (an edge process's
    request threads keep glibc's defaults). Arenas made before the call stay."""
    if _LIBC is not None and _capped.acquire(blocking=False):
        _LIBC.mallopt(_M_ARENA_MAX, 2)


@contextlib.contextmanager
def trimmed_heap() -> Iterator[None]:
    """While the block runs, return free heap pages to the kernel every half second."""
    if _LIBC is None:
        yield
        return
    stop = threading.Event()

    def trim() -> None:
        while not stop.wait(_TRIM_EVERY):
            _LIBC.malloc_trim(0)

    thread = threading.Thread(target=trim, name="pushsite-trim", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        _LIBC.malloc_trim(0)
