"""metrics.db on a full disk: the error is the disk's, not SQLite's "cannot rollback", and a
deploy that failed for the full disk says so in one line (tests/test_full_disk.py), without a
second line about its metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pushsite.diskspace import is_full
from pushsite.state.counters import CounterFile, Key
from support.disk import fill, tmpfs

ROWS: dict[Key, float] = {("pushsite_test_total", (("site", f"s{n}"),)): 1.0 for n in range(2000)}


def test_a_count_on_a_full_disk_fails_for_the_disk_and_is_not_logged_as_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        counters = CounterFile(disk / "home" / "metrics.db")
        counters.open()
        filler = fill(disk)
        try:
            with pytest.raises(Exception) as caught:
                counters.add(ROWS)
            assert is_full(caught.value), repr(caught.value)
            assert "cannot rollback" not in str(caught.value)
            with caplog.at_level(logging.DEBUG, logger="pushsite"):
                counters.add_quietly(ROWS)
            said = [r for r in caplog.records if "could not record metrics" in r.getMessage()]
            assert [r.levelno for r in said] == [logging.DEBUG], said
        finally:
            filler.unlink()
            counters.close()
