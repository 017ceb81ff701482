"""Prune cannot hurt: it pages through every deployment, never deletes what a deployment
started beside it references, leaves every `ready` deployment whole when killed at any moment,
and rollback refuses a target whose manifest or blobs are gone (exit 4) before moving."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pushsite.cli import cli
from pushsite.config import load_config
from pushsite.errors import NotFound
from pushsite.model import PRODUCTION, Deployment, Status, blob_key, manifest_key
from pushsite.service import Service, housekeeping
from support.service import accept, deploy, open_service, status

PAGE = "<html><body>" + "<p>a page worth compressing</p>" * 40


def _files(tag: str, count: int = 6) -> dict[str, bytes]:
    return {f"p{n}.html": f"{PAGE}{tag}-{n}".encode() for n in range(count)}


def _whole(service: Service, deployment_id: str) -> None:
    """Every blob and variant (or pack) the deployment's manifest names is stored."""
    housekeeping.check_servable(service, service.state.get_deployment(deployment_id))


def _servable_have_manifests(service: Service) -> None:
    for d in housekeeping.every_deployment(service.state):
        if d.status.servable:
            service.manifest(d.id)  # raises DeploymentNotFound when it has none


@pytest.fixture
def service() -> Iterator[Service]:
    with open_service() as svc:
        yield svc


def test_prune_pages_through_every_deployment(service: Service) -> None:
    """With 2 deployments a page, the kept ones of another site beyond the first page keep
    their blobs (a listing cap used to make prune delete them)."""
    kept = [deploy(service, "docs", _files(f"docs{n}")) for n in range(5)]
    for n in range(3):
        deploy(service, "blog", _files(f"blog{n}"))
    result = housekeeping.prune(service, "docs", 5, grace=0, page=2)
    assert result["deployments"] == 0 and result["blobs"] == 0
    result = housekeeping.prune(service, "blog", 1, grace=0, page=2)
    assert result["deployments"] == 2 and result["blobs"] > 0
    for d in kept:
        _whole(service, d.id)
    assert service.verify() == []


def test_the_grace_period_keeps_recent_blobs(service: Service) -> None:
    old = deploy(service, "blog", _files("old"))
    deploy(service, "blog", _files("new"))
    result = service.prune("blog", keep=1)  # the default grace: an hour
    assert result["deployments"] == 1 and result["blobs"] == 0 and result["recent"] > 0
    assert status(service, old.id) == Status.CANCELLED
    assert not service.store.has([manifest_key(old.id)])
    assert service.prune("blog", keep=1, grace=0)["blobs"] > 0


def test_a_stale_running_record_does_not_block_prune(service: Service) -> None:
    deploy(service, "blog", _files("v1"))
    deploy(service, "blog", _files("v2"))
    stuck = accept(service, "blog", _files("v3"))
    stuck.status, stuck.started = Status.RUNNING, time.time() - 7200  # a runner killed long ago
    assert service.state.update_deployment(stuck)
    queued = accept(service, "blog", _files("v4"))  # stuck in the queue
    started = time.monotonic()
    assert service.prune("blog", keep=1, grace=0)["deployments"] == 1
    assert time.monotonic() - started < 10
    assert status(service, queued.id) == Status.QUEUED
    assert service.verify() == []


def _race(service: Service, n: int, reused: dict[str, bytes]) -> None:
    """A prune and a deploy started at nearly the same moment, in either order; the deploy
    has new files and files that only deployments being pruned hold."""
    files = {**_files(f"race{n}", 4), **reused}
    result: list[Deployment] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            time.sleep(random.uniform(0, 0.05))
            result.append(deploy(service, "blog", files))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    racer = threading.Thread(target=run)
    racer.start()
    time.sleep(random.uniform(0, 0.05))
    service.prune("blog", keep=1, grace=0)
    racer.join(60)
    assert not errors and result and result[0].status == Status.LIVE
    _whole(service, result[0].id)
    for path, data in files.items():
        assert service.manifest(result[0].id).files[path].hash == \
            hashlib.sha256(data).hexdigest()


