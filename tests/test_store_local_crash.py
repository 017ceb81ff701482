"""A writer SIGKILLed between its appends and their commit (LocalStore._write holds its data
file locked across batches and commits their rows at the group sync): while it lives another
actor sees none of those rows and its compaction leaves the held file alone; after the kill
the next actor reads every committed blob byte-exact (and a large object, whose row the
adopting thread commits as soon as it is durable in place), writes the lost ones again into a
file of its own, and its compaction reclaims the dead tail without losing a committed byte. A
real child process, a real SIGKILL at a point read off the disk (the data file's size), no sleeps
that must be long enough."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pushsite.stores import local
from pushsite.stores.local import LocalStore
from support.disk import incompressible_blobs

_SIZE = 250_000
_COMMITTED = 8  # 2,000,000 bytes: under one batch, written by the flush
_TAIL = -(-local._BATCH_BYTES // _SIZE)  # the last put fills a batch: appended, not committed
_BIG = 3 * local.PACK_LIMIT // 2  # a large object: a file under large/

# the child: commits a batch and a large object, says so, then stores another large object
# (its row committed by the store's adopting thread, no flush) and appends a full batch whose
# rows wait for a sync that never comes, and waits to be killed
_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from support.disk import incompressible_blobs
from pushsite.stores.local import LocalStore
store = LocalStore(Path(sys.argv[1]))
for key, data in incompressible_blobs("committed", {committed}, {size}).items():
    store.put(key, data)
for key, data in incompressible_blobs("big", 1, {big}).items():
    store.put(key, data)
store.flush()
print("committed", flush=True)
for key, data in incompressible_blobs("late-big", 1, {big}).items():
    store.put(key, data)
for key, data in incompressible_blobs("tail", {tail}, {size}).items():
    store.put(key, data)
sys.stdin.read()
"""


def _files(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (root / "data").glob("*.dat")}


def _wait_until(done: Callable[[], bool], child: subprocess.Popen[str]) -> None:
    """Poll the disk until `done()`; fail (not hang) if the child died or never got there."""
    give_up = time.monotonic() + 120
    while not done():
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        assert time.monotonic() < give_up, "the child never appended its batch"
        time.sleep(0.01)


def test_a_writer_killed_between_append_and_commit_loses_nothing_committed(
        tmp_path: Path) -> None:
    root = tmp_path / "store"
    committed = incompressible_blobs("committed", _COMMITTED, _SIZE)
    committed |= incompressible_blobs("big", 1, _BIG)
    tail = incompressible_blobs("tail", _TAIL, _SIZE)
    late_big = incompressible_blobs("late-big", 1, _BIG)
    script = _CHILD.format(committed=_COMMITTED, size=_SIZE, big=_BIG, tail=_TAIL)
    tests = str(Path(__file__).parent)
    child = subprocess.Popen([sys.executable, "-c", script, str(root), tests],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    other: LocalStore | None = None
    try:
        assert child.stdout is not None and child.stderr is not None
        assert child.stdout.readline() == "committed\n", child.stderr.read()
        ((dead, flushed),) = _files(root).items()
        assert flushed == _COMMITTED * _SIZE
        (late_key,) = late_big
        appended = flushed + _TAIL * _SIZE
        _wait_until(lambda: _files(root)[dead] == appended, child)

        # alive and holding its file: a second actor sees none of the uncommitted rows but
        # the large object put before them, and its compaction (a deletion that leaves the
        # file under half used) skips the file
        other = LocalStore(root)
        # the large object's row commits once the child's adopting thread made it durable
        _wait_until(lambda: other is not None and late_key in other.has([late_key]), child)
        assert other.has([*tail, late_key]) == {late_key}
        assert other.get(late_key) == late_big[late_key]
        doomed = list(committed)[:2]
        other.delete(doomed[:1])
        assert _files(root) == {dead: appended}

        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        assert _files(root) == {dead: appended}  # the tail no row names is still there

        kept = {k: v for k, v in committed.items() if k not in doomed} | late_big
        assert other.has([*tail, late_key]) == {late_key}  # reused, not written again
        assert other.get_many(kept) == kept
        # the next actor writes the lost blobs again, into a new file of its own
        for key, data in tail.items():
            other.put(key, data)
        other.flush()
        assert dead in _files(root) and len(_files(root)) == 2
        # its compaction now takes the dead file (no lock on it): the committed spans move,
        # the tail is reclaimed
        other.delete(doomed[1:])
        assert dead not in _files(root)
        other.close()
        other = None

        after = LocalStore(root)  # a third actor: everything committed, byte-exact
        try:
            everything = kept | tail
            assert after.has(everything) == set(everything)
            assert after.get_many(everything) == everything
            for key, data in everything.items():
                assert after.get(key) == data
            assert after.has(doomed) == set()
            (own,) = _files(root)
            assert os.path.getsize(root / "data" / own) == sum(
                len(v) for k, v in everything.items() if len(v) <= local.PACK_LIMIT)
        finally:
            after.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if other is not None:
            other.close()
