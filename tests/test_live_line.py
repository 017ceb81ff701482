"""The live line (issue 20): `Service.run(live=...)` says a deployment is live the moment its
alias moved and its optimising message is queued, and only then counts it and queues its
notifications.

Real SQLite state, queue and local store in the test's home; the queue is read back.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushsite.model import Deployment, Status
from pushsite.service import Service
from pushsite.service.optimisemessage import optimise_message
from support.service import alias_of, big_files, bundle, open_service


@pytest.fixture
def service() -> Iterator[Service]:
    with open_service() as svc:
        svc.create_site("blog")
        yield svc


def _queued(service: Service) -> list[dict[str, object]]:
    """Every message on the queue (each received, then released for whoever comes next)."""
    items = []
    while (item := service.queue.receive()) is not None:
        items.append(item)
    for item in items:
        service.queue.release(item)
    return [item.body for item in items]


def _run(service: Service, live: list[tuple[Deployment, str | None, list[dict[str, object]]]],
         ) -> Deployment:
    accepted = service.accept("blog", io.BytesIO(bundle({"index.html": b"<h1>hi</h1>" * 400,
                                                         **big_files("a", count=1)})),
                             enqueue=False)

    def said(deployment: Deployment) -> None:
        live.append((deployment, alias_of(service, "blog"), _queued(service)))

    return service.run(accepted.id, optimise=False, live=said)


@pytest.mark.usefixtures("after_only")
def test_live_is_said_after_the_alias_and_the_optimising_message(service: Service) -> None:
    live: list[tuple[Deployment, str | None, list[dict[str, object]]]] = []
    done = _run(service, live)
    [(said, alias, queued)] = live
    assert said.id == done.id and said.status == Status.LIVE
    assert alias == done.id  # it serves already
    assert queued == [optimise_message(done.id)]  # a crash from here leaves work to resume
    assert service.state.get_deployment(done.id).status == Status.LIVE


@pytest.mark.usefixtures("after_only")
def test_notifications_are_queued_after_the_live_line(service: Service) -> None:
    service.add_endpoint("blog", "https://hooks.example.com/deploys")
    live: list[tuple[Deployment, str | None, list[dict[str, object]]]] = []
    done = _run(service, live)
    [(_, _, queued)] = live
    events = [m["notify"]["event"] for m in queued if "notify" in m]  # type: ignore[index]
    assert "deployment.succeeded" not in events  # not yet when it is said live
    after = [m["notify"] for m in _queued(service) if "notify" in m]
    assert any(n["event"] == "deployment.succeeded"  # type: ignore[index]
               and n["data"]["deployment"]["id"] == done.id for n in after)  # type: ignore[index]


def test_a_site_without_endpoints_queues_no_notification(service: Service) -> None:
    live: list[tuple[Deployment, str | None, list[dict[str, object]]]] = []
    _run(service, live)
    assert [m for m in _queued(service) if "notify" in m or "status" in m] == []


def test_a_small_site_opens_no_queue(service: Service) -> None:
    """Nothing is left to optimise: no message, no queue.db (a full disk's reserves are the
    state's and the store's, tests/test_full_disk.py)."""
    accepted = service.accept("blog", io.BytesIO(bundle({"index.html": b"<h1>hi</h1>"})),
                              enqueue=False)
    service.run(accepted.id, optimise=False)
    assert service._queue is None
    assert not (service.config.home / "queue.db").exists()


def test_a_live_line_that_cannot_be_printed_leaves_the_deployment_live(
        service: Service, tmp_path: Path) -> None:
    """show() failing (a closed stdout) is raised after the run, and the deployment it could
    not print stays live: inside the run, the error was recorded on it as a failure."""
    from pushsite.localdeploy import deploy_here

    source = tmp_path / "site.tar.gz"
    source.write_bytes(bundle({"index.html": b"<h1>hi</h1>"}))
    said: list[Deployment] = []

    def show(deployment: Deployment) -> None:
        said.append(deployment)
        raise BrokenPipeError("stdout closed")

    with pytest.raises(BrokenPipeError):
        deploy_here(service, str(source), "blog", branch=None, message="", timeout=60.0,
                    create=False, show=show)
    [deployment] = said
    assert service.state.get_deployment(deployment.id).status == Status.LIVE
    assert alias_of(service, "blog") == deployment.id
