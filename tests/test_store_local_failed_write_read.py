"""A read during a failed write's clean-up finds the appended blobs it puts back (local.py
_write_batch): the data file is cut back to where the failed appends began, so a get() that
still found their spans in `_appended` read past its end and failed with "data file ... ends
before" though the bytes were in memory. A real full tmpfs; the real `drop` is wrapped only to
read at the moment after it cut the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushsite.errors import DiskFull
from pushsite.stores import local
from pushsite.stores.local import LocalStore
from support.disk import fill, incompressible_blobs


def test_a_get_just_after_the_file_is_cut_back_reads_the_blob_from_memory(disk: Path) -> None:
    store = LocalStore(disk / "store")
    size = 250_000
    try:
        first = incompressible_blobs("first", -(-local._BATCH_BYTES // size), size)
        for key, data in first.items():
            store.put(key, data)  # the last put hands the batch to a writer: appended
        with store._write_lock:
            pass
        assert store._appended
        key = next(iter(first))
        read: list[bytes | BaseException] = []
        real_drop = store._files.drop

        def drop() -> None:
            real_drop()  # cuts the file back to where the appends began
            try:
                read.append(store.get(key))
            except Exception as exc:  # noqa: BLE001 - asserted below
                read.append(exc)

        store._files.drop = drop  # type: ignore[method-assign]
        filler = fill(disk)
        with pytest.raises(DiskFull):
            store.flush()
        assert read == [first[key]]
        store._files.drop = real_drop  # type: ignore[method-assign]
        filler.unlink()
        store.flush()
        assert all(store.get(k) == data for k, data in first.items())
    finally:
        store.close()
