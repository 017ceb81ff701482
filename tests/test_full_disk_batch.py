"""A store batch that failed on a full disk stays pending for the next flush; it must not
hold a prune's listing and deletions until space is freed, since a prune is what frees it
(serve's deploys and prunes share one store: the batch of a deploy that filled the disk
used to be flushed again, and fail, at the start of every listing and deletion).

On a real small tmpfs (we run as root in CI and here), filled for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushsite.diskspace import free_bytes, settling
from pushsite.errors import DiskFull
from pushsite.stores.local import LocalStore
from support.disk import fill, incompressible_blobs


def test_a_failed_batch_does_not_hold_a_prunes_listing_and_deletions(disk: Path) -> None:
    store = LocalStore(disk / "store")
    try:
        old = incompressible_blobs("old", 12, 250_000)
        for key, data in old.items():
            store.put(key, data)
        store.flush()
        filler = fill(disk)
        new = incompressible_blobs("new", 2, 200_000)
        for key, data in new.items():
            store.put(key, data)
        with pytest.raises(DiskFull):
            store.flush()  # a deploy's batch on the full disk: it stays pending
        with settling():  # as prune lists and deletes
            listed = {key for key, _ in store.stamps("blobs/")}
            assert set(old) <= listed
            store.delete(sorted(old))
        assert free_bytes(disk) > 0  # the data file they were in went (compaction's room)
        assert store.has(old) == set()
        assert store.has(new) == set(new)  # still pending, read from memory
        assert store.get(next(iter(new))) == new[next(iter(new))]
        store.flush()  # the space the deletions freed takes the held batch
        filler.unlink()
    finally:
        store.close()
    store = LocalStore(disk / "store")  # what another process sees
    try:
        assert store.has(new) == set(new) and store.has(old) == set()
        for key, data in new.items():
            assert store.get(key) == data
    finally:
        store.close()
