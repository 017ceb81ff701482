"""A prune that lands inside another actor's read-then-write of a deployment's status,
forced at each such moment (a hook on the real state, run once when the moment comes).

Before the fix a deploy or a rollback wrote a status it had read earlier as a plain write:
a prune that marked the deployment pruned and deleted its manifest in between saw it come
back as `ready` or `live` with no manifest (the rare failure of test_prune_safety's racing
deploys), or production moved onto it. Now every such write is a compare-and-set, a
deployment is claimed `live` before an alias moves onto it, and prune drops only `ready`
ones (service/running.py's claim_live, service/housekeeping.py's _mark_pruned)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pytest

from pushsite.config import load_config
from pushsite.errors import ConfigError, DeploymentCancelled
from pushsite.model import PRODUCTION, Status
from pushsite.service import Service, housekeeping
from support.service import accept, bundle, deploy, status

PAGE = "<html><body>" + "<p>a page worth compressing</p>" * 40


def _files(tag: str) -> dict[str, bytes]:
    return {f"p{n}.html": f"{PAGE}{tag}-{n}".encode() for n in range(3)}


@pytest.fixture
def service() -> Iterator[Service]:
    svc = Service(load_config())
    try:
        yield svc
    finally:
        svc.close()


def _once_inside(service: Service, method: str, when: Callable[[], bool],
                 monkeypatch: pytest.MonkeyPatch) -> list[dict[str, int]]:
    """Prune (keep 1, no grace) the first time `service.state.<method>` is called once
    `when()` holds, before the real call runs; the list holds the prune's result then."""
    real = getattr(service.state, method)
    pruned: list[dict[str, int]] = []

    def hooked(*args: object, **kwargs: object) -> object:
        if not pruned and when():
            pruned.append({})  # the prune's own calls pass straight through
            pruned[0] = service.prune("blog", keep=1, grace=0)
        return real(*args, **kwargs)

    monkeypatch.setattr(service.state, method, hooked)
    return pruned


def _consistent(service: Service) -> None:
    """Every ready or live deployment has its manifest and objects; production serves one."""
    for d in housekeeping.every_deployment(service.state):
        if d.status.servable:
            housekeeping.check_servable(service, d)
    alias = service.state.get_alias("blog", PRODUCTION)
    assert alias is not None
    assert service.state.get_deployment(alias.deployment_id).status == Status.LIVE
    assert service.verify() == []


def test_a_prune_between_the_demoted_deployments_read_and_write(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The deploy moved both aliases to itself and read the deployment they served (live);
    the prune runs at its alias check, before it writes that one as `ready`."""
    deploy(service, "blog", _files("old"))
    replaced = deploy(service, "blog", _files("replaced"))
    racer = accept(service, "blog", _files("racer"))
    aliases = service.state.list_aliases

    def moved() -> bool:  # production and the branch preview serve the racer: the last check
        return {a.deployment_id for a in aliases("blog")} == {racer.id}

    pruned = _once_inside(service, "list_aliases", moved, monkeypatch)
    done = service.run(racer.id)
    assert pruned, "the prune did not run in the window"
    assert done.status == Status.LIVE
    _consistent(service)
    monkeypatch.undo()
    service.prune("blog", keep=1, grace=0)  # the replaced one goes now if it stayed
    assert status(service, replaced.id) == Status.CANCELLED
    _consistent(service)


def test_a_prune_between_a_deployments_ready_and_its_alias_move(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """A newer draft is ready, so the racer is not among the newest one kept: the prune
    runs when the racer is ready and about to move production. Either the racer goes live
    whole, or it is pruned and production stays where it was."""
    deploy(service, "blog", _files("old"))
    live = deploy(service, "blog", _files("live"))
    racer = accept(service, "blog", _files("racer"))
    draft = service.accept("blog", io.BytesIO(bundle(_files("draft"))), draft=True,
                           enqueue=False)
    assert service.run(draft.id).status == Status.READY

    def ready() -> bool:  # activate reads the site first
        return service.state.get_deployment(racer.id).status == Status.READY

    pruned = _once_inside(service, "get_site", ready, monkeypatch)
    with pytest.raises(DeploymentCancelled, match="pruned"):
        service.run(racer.id)
    assert pruned and pruned[0]["deployments"] == 2
    assert status(service, racer.id) == Status.CANCELLED
    alias = service.state.get_alias("blog", PRODUCTION)
    assert alias is not None and alias.deployment_id == live.id
    _consistent(service)


def test_a_prune_between_a_rollbacks_check_and_its_alias_move(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rollback target is the one deployment the prune drops; the prune runs as
    production is about to move onto it. Either the rollback goes through with its target
    whole, or it is refused and production stays."""
    target = deploy(service, "blog", _files("target"))
    current = deploy(service, "blog", _files("current"))
    pruned = _once_inside(service, "move_alias", lambda: True, monkeypatch)
    try:
        service.rollback("blog", target.id)
    except ConfigError:
        alias = service.state.get_alias("blog", PRODUCTION)
        assert alias is not None and alias.deployment_id == current.id
    else:
        assert status(service, target.id) == Status.LIVE
    assert pruned
    _consistent(service)
