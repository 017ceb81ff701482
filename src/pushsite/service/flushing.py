"""One thread per process that calls back whatever is due: the deployment logs' delayed flushes
and the open uploads' lease renewals (service/receiving.py), each one state write.

Each log used to start a `threading.Timer` for the first line of every batch. Starting a
thread waits until the new thread has run (`Thread.start`), which on a busy two-core machine
was ~50 ms of every upload request's way (py-spy, load 7). Here arming a callback is a heap
push; the thread is started once per process (and again in a forked child, which inherits
none of its parent's threads).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

_logger = logging.getLogger("pushsite.flushing")


class Flusher:
    """Calls each armed callback once, at or after its time, on the one thread it keeps.

    A callback runs on that thread, so it should be short (a log's batch write, a lease's
    renewal); a slow one delays the others, never loses them. `arm` returns at once. There
    is no cancel: a callback whose work ended meanwhile finds so and does nothing.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._wake = threading.Condition(threading.Lock())
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # ties keep arming order; callables never compared
        self._thread: threading.Thread | None = None

    def arm(self, delay: float, callback: Callable[[], None]) -> None:
        """Run `callback` in `delay` seconds (or a little later)."""
        with self._wake:
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._order), callback))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pushsite-flusher",
                                                daemon=True)
                self._thread.start()
            elif self._due[0][2] is callback:  # sooner than what the thread waits for
                self._wake.notify()

    def pending(self) -> int:
        """How many callbacks are armed and not yet run (for tests)."""
        with self._wake:
            return len(self._due)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, _, callback = heapq.heappop(self._due)
            try:
                callback()
            except Exception:  # noqa: BLE001 - one callback's failure must not stop the rest
                _logger.exception("a delayed callback failed")


FLUSHER = Flusher()
