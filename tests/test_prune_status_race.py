"""A prune that lands inside another actor's read-then-write of a deployment's status,
forced at each such moment (a hook on the real state, run once when the moment comes).

Before the fix a deploy or a rollback wrote a status it had read earlier as a plain write:
a prune that marked the deployment pruned and deleted its manifest in between saw it come
back as `ready` or `live` with no manifest (the rare failure of test_prune_safety's racing
deploys), or production moved onto it. Now every such write is a compare-and-set, a
deployment is claimed `live` before an alias moves onto it, and prune drops only `ready`
ones (service/running.py's claim_live, service/housekeeping.py's _mark_pruned).

The optimiser of a live deployment is the other actor that changes what a deployment
references after prune read it: the variants a manifest has pending are kept as if listed,
and what a late rewrite stores for a dropped deployment goes at the next prune."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pytest

from pushsite.deploy.encode import gzip_bytes
from pushsite.errors import ConfigError, DeploymentCancelled
from pushsite.model import (
    PRODUCTION,
    FileEntry,
    Status,
    blob_key,
    fast_gzip_key,
    manifest_key,
    pending_key,
)
from pushsite.pathindex import index_key
from pushsite.service import Service, housekeeping
from support.service import accept, bundle, deploy, open_service, status

PAGE = "<html><body>" + "<p>a page worth compressing</p>" * 40


def _files(tag: str) -> dict[str, bytes]:
    return {f"p{n}.html": f"{PAGE}{tag}-{n}".encode() for n in range(3)}


@pytest.fixture
def service() -> Iterator[Service]:
    with open_service() as svc:
        yield svc


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


@pytest.mark.parametrize("at", ["update_deployment", "move_alias"])
def test_a_prune_between_a_rollbacks_check_and_its_alias_move(
        service: Service, monkeypatch: pytest.MonkeyPatch, at: str) -> None:
    """The rollback target is the one deployment the prune drops; the prune runs after the
    rollback checked it, as it is about to be claimed live or production is about to move
    onto it. Either the rollback goes through with its target whole, or it is refused and
    production stays."""
    target = deploy(service, "blog", _files("target"))
    current = deploy(service, "blog", _files("current"))
    pruned = _once_inside(service, at, lambda: True, monkeypatch)
    try:
        service.rollback("blog", target.id)
    except ConfigError:
        alias = service.state.get_alias("blog", PRODUCTION)
        assert alias is not None and alias.deployment_id == current.id
    else:
        assert status(service, target.id) == Status.LIVE
    assert pruned
    _consistent(service)


def _pending_without_br(service: Service, deployment_id: str, paths: list[str]) -> None:
    """Store the deployment's manifest as a live-first deploy leaves it when these files'
    brotli did not exist yet at its lookup: no br listed for them, `pending`, the marker."""
    manifest = service.manifest(deployment_id)
    for path in paths:
        entry = manifest.files[path]
        manifest.files[path] = FileEntry(entry.hash, entry.size, entry.type,
                                         {k: v for k, v in entry.encodings.items()
                                          if k != "br"}, entry.git, entry.refs)
    manifest.pending = ["br"]
    service.store.put(manifest_key(deployment_id), manifest.to_bytes())
    service.store.put(pending_key(deployment_id), b"")
    service.store.flush()


def test_a_prune_between_its_marks_and_an_optimisers_rewrite(
        service: Service) -> None:
    """The live deployment's brotli for some files is pending, and another deployment that
    the prune drops made those variants meanwhile: the optimiser finds them stored and
    lists them in the manifest it rewrites while the prune's sweep holds them as
    unreferenced (it read the manifest before the rewrite). The sweep must keep them."""
    shared = _files("shared")
    other = deploy(service, "blog", shared)  # makes the br variants; dropped by the prune
    live = deploy(service, "blog", {**shared, **_files("own")})
    br = {blob_key(service.manifest(other.id).files[p].hash, "br") for p in shared}
    assert len(service.store.has(br)) == len(br)
    _pending_without_br(service, live.id, list(shared))
    rewritten: list[bool] = []

    def before_delete(batch: list[str]) -> None:
        if br & set(batch) and not rewritten:
            rewritten.append(service.optimise_now(live.id))  # reuses the stored variants

    result = housekeeping.prune(service, "blog", 1, grace=0, before_delete=before_delete)
    assert result["deployments"] == 1 and status(service, other.id) == Status.CANCELLED
    if not rewritten:  # the sweep kept them: the optimiser runs after it
        assert service.optimise_now(live.id)
    assert not service.manifest(live.id).pending
    _consistent(service)


def test_a_dropped_deployments_index_and_marker_go_with_its_manifest(
        service: Service) -> None:
    """What an optimiser's rewrite stores after its deployment was dropped (or a killed
    prune leaves) goes at the next prune, as its manifest does; a kept one's stay."""
    dropped = deploy(service, "blog", _files("dropped"))
    kept = deploy(service, "blog", _files("kept"))
    assert service.prune("blog", keep=1, grace=0)["deployments"] == 1
    left = [manifest_key(dropped.id), index_key(dropped.id), pending_key(dropped.id)]
    theirs = [index_key(kept.id), pending_key(kept.id)]
    for key in left + theirs:  # stored late by an optimiser that had not seen the prune yet
        service.store.put(key, b"{}")
    service.store.flush()
    assert service.prune("blog", keep=1, grace=0)["manifests"] == 1
    assert service.store.has(left) == set()
    assert service.store.has(theirs) == set(theirs)


