"""The local store's leveled blob index: keys of every variant, merges between levels, stores
in older layouts refused, and a reader in another process."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pushsite.errors import ConfigError, NotFound
from pushsite.model import blob_key, fast_gzip_key
from pushsite.stores import levels
from pushsite.stores.local import LAYOUT, LocalStore


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _rows(root: Path, sql: str) -> int:
    with sqlite3.connect(root / "objects.db") as db:
        return int(db.execute(sql).fetchone()[0])


def test_every_variant_and_other_keys_round_trip(tmp_path: Path) -> None:
    sha = _sha("page")
    blobs = {blob_key(sha, enc): f"bytes {enc}".encode() for enc in ("", "gzip", "br")}
    blobs[fast_gzip_key(sha)] = b"a quick gzip (deploy/encode.py)"
    # look like blob keys but are not canonical: kept as text, never confused with a blob
    others = {
        f"blobs/{sha[:2].upper()}/{sha.upper()}": b"upper",
        f"blobs/00/{sha}": b"wrong folder" if not sha.startswith("00") else b"x",
        f"blobs/{sha[:2]}/{sha[:40]}": b"short",
        f"blobs/{sha[:2]}/{sha}.zst": b"other suffix",
        f"blobs/{sha[:2]}/{sha}.zs": b"other suffix, same length",
        f"blobs/{sha[:2]}/{sha[:62]} 0": b"a space",
        f"blobs/{sha[:2]}/{sha[:63]}g": b"not hex",
        "manifests/d1.json": b"{}",
    }
    for key in others:
        assert levels.pack(key) is None
    for key in blobs:
        packed = levels.pack(key)
        assert packed is not None and len(packed) == 33 and levels.unpack(packed) == key
    store = LocalStore(tmp_path)
    for key, data in (blobs | others).items():
        store.put(key, data)
    assert store.has([*blobs, *others, blob_key(_sha("absent"))]) == {*blobs, *others}
    store.flush()
    store.close()

    store = LocalStore(tmp_path)
    try:
        assert store.has([*blobs, *others, blob_key(_sha("absent"))]) == {*blobs, *others}
        for key, data in (blobs | others).items():
            assert store.get(key) == data
            assert store.get(key, 2, 5) == data[2:5]
            assert store.size(key) == len(data)
            assert store.open(key).read() == data
        assert sorted(store.keys("blobs/")) == sorted([*blobs, *others][:-1])
        assert list(store.keys(blob_key(sha, "gzip"))) == [blob_key(sha, "gzip"),
                                                            fast_gzip_key(sha)]
        assert list(store.keys("manifests/")) == ["manifests/d1.json"]
        assert _rows(tmp_path, "SELECT count(*) FROM blob_data") == 4
    finally:
        store.close()


def test_levels_merge_and_the_newest_copy_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(levels, "FIRST_CAP", 4)
    monkeypatch.setattr(levels, "GROWTH", 2)
    store = LocalStore(tmp_path)
    try:
        keys = [blob_key(_sha(str(i))) for i in range(60)]
        for start in range(0, len(keys), 5):  # a flush per five keys: merges cascade
            for key in keys[start : start + 5]:
                store.put(key, key.encode())
            store.flush()
        sizes = levels.level_sizes(store._db)
        assert sum(sizes) == 60 and sum(1 for n in sizes if n) >= 2, sizes
        deep = next(k for k in keys[10:] if levels.pack(k) not in _level0(store))
        store.put(deep, b"new bytes")  # the old copy sits in a deeper level
        store.flush()
        assert store.get(deep) == b"new bytes"
        for i in range(60, 100):  # more merges carry the new copy down
            store.put(blob_key(_sha(str(i))), b"more")
            store.flush()
        assert store.get(deep) == b"new bytes"
        assert all(store.get(k) == k.encode() for k in keys if k != deep)
        assert sum(levels.level_sizes(store._db)) == 100
        assert _rows(tmp_path, "SELECT count(*) FROM blob_data") == 100  # no orphaned bytes
        assert len(list(store.keys())) == 100

        store.delete([deep, keys[0], blob_key(_sha("never stored"))])
        assert store.has([deep, keys[0], keys[5]]) == {keys[5]}
        with pytest.raises(NotFound):
            store.get(deep)
        assert _rows(tmp_path, "SELECT count(*) FROM blob_data") == 98
        assert sum(levels.level_sizes(store._db)) == 98
    finally:
        store.close()


def _level0(store: LocalStore) -> set[bytes]:
    return {bytes(r[0]) for r in store._db.execute("SELECT k FROM blob_keys_0")}


def _old_store(root: Path, blobs: dict[str, bytes]) -> None:
    """objects.db as the store wrote it before the leveled index."""
    root.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(root / "objects.db") as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE objects (key TEXT PRIMARY KEY, data BLOB NOT NULL)")
        db.execute("CREATE TABLE large (key TEXT PRIMARY KEY)")
        db.executemany("INSERT INTO objects VALUES (?, ?)", blobs.items())


def test_a_store_from_before_the_index_is_refused_in_one_line_naming_it(tmp_path: Path) -> None:
    _old_store(tmp_path, {blob_key(_sha("0")): b"old", "manifests/m.json": b"{}"})
    with pytest.raises(ConfigError) as refused:
        LocalStore(tmp_path)
    message = str(refused.value)
    assert str(tmp_path) in message and "before the leveled index" in message
    assert "\n" not in message
    assert _rows(tmp_path, "SELECT count(*) FROM objects") == 2  # left as it was


def test_a_store_from_before_write_times_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "objects.db") as db:
        db.execute("CREATE TABLE blob_data (id INTEGER PRIMARY KEY, data BLOB NOT NULL, "
                   "file INTEGER, offset INTEGER, length INTEGER)")
    with pytest.raises(ConfigError, match="without write times"):
        LocalStore(tmp_path)


def test_a_store_of_this_layout_made_before_it_was_versioned_opens(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put(blob_key(_sha("kept")), b"kept")
    store.put("manifests/m.json", b"{}")
    store.close()
    with sqlite3.connect(tmp_path / "objects.db") as db:
        db.execute("PRAGMA user_version=0")
    store = LocalStore(tmp_path)
    try:
        assert store.get(blob_key(_sha("kept"))) == b"kept"
        assert store.get("manifests/m.json") == b"{}"
    finally:
        store.close()
    assert _rows(tmp_path, "PRAGMA user_version") == LAYOUT


def test_a_store_of_an_unknown_layout_is_refused(tmp_path: Path) -> None:
    LocalStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "objects.db") as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(ConfigError, match="layout 99"):
        LocalStore(tmp_path)


_READER = """
import sys
from pathlib import Path
from pushsite.stores.local import LocalStore
store = LocalStore(Path(sys.argv[1]))
keys = sys.argv[2:]
print(sorted(store.has(keys)) == sorted(keys), *(store.get(k).decode() for k in keys))
"""


def test_a_reader_in_another_process_sees_flushed_blobs(tmp_path: Path) -> None:
    writer = LocalStore(tmp_path)
    try:
        keys = [blob_key(_sha("a")), blob_key(_sha("b"), "br"), "manifests/x.json"]
        for key in keys:
            writer.put(key, key[-6:].encode())
        writer.flush()
        out = subprocess.run([sys.executable, "-c", _READER, str(tmp_path), *keys],
                             capture_output=True, text=True, check=True).stdout.split()
        assert out == ["True", *(k[-6:] for k in keys)]
    finally:
        writer.close()


def test_a_new_store_has_large_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    """16 KiB pages for a new store (fewer WAL frames per manifest byte); a store made with other
    pages opens as it is, since a WAL database cannot change its page size in place."""
    LocalStore(tmp_path / "new").close()
    assert _rows(tmp_path / "new", "PRAGMA page_size") == 16384
    old = tmp_path / "old"
    old.mkdir()
    with sqlite3.connect(old / "objects.db") as db:
        db.execute("PRAGMA page_size=4096")
        db.execute("PRAGMA journal_mode=WAL")
    store = LocalStore(old)
    store.put(blob_key(_sha("x")), b"x")
    store.close()
    assert _rows(old, "PRAGMA page_size") == 4096
    assert LocalStore(old).get(blob_key(_sha("x"))) == b"x"


def test_processes_opening_new_databases_at_once_all_succeed(tmp_path: Path) -> None:
    """Processes open fresh stores, states and queues at the same moments (as a new `serve`
    does with its HTTP processes): each waits its turn, none gets "database is locked"."""
    go = tmp_path / "go"
    code = (
        "import sys, time, pathlib\n"
        "from pushsite.stores.local import LocalStore\n"
        "from pushsite.state.sqlite import SqliteState\n"
        "from pushsite.queues.local import LocalQueue\n"
        "root, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
        "while not go.exists(): time.sleep(0.001)\n"
        "for n in range(30):\n"
        "    LocalStore(root / f'{n}' / 'store').close()\n"
        "    SqliteState(root / f'{n}' / 'state.db').close()\n"
        "    LocalQueue(root / f'{n}' / 'queue.db').close()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(go)],
                              stderr=subprocess.PIPE) for _ in range(4)]
    go.touch()
    errors = [p.communicate(timeout=120)[1].decode()[-300:] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