def _races(service: Service, count: int) -> None:
    for n in range(count):
        old = _files(f"old{n}", 3)
        deploy(service, "blog", old)
        deploy(service, "blog", _files(f"newer{n}", 3))  # `old` is dropped by the next prune
        _race(service, n, old)
        _servable_have_manifests(service)
        assert service.verify() == []


def test_prune_racing_deploys_on_the_local_store(service: Service) -> None:
    started = time.monotonic()
    _races(service, 20)
    assert time.monotonic() - started < 60


def test_prune_racing_deploys_on_seaweedfs(seaweed_url: str) -> None:
    svc = Service(load_config(store=seaweed_url))
    try:
        _races(svc, 4)
    finally:
        svc.close()


def test_prune_killed_at_any_moment_leaves_every_ready_deployment_whole(
        service: Service, tmp_path: Path) -> None:
    """kill -9 of `pushsite prune` at varied moments: verify stays clean and every ready or
    live deployment keeps its manifest; the next prune finishes the work. (A killed prune's
    sweep record holds deploys back until it expires: a 2 s lease keeps the test short.)"""
    env = {**os.environ, "PUSHSITE_PRUNE_GRACE": "0", "PUSHSITE_LEASE": "2"}
    pushsite = Path(sys.executable).with_name("pushsite")
    rng = random.Random(5)
    killed = 0
    rounds = 10
    lived = 0.7  # how long a prune lived when it ended before its kill: the window shrinks to it
    for round_ in range(rounds):
        for n in range(5):
            deploy(service, "blog", _files(f"k{round_}-{n}", 150))
        started = time.monotonic()
        prune = subprocess.Popen([str(pushsite), "prune", "blog", "--keep", "1"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        kill_at = started + rng.uniform(lived * 0.3, lived * 0.95)
        while time.monotonic() < kill_at and prune.poll() is None:
            time.sleep(0.005)
        if prune.poll() is None:
            prune.send_signal(signal.SIGKILL)
            killed += 1
        else:
            lived = min(lived, time.monotonic() - started)
        prune.wait(60)
        _servable_have_manifests(service)
        done = CliRunner().invoke(cli, ["verify"], obj={})
        assert done.exit_code == 0, done.stderr
    assert killed >= rounds // 3  # many rounds were cut short somewhere
    done = subprocess.run([str(pushsite), "prune", "blog", "--keep", "1"], env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    ready = [d for d in housekeeping.every_deployment(service.state, site="blog")
             if d.status.servable]
    assert len(ready) == 1
    assert service.verify() == []


def test_rollback_refuses_a_target_without_its_manifest_or_blobs(service: Service) -> None:
    first = deploy(service, "blog", _files("one"))
    second = deploy(service, "blog", _files("two"))
    current = deploy(service, "blog", _files("three"))
    service.store.delete([manifest_key(first.id)])  # as a prune killed in the old order left it
    runner = CliRunner()
    done = runner.invoke(cli, ["rollback", "blog", first.id], obj={})
    assert done.exit_code == 4 and first.id in done.stderr and "manifest" in done.stderr
    entry = service.manifest(second.id).files["p0.html"]
    service.store.delete([blob_key(entry.hash)])
    with pytest.raises(NotFound, match=f"{second.id}.*lacks 1 stored"):
        service.rollback("blog", second.id)
    alias = service.state.get_alias("blog", PRODUCTION)
    assert alias is not None and alias.deployment_id == current.id  # nothing moved
    assert status(service, current.id) == Status.LIVE


def test_rollback_refuses_a_pruned_target(service: Service) -> None:
    first = deploy(service, "blog", _files("one"))
    current = deploy(service, "blog", _files("two"))
    service.prune("blog", keep=1, grace=0)
    done = CliRunner().invoke(cli, ["rollback", "blog", first.id], obj={})
    assert done.exit_code != 0 and first.id in done.stderr
    alias = service.state.get_alias("blog", PRODUCTION)
    assert alias is not None and alias.deployment_id == current.id
