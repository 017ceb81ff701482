"""SqliteState.change_token: the edge skips SQLite's version query only while nothing was
committed; a state without that ability is read on every request.

Real SQLite files; the writes come from other processes, as `pushsite deploy` and `pushsite
rollback` make them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pushsite.edge.hosts import HostResolver, Kind, SiteTarget
from pushsite.model import PRODUCTION, Alias, Site
from pushsite.state import Watchable
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


class _CountingState(SqliteState):
    calls = 0

    def version(self) -> tuple[int, int]:
        self.calls += 1
        return super().version()


def test_the_version_is_read_only_after_a_commit(tmp_path: Path) -> None:
    database = tmp_path / "state.db"
    state = counter = _CountingState(database)
    state.put_site(Site("blog"))
    assert state.move_alias("blog", PRODUCTION, "dep-one", "0")
    resolver = HostResolver(state)
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
    assert isinstance(state, Watchable)
    state.version()
    seen = state.change_token()
    assert seen is not None
    for number in range(5):
        _point_elsewhere(database, f"dep-{number}")
        token = state.change_token()
        assert token != seen
        assert state.change_token() == token  # stable while nothing is committed
        seen = token
    state.put_site(Site("docs"))  # this connection's own commits too
    assert state.change_token() != seen
    state.close()


class _PlainState:
    """A state store without the ability (as DynamoDB's): only what the edge reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.deployment_id = "dep-one"

    def get_alias(self, site: str, name: str) -> Alias | None:
        self.reads += 1
        return Alias(site, name, self.deployment_id, self.deployment_id, 0.0)


def test_a_state_without_the_ability_is_read_on_every_request() -> None:
    state = _PlainState()
    assert not isinstance(state, Watchable)
    resolver = HostResolver(state)  # type: ignore[arg-type]  # only get_alias is used here
    target = SiteTarget("blog", Kind.PRODUCTION)
    for _ in range(5):
        assert resolver.deployment_id(target) == "dep-one"
    assert state.reads == 5
    state.deployment_id = "dep-two"
    assert resolver.deployment_id(target) == "dep-two"
