"""An upload whose connection stays open but sends nothing for a while (a slow CI runner, a
paused client) keeps its `receiving` deployment: while the request is open the server renews
the deployment's lease, so another actor's recovery (a second Service on the same state, as a
second server or a worker would run it, and `serve`'s own worker) leaves it alone, and the
rest of the bytes still make it live. A connection that closes loses it at once; one that
stays open but silent past PUSHSITE_UPLOAD_IDLE stops being renewed, and recovery fails it
once its lease has run out.

The client is a raw socket (httpx sends what it has at once). Every wait is derived from the
configured lease, or polls for a state (bounded in count); none assumes a fast or slow machine.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pushsite.config import load_config
from pushsite.deploy.filelist import frame_header
from pushsite.model import Deployment, Status
from pushsite.service import Service
from support.api import Api
from support.servers import Server, serving
from support.service import bundle

LEASE = 2.0  # seconds: the server's and the second actor's lease
IDLE = 4 * LEASE  # longer than any pause below that must keep its deployment


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("pause") / "home",
                 extra_env={"PUSHSITE_LEASE": str(LEASE),
                            "PUSHSITE_UPLOAD_IDLE": str(IDLE)}) as srv:
        yield srv


@pytest.fixture
def actor(server: Server) -> Iterator[Service]:
    """A second actor on the server's state: what another server or a worker recovers with."""
    service = Service(load_config(home=str(server.home), lease=LEASE))
    try:
        yield service
    finally:
        service.close()


