"""Brotli during the deploy, from the bytes it holds, on a thread that runs only when idle.

Live first makes brotli after the alias moved (optimise.py), reading each text blob back
from the store. But while a deploy runs, a core is partly idle (on 2 cores the reader
gunzips on one, the pool hashes, gzips and stores on part of the other), and the
every-variant-first pipeline used it. So the pool offers each new small text blob's bytes
here; one thread makes its brotli at nice +10 (Linux nices a thread on its own), so it runs
when the deploy's threads do not. An offer never waits: past `capacity` bytes queued it is
dropped, and that blob is left to the after pass, so time to live never waits for brotli.

The thread takes the largest blob queued, and a full queue makes room for a larger offer by
dropping its smallest: what limits the thread is not its CPU but getting the GIL back after
each blob (its brotli releases it; on small, 178 blobs took 45 ms of CPU and 243 ms of wall
inside brotli on a quiet-ish machine), so it makes the most bytes per GIL hand-off from the
largest. No blob above EARLY_MAX is taken: `stop()` waits for the one in hand.

When the deploy leaves brotli for after (more than builder.LATER_NOW_BYTES left), it only
closes the offers (`close_offers`): the thread goes on past live with what it holds, and
the after pass stops it as its own workers start (handover.py), counts what it made and
compresses what it still held; the manifest at live names none of its variants. Else the
builder stops it and makes the rest before live.

A variant is stored the way the after pass stores it (same key, metadata, and
worth-keeping rule); whoever stopped the thread flushes the store and only then writes a
manifest naming it, so nothing is offered before it is whole.

A blob a big deploy stored identity only (`fresh`: past builder.GZIP_NOW_BYTES) gets its
gzip and brotli here (encode.variants); they are not in `stop()`'s answer, which lists
brotli beside a gzip already served: the after pass finds them stored, as it finds those
another deployment made.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import threading
from collections.abc import Callable

from pushsite.deploy import encode
from pushsite.model import blob_key
from pushsite.stores import ObjectStore

# bytes queued at most, held beyond the deploy's in-flight budget: the queue is full nearly
# always, and a deeper one keeps more of the largest blobs to choose from (2 MiB held ~3 MB
# more of large's peak RSS at stop 14, when the thread took blobs in order and 2 MiB bought
# nothing; taking the largest first, it does)
CAPACITY = 2 << 20
# the largest blob taken: its brotli (~5 ms at quality 4 on this machine) is the longest
# `stop()` waits for the one in hand (before live with little left, or at a deploy's abort);
# 1 MiB made 0.6 MB more before live on medium and its peak RSS 4 MB higher
EARLY_MAX = 256 << 10
NICE = 10  # a CFS weight of 110 against the deploy's 1024: about a tenth of a busy core


def nice_this_thread() -> None:
    """Put the calling thread at nice NICE, or leave it where it is when already nicer (a
    process started under `nice -n 19` must not get a thread that outranks its others:
    root may lower a nice, and its early thread then made every brotli before live). Linux
    nices one thread (a thread id is a PRIO_PROCESS target); elsewhere this does nothing.
    Threads started afterwards from this one inherit it."""
    native = threading.get_native_id()
    with contextlib.suppress(OSError, AttributeError):  # never lowered: EACCES unprivileged
        now = os.getpriority(os.PRIO_PROCESS, native)
        os.setpriority(os.PRIO_PROCESS, native, max(now, NICE))


class EarlyBrotli:
    """A queue of (hash, bytes, media type) and the thread that makes their brotli."""

    def __init__(self, store: Callable[[], ObjectStore], capacity: int = CAPACITY) -> None:
        self._store = store  # asked on the thread: the deploy's store, opened by then
        self._capacity = capacity
        # (size, order, hash, bytes, media type, fresh), smallest first: the thread pops the end
        self._queue: list[tuple[int, int, str, bytes, str, bool]] = []
        self._order = itertools.count()
        self._queued = 0
        self._made: dict[str, int] = {}  # hash -> size of the br variant stored
        self._stopping = False
        self._closed = False  # no more offers: the thread makes what is queued, then ends
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def offer(self, sha: str, data: bytes, content_type: str, fresh: bool = False) -> bool:
        """Queue a blob whose gzip was worth keeping (`fresh`: stored without one, both are
        made here, see above); False (dropped) when stopped, above
        EARLY_MAX, or when the queue is full of blobs as large. A queued blob may later make
        room for a larger one: then it is in neither of `stop()`'s answers, and left to the
        after pass as a dropped one is."""
        size = len(data)
        with self._cond:
            if (self._stopping or self._closed or size > EARLY_MAX
                    or not self._room(size)):
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="early-brotli",
                                                daemon=True)
                self._thread.start()
            bisect.insort(self._queue, (size, next(self._order), sha, data, content_type, fresh))
            self._queued += size
            self._cond.notify()
        return True

    def _room(self, size: int) -> bool:
        """Whether `size` more bytes fit, dropping the smallest blobs queued (each smaller
        than this one) to make room; nothing is dropped when that would not be enough."""
        over = self._queued + size - self._capacity
        if over <= 0:
            return True
        drop = freed = 0
        while freed < over and drop < len(self._queue) and self._queue[drop][0] < size:
            freed += self._queue[drop][0]
            drop += 1
        if freed < over:
            return False
        del self._queue[:drop]
        self._queued -= freed
        return True

    def close_offers(self) -> dict[str, int]:
        """Take no more blobs; the thread goes on with those queued (live first hands it to
        the after pass, handover.py, which `stop()`s it: a core is idle between the deploy's
        last store and the after pass's start) and ends once none is left. Returns hash ->
        br size of each variant stored so far (those its manifest may name)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            return dict(self._made)

    def stop(self) -> tuple[dict[str, int], dict[str, bytes]]:
        """Stop taking blobs; the one in hand is finished. Returns (hash -> br size of each
        variant stored, the bytes of the blobs still queued), the latter not made here."""
        with self._cond:
            self._stopping = True
            left = {item[2]: item[3] for item in self._queue}
            self._queue.clear()
            self._queued = 0
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        return dict(self._made), left

    def _run(self) -> None:
        nice_this_thread()
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    if self._closed:
                        return
                    self._cond.wait()
                if self._stopping:
                    return
                size, _, sha, data, content_type, fresh = self._queue.pop()  # the largest
                self._queued -= size
            try:
                made = (encode.variants(data, content_type) if fresh
                        else encode.later_variants(data))
                for enc, blob in made.items():
                    self._store().put(blob_key(sha, enc), blob, {
                        "content-type": content_type, "sha256": sha, "content-encoding": enc})
            except Exception:  # noqa: BLE001 - the after pass makes it, and reports its error
                with self._cond:
                    self._stopping = True
                return
            if "br" in made and not fresh:
                with self._cond:
                    self._made[sha] = len(made["br"])
