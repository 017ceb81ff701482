"""The last gap between prune and a deploy, forced: a prune is held between counting a batch of
deletions as begun and deleting it, a deploy that reuses a blob of that batch runs meanwhile,
then the batch goes. The deploy re-checks before it goes live (service/sweeps.py): it stores
the blob again when it can read its files again, and fails with nothing live when it cannot."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushsite.errors import DeploymentFailed
from pushsite.ids import new_id
from pushsite.model import Deployment, Manifest, Status, blob_key
from pushsite.service import Service, housekeeping, sweeps
from pushsite.state import Sweep, open_state_store
from support.service import (
    WAIT,
    accept,
    alias_of,
    bundle,
    deploy,
    log_text,
    open_service,
    status,
)

PAGE = "<html><body>" + "<p>a page worth compressing</p>" * 40
REUSED = {"kept/x.html": f"{PAGE}only the pruned deployment has this".encode()}


@pytest.fixture
def service() -> Iterator[Service]:
    with open_service() as svc:
        yield svc


def _setup(service: Service) -> str:
    """An old deployment that alone holds REUSED's blob, dropped by the next prune; the key."""
    deploy(service, "blog", {"index.html": b"<h1>old</h1>", **REUSED})
    deploy(service, "blog", {"index.html": b"<h1>newer</h1>"})
    return blob_key(hashlib.sha256(REUSED["kept/x.html"]).hexdigest())


def _prune_around(service: Service, key: str, start_deploy: threading.Thread,
                  built: threading.Event) -> dict[str, int]:
    """Prune, holding the batch that deletes `key` until the deploy started in it has
    built its manifest (so it found `key` stored and did not write it)."""
    held: list[list[str]] = []

    def before_delete(batch: list[str]) -> None:
        if key in batch and not held:
            held.append(batch)
            start_deploy.start()
            assert built.wait(WAIT), "the deploy never built its manifest"

    result = housekeeping.prune(service, "blog", 1, grace=0, before_delete=before_delete)
    assert held, "the reused blob was not in any batch: the race was not forced"
    return result


def _built_event(service: Service) -> threading.Event:
    built = threading.Event()

    def listener(manifest: Manifest) -> None:
        if "kept/x.html" in manifest.files:
            built.set()

    service.manifest_listeners.append(listener)
    return built


def test_a_deploy_that_reused_a_swept_blob_stores_it_again(service: Service) -> None:
    key = _setup(service)
    files = {"index.html": b"<h1>racing</h1>", **REUSED}
    racing = accept(service, "blog", files)  # staged: its bundle can be read again
    outcome: list[Deployment | BaseException] = []

    def run() -> None:
        try:
            outcome.append(service.run(racing.id))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    result = _prune_around(service, key, runner, _built_event(service))
    runner.join(WAIT)
    assert result["blobs"] > 0
    assert len(outcome) == 1 and isinstance(outcome[0], Deployment), outcome
    assert outcome[0].status == Status.LIVE and alias_of(service, "blog") == racing.id
    assert "reading the files again" in log_text(service, racing.id)
    assert service.store.get(key) == REUSED["kept/x.html"]
    housekeeping.check_servable(service, service.state.get_deployment(racing.id))
    assert service.verify() == []


def test_a_streamed_deploy_that_lost_a_blob_fails_and_nothing_goes_live(
        service: Service) -> None:
    key = _setup(service)
    live = alias_of(service, "blog")
    racing = service.accept("blog", None, enqueue=False)  # streamed straight into run
    stream = io.BytesIO(bundle({"index.html": b"<h1>racing</h1>", **REUSED}))
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            service.run(racing.id, bundle=stream)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    _prune_around(service, key, runner, _built_event(service))
    runner.join(WAIT)
    assert len(outcome) == 1 and isinstance(outcome[0], DeploymentFailed), outcome
    assert "a prune running beside it deleted" in str(outcome[0])
    assert "nothing went live" in str(outcome[0])
    assert status(service, racing.id) == Status.FAILED
    assert alias_of(service, "blog") == live
    assert service.verify() == []


def test_settle_asks_the_store_only_when_a_sweep_overlapped(tmp_path: Path) -> None:
    """The common case costs one read of the records: the store is not asked."""
    state = open_state_store(f"sqlite:///{tmp_path}/state.db")
    asked: list[int] = []

    def missing() -> set[str]:
        asked.append(1)
        return set()

    try:
        assert sweeps.settle(state, sweeps.snapshot(state), missing) == set()
        done = Sweep(new_id(), 1.0, 2.0, begun=3, ended=3, finished=2.0)
        state.put_sweep(done)
        seen = sweeps.snapshot(state)
        assert sweeps.settle(state, seen, missing) == set() and not asked
        state.put_sweep(Sweep(new_id(), 3.0, 4.0))  # began, deleted nothing yet
        assert sweeps.settle(state, seen, missing) == set() and not asked
        done.begun = done.ended = 4  # a batch came and went while the deploy ran
        state.put_sweep(done)
        assert sweeps.settle(state, seen, missing) == set() and asked == [1]
        dead = Sweep(new_id(), 5.0, 6.0, begun=1)  # killed mid-batch: asked, not waited for
        state.put_sweep(dead)
        assert sweeps.settle(state, sweeps.snapshot(state), missing) == set()
        assert asked == [1, 1]
    finally:
        state.close()


def test_prune_leaves_a_finished_sweep_record(service: Service) -> None:
    _setup(service)
    housekeeping.prune(service, "blog", 1, grace=0)
    (record,) = service.state.list_sweeps()
    assert record.begun == record.ended >= 1 and record.finished >= record.started
    assert record.alive_until == record.finished
