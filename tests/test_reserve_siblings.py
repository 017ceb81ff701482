"""Which reserves an empty one may borrow (diskspace.Reserve.siblings): the other databases'
reserves of the same home, never a stranger's file that happens to end in -reserve."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pushsite.diskspace import Reserve


def _database_with_reserve(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    reserve = path.with_name(path.name + "-reserve")
    reserve.write_bytes(bytes(size))
    return reserve


def test_an_empty_reserve_borrows_a_sibling_database_s_and_no_stranger_s(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    state = _database_with_reserve(home / "state.db", 0)
    store = _database_with_reserve(home / "store" / "objects.db", 8192)
    queue = _database_with_reserve(home / "queue.db", 4096)
    stranger = tmp_path / "notes-reserve"  # in the folder above the home, no database
    stranger.write_bytes(b"keep me")
    not_sqlite = home / "plain.txt-reserve"
    (home / "plain.txt").write_text("not a database")
    not_sqlite.write_bytes(b"keep me too")

    from_state = Reserve(state, 1 << 20)
    assert sorted(from_state.siblings()) == sorted([queue.resolve(), store.resolve()])
    from_store = Reserve(store, 2 << 20)
    assert sorted(from_store.siblings()) == sorted([queue.resolve(), state.resolve()])

    assert from_state.release_or_borrow()  # its own holds nothing: one sibling's goes
    assert sorted(p.stat().st_size for p in (queue, store)) == [0, 8192]
    assert from_state.release_or_borrow()
    assert queue.stat().st_size == 0 and store.stat().st_size == 0
    assert not from_state.release_or_borrow()  # nothing left anywhere
    assert stranger.read_bytes() == b"keep me"
    assert not_sqlite.read_bytes() == b"keep me too"
