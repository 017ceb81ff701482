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
import threading
from pathlib import Path
from typing import Any

import pytest

from pushsite.errors import BackendUnavailable, DiskFull
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


def test_a_large_file_is_synced_before_its_rename_and_its_row_commits_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An object over PACK_LIMIT is fdatasync-ed under its temporary name, renamed into
    large/, its folder fsync-ed, and only then its `large` row commits, by the time a flush
    returns (a manifest's before the call returns): another actor sees it then (a deploy
    killed after it reuses it), and no row ever names a file a power cut could leave empty
    or missing."""
    root = tmp_path / "store"
    # (call, path synced, whether that path existed, `large` rows committed at the sync)
    events: list[tuple[str, str, set[str]]] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def counting(real: Any, name: str) -> Any:
        def sync(fd: int) -> None:
            real(fd)
            events.append((name, os.readlink(f"/proc/self/fd/{fd}"), _large_rows(root)))
        return sync

    store = LocalStore(root)
    other = LocalStore(root)  # a second actor on the same store
    monkeypatch.setattr(os, "fdatasync", counting(real_fdatasync, "fdatasync"))
    monkeypatch.setattr(os, "fsync", counting(real_fsync, "fsync"))
    try:
        large = incompressible_blobs("large", 3, local.PACK_LIMIT + 1000)
        manifest = "sites/s/manifest.json"
        store.put(manifest, b"{}")
        store.flush()  # a small copy committed before: the large one must replace it
        grown = random.Random("m").randbytes(local.PACK_LIMIT + 1)
        keys = list(large)

        def by_temp_file() -> None:
            handle, tmp = store.temp_file()  # as a deploy's pool thread does
            with handle:
                handle.write(large[keys[2]])
            store.adopt_file(keys[2], tmp)

        for key, data, call in [
            (keys[0], large[keys[0]], lambda: store.put(keys[0], large[keys[0]])),
            (keys[1], large[keys[1]], lambda: store.put_stream(
                keys[1], io.BytesIO(large[keys[1]]), len(large[keys[1]]))),
            (keys[2], large[keys[2]], by_temp_file),
            (manifest, grown, lambda: store.put(manifest, grown)),
        ]:
            events.clear()
            call()
            assert store.has([key]) == {key} and store.get(key) == data  # this process
            store.flush()  # a deploy's drain, before its manifest
            target = str(store._large_path(key))
            (data_sync,) = [e for e in events if e[0] == "fdatasync"]
            assert data_sync[1].startswith(f"{root / 'tmp'}/")  # before the rename
            assert key not in data_sync[2]
            folder = [e for e in events if e[1] == str(Path(target).parent)]
            assert folder and all(key not in rows for _, _, rows in folder)
            assert events.index(data_sync) < events.index(folder[0])
            assert key in _large_rows(root)  # committed before the flush returned
            assert other.has([key]) == {key}
            assert other.get(key) == data and other.size(key) == len(data)
        events.clear()
        store.flush()  # nothing of theirs left to sync
        assert [e for e in events if e[1].startswith((f"{root}/large", f"{root}/tmp"))] == []
        everything = {**large, manifest: grown}
        assert store.get_many(everything) == everything
        assert other.get_many(everything) == everything
    finally:
        other.close()
        store.close()


def test_the_folders_above_a_large_file_are_synced_once_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folders adopt_file makes (large/blobs/<2 hex>) have their entries made durable,
    their parent fsync-ed, once per process: the next file into the same folder syncs only
    its own folder."""
    root = tmp_path / "store"
    store = LocalStore(root)
    synced: list[str] = []
    real = os.fsync

    def counting(fd: int) -> None:
        real(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", counting)
    try:
        data = random.Random("f").randbytes(local.PACK_LIMIT + 1)
        first, second = "blobs/ab/" + "a" * 64, "blobs/ab/" + "b" * 64
        store.put(first, data)
        store.flush()  # the adopting thread's syncs done
        assert synced == [str(root / "large/blobs/ab"), str(root / "large/blobs"),
                          str(root / "large")]
        synced.clear()
        store.put(second, data)
        store.flush()
        assert synced == [str(root / "large/blobs/ab")]
    finally:
        store.close()


def test_a_deleted_large_file_stays_deleted_for_the_next_actor(tmp_path: Path) -> None:
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


def test_a_large_blob_is_adopted_off_the_calling_thread_and_read_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deploy's pool thread hands a large blob over: adopt_file returns before the blob's
    syncs, which the store's adopting thread does (on large the pool spent ~0.9 s in them).
    While that thread is held in its fdatasync this process reads the blob whole, the caller
    may remove the name it gave (as the builder does), and another actor does not see it;
    a flush waits for its row, after which the other actor reads it."""
    root = tmp_path / "store"
    caller = threading.current_thread()
    synced_on: list[threading.Thread] = []
    gate = threading.Event()
    real = os.fdatasync

    def held(fd: int) -> None:
        synced_on.append(threading.current_thread())
        if threading.current_thread() is not caller:
            gate.wait()
        real(fd)

    store = LocalStore(root)
    other = LocalStore(root)
    monkeypatch.setattr(os, "fdatasync", held)
    try:
        ((key, data),) = incompressible_blobs("held", 1, local.PACK_LIMIT + 1000).items()
        handle, tmp = store.temp_file()
        with handle:
            handle.write(data)
        store.adopt_file(key, tmp)
        tmp.unlink(missing_ok=True)  # the builder's _drop_stream
        assert other.has([key]) == set()
        assert key not in _large_rows(root)
        assert store.has([key]) == {key}
        assert store.get(key) == data and store.get(key, 5, 10) == data[5:10]
        assert store.size(key) == len(data)
        with store.open(key) as opened:
            assert opened.read() == data
        assert store.get_many([key]) == {key: data}
        gate.set()
        store.flush()
        assert synced_on and caller not in synced_on
        assert key in _large_rows(root)
        assert other.has([key]) == {key} and other.get(key) == data
        assert list((root / "tmp").iterdir()) == []
    finally:
        gate.set()
        other.close()
        store.close()


def test_a_failed_adoption_is_raised_by_the_next_flush_and_tried_again_by_the_one_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The adopting thread's error reaches the deploy at its drain (the flush before its
    manifest), so no manifest names a blob not durable; the blob is kept (read here, seen by
    no other actor) and the next flush hands it over again, as a failed batch's blobs go
    back to pending."""
    root = tmp_path / "store"
    caller = threading.current_thread()
    real = os.fdatasync
    failing = True

    def sync(fd: int) -> None:
        if failing and threading.current_thread() is not caller:
            raise OSError(5, "Input/output error")
        real(fd)

    store = LocalStore(root)
    other = LocalStore(root)
    monkeypatch.setattr(os, "fdatasync", sync)
    try:
        ((key, data),) = incompressible_blobs("eio", 1, local.PACK_LIMIT + 1).items()
        store.put(key, data)
        with pytest.raises(BackendUnavailable, match="Input/output error"):
            store.flush()
        assert key not in _large_rows(root) and other.has([key]) == set()
        assert store.has([key]) == {key} and store.get(key) == data
        with pytest.raises(BackendUnavailable, match="Input/output error"):
            store.put("sites/s/manifest.json", b"{}")  # it would name the blob
        failing = False
        store.flush()
        assert key in _large_rows(root)
        assert other.has([key]) == {key} and other.get(key) == data
        assert list((root / "tmp").iterdir()) == []
    finally:
        monkeypatch.setattr(os, "fdatasync", real)
        other.close()
        store.close()
