"""A full batch of the local store is written by a thread of its own (LocalStore._write_behind):
the thread that filled it goes on putting (a deploy's pool thread compresses the next files
meanwhile); the batch stays readable until it is committed; its error reaches the next flush
and the batch stays pending. A real store, a real flock, a real full tmpfs."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

import pytest

from pushsite.errors import DiskFull
from pushsite.stores import local
from pushsite.stores.local import LocalStore
from support.disk import fill, incompressible_blobs


def _one_batch(tag: str) -> dict[str, bytes]:
    """Blobs that fill exactly one batch: the last put hands it to a writer thread."""
    size = 250_000
    return incompressible_blobs(tag, -(-local._BATCH_BYTES // size), size)


def test_a_full_batch_is_written_while_the_putting_thread_goes_on(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    first = incompressible_blobs("first", 1, 1000)
    store.put(*next(iter(first.items())))
    store.flush()  # the store's own data file now exists
    (data_file,) = (tmp_path / "store" / "data").glob("*.dat")
    batch = _one_batch("batch")
    with open(data_file, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # the batch's writer waits for this lock

        def put_all() -> None:
            for key, data in batch.items():
                store.put(key, data)

        putter = threading.Thread(target=put_all, daemon=True)
        putter.start()
        putter.join(60)  # liveness, not speed: putting inline waited for the lock for ever
        assert not putter.is_alive(), "the put that filled the batch waited for its write"
        assert store.has(batch) == set(batch)  # in hand, readable before it is committed
        key = next(iter(batch))
        assert store.get(key) == batch[key]
        assert store.size(key) == len(batch[key])
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    store.flush()  # waits for the writer
    store.close()
    again = LocalStore(tmp_path / "store")
    try:
        assert again.has([*batch, *first]) == {*batch, *first}
        assert all(again.get(key) == data for key, data in batch.items())
    finally:
        again.close()


def test_a_writer_threads_error_reaches_the_next_flush_and_nothing_is_lost(disk: Path) -> None:
    store = LocalStore(disk / "store")
    try:
        filler = fill(disk)
        batch = _one_batch("full")
        for key, data in batch.items():
            store.put(key, data)  # the last one hands the batch over: no error here
        with pytest.raises(DiskFull):
            store.flush()  # what the writer thread met
        assert store.has(batch) == set(batch)  # pending again, read from memory
        filler.unlink()
        store.flush()
        assert store.has(batch) == set(batch)
    finally:
        store.close()
    again = LocalStore(disk / "store")
    try:
        assert all(again.get(key) == data for key, data in batch.items())
    finally:
        again.close()
