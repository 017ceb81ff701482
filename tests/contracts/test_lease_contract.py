"""The lease and dedup parts of the StateStore contract, on every backend (SQLite, DynamoDB on
moto): a renewal writes the lease alone and only for its holder, a takeover only wins against
the lease it read, writes can be conditioned on the holder, `forget` undoes `remember`, and
listing by status pages with an id cursor (what Service.recover walks)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from pushsite.ids import new_id
from pushsite.model import Deployment, Status
from pushsite.state import StateStore, open_state_store

BACKENDS = ["sqlite", "dynamodb"]  # every backend, unconditionally: a rename fails loudly


@pytest.fixture(params=BACKENDS)
def state(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[StateStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('state')}/state.db"
    else:
        url = request.getfixturevalue("dynamodb_url")
    store = open_state_store(url)
    try:
        yield store
    finally:
        store.close()


def running(state: StateStore, runner: str = "worker@a:1:x", until: float = 0.0) -> Deployment:
    deployment = Deployment(new_id(), "blog", "main", Status.RUNNING, runner=runner,
                            lease_until=until or time.time() + 30)
    state.create_deployment(deployment)
    return deployment


def test_a_lease_round_trips_and_only_its_holder_renews_it(state: StateStore) -> None:
    held = running(state)
    assert state.get_deployment(held.id).runner == "worker@a:1:x"
    later = held.lease_until + 10
    assert state.claim_lease(held.id, held.runner, later, holder=held.runner)
    assert state.get_deployment(held.id).lease_until == later
    assert [d.lease_until for d in state.list_deployments(status=Status.RUNNING)] == [later]
    assert not state.claim_lease(held.id, "cli@b:2:y", later + 10, holder="cli@b:2:y")
    assert state.get_deployment(held.id).runner == held.runner


def test_a_renewal_writes_the_lease_alone(state: StateStore) -> None:
    held = running(state)
    held.progress = "12 files"
    assert state.update_deployment(held, expect_status=Status.RUNNING)
    assert state.claim_lease(held.id, held.runner, time.time() + 60, holder=held.runner)
    record = state.get_deployment(held.id)
    assert record.progress == "12 files" and record.status == Status.RUNNING


def test_a_takeover_wins_only_against_the_lease_it_read(state: StateStore) -> None:
    expired = running(state, until=time.time() - 5)
    # the holder renewed after the taker read the record: the taker loses
    assert state.claim_lease(expired.id, expired.runner, time.time() + 30,
                             holder=expired.runner)
    assert not state.claim_lease(expired.id, "serve@c:3:z", time.time() + 30,
                                 holder=expired.runner, held_until=expired.lease_until)
    current = state.get_deployment(expired.id)
    assert state.claim_lease(expired.id, "serve@c:3:z", time.time() + 30,
                             holder=current.runner, held_until=current.lease_until)
    # two takers that read the same lease: one wins
    assert not state.claim_lease(expired.id, "lambda@d:4:w", time.time() + 30,
                                 holder=current.runner, held_until=current.lease_until)
    assert state.get_deployment(expired.id).runner == "serve@c:3:z"


def test_no_lease_is_claimed_on_a_deployment_that_is_not_running(state: StateStore) -> None:
    done = running(state)
    done.status = Status.READY
    assert state.update_deployment(done)
    assert not state.claim_lease(done.id, done.runner, time.time() + 30, holder=done.runner)


def test_a_deployment_recorded_without_a_lease_can_be_claimed(state: StateStore) -> None:
    bare = Deployment(new_id(), "blog", "main", Status.RUNNING, started=time.time())
    state.create_deployment(bare)
    assert state.claim_lease(bare.id, "serve@e:5:v", time.time() + 30, holder="",
                             held_until=0.0)
    assert state.get_deployment(bare.id).runner == "serve@e:5:v"


def test_writes_conditioned_on_the_holder(state: StateStore) -> None:
    held = running(state)
    held.status = Status.READY
    assert not state.update_deployment(held, expect_status=Status.RUNNING,
                                       expect_runner="cli@other:9:q")
    assert state.get_deployment(held.id).status == Status.RUNNING
    assert state.update_deployment(held, expect_status=Status.RUNNING,
                                   expect_runner=held.runner)
    assert state.get_deployment(held.id).status == Status.READY


def test_forget_undoes_remember(state: StateStore) -> None:
    assert state.remember("hook:blog:github:d-1")
    assert not state.remember("hook:blog:github:d-1")
    state.forget("hook:blog:github:d-1")
    assert state.remember("hook:blog:github:d-1")
    state.forget("never-remembered")  # no error


def test_listing_by_status_pages_with_an_id_cursor(state: StateStore) -> None:
    ids = sorted(running(state).id for _ in range(5))
    other = Deployment(new_id(), "docs", "main", Status.QUEUED)
    state.create_deployment(other)
    seen: list[str] = []
    before = None
    while True:
        page = state.list_deployments(status=Status.RUNNING, limit=2, before=before)
        seen += [d.id for d in page]
        if len(page) < 2:
            break
        before = page[-1].id
    assert seen == sorted(ids, reverse=True)
