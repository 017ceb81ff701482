"""The local store's data files: blob bytes outside SQLite, read back by span, compacted on
delete without moving a file being written, and stores from before them refused."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from pushsite.errors import ConfigError, NotFound
from pushsite.model import blob_key
from pushsite.stores import levels
from pushsite.stores.local import LocalStore


def _key(text: str) -> str:
    return blob_key(hashlib.sha256(text.encode()).hexdigest())


def _files(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (root / "data").glob("*.dat")}


def _put_all(store: LocalStore, items: dict[str, bytes]) -> None:
    for key, data in items.items():
        store.put(key, data)
    store.flush()


def test_blob_bytes_live_in_a_data_file_and_read_back_by_span(tmp_path: Path) -> None:
    blobs = {_key(str(i)): f"blob {i} ".encode() * (i + 1) for i in range(50)}
    store = LocalStore(tmp_path)
    _put_all(store, blobs | {"manifests/m.json": b"{}"})
    store.close()
    assert sum(_files(tmp_path).values()) == sum(map(len, blobs.values()))
    with sqlite3.connect(tmp_path / "objects.db") as db:  # SQLite keeps where, not what
        assert db.execute("SELECT max(length(data)) FROM blob_data").fetchone()[0] == 0
    store = LocalStore(tmp_path)
    try:
        for key, data in blobs.items():
            assert store.get(key) == data
            assert store.get(key, 3, 9) == data[3:9]
            assert store.get(key, 5) == data[5:]
            assert store.get(key, len(data) + 4) == b""
            assert store.size(key) == len(data)
        assert store.get("manifests/m.json") == b"{}"
    finally:
        store.close()


def test_delete_compacts_a_mostly_dead_file_and_drops_a_dead_one(tmp_path: Path) -> None:
    first = {_key(f"a{i}"): bytes([i]) * 1000 for i in range(10)}
    second = {_key(f"b{i}"): bytes([100 + i]) * 1000 for i in range(10)}
    for batch in (first, second):  # two processes, two data files
        store = LocalStore(tmp_path)
        _put_all(store, batch)
        store.close()
    assert len(_files(tmp_path)) == 2
    doomed = list(first)[:8] + list(second)  # file 1: 2 of 10 live; file 2: none
    pruner = LocalStore(tmp_path)
    try:
        pruner.delete(doomed)
        files = _files(tmp_path)
        assert sum(files.values()) == 2000, files  # only the two live blobs are left
        assert "1.dat" not in files and "2.dat" not in files
        for key in doomed:
            with pytest.raises(NotFound):
                pruner.get(key)
    finally:
        pruner.close()
    reader = LocalStore(tmp_path)  # another process sees the moved spans
    try:
        for key in list(first)[8:]:
            assert reader.get(key) == first[key]
    finally:
        reader.close()


def test_a_file_being_written_is_not_compacted_and_a_writer_moves_on(tmp_path: Path) -> None:
    writer = LocalStore(tmp_path)
    pruner = LocalStore(tmp_path)
    try:
        mine = {_key(f"w{i}"): b"w" * 500 for i in range(4)}
        _put_all(writer, mine)
        own = set(_files(tmp_path))
        with writer._files.appending(writer._wdb):  # mid-batch: the file is locked
            pruner.delete(list(mine)[:3])
            assert set(_files(tmp_path)) == own  # left alone while locked
        pruner.delete([])  # nothing deleted: no compaction either
        pruner.delete([list(mine)[3]])  # now unlocked and dead: removed
        assert not (set(_files(tmp_path)) & own)
        later = {_key("after"): b"written after its file went away"}
        _put_all(writer, later)  # the writer notices and starts a new file
        assert pruner.get(_key("after")) == later[_key("after")]
    finally:
        writer.close()
        pruner.close()


def test_bytes_no_row_names_count_as_dead(tmp_path: Path) -> None:
    """A crash between an append and its commit leaves bytes no row names: compaction
    treats them as free space."""
    store = LocalStore(tmp_path)
    _put_all(store, {_key("kept"): b"k" * 100, _key("gone"): b"g" * 100})
    store.close()
    (name,) = _files(tmp_path)
    with open(tmp_path / "data" / name, "ab") as data:
        data.write(b"\0" * 10_000)  # an interrupted batch
    store = LocalStore(tmp_path)
    try:
        store.delete([_key("gone")])
        assert sum(_files(tmp_path).values()) == 100
        assert store.get(_key("kept")) == b"k" * 100
    finally:
        store.close()


def test_a_store_with_inline_blobs_is_refused_naming_it(tmp_path: Path) -> None:
    old = _key("old")
    with sqlite3.connect(tmp_path / "objects.db") as db:  # the schema before data files
        db.execute("CREATE TABLE blob_data (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        for statement in levels.SCHEMA[1:]:
            db.execute(statement)
        db.execute("INSERT INTO blob_data VALUES (1, ?)", (b"inline bytes",))
        db.execute("INSERT INTO blob_keys_0 VALUES (?, 1)", (levels.pack(old),))
    with pytest.raises(ConfigError, match="inline in SQLite") as refused:
        LocalStore(tmp_path)
    assert str(tmp_path) in str(refused.value)
    with sqlite3.connect(tmp_path / "objects.db") as db:  # as a later version altered it
        for column in ("file INTEGER", "offset INTEGER", "length INTEGER", "written REAL"):
            db.execute(f"ALTER TABLE blob_data ADD COLUMN {column}")
    with pytest.raises(ConfigError, match="inline in SQLite"):
        LocalStore(tmp_path)


def test_a_batch_without_blobs_opens_no_data_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    try:
        _put_all(store, {"manifests/only.json": b"{}"})
        assert _files(tmp_path) == {}
        assert store.get("manifests/only.json") == b"{}"
    finally:
        store.close()


def test_a_failed_batch_does_not_shift_the_next_ones_offsets(tmp_path: Path) -> None:
    """Bytes a failed batch appended (still in the writer's buffer) reach the file before the
    next batch measures where it starts."""
    store = LocalStore(tmp_path)
    try:
        with pytest.raises(RuntimeError), store._files.appending(store._wdb) as out:
            out.add(b"half a batch, never committed")
            raise RuntimeError("the commit failed")
        _put_all(store, {_key("next"): b"the next batch"})
        assert store.get(_key("next")) == b"the next batch"
        assert LocalStore(tmp_path).get(_key("next")) == b"the next batch"
    finally:
        store.close()
