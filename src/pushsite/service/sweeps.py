"""The last gap between prune and a deploy: a blob the deploy found in the store (so did not
write) and that a batch of prune's deletions removed before the deploy went live.

Prune (service/housekeeping.py) keeps everything a deployment it has seen references: before
each batch of deletions it looks for deployments that started since its last look, waits for
them and keeps what they reference. What is left is a deploy that starts between that look
and the batch's deletions. Two small protocols close it, on a sweep record in the state:

- prune, per batch: count the batch as begun in its record, look once more (without waiting)
  for deployments that started meanwhile and, if there are any, count it as ended without
  deleting (the next look waits for them); else delete, then count it as ended. A heartbeat
  renews the record, so a killed prune's record stops being waited for.
- a deploy reads the records when it starts running and again before it goes live. When no
  record changed and none is mid-batch (every deploy not racing a prune), that read is all it
  costs. Otherwise it waits until no live prune is mid-batch, asks the store for everything
  its manifest references, and reads the records again: a batch begun meanwhile means asking
  once more.

Why that is enough: a deletion after the deploy's last look-up belongs to a batch begun either
before the deploy's final read (then the deploy waited for it to end, or saw its count move,
before the look-up it trusts) or after it; in that case prune's look after counting the batch
as begun came after the deploy started running, saw it, and prune kept the batch for later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

from pushsite.ids import new_id
from pushsite.state import StateStore, Sweep

KEEP = 86_400.0  # seconds a finished (or dead) prune's record stays for deploys to compare
_POLL = 0.02  # seconds between two reads while a batch of deletions runs

Seen = dict[str, tuple[int, int]]  # sweep id -> (batches begun, batches ended)


def snapshot(state: StateStore) -> Seen:
    """The sweeps as a deploy sees them when it starts running."""
    return {s.id: (s.begun, s.ended) for s in state.list_sweeps()}


def settle(state: StateStore, seen: Seen, missing: Callable[[], set[str]]) -> set[str]:
    """Before a deploy goes live: what of its manifest's objects a prune's batch may have
    deleted, and the store lacks (empty: nothing). `seen` is `snapshot` from its start;
    `missing` asks the store."""
    current = state.list_sweeps()
    if not any(_moved(s, seen) for s in current):
        return set()
    while True:
        current = _quiet(state, current)
        lacking = missing()
        after = state.list_sweeps()
        if _begun(after) == _begun(current):
            return lacking
        current = after


def _moved(sweep: Sweep, seen: Seen) -> bool:
    """The sweep deleted (or may be deleting) something since the deploy started."""
    if sweep.begun != sweep.ended:
        return True
    return sweep.begun > 0 and seen.get(sweep.id, (0, 0)) != (sweep.begun, sweep.ended)


def _begun(sweeps: list[Sweep]) -> dict[str, int]:
    return {s.id: s.begun for s in sweeps if s.begun}


def _quiet(state: StateStore, sweeps: list[Sweep]) -> list[Sweep]:
    """Wait until no live prune is in a batch of deletions; the records read last."""
    while any(s.begun != s.ended and s.alive_until > time.time() for s in sweeps):
        time.sleep(_POLL)
        sweeps = state.list_sweeps()
    return sweeps


class SweepRecord:
    """A prune's record, renewed by a heartbeat while the prune runs (see the module)."""

    def __init__(self, state: StateStore, lease: float) -> None:
        self._state = state
        self._lease = lease
        now = time.time()
        self.sweep = Sweep(new_id(), started=now, alive_until=now + lease)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="prune-sweep")
        # a test holds a prune here, between counting a batch as begun and deleting it
        self.before_delete: Callable[[], None] | None = None

    def __enter__(self) -> SweepRecord:
        now = time.time()
        for old in self._state.list_sweeps():
            if max(old.finished, old.alive_until) < now - KEEP:
                self._state.delete_sweep(old.id)
        self._write()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            self.sweep.finished = time.time()
            self.sweep.alive_until = self.sweep.finished
            self.sweep.ended = self.sweep.begun  # a failed deletion ended too
            self._state.put_sweep(self.sweep)

    def begin_batch(self) -> None:
        with self._lock:
            self.sweep.begun += 1
            self._write()

    def end_batch(self) -> None:
        with self._lock:
            self.sweep.ended = self.sweep.begun
            self._write()

    def _write(self) -> None:
        self.sweep.alive_until = time.time() + self._lease
        self._state.put_sweep(self.sweep)

    def _beat(self) -> None:
        while not self._stop.wait(self._lease / 3):
            try:
                with self._lock:
                    self._write()
            except Exception:  # noqa: BLE001 - retried at the next beat; deploys wait less
                continue
