"""What a deploy holds beyond its in-flight budget stays small (issue 20, large's peak RSS):
the early brotli thread's queue (deploy/early.py) and the local store's write buffers
(stores/local.py). Both hold bytes the deploy has done with, so every byte there is peak
memory; neither changes what is stored.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pushsite.deploy.builder import ManifestBuilder, Target
from pushsite.deploy.later import Later
from pushsite.model import blob_key
from pushsite.stores.local import LocalStore
from support.prose import words

KIB = 1 << 10


class _Log:
    def info(self, stage: str, message: str, **fields: object) -> None: ...
    def warning(self, stage: str, message: str, **fields: object) -> None: ...


def test_a_deploys_early_queue_takes_at_most_512_kib(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    builder = ManifestBuilder(Later.now(Target(store)), _Log(), later=True)
    try:
        queue = builder._early
        assert queue is not None
        big = words(1, 600 * KIB)
        assert not queue.offer(hashlib.sha256(big).hexdigest(), big, "text/html")  # dropped
        small = words(2, 100 * KIB)
        assert queue.offer(hashlib.sha256(small).hexdigest(), small, "text/html")
    finally:
        builder.abort()
        store.close()


def test_the_local_store_holds_at_most_2_mib_of_writes_between_batches(
        tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    try:
        blobs = [words(i, 100 * KIB) for i in range(60)]  # 6 MB: three batches and more
        held = []
        for data in blobs:
            store.put(blob_key(hashlib.sha256(data).hexdigest()), data)
            held.append(store._pending_bytes)
        assert max(held) < 2 << 20
        assert max(held) > 1 << 20  # a batch still gathers writes: not one commit each
        store.flush()
        for data in blobs:  # every batch landed whole
            assert store.get(blob_key(hashlib.sha256(data).hexdigest())) == data
    finally:
        store.close()


def test_sqlite_page_caches_are_bounded(tmp_path: Path) -> None:
    """SQLite's default page cache is ~2 MB a connection: the store's two connections to
    objects.db take 512 KiB each, a big deploy's spilled table of files 1 MiB (was 4 MiB)."""
    from pushsite.deploy.entries import Entries
    from pushsite.model import FileEntry

    store = LocalStore(tmp_path)
    try:
        for db in (store._wdb, store._db):
            assert db.execute("PRAGMA cache_size").fetchone() == (-512,)
    finally:
        store.close()
    entries = Entries(spill_at=2)
    for i in range(3):
        entries[f"p{i}.html"] = FileEntry(f"{i:064x}", i, "text/html; charset=utf-8")
    assert entries.spilled and entries._db is not None
    assert entries._db.execute("PRAGMA cache_size").fetchone() == (-1024,)
    try:
        assert [path for path, _ in entries.sorted_items()] == ["p0.html", "p1.html", "p2.html"]
    finally:
        entries.close()