class RawRequest:
    """One HTTP/1.1 request written by hand: its head and the body's first part at once, the
    rest when the test says."""

    def __init__(self, server: Server, method: str, path: str, token: str, body: bytes,
                 content_type: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=120)
        self._body = body
        head = (f"{method} /api{path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        self.sock.sendall(head.encode() + body[:len(body) // 2])

    def rest(self) -> tuple[int, dict[str, Any]]:
        """Send the body's second half; the answer's status and JSON."""
        self.sock.sendall(self._body[len(self._body) // 2:])
        answer = b""
        while chunk := self.sock.recv(1 << 16):
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    def close(self) -> None:
        self.sock.close()


@contextmanager
def opened(request: RawRequest) -> Iterator[RawRequest]:
    try:
        yield request
    finally:
        request.close()


def _row(path: str, data: bytes) -> dict[str, object]:
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
            "mode": "100644"}


def _until(what: str, check: Any) -> Any:
    """check()'s first true answer (polled, bounded in count)."""
    for _ in range(1200):
        if found := check():
            return found
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


def _receiving_upload(api: Api, site: str) -> str:
    """The id of the site's deployment once an upload to it is recorded `receiving`."""
    def found() -> str | None:
        rows = api.ok("GET", f"/sites/{site}/deploys")["deployments"]
        return next((r["id"] for r in rows if r["status"] == "receiving"), None)
    return str(_until(f"an upload to {site} receiving", found))


def _recover_past_the_lease(actor: Service, *ids: str) -> tuple[list[Deployment],
                                                                list[Deployment]]:
    """Recover on the second actor, again and again, until a whole lease has passed beyond
    the leases the deployments held when their clients paused; (then, now) for each."""
    then = [actor.state.get_deployment(i) for i in ids]
    end = max(d.lease_until for d in then) + LEASE
    while True:
        started = time.time()
        actor.recover()
        now = [actor.state.get_deployment(i) for i in ids]
        if any(d.status != Status.RECEIVING for d in now) or started > end:
            return then, now
        time.sleep(LEASE / 10)


def test_two_paused_bundle_uploads_keep_their_deployments_and_go_live(
        server: Server, actor: Service) -> None:
    api = Api(server, server.new_token("--name", "ci"))
    sites = ("paused", "paused-too")
    pages = {site: f"<h1>{site}: arrived after a pause</h1>".encode() for site in sites}
    for site in sites:
        server.create_site(site)
    with opened(RawRequest(server, "POST", "/sites/paused/deploys", api.token, bundle(
            {"index.html": pages["paused"], "more.txt": b"x" * 5000}), "application/gzip")
            ) as first, opened(RawRequest(server, "POST", "/sites/paused-too/deploys",
                                          api.token, bundle({"index.html": pages["paused-too"]}),
                                          "application/gzip")) as second:
        uploads = [_receiving_upload(api, site) for site in sites]
        then, now = _recover_past_the_lease(actor, *uploads)
        for before, after in zip(then, now, strict=True):
            assert after.status == Status.RECEIVING, after.error  # recovery left them be
            assert after.lease_until > before.lease_until  # renewed while nothing came
        answers = [first.rest(), second.rest()]
    for (status, answer), upload, site in zip(answers, uploads, sites, strict=True):
        assert status == 202, answer
        assert answer["id"] == upload
        assert api.finished(upload)["status"] == "live"
        assert server.get(f"{site}.localhost", "/").content == pages[site]


def test_a_paused_batch_of_blobs_keeps_its_deployment_and_goes_live(server: Server,
                                                                    actor: Service) -> None:
    api = Api(server, server.new_token("--name", "ci"))
    server.create_site("paused-blobs")
    page = b"<h1>blobs after a pause</h1>" + b"." * 4000
    upload = api.ok("POST", "/sites/paused-blobs/uploads", 201,
                    json={"files": [_row("index.html", page)]})["upload"]
    frame = frame_header(hashlib.sha256(page).hexdigest(), len(page)) + page
    with opened(RawRequest(server, "PUT", f"/sites/paused-blobs/uploads/{upload}/blobs",
                           api.token, frame, "application/octet-stream")) as request:
        # the batch is in: its start renewed the lease and wrote the count
        _until("the batch counted", lambda: actor.state.get_deployment(upload).progress)
        [then], [now] = _recover_past_the_lease(actor, upload)
        assert now.status == Status.RECEIVING, now.error
        assert now.lease_until > then.lease_until
        status, answer = request.rest()
    assert (status, answer) == (200, {"received": 1})
    api.ok("POST", f"/sites/paused-blobs/uploads/{upload}/finish", 202)
    assert api.finished(upload)["status"] == "live"
    assert server.get("paused-blobs.localhost", "/").content == page


def test_a_closed_connection_still_loses_its_deployment(server: Server,
                                                        actor: Service) -> None:
    api = Api(server, server.new_token("--name", "ci"))
    server.create_site("closed")
    tgz = bundle({"index.html": b"<h1>never</h1>", "more.txt": b"y" * 5000})
    with opened(RawRequest(server, "POST", "/sites/closed/deploys", api.token, tgz,
                           "application/gzip")) as request:
        upload = _receiving_upload(api, "closed")
        request.sock.shutdown(socket.SHUT_RDWR)
    failed = _until("the cut-off upload failed", lambda: (
        d if (d := actor.state.get_deployment(upload)).status != Status.RECEIVING else None))
    assert (failed.status, failed.error_kind) == (Status.FAILED, "BundleRejected")
    assert "cut off" in failed.error
    assert not sorted((server.home / "staging").glob(f"{upload}*"))
    assert server.get("closed.localhost", "/").status_code == 404


def test_an_open_connection_silent_past_the_idle_limit_loses_its_deployment(
        server: Server, actor: Service) -> None:
    """Nothing closes (a client machine that vanished mid-request): renewed up to
    PUSHSITE_UPLOAD_IDLE; then the server drops the request (its upload slot and thread are
    free again) and the deployment fails, or recovery fails it once its last lease has run
    out, whichever comes first."""
    api = Api(server, server.new_token("--name", "ci"))
    server.create_site("silent")
    tgz = bundle({"index.html": b"<h1>never</h1>", "more.txt": b"z" * 5000})
    with opened(RawRequest(server, "POST", "/sites/silent/deploys", api.token, tgz,
                           "application/gzip")) as request:
        upload = _receiving_upload(api, "silent")
        first = actor.state.get_deployment(upload)

        renewed = [first.lease_until]

        def ended() -> Deployment | None:
            actor.recover()
            now = actor.state.get_deployment(upload)
            if now.status == Status.RECEIVING:
                renewed.append(now.lease_until)
                return None
            return now

        failed = _until("the silent upload failed", ended)
        # the server answers and closes by itself; before, it waited for the body for ever
        answer = b""
        while chunk := request.sock.recv(1 << 16):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert int(head.split()[1]) == 422  # BundleRejected
    assert "nothing arrived for 8 s" in json.loads(body)["error"]
    assert failed.status == Status.FAILED
    assert ("its upload stopped arriving" in failed.error  # recovery came first
            or "nothing arrived for 8 s" in failed.error)
    assert "nothing went live" in failed.error
    assert max(renewed) > first.lease_until  # renewed for a while, then no more
    assert not sorted((server.home / "staging").glob(f"{upload}*"))
    assert server.get("silent.localhost", "/").status_code == 404
