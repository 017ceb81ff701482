"""A writer's new data file taken by another actor's compaction before the writer locks it
(datafiles._locked_own_file): a compaction removes first a file no row uses, and a file just
made is one. Two windows, each with two real stores on one folder (each lock is its own open
file, as in two processes); the second actor's prune runs at the exact point by wrapping the
writer's own functions, no sleeps:
- after the file is made: the compaction unlinks it. The writer's file had been compacted
  away once already, so the file is its second new one, which was not checked again after
  its lock: the writer appended to a file with no name and committed rows naming it (every
  such blob lost);
- after its `data_files` row commits and before the file is made: the compaction drops the
  row and finds no file, then the writer makes the file. Its blobs read, but no compaction
  ever looks at the file again (its deleted blobs' bytes kept forever)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pushsite.model import blob_key
from pushsite.stores import datafiles
from pushsite.stores.local import LocalStore
from support.disk import incompressible_blobs


def _prune(store: LocalStore) -> None:
    """A prune's compaction: deleting any blob key compacts every data file."""
    store.delete([blob_key("0" * 64)])


def _listed(root: Path) -> set[str]:
    with sqlite3.connect(root / "objects.db") as db:
        return {f"{no}.dat" for (no,) in db.execute("SELECT no FROM data_files")}


def _on_disk(root: Path) -> set[str]:
    return {p.name for p in (root / "data").glob("*.dat")}


def _check_everything(root: Path, blobs: dict[str, bytes]) -> None:
    """A third actor reads every blob; every data file is one compaction knows."""
    third = LocalStore(root)
    try:
        assert third.get_many(blobs) == blobs
        for key, data in blobs.items():
            assert third.get(key) == data
    finally:
        third.close()
    assert _on_disk(root) <= _listed(root)


def test_a_second_new_file_compacted_away_before_its_lock_is_not_written_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = LocalStore(tmp_path), LocalStore(tmp_path)
    try:
        first = incompressible_blobs("first", 3, 1000)
        for key, data in first.items():
            one.put(key, data)
        one.flush()  # one's file, unlocked
        two.delete(list(first))  # compacts it away: one's open file has no name left
        assert _on_disk(tmp_path) == set()
        real = one._files._own_file
        made: list[int] = []

        def own_file(db: sqlite3.Connection) -> Any:
            fresh = one._files._handle is None
            handle = real(db)
            if fresh:
                made.append(one._files._no or 0)
                if len(made) == 1:
                    _prune(two)  # right after the new file is made, before one locks it
            return handle

        monkeypatch.setattr(one._files, "_own_file", own_file)
        second = incompressible_blobs("second", 3, 1000)
        for key, data in second.items():
            one.put(key, data)
        one.flush()
        assert one.get_many(second) == second
        assert len(made) == 2  # the compacted-away new file was left for another
    finally:
        two.close()
        one.close()
    _check_everything(tmp_path, second)


def test_a_new_file_whose_row_a_compaction_dropped_before_it_was_made_is_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = LocalStore(tmp_path), LocalStore(tmp_path)
    try:
        real = datafiles.write_transaction
        pruned: list[bool] = []

        @contextlib.contextmanager
        def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
            with real(db) as inside:
                yield inside
            if db is one._wdb and not pruned:  # one's row for its new file committed
                pruned.append(True)
                _prune(two)

        monkeypatch.setattr(datafiles, "write_transaction", transaction)
        blobs = incompressible_blobs("blobs", 3, 1000)
        for key, data in blobs.items():
            one.put(key, data)
        one.flush()
        assert pruned
        assert one.get_many(blobs) == blobs
        assert _on_disk(tmp_path) <= _listed(tmp_path)  # a later prune can compact it
    finally:
        two.close()
        one.close()
    _check_everything(tmp_path, blobs)
