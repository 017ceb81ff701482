"""The disk reserve (diskspace.py) on a real small tmpfs: made whole in one call when the disk
has room (a fresh home's every database), and, when it has not, grown as far as the space
allows, to the last page, so that no write which settles nothing fits in what is left."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushsite.diskspace import Reserve, free_bytes
from support.disk import tmpfs

PAGE = 4096


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own, unmounted after the test."""
    with tmpfs(tmp_path / "disk", "2m") as mount:
        yield mount


def test_a_reserve_on_a_disk_with_room_is_made_whole(disk: Path) -> None:
    reserve = Reserve(disk / "state.db-reserve", 1 << 20)
    before = free_bytes(disk)
    reserve.restore()
    assert reserve.path.stat().st_size == 1 << 20
    assert reserve.held() == 1 << 20  # real blocks, not a sparse file
    assert before - free_bytes(disk) == 1 << 20
    reserve.restore()  # whole already: nothing changes
    assert reserve.held() == 1 << 20


def test_on_a_nearly_full_disk_it_takes_what_is_left_then_grows_back(disk: Path) -> None:
    other = disk / "filler"
    with open(other, "wb") as out:  # leave ~300 KiB free for a 1 MiB reserve
        out.write(bytes(free_bytes(disk) - 300 * 1024))
    reserve = Reserve(disk / "objects.db-reserve", 1 << 20)
    reserve.restore()
    held = reserve.held()
    assert 0 < held < 1 << 20
    assert free_bytes(disk) < PAGE  # the rest of the disk is the reserve's
    assert reserve.release()
    assert free_bytes(disk) >= held
    other.unlink()  # a prune freed space: the reserve grows back whole
    reserve.restore()
    assert reserve.held() == 1 << 20
    assert os.stat(reserve.path).st_size == 1 << 20
