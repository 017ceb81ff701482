"""Two prunes compacting at once never wait for each other forever (datafiles._compact_one).

Each compaction locks the file it moves (without waiting) and then its own file to copy the
live spans into. Two actors that each wrote a data file, pruning together, each took the
other's file and then waited for its own: flock has no deadlock detection, so both waited
forever. Two real stores on one folder (each lock is its own open file, as in two
processes); the real flock is wrapped only to bring both to the same point, and to report a
compaction about to wait for a lock while it holds another's file instead of hanging."""

from __future__ import annotations

import contextlib
import fcntl
import threading
from pathlib import Path

import pytest

from pushsite.stores import datafiles
from pushsite.stores.local import LocalStore
from support.disk import incompressible_blobs


class _Flock:
    """fcntl as datafiles sees it: the first lock each thread takes without waiting (the
    file it compacts) waits for the other thread's; a waiting lock asked for meanwhile is
    tried without waiting, and if it would wait it is recorded and refused."""

    LOCK_EX, LOCK_NB, LOCK_UN = fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN

    def __init__(self) -> None:
        self.meet = threading.Barrier(2, timeout=60)
        self.holding: set[int] = set()
        self.would_wait: list[str] = []

    def flock(self, fd: int, how: int) -> None:
        me = threading.get_ident()
        if how == fcntl.LOCK_EX and me in self.holding:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.would_wait.append(threading.current_thread().name)
                raise
            return
        fcntl.flock(fd, how)
        if how == fcntl.LOCK_EX | fcntl.LOCK_NB and me not in self.holding:
            self.holding.add(me)
            with contextlib.suppress(threading.BrokenBarrierError):
                self.meet.wait()


def test_two_compactions_each_holding_the_others_file_do_not_wait_forever(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = LocalStore(tmp_path), LocalStore(tmp_path)
    try:
        ones = incompressible_blobs("one", 5, 1000)
        twos = incompressible_blobs("two", 5, 1000)
        for store, blobs in ((one, ones), (two, twos)):
            for key, data in blobs.items():
                store.put(key, data)
            store.flush()  # each has its own data file, unlocked, kept open
        assert len(list((tmp_path / "data").glob("*.dat"))) == 2
        fake = _Flock()
        monkeypatch.setattr(datafiles, "fcntl", fake)
        errors: list[BaseException] = []

        def prune(store: LocalStore, doomed: list[str]) -> None:
            try:
                store.delete(doomed)  # leaves the other's file 2/5 used: compacted
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        threads = [threading.Thread(target=prune, args=(one, list(twos)[:3]), name="one"),
                   threading.Thread(target=prune, args=(two, list(ones)[:3]), name="two")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert fake.would_wait == [], "a compaction waited for its own file holding another's"
        assert errors == []
        monkeypatch.setattr(datafiles, "fcntl", fcntl)

        # alone, each compacts what the race left: the other's file, less than half used
        one.delete(list(twos)[:3])
        two.delete(list(ones)[:3])
        assert not (tmp_path / "data" / f"{two._files._no}.dat").exists() or \
            not (tmp_path / "data" / f"{one._files._no}.dat").exists()
        kept = {k: v for k, v in (ones | twos).items()
                if k not in list(twos)[:3] and k not in list(ones)[:3]}
        for store in (one, two):
            assert store.get_many(kept) == kept
            assert store.has([*ones, *twos]) == set(kept)
    finally:
        one.close()
        two.close()
