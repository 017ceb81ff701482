"""hosts.CommitWatch: the edge skips SQLite's version query only while nothing was committed.

Real SQLite files; the writes come from other processes, as `pushsite deploy` and `pushsite
rollback` make them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pushsite.edge.hosts import CommitWatch, HostResolver, Kind, SiteTarget
from pushsite.model import PRODUCTION, Site
from pushsite.state.sqlite import SqliteState

_POINT = """
import sys, time
from pathlib import Path
from pushsite.state.sqlite import SqliteState
state = SqliteState(Path(sys.argv[1]))
assert state.move_alias("blog", "production", sys.argv[2], f"{time.time_ns():024d}")
"""


def _point_elsewhere(database: Path, deployment_id: str) -> None:
    """Move the production alias from another process."""
    subprocess.run([sys.executable, "-c", _POINT, str(database), deployment_id], check=True,
                   timeout=60)  # fmt: skip


class _CountingVersion:
    def __init__(self, state: SqliteState) -> None:
        self.state = state
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        return self.state.version()


def test_the_version_is_read_only_after_a_commit(tmp_path: Path) -> None:
    database = tmp_path / "state.db"
    state = SqliteState(database)
    state.put_site(Site("blog"))
    assert state.move_alias("blog", PRODUCTION, "dep-one", "0")
    resolver = HostResolver(state)
    counter = _CountingVersion(state)
    resolver._version = counter
    target = SiteTarget("blog", Kind.PRODUCTION)
    assert resolver.deployment_id(target) == "dep-one"
    for _ in range(50):
        assert resolver.deployment_id(target) == "dep-one"
    assert counter.calls <= 2  # one read, and at most one more as the first read settles
    before = counter.calls
    _point_elsewhere(database, "dep-two")
    assert resolver.deployment_id(target) == "dep-two"  # the very next request sees it
    assert counter.calls == before + 1
    _point_elsewhere(database, "dep-one")
    assert resolver.deployment_id(target) == "dep-one"


def test_every_commit_changes_the_token(tmp_path: Path) -> None:
    database = tmp_path / "state.db"
    state = SqliteState(database)
    state.put_site(Site("blog"))
    watch = CommitWatch(database)
    state.version()
    seen = watch.token()
    assert seen is not None
    for number in range(5):
        _point_elsewhere(database, f"dep-{number}")
        token = watch.token()
        assert token != seen
        assert watch.token() == token  # stable while nothing is committed
        seen = token


def test_without_a_database_file_every_request_asks_the_state(tmp_path: Path) -> None:
    assert CommitWatch(None).token() is None
    assert CommitWatch(tmp_path / "missing.db").token() is None
