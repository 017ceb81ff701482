"""Activation is one compare-and-set: a deployment accepted later wins, one that finishes late
never replaces a newer live one, a rollback stands, and nothing a failed, timed-out or
cancelled deployment wrote is visible at any alias. Statuses follow queued -> running ->
ready -> live. Checked on real SQLite and a real store, and through a real `pushsite serve`."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import pytest

from pushsite.edge.hosts import HostResolver, Kind, SiteTarget
from pushsite.errors import BundleRejected, DeploymentTimedOut, DomainConflict
from pushsite.model import Deployment, Status
from pushsite.service import Service
from pushsite.service.logs import DeployLog
from support.servers import Server
from support.service import (
    GatedStream,
    accept,
    alias_of,
    big_files,
    bundle,
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


NOT_MOVED = "production was not moved: a newer deployment holds it"


def permalink(service: Service, site: str, deployment_id: str) -> str | None:
    """What the edge serves at <id>--<site>: the deployment while it is ready or live."""
    return HostResolver(service.state).deployment_id(
        SiteTarget(site, Kind.DEPLOYMENT, deployment_id))


# compare-and-set -------------------------------------------------------------------------------
def test_accepted_later_wins_and_a_late_finisher_stays_ready(service: Service) -> None:
    a = accept(service, "blog", site_files("a"))
    b = accept(service, "blog", site_files("b"))
    assert service.run(b.id).status == Status.LIVE
    late = service.run(a.id)
    assert late.status == Status.READY
    assert status(service, a.id) == Status.READY and status(service, b.id) == Status.LIVE
    assert alias_of(service, "blog") == b.id
    assert alias_of(service, "blog", "branch/main") == b.id
    assert NOT_MOVED in log_text(service, a.id)
    assert "branch/main was not moved" in log_text(service, a.id)
    assert permalink(service, "blog", a.id) == a.id  # complete and servable at its own URL


def test_a_rollback_stands_against_an_older_deployment_finishing_late(service: Service) -> None:
    a = deploy(service, "blog", site_files("a"))
    b = deploy(service, "blog", site_files("b"))
    c = accept(service, "blog", site_files("c"))  # accepted before the rollback, run after
    assert service.rollback("blog", a.id).status == Status.LIVE
    assert status(service, b.id) == Status.LIVE  # its branch preview still points at it
    service.run(c.id)
    assert alias_of(service, "blog") == a.id
    assert NOT_MOVED in log_text(service, c.id)
    assert status(service, a.id) == Status.LIVE
    assert status(service, b.id) == Status.READY  # no alias points at it any more
    assert "rolled back: production now serves" in log_text(service, a.id)


def test_an_alias_move_shows_on_the_very_next_request(server: Server, service: Service) -> None:
    a = deploy(service, "blog", site_files("a"))
    assert server.get("blog.localhost").text == "<h1>a</h1>"
    deploy(service, "blog", site_files("b"))
    assert server.get("blog.localhost").text == "<h1>b</h1>"
    assert server.get("main--blog.localhost").text == "<h1>b</h1>"
    service.rollback("blog", a.id)
    assert server.get("blog.localhost").text == "<h1>a</h1>"
    done = server.cli("rollback", "blog")  # back to the one before a: there is none
    assert done.returncode != 0 and b"no earlier ready deployment" in done.stderr
    c = deploy(service, "blog", site_files("c"))
    assert server.get("blog.localhost").text == "<h1>c</h1>"
    assert server.get(f"{a.id}--blog.localhost").text == "<h1>a</h1>"
    assert status(service, c.id) == Status.LIVE


# statuses --------------------------------------------------------------------------------------
def test_statuses_from_queued_to_live_and_back_to_ready(service: Service) -> None:
    first = accept(service, "blog", site_files("v1"))
    assert status(service, first.id) == Status.QUEUED
    seen: list[Status] = []
    done = service.run(first.id, progress=lambda _: seen.append(status(service, first.id)))
    assert seen and set(seen) == {Status.RUNNING}
    record = service.state.get_deployment(first.id)
    assert done.status == record.status == Status.LIVE
    assert record.started is not None and record.finished is not None and not record.error
    assert record.files == 2
    second = deploy(service, "blog", site_files("v2"))
    assert second.status == Status.LIVE
    assert status(service, first.id) == Status.READY


def test_a_preview_deployment_is_live_and_production_is_left_alone(service: Service) -> None:
    main = deploy(service, "blog", site_files("main"))
    preview = deploy(service, "blog", site_files("feature"), branch="feature")
    assert preview.status == Status.LIVE
    assert alias_of(service, "blog") == main.id
    assert alias_of(service, "blog", "branch/feature") == preview.id
    service.delete_branch("blog", "feature")
    assert status(service, preview.id) == Status.READY


# nothing a failed deployment wrote is visible ---------------------------------------------------
def assert_still_serving(server: Server, service: Service, live_id: str, text: str) -> None:
    assert alias_of(service, "blog") == live_id
    assert alias_of(service, "blog", "branch/main") == live_id
    assert server.get("blog.localhost").text == text
    assert server.get("main--blog.localhost").text == text
    assert status(service, live_id) == Status.LIVE


def assert_finished_with_error(service: Service, deployment_id: str, wanted: Status) -> None:
    record = service.state.get_deployment(deployment_id)
    assert record.status == wanted
    assert record.error and record.finished is not None


def test_a_bundle_that_breaks_after_some_files_changes_nothing_visible(
        server: Server, service: Service) -> None:
    live = deploy(service, "blog", site_files("live"))
    first, rest = split_bundle({**big_files("f", 1), "index.html": b"<h1>bad</h1>"},
                               {"about.html": b"<p>bad</p>" * 50})
    broken = service.accept("blog", io.BytesIO(first + rest[:-12]))  # cut before the end
    with pytest.raises(BundleRejected):
        service.run(broken.id)
    assert_finished_with_error(service, broken.id, Status.FAILED)
    assert_still_serving(server, service, live.id, "<h1>live</h1>")
    assert server.get(f"{broken.id}--blog.localhost").status_code == 404
    assert permalink(service, "blog", broken.id) is None
    assert not (service.config.staging / broken.bundle_key).exists()


def test_a_timed_out_deployment_changes_nothing_visible(server: Server,
                                                         service: Service) -> None:
    live = deploy(service, "blog", site_files("live"))
    first, rest = split_bundle(big_files("t", 1), site_files("late"))
    slow = service.accept("blog", io.BytesIO(first + rest))
    gated = GatedStream(first, rest)
    thread, errors = run_in_thread(service, slow.id, bundle=gated, timeout=1.0)
    try:  # on a loaded machine the deadline may come even before the stall: the same end
        wait_for("the upload to stall", lambda: gated.waiting.is_set() or not thread.is_alive())
        time.sleep(1.0)  # the upload stalls past the deploy's deadline
    finally:
        gated.go.set()
        joined(thread)
    assert len(errors) == 1 and isinstance(errors[0], DeploymentTimedOut)
    assert_finished_with_error(service, slow.id, Status.TIMED_OUT)
    assert "ran out of time" in service.state.get_deployment(slow.id).error
    assert_still_serving(server, service, live.id, "<h1>live</h1>")
    assert server.get(f"{slow.id}--blog.localhost").status_code == 404


def test_a_deployment_failing_after_its_manifest_changes_nothing_visible(
        server: Server, service: Service) -> None:
    """pushsite.toml is applied after the manifest is written: a conflict there fails the
    deployment, whose permalink must not serve and whose settings must not stick."""
    live = deploy(service, "blog", site_files("live"))
    service.site("shop", create=True)
    service.add_domain("shop", "www.example.com")
    toml = b'production_branch = "release"\ndomains = ["www.example.com"]\n'
    bad = accept(service, "blog", {**site_files("bad"), "pushsite.toml": toml})
    with pytest.raises(DomainConflict):
        service.run(bad.id)
    assert_finished_with_error(service, bad.id, Status.FAILED)
    assert_still_serving(server, service, live.id, "<h1>live</h1>")
    assert server.get(f"{bad.id}--blog.localhost").status_code == 404
    assert service.site("blog").production_branch == "main"
    assert service.state.domain_site("www.example.com") == "shop"


def test_a_cancelled_deployment_is_never_served(service: Service) -> None:
    live = deploy(service, "blog", site_files("live"))
    queued = service.accept("blog", io.BytesIO(bundle(site_files("never"))))
    service.cancel(queued.id)
    assert service.run(queued.id).status == Status.CANCELLED  # a late delivery does nothing
    assert_finished_with_error(service, queued.id, Status.CANCELLED)
    assert permalink(service, "blog", queued.id) is None
    assert alias_of(service, "blog") == live.id


def test_a_deployment_overtaken_while_it_activates_ends_ready() -> None:
    """Two workers: B is accepted later and finishes between A's alias move and A recording
    itself live. No alias points at A afterwards, so A must end `ready`, not `live`."""

    class Interleaved(Service):
        def activate(self, deployment: Deployment, log: DeployLog | None = None) -> bool:
            moved = super().activate(deployment, log)
            if deployment.id == a.id:
                self.run(b.id)  # the other worker, at the worst moment
            return moved

    with open_service() as plain:
        config = plain.config
    service = Interleaved(config)
    try:
        a = accept(service, "blog", site_files("a"))
        b = accept(service, "blog", site_files("b"))
        service.run(a.id)
        assert alias_of(service, "blog") == b.id
        assert status(service, b.id) == Status.LIVE
        assert status(service, a.id) == Status.READY
    finally:
        service.close()
