"""The chaos suite's short version (chaos/: `make chaos` runs the full one): a couple of
iterations of every round, with real processes, real SIGKILL and real HTTP; each asserts no
broken site, and that the kills it counts happened."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from chaos import parts, rounds
from chaos.rounds import Figures


def _clean(figures: Figures, kills: int) -> None:
    assert figures.broken == 0, figures.problems
    assert figures.kills >= kills, figures


def test_deploys_killed_with_sigkill(tmp_path: Path) -> None:
    _clean(rounds.deploy_kills(tmp_path, 2, random.Random(1)), 2)


def test_prunes_killed_with_sigkill(tmp_path: Path) -> None:
    _clean(rounds.prune_kills(tmp_path, 2, random.Random(2)), 2)


def test_serve_killed_mid_deploy(tmp_path: Path) -> None:
    _clean(rounds.serve_kills(tmp_path, 2, random.Random(3)), 2)


def test_prune_racing_deploys_local(tmp_path: Path) -> None:
    figures = rounds.prune_races(tmp_path, 2, random.Random(4))
    _clean(figures, 0)
    assert figures.live == figures.runs == 2, figures.problems


def test_prune_racing_deploys_on_seaweedfs(tmp_path: Path, seaweed_url: str) -> None:
    figures = rounds.prune_races(tmp_path, 1, random.Random(5), seaweed_url, "SeaweedFS")
    _clean(figures, 0)
    assert figures.live == figures.runs == 1, figures.problems


def test_two_serves_and_a_cli_deploy_share_one_home(tmp_path: Path) -> None:
    _clean(rounds.shared_state(tmp_path, 1, random.Random(6)), 2)


def test_a_full_disk(tmp_path: Path) -> None:
    figures = rounds.full_disk(tmp_path, 1, random.Random(7))
    _clean(figures, 0)
    assert figures.failed == 1  # the filling deploy: exit 7, one line


def test_the_checks_catch_a_broken_site(tmp_path: Path) -> None:
    """A blob of the live deployment deleted behind pushsite's back: both checks say so."""
    home = rounds._new_home(tmp_path)
    home.run(*home.deploy_args(1))
    service = home.service()
    try:
        alias = service.state.get_alias(parts.SITE, "production")
        assert alias is not None
        entry = service.manifest(alias.deployment_id).files["index.html"]
        service.store.delete([entry.key()])
    finally:
        service.close()
    with pytest.raises(parts.ChaosFailure, match="verify"):
        rounds._in_process_check(home, None)
    with pytest.raises(parts.ChaosFailure, match="verify"):
        parts.check(home, None)