def test_a_live_claim_whose_claimer_died_before_the_alias_move_runs_out(
        service: Service) -> None:
    """A deployment claimed live (claim_live) by a process that died before moving an alias:
    prune keeps it while the claim's lease lasts, and drops it as ready after."""
    deploy(service, "blog", _files("old"))
    claimed = deploy(service, "blog", _files("claimed"))
    current = deploy(service, "blog", _files("current"))
    record = service.state.get_deployment(claimed.id)
    assert record.status == Status.READY
    assert service.claim_live(record)  # ... and the process ends here
    assert service.prune("blog", keep=1, grace=0)["deployments"] == 1  # the old one only
    assert status(service, claimed.id) == Status.LIVE
    record = service.state.get_deployment(claimed.id)
    record.lease_until = 1.0  # its lease ran out long ago
    assert service.state.update_deployment(record, expect_status=Status.LIVE)
    assert service.prune("blog", keep=1, grace=0)["deployments"] == 1
    assert status(service, claimed.id) == Status.CANCELLED
    assert status(service, current.id) == Status.LIVE
    _consistent(service)


def test_a_prune_between_its_marks_and_an_optimisers_final_gzip(service: Service) -> None:
    """As above for a JS file served its quick gzip (model.fast_gzip_key) while its final
    one waits: another deployment the prune drops has that final gzip stored; the optimiser
    finds it and names it in its rewrite while the sweep holds it as unreferenced (the
    manifest it read named the quick one). The sweep must keep it."""
    script = ("function f(a) { return a + 1; }\n" * 200).encode()
    other = deploy(service, "blog", {**_files("shared"), "app.js": script})
    live = deploy(service, "blog", {**_files("own"), "app.js": script})
    manifest = service.manifest(live.id)
    entry = manifest.files["app.js"]
    final = blob_key(entry.hash, "gzip")
    assert service.store.has([final]) == {final} and entry.refs is None
    quick = gzip_bytes(script, entry.type, fast=True)
    service.store.put(fast_gzip_key(entry.hash), quick)
    manifest.files["app.js"] = FileEntry(entry.hash, entry.size, entry.type,
                                         {**entry.encodings, "gzip": len(quick)}, entry.git,
                                         {"gzip": fast_gzip_key(entry.hash)})
    manifest.pending = ["gzip"]
    service.store.put(manifest_key(live.id), manifest.to_bytes())
    service.store.put(pending_key(live.id), b"")
    service.store.flush()
    rewritten: list[bool] = []

    def before_delete(batch: list[str]) -> None:
        if final in batch and not rewritten:
            rewritten.append(service.optimise_now(live.id))  # reuses the stored final gzip

    result = housekeeping.prune(service, "blog", 1, grace=0, before_delete=before_delete)
    assert result["deployments"] == 1 and status(service, other.id) == Status.CANCELLED
    if not rewritten:
        assert service.optimise_now(live.id)
    optimised = service.manifest(live.id).files["app.js"]
    assert optimised.refs is None and optimised.key("gzip") == final
    _consistent(service)
