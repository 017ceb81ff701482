"""The state-at-scale script (bench/state_scale.py, issue 20 part 4) on a small state: what it
generates is what pushsite's own SqliteState reads, and every listing it times answers."""

from __future__ import annotations

import random
from pathlib import Path

from bench.state_scale import generate, listings
from pushsite.model import Status
from pushsite.state import every_site
from pushsite.state.sqlite import SqliteState


def test_a_generated_state_reads_back_through_pushsite_and_every_listing_answers(
        tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    generate(path, sites=60, deployments=3000, logs=2)
    state = SqliteState(path)
    try:
        sites = list(every_site(state))
        assert len(sites) == 60
        newest = state.list_deployments(limit=3000)
        assert len(newest) == 3000
        assert [d.id for d in newest] == sorted((d.id for d in newest), reverse=True)
        assert len(state.list_deployments(status=Status.RUNNING, limit=100)) == 20
        assert len(state.list_deployments(status=Status.QUEUED, limit=100)) == 50
        busiest = max(sites, key=lambda s: len(state.list_deployments(s.name, limit=3000)))
        page = state.list_deployments(busiest.name, limit=10)
        following = state.list_deployments(busiest.name, limit=10, before=page[-1].id)
        assert page[-1].id > following[0].id and all(d.site == busiest.name for d in following)
        production = state.get_alias(busiest.name, "production")
        assert production is not None
        assert state.get_deployment(production.deployment_id).branch == "main"
        assert len(state.get_logs(newest[0].id)) == 2
        for name, call in listings(state, random.Random(1)).items():
            call()  # each listing runs against the generated rows
            assert name
    finally:
        state.close()
