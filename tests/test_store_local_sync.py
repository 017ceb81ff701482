"""The local store makes several appended batches durable with one fdatasync and commits
their rows at once (LocalStore._write): an fdatasync cost ~13 ms however little it wrote, one
per 2 MiB batch. Until then the batches are read from the data file in this process, another
actor sees none of their rows (a committed row never names bytes a crash could still lose),
and a failed write puts them back to pending. A real store, a real second actor, a real full
tmpfs; the fdatasyncs are counted by wrapping the real one."""

from __future__ import annotations

import io
import os
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from pushsite.errors import DiskFull
from pushsite.stores import local
from pushsite.stores.local import LocalStore
from support.disk import fill, incompressible_blobs


def _batches(tag: str, count: int) -> dict[str, bytes]:
    """Blobs that fill `count` batches exactly: each last put hands one to a writer thread."""
    size = 250_000
    return incompressible_blobs(tag, count * -(-local._BATCH_BYTES // size), size)


def _rows(root: Path) -> int:
    with sqlite3.connect(root / "objects.db") as db:
        (n,) = db.execute("SELECT count(*) FROM blob_data").fetchone()
    return int(n)


def test_appended_batches_share_one_fdatasync_and_commit_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []  # the size of the data file at each fdatasync
    real = os.fdatasync

    def counting(fd: int) -> None:
        real(fd)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fdatasync", counting)
    root = tmp_path / "store"
    store = LocalStore(root)
    other = LocalStore(root)  # a second actor on the same store
    try:
        blobs = _batches("b", 4)  # 8 MiB: under _SYNC_BYTES
        assert sum(map(len, blobs.values())) < local._SYNC_BYTES
        for key, data in blobs.items():
            store.put(key, data)
        key = next(iter(blobs))
        assert store.has(blobs) == set(blobs)  # read from the data file meanwhile
        assert store.get(key) == blobs[key]
        assert store.get(key, 10, 20) == blobs[key][10:20]
        assert store.size(key) == len(blobs[key])
        assert other.has(blobs) == set()  # no row names bytes not yet durable
        assert _rows(root) == 0
        store.flush()
        assert len(synced) == 1  # a sync per batch: 4
        assert other.has(blobs) == set(blobs)
        with sqlite3.connect(root / "objects.db") as db:
            (end,) = db.execute("SELECT max(offset + length) FROM blob_data").fetchone()
        assert end <= synced[-1]
        assert all(other.get(k) == data for k, data in blobs.items())
    finally:
        other.close()
        store.close()


def test_a_sync_comes_once_sync_bytes_are_appended(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "_SYNC_BYTES", 3 * local._BATCH_BYTES)
    root = tmp_path / "store"
    store = LocalStore(root)
    try:
        blobs = _batches("c", 4)
        for key, data in blobs.items():
            store.put(key, data)
        with store._write_lock:  # the writer thread of the fourth batch is done
            pass
        assert _rows(root) >= 3 * len(blobs) // 4  # the first three, without a flush
        store.flush()
        assert _rows(root) == len(blobs)
    finally:
        store.close()


def test_a_failed_write_puts_the_appended_batches_back_to_pending(disk: Path) -> None:
    store = LocalStore(disk / "store")
    try:
        first = _batches("first", 1)
        for key, data in first.items():
            store.put(key, data)  # appended, its rows wait for a sync
        with store._write_lock:
            pass
        assert store._appended
        filler = fill(disk)
        second = _batches("second", 1)
        for key, data in second.items():
            store.put(key, data)
        with pytest.raises(DiskFull):
            store.flush()
        assert store.has([*first, *second]) == {*first, *second}  # pending again, in memory
        key = next(iter(first))
        assert store.get(key) == first[key]
        filler.unlink()
        store.flush()
    finally:
        store.close()
    again = LocalStore(disk / "store")
    try:
        assert all(again.get(k) == data for k, data in (first | second).items())
    finally:
        again.close()


def _large_rows(root: Path) -> set[str]:
    with sqlite3.connect(root / "objects.db") as db:
        return {row[0] for row in db.execute("SELECT key FROM large")}


def test_a_large_file_is_synced_before_its_row_commits_and_read_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object over PACK_LIMIT is renamed into large/ at once, with no sync on the
    putting thread; the next group sync fdatasyncs it, and fsyncs its folder, before its
    `large` row commits: another actor never sees a row naming a file a power cut could
    leave empty. This process reads it meanwhile."""
    root = tmp_path / "store"
    synced: dict[str, int] = {}  # path -> fdatasync or fsync calls
    seen_at_sync: dict[str, set[str]] = {}  # path -> `large` rows committed at its sync
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def counting(real: Any) -> Any:
        def sync(fd: int) -> None:
            real(fd)
            path = os.readlink(f"/proc/self/fd/{fd}")
            synced[path] = synced.get(path, 0) + 1
            seen_at_sync.setdefault(path, _large_rows(root))
        return sync

    store = LocalStore(root)
    other = LocalStore(root)  # a second actor on the same store
    monkeypatch.setattr(os, "fdatasync", counting(real_fdatasync))
    monkeypatch.setattr(os, "fsync", counting(real_fsync))
    try:
        large = incompressible_blobs("large", 3, local.PACK_LIMIT + 1000)
        small = incompressible_blobs("small", 3, 1000)
        manifest = "sites/s/manifest.json"
        store.put(manifest, b"{}")
        store.flush()  # a small copy committed before: the large one must be read next
        synced.clear()
        seen_at_sync.clear()
        keys = list(large)
        store.put(keys[0], large[keys[0]])  # put writes a temporary file and adopts it
        store.put_stream(keys[1], io.BytesIO(large[keys[1]]), len(large[keys[1]]))
        handle, tmp = store.temp_file()  # as a deploy's pool thread does
        with handle:
            handle.write(large[keys[2]])
        store.adopt_file(keys[2], tmp)
        grown = random.Random("m").randbytes(local.PACK_LIMIT + 1)
        store.put(manifest, grown)
        for key, data in small.items():
            store.put(key, data)
        assert synced == {}  # no sync on the putting thread
        everything = {**large, **small, manifest: grown}
        assert store.has(everything) == set(everything)
        assert all(store.get(k) == data for k, data in everything.items())
        assert store.get(manifest, 5, 50) == grown[5:50]
        assert store.size(manifest) == len(grown)
        assert store.get_many(everything) == everything
        assert other.has(large) == set()  # no row yet names a file not yet durable
        assert other.get(manifest) == b"{}"
        store.flush()
        files = {str(store._large_path(k)) for k in [*large, manifest]}
        assert {p: synced.get(p) for p in files} == dict.fromkeys(files, 1)
        assert all(seen_at_sync[p].isdisjoint([*large, manifest]) for p in files)
        folders = {str(store._large_path(k).parent) for k in large}
        assert {*folders, str(store._large_path("blobs")), str(root / "large")} <= set(synced)
        assert other.has(everything) == set(everything)
        assert all(other.get(k) == data for k, data in everything.items())
        assert store._adopted == {}
        store.flush()
        assert {p: synced.get(p) for p in files} == dict.fromkeys(files, 1)  # once
    finally:
        other.close()
        store.close()


def test_a_deletion_commits_the_adopted_files_before_it_deletes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    try:
        large = incompressible_blobs("del", 2, local.PACK_LIMIT + 1)
        for key, data in large.items():
            store.put(key, data)
        doomed, kept = list(large)
        store.delete([doomed])
        assert store.has(large) == {kept}
        assert not store._large_path(doomed).exists()
    finally:
        store.close()
    again = LocalStore(tmp_path / "store")
    try:
        assert again.has(large) == {kept}
        assert again.get(kept) == large[kept]
    finally:
        again.close()
