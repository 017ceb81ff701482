"""The service layer's guarantees with real SQLite, a real store and real bundles: a deployment
delivered twice runs once, one site's deployments run in order and superseded pushes are
skipped, cancel stops queued and running deployments, prune keeps every referenced blob and
verify finds missing and corrupt ones.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from pushsite.errors import ConfigError, DeploymentCancelled
from pushsite.model import Deployment, Status, blob_key
from pushsite.queues import QueueItem
from pushsite.service import Service
from pushsite.service.worker import run_worker
from support.servers import Server
from support.service import (
    WAIT,
    FifoFeeder,
    GatedStream,
    accept,
    alias_of,
    big_files,
    deploy,
    joined,
    log_text,
    open_service,
    run_in_thread,
    site_files,
    split_bundle,
    status,
    wait_for,
)


@pytest.fixture
def service() -> Iterator[Service]:
    with open_service() as svc:
        yield svc


# delivered twice, runs once --------------------------------------------------------------------
def test_a_second_run_of_a_finished_deployment_does_nothing(service: Service) -> None:
    done = deploy(service, "blog", site_files("v1"))
    again = service.run(done.id)
    assert again.status == Status.LIVE and again.finished == done.finished
    assert log_text(service, done.id).count("reading the bundle") == 1


def test_a_run_while_another_runs_the_same_deployment_returns_at_once(service: Service) -> None:
    first, rest = split_bundle(big_files("a", 1), site_files("v1"))
    deployment = service.accept("blog", io.BytesIO(first + rest))
    gated = GatedStream(first, rest)
    thread, errors = run_in_thread(service, deployment.id, bundle=gated)
    try:
        assert gated.waiting.wait(WAIT)
        second = service.run(deployment.id)  # the duplicate delivery
        assert second.status == Status.RUNNING
    finally:
        gated.go.set()
        joined(thread)
    assert not errors
    assert status(service, deployment.id) == Status.LIVE
    assert log_text(service, deployment.id).count("reading the bundle") == 1


def test_two_queue_deliveries_of_one_deployment_run_it_once(service: Service) -> None:
    deployment = accept(service, "blog", site_files("v1"), enqueue=True)
    service.queue.send({"deployment": deployment.id})
    assert run_worker(service, once=True) == 2
    assert status(service, deployment.id) == Status.LIVE
    assert log_text(service, deployment.id).count("reading the bundle") == 1


def test_a_redelivered_message_leaves_a_live_runners_deployment_alone(
        service: Service) -> None:
    """The queue hands a running deployment's message out again, but its runner still renews
    its lease: nothing is taken over, and the runner finishes it."""
    first, rest = split_bundle(big_files("l", 1), site_files("v1"))
    deployment = service.accept("blog", io.BytesIO(first + rest))
    gated = GatedStream(first, rest)
    thread, errors = run_in_thread(service, deployment.id, bundle=gated)
    try:
        assert gated.waiting.wait(WAIT)
        service.process(QueueItem({"deployment": deployment.id}, "again", attempts=2))
        assert status(service, deployment.id) == Status.RUNNING
        assert "taken over" not in log_text(service, deployment.id)
    finally:
        gated.go.set()
        joined(thread)
    assert not errors
    assert status(service, deployment.id) == Status.LIVE
    assert log_text(service, deployment.id).count("reading the bundle") == 1


def test_a_deployment_taken_over_while_its_first_runner_lives_ends_live_once(
        service: Service) -> None:
    """The queue hands a running deployment's message out again after its lease ran out (its
    runner was only slow: its heartbeat missed the lease): the second worker takes it over
    and finishes first. When the first runner finishes too, the deployment stays live."""
    first, rest = split_bundle(big_files("o", 1), site_files("v1"))
    deployment = service.accept("blog", io.BytesIO(first + rest))
    gated = GatedStream(first, rest)
    thread, errors = run_in_thread(service, deployment.id, bundle=gated)
    try:
        assert gated.waiting.wait(WAIT)
        held = service.state.get_deployment(deployment.id)
        assert held.runner.startswith("cli@") and held.lease_until > time.time()
        # the runner's last renewal ended a moment ago (its next beat is seconds away)
        assert service.state.claim_lease(held.id, held.runner, time.time() - 1,
                                         holder=held.runner)
        service.process(QueueItem({"deployment": deployment.id}, "again", attempts=2))
        assert status(service, deployment.id) == Status.LIVE
        assert "stopped renewing its lease" in log_text(service, deployment.id)
    finally:
        gated.go.set()
        joined(thread)
    assert not errors
    record = service.state.get_deployment(deployment.id)
    assert record.status == Status.LIVE and not record.error
    assert alias_of(service, "blog") == deployment.id


# order and superseded pushes -------------------------------------------------------------------
def test_deployments_run_in_acceptance_order_and_superseded_pushes_are_skipped(
        service: Service) -> None:
    a = accept(service, "blog", site_files("a"), enqueue=True)
    b = accept(service, "blog", site_files("b"), enqueue=True)
    feature = accept(service, "blog", site_files("feature"), branch="feature", enqueue=True)
    c = accept(service, "blog", site_files("c"), enqueue=True)
    assert run_worker(service, once=True) == 4
    for skipped in (a, b):
        record = service.state.get_deployment(skipped.id)
        assert record.status == Status.CANCELLED and record.finished is not None
        assert record.error == f"superseded by {c.id}, a newer push to main"
        assert f"superseded by {c.id}" in log_text(service, skipped.id)
        assert "reading the bundle" not in log_text(service, skipped.id)
        assert not (service.config.staging / record.bundle_key).exists()
    ran = [service.state.get_deployment(d.id) for d in (feature, c)]
    assert [d.status for d in ran] == [Status.LIVE, Status.LIVE]
    assert ran[0].finished is not None and ran[1].started is not None
    assert ran[0].finished <= ran[1].started  # one at a time, in the order they were accepted
    assert alias_of(service, "blog") == c.id
    assert alias_of(service, "blog", "branch/feature") == feature.id


# cancel ----------------------------------------------------------------------------------------
def test_cancel_of_a_queued_deployment(service: Service) -> None:
    live = deploy(service, "blog", site_files("v1"))
    queued = accept(service, "blog", site_files("v2"), enqueue=True)
    cancelled = service.cancel(queued.id)
    assert cancelled.status == Status.CANCELLED
    record = service.state.get_deployment(queued.id)
    assert record.status == Status.CANCELLED and record.error and record.finished is not None
    assert not (service.config.staging / record.bundle_key).exists()
    assert run_worker(service, once=True) == 1  # its queue message is taken and dropped
    assert status(service, queued.id) == Status.CANCELLED
    assert "cancelled while queued" in log_text(service, queued.id)
    assert alias_of(service, "blog") == live.id
    with pytest.raises(ConfigError, match="only a queued or running deployment"):
        service.cancel(live.id)


def test_cancel_of_a_running_deployment_from_another_thread(service: Service) -> None:
    live = deploy(service, "blog", site_files("v1"))
    first, rest = split_bundle(big_files("c"), site_files("v2"))
    deployment = service.accept("blog", io.BytesIO(first + rest))
    gated = GatedStream(first, rest)
    thread, errors = run_in_thread(service, deployment.id, bundle=gated)
    try:
        assert gated.waiting.wait(WAIT)
        assert service.cancel(deployment.id).status == Status.CANCELLED
    finally:
        gated.go.set()
        joined(thread)
    assert len(errors) == 1 and isinstance(errors[0], DeploymentCancelled)
    record = service.state.get_deployment(deployment.id)
    assert record.status == Status.CANCELLED and record.error and record.finished is not None
    assert not (service.config.staging / record.bundle_key).exists()  # nothing left behind
    assert alias_of(service, "blog") == live.id
    assert alias_of(service, "blog", "branch/main") == live.id
    assert status(service, live.id) == Status.LIVE


def test_cancel_as_the_last_file_is_stored_still_stops_the_deploy(service: Service) -> None:
    """The stop check runs once a second; a cancel after the last check must still win."""
    live = deploy(service, "blog", site_files("v1"))
    deployment = accept(service, "blog", site_files("v2"))
    cancelled: list[Deployment] = []

    def cancel_once(counters: object) -> None:
        if not cancelled:
            cancelled.append(service.cancel(deployment.id))

    with pytest.raises(DeploymentCancelled):
        service.run(deployment.id, progress=cancel_once)
    assert cancelled and cancelled[0].status == Status.CANCELLED
    assert status(service, deployment.id) == Status.CANCELLED
    assert alias_of(service, "blog") == live.id
    assert alias_of(service, "blog", "branch/main") == live.id


def test_cancel_of_a_running_deployment_from_another_process(server: Server,
                                                              service: Service) -> None:
    live = deploy(service, "blog", site_files("v1"))
    first, rest = split_bundle(big_files("p"), site_files("v2"))
    deployment = service.accept("blog", io.BytesIO(first + rest), enqueue=False)
    staged = service.config.staging / deployment.bundle_key
    staged.unlink()
    feeder = FifoFeeder(staged, first, rest)
    try:
        service.queue.send({"deployment": deployment.id})
        assert feeder.first_written.wait(WAIT)
        wait_for("the server to run it", lambda: status(service, deployment.id)
                 == Status.RUNNING)
        done = server.cli("cancel", deployment.id)
        assert done.returncode == 0, done.stderr
        feeder.go.set()
        wait_for("the worker to stop", lambda: any(  # the runner logs why it stopped
            line.level == "error" for line in service.state.get_logs(deployment.id)))
    finally:
        feeder.stop()
    record = service.state.get_deployment(deployment.id)
    assert record.status == Status.CANCELLED and record.error
    assert not staged.exists()
    assert alias_of(service, "blog") == live.id
    assert server.get("blog.localhost").text == "<h1>v1</h1>"


# a worker outlives what goes wrong in one deployment ------------------------------------------
def test_an_internal_error_fails_one_deployment_and_the_worker_goes_on(service: Service) -> None:
    broken = accept(service, "blog", site_files("broken"), enqueue=True)
    staged = service.config.staging / broken.bundle_key
    staged.unlink()
    staged.mkdir()  # reading it raises IsADirectoryError, not a PushsiteError
    good = accept(service, "blog", site_files("good"), branch="feature", enqueue=True)
    assert run_worker(service, once=True) == 2
    record = service.state.get_deployment(broken.id)
    assert record.status == Status.FAILED and record.error.startswith("internal error")
    assert status(service, good.id) == Status.LIVE


# prune and verify ------------------------------------------------------------------------------
def test_prune_keeps_every_blob_a_kept_deployment_references(service: Service) -> None:
    shared = {"shared.css": b"body{margin:0}" * 300}
    a = deploy(service, "blog", {**shared, "index.html": b"<p>a</p>" * 100})
    b = deploy(service, "blog", {**shared, "index.html": b"<p>b</p>" * 100})
    c = deploy(service, "blog", {**shared, "index.html": b"<p>c</p>" * 100})
    other = deploy(service, "docs", {"index.html": b"<p>a</p>" * 100})  # shares a's page
    service.rollback("blog", a.id)  # production points at a, the oldest
    result = service.prune("blog", keep=1, grace=0)
    assert result["deployments"] == 1  # b: not among the newest 1, and no alias holds it
    assert status(service, b.id) == Status.CANCELLED
    for kept in (a, c, other):
        manifest = service.manifest(kept.id)
        for entry in manifest.files.values():
            keys = [blob_key(entry.hash)] + [blob_key(entry.hash, e) for e in entry.encodings]
            assert service.store.has(keys) == set(keys)
    assert not service.store.has([blob_key(hashlib.sha256(b"<p>b</p>" * 100).hexdigest())])
    assert service.verify() == []


def test_prune_waits_for_a_running_deployment_and_ignores_a_queued_one(
        service: Service) -> None:
    """A deployment running when prune starts is waited for (what it found stored may be
    referenced by nothing yet); a queued one looked nothing up, so it does not hold prune up."""
    deploy(service, "blog", site_files("v1"))
    queued = accept(service, "blog", site_files("v2"), enqueue=True)
    assert service.prune("blog", keep=1, grace=0)["deployments"] == 0
    first, rest = split_bundle(big_files("r", 1), site_files("v3"))
    gated = GatedStream(first, rest)
    thread, errors = run_in_thread(service, queued.id, bundle=gated)
    pruned: list[dict[str, int]] = []
    try:
        assert gated.waiting.wait(WAIT)
        assert status(service, queued.id) == Status.RUNNING
        pruner = threading.Thread(
            target=lambda: pruned.append(service.prune("blog", keep=1, grace=0)))
        pruner.start()
        time.sleep(1.0)
        assert pruner.is_alive() and not pruned  # waiting for the running deployment
    finally:
        gated.go.set()
        joined(thread)
    pruner.join(WAIT)
    assert not errors
    # v1 was the newest ready one when it started: kept, and so is all v3 wrote meanwhile
    assert pruned == [{"deployments": 0, "blobs": 0, "manifests": 0, "recent": 0,
                       "deliveries": 0}]
    assert service.verify() == [] and status(service, queued.id) == Status.LIVE
    assert service.prune("blog", keep=1, grace=0) == {
        "deployments": 1, "blobs": 2, "manifests": 0, "recent": 0, "deliveries": 0}
    assert service.verify() == []


def test_verify_finds_a_missing_and_a_corrupt_blob(service: Service) -> None:
    files = {"index.html": b"<p>home</p>", "img/logo.png": b"\x89PNG" + b"x" * 500}
    deployment = deploy(service, "blog", files)
    assert service.verify() == []
    manifest = service.manifest(deployment.id)
    home, logo = manifest.files["index.html"], manifest.files["img/logo.png"]
    service.store.delete([blob_key(home.hash)])
    service.store.put(blob_key(logo.hash), b"\x89PNG" + b"y" * 500)
    service.store.flush()
    assert sorted(service.verify()) == sorted([
        f"blog {deployment.id}: index.html: blob {home.hash} is missing",
        f"blog {deployment.id}: img/logo.png: blob {logo.hash} is corrupt",
    ])


def test_verify_finds_a_corrupt_compressed_variant(service: Service) -> None:
    """The edge sends a stored gzip or brotli variant as is: a damaged one is a corrupt blob."""
    deployment = deploy(service, "blog", {"app.js": b"function f(){return 1}\n" * 200})
    entry = service.manifest(deployment.id).files["app.js"]
    assert set(entry.encodings) == {"gzip", "br"}
    service.store.put(blob_key(entry.hash, "gzip"), gzip.compress(b"something else"))
    service.store.put(blob_key(entry.hash, "br"), b"not brotli at all")
    service.store.flush()
    assert sorted(service.verify()) == [
        f"blog {deployment.id}: app.js: br variant of blob {entry.hash} is corrupt",
        f"blog {deployment.id}: app.js: gzip variant of blob {entry.hash} is corrupt",
    ]


def test_verify_through_the_command_exits_non_zero(service: Service) -> None:
    deployment = deploy(service, "blog", site_files("v1"))
    entry = service.manifest(deployment.id).files["index.html"]
    service.store.delete([blob_key(entry.hash)])
    done = subprocess.run([sys.executable, "-m", "pushsite", "verify"], capture_output=True,
                          timeout=WAIT, check=False)
    assert done.returncode == 1
    assert f"blob {entry.hash} is missing" in " ".join(done.stderr.decode().split())

