"""LocalStore.get_many: many objects read at once (the optimiser's reads after live) give
exactly what get() gives for each, wherever each one is kept."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pushsite.model import blob_key
from pushsite.stores.local import PACK_LIMIT, LocalStore


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_get_many_matches_get_wherever_each_object_is(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    try:
        # more than one statement's worth of keys, in data files
        stored = {blob_key(_sha(f"f{n}")): f"file {n} ".encode() * (n % 7 + 1)
                  for n in range(1200)}
        stored[blob_key(_sha("f1"), "br")] = b"a brotli variant"
        for key, data in stored.items():
            store.put(key, data)
        store.flush()
        # still in the write buffer; a large object (a file of its own); not a blob
        held = {blob_key(_sha("held")): b"not flushed yet"}
        large = {blob_key(_sha("large")): b"L" * (PACK_LIMIT + 1)}
        other = {"manifests/d1.json": b'{"files": {}}'}
        for key, data in (held | large | other).items():
            store.put(key, data)
        everything = stored | held | large | other
        absent = [blob_key(_sha("absent")), blob_key(_sha("f1"), "gzip"), "manifests/no.json"]
        asked = [*absent, *everything, *list(everything)[:10]]  # a key asked twice
        got = store.get_many(asked)
        assert got == everything
        assert all(got[key] == store.get(key) for key in everything)
        assert store.get_many([]) == {}
        store.flush()
        assert store.get_many(held) == held
        # past a write batch, not flushed: appended to the data file, rows not committed yet
        unsynced = {blob_key(_sha(f"u{n}")): bytes([n]) * 100_000 for n in range(60)}
        for key, data in unsynced.items():
            store.put(key, data)
        assert store.get_many([*unsynced, *held]) == unsynced | held
        store.flush()
        assert store.get_many(unsynced) == unsynced
    finally:
        store.close()


def test_get_many_reads_what_another_store_instance_wrote(tmp_path: Path) -> None:
    """A second opener (another process's view: its own connections and data file) reads
    the first one's blobs, and its own, in one call."""
    first = LocalStore(tmp_path)
    second = LocalStore(tmp_path)
    try:
        mine = {blob_key(_sha(f"a{n}")): f"first {n}".encode() for n in range(50)}
        theirs = {blob_key(_sha(f"b{n}")): f"second {n}".encode() for n in range(50)}
        for key, data in mine.items():
            first.put(key, data)
        first.flush()
        for key, data in theirs.items():
            second.put(key, data)
        second.flush()
        assert second.get_many([*mine, *theirs]) == mine | theirs
        assert first.get_many([*theirs, *mine]) == mine | theirs
    finally:
        first.close()
        second.close()
