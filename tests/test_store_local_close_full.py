"""`LocalStore.close()` on a full disk: its flush raises DiskFull, and it still lets go of
every file it holds. The suspicion was that the data file stayed locked until the process
ended; it cannot: a failed write gives its data file up (datafiles.drop closes it, which
unlocks it) before the error is raised. But close() stopped at the flush, so both SQLite
connections stayed open, and the disk they are on stayed busy (a tmpfs could not be
unmounted) until the process ended. A real full tmpfs; a real second actor after."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from pushsite.errors import DiskFull
from pushsite.stores import local
from pushsite.stores.local import LocalStore
from support.disk import fill, incompressible_blobs, open_under

_SIZE = 250_000


@pytest.mark.parametrize("failing", ["the flush in close", "a writer thread before it"])
def test_a_close_whose_flush_finds_the_disk_full_lets_go_of_every_file(
        disk: Path, failing: str) -> None:
    root = disk / "store"
    store = LocalStore(root)
    committed = incompressible_blobs("committed", 3, _SIZE)
    for key, data in committed.items():
        store.put(key, data)
    store.flush()
    filler = fill(disk)
    # under one batch: written by close's flush; past it: by a writer thread, whose error
    # close's flush raises
    count = 3 if failing == "the flush in close" else -(-local._BATCH_BYTES // _SIZE)
    for key, data in incompressible_blobs("lost", count, _SIZE).items():
        store.put(key, data)
    with pytest.raises(DiskFull):
        store.close()
    assert open_under(disk) == []
    for path in (root / "data").glob("*.dat"):  # no lock left for another's compaction
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    filler.unlink()
    again = LocalStore(root)
    try:
        assert again.get_many(committed) == committed
    finally:
        again.close()
