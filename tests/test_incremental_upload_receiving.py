"""An incremental upload (`deploy DIR --server`) is a `receiving` deployment from its file list
on, and one whose client is gone ends `failed`, saying why, with nothing left in staging:

- the client killed in the middle of a batch of blobs (its connection closes): failed at once;
- a client that vanished between two requests (nothing arrives, nothing closes): failed by
  recovery once the lease its last request set has run out.

No test here waits for a time to pass: each waits for a state to change (bounded in count).
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from pushsite.deploy.filelist import frame_header
from pushsite.errors import DeploymentFailed
from pushsite.model import Status, blob_key
from pushsite.service import housekeeping
from support.api import Api
from support.servers import Server, serving
from support.service import alias_of, deploy, open_service, status


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("receiving") / "home") as srv:
        yield srv


@pytest.fixture(scope="module")
def short_lease(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose leases (and so its recovery rounds) last 2 s."""
    with serving(tmp_path_factory.mktemp("short") / "home",
                 extra_env={"PUSHSITE_LEASE": "2"}) as srv:
        yield srv


def _row(path: str, data: bytes) -> dict[str, object]:
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
            "mode": "100644"}


def _frame(data: bytes) -> bytes:
    return frame_header(hashlib.sha256(data).hexdigest(), len(data)) + data


def _ended(api: Api, deployment_id: str) -> dict[str, Any]:
    """The deployment once it is no longer receiving (bounded in count, not in time)."""
    data: dict[str, Any] = {}
    for _ in range(1200):
        data = api.ok("GET", f"/deployments/{deployment_id}")
        if data["status"] != "receiving":
            return data
        time.sleep(0.1)
    raise AssertionError(f"deployment {deployment_id} is still receiving: {data}")


def _log(api: Api, deployment_id: str) -> list[dict[str, Any]]:
    return list(api.ok("GET", f"/deployments/{deployment_id}/log")["lines"])


def _failed_line(api: Api, deployment_id: str) -> dict[str, Any]:
    """The log's `failed` line (written just after the status: waited for, bounded)."""
    for _ in range(600):
        found = [x for x in _log(api, deployment_id) if x["stage"] == "failed"]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no failed line in {_log(api, deployment_id)}")


def _staged(server: Server, upload: str) -> list[Path]:
    return sorted((server.home / "staging").glob(f"{upload}*"))


def test_an_upload_is_receiving_from_its_list_until_finished(remote: Server) -> None:
    api = Api(remote, remote.new_token("--name", "ci"))
    remote.create_site("arrives")
    a, b = os.urandom(3000), b"<h1>second</h1>"
    started = api.ok("POST", "/sites/arrives/uploads", 201,
                     json={"files": [_row("a.bin", a), _row("index.html", b)],
                           "message": "from CI"})
    upload = started["upload"]
    [row] = api.ok("GET", "/sites/arrives/deploys")["deployments"]
    assert (row["id"], row["status"], row["exit_code"]) == (upload, "receiving", None)
    assert row["message"] == "from CI"
    assert "receiving an upload of 2 paths" in _log(api, upload)[0]["message"]
    assert api.ok("PUT", f"/sites/arrives/uploads/{upload}/blobs",
                  content=_frame(a)) == {"received": 1}
    middle = api.ok("GET", f"/deployments/{upload}")
    assert middle["status"] == "receiving" and middle["bytes_in"] >= len(a)
    api.ok("PUT", f"/sites/arrives/uploads/{upload}/blobs", content=_frame(b))
    queued = api.ok("POST", f"/sites/arrives/uploads/{upload}/finish", 202)
    assert queued["id"] == upload and queued["status"] in ("queued", "running", "ready", "live")
    assert api.finished(upload)["status"] == "live"
    assert remote.get("arrives.localhost", "/").content == b
    assert not _staged(remote, upload)


def test_cancelling_a_receiving_upload_discards_it(remote: Server) -> None:
    api = Api(remote, remote.new_token("--name", "ci"))
    remote.create_site("called-off")
    page = b"<h1>never</h1>"
    upload = api.ok("POST", "/sites/called-off/uploads", 201,
                    json={"files": [_row("index.html", page)]})["upload"]
    assert _staged(remote, upload)
    cancelled = api.ok("POST", f"/deployments/{upload}/cancel")
    assert cancelled["status"] == "cancelled"
    assert not _staged(remote, upload)
    late = api.call("PUT", f"/sites/called-off/uploads/{upload}/blobs", content=_frame(page))
    assert late.status_code == 404
    assert "its deployment is cancelled" in late.json()["error"]
    assert api.call("POST", f"/sites/called-off/uploads/{upload}/finish").status_code == 404
    assert remote.get("called-off.localhost", "/").status_code == 404  # nothing went live


def test_a_client_gone_between_requests_is_failed_after_its_lease(short_lease: Server
                                                                   ) -> None:
    api = Api(short_lease, short_lease.new_token("--name", "ci"))
    short_lease.create_site("vanished")
    a, b = b"first file", b"second file"
    upload = api.ok("POST", "/sites/vanished/uploads", 201,
                    json={"files": [_row("a.html", a), _row("b.html", b)]})["upload"]
    # ... and nothing more: no blob, no finish, no closed connection to notice
    failed = _ended(api, upload)
    assert (failed["status"], failed["error_kind"]) == ("failed", "DeploymentFailed")
    assert "its upload stopped arriving" in failed["error"]
    assert "nothing went live" in failed["error"]
    last = _failed_line(api, upload)
    assert last["level"] == "error" and "stopped arriving" in last["message"]
    assert not _staged(short_lease, upload)
    late = api.call("PUT", f"/sites/vanished/uploads/{upload}/blobs", content=_frame(a))
    assert late.status_code == 404 and "its deployment is failed" in late.json()["error"]
    assert api.call("POST", f"/sites/vanished/uploads/{upload}/finish").status_code == 404
    assert short_lease.get("vanished.localhost", "/a.html").status_code == 404
    # a dead upload does not hold its site: it can be deleted now
    admin = short_lease.new_token("--admin", "--name", "admin")
    assert api.ok("DELETE", "/sites/vanished", token=admin) == {"ok": True,
                                                                "deleted": "vanished"}


@contextmanager
def _holding_proxy(target_port: int, after: int) -> Iterator[tuple[int, threading.Event]]:
    """A proxy that relays until `after` bytes of a request carrying blobs (a PUT, or the
    last batch with finish) went through, then holds:
    it forwards nothing more, and when its client goes, it closes the server's side too.
    The event is set when it starts holding (the server is then inside the PUT's body)."""
    holding = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def up(client: socket.socket, server: socket.socket) -> None:
        sent_in_put = -1
        with suppress(OSError):
            while data := client.recv(1 << 16):
                if sent_in_put < 0 and (b"PUT /api/" in data or b"/finish?" in data):
                    sent_in_put = 0
                if holding.is_set():
                    continue  # swallowed until the client is gone
                server.sendall(data)
                if sent_in_put >= 0:
                    sent_in_put += len(data)
                    if sent_in_put >= after:
                        holding.set()
        for sock in (client, server):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def down(server: socket.socket, client: socket.socket) -> None:
        with suppress(OSError):
            while data := server.recv(1 << 16):
                client.sendall(data)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", target_port))
            threading.Thread(target=up, args=(client, server), daemon=True).start()
            threading.Thread(target=down, args=(server, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(listener.getsockname()[1]), holding
    finally:
        listener.close()


def test_a_client_killed_mid_batch_fails_its_deployment_at_once(remote: Server,
                                                                tmp_path: Path) -> None:
    api = Api(remote, remote.new_token("--name", "ci"))
    remote.create_site("killed")
    folder = tmp_path / "site"
    (folder / "assets").mkdir(parents=True)
    for i in range(64):
        (folder / f"assets/{i}.bin").write_bytes(os.urandom(32 << 10))
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSITE_")}
    # a first deploy goes as one bundle (nothing to reuse); the next is incremental
    first = tmp_path / "first"
    first.mkdir()
    (first / "index.html").write_text("<h1>first</h1>")
    subprocess.run([sys.executable, "-m", "pushsite", "deploy", str(first), "--site", "killed",
                    "--server", remote.url, "--token", api.token],
                   env={**base, "PUSHSITE_HOME": str(tmp_path / "client")}, check=True,
                   capture_output=True)
    (folder / "index.html").write_text("<h1>never live</h1>")
    with _holding_proxy(remote.port, after=256 << 10) as (port, holding):
        client = subprocess.Popen(
            [sys.executable, "-m", "pushsite", "deploy", str(folder), "--site", "killed",
             "--server", f"http://127.0.0.1:{port}", "--token", api.token],
            env={**base, "PUSHSITE_HOME": str(tmp_path / "client")},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for _ in range(1200):
                if holding.is_set() or client.poll() is not None:
                    break
                time.sleep(0.05)
            assert holding.is_set(), client.communicate()
            row, _ = api.ok("GET", "/sites/killed/deploys")["deployments"]
            assert row["status"] == "receiving"  # mid-batch: some blobs in, the rest to come
            client.send_signal(signal.SIGKILL)
        finally:
            client.kill()
            client.communicate()
        failed = _ended(api, row["id"])
    assert (failed["status"], failed["error_kind"]) == ("failed", "BundleRejected")
    assert "cut off" in failed["error"] and "nothing went live" in failed["error"]
    last = _failed_line(api, row["id"])
    assert last["level"] == "error" and "cut off" in last["message"]
    assert not _staged(remote, row["id"])
    assert remote.get("killed.localhost", "/").text == "<h1>first</h1>"


def test_a_prune_that_deletes_a_held_blob_before_the_run_fails_it_not_the_site() -> None:
    """The server answered "held" for a blob at the list; a prune deleted it before the upload
    ran (its deployment was receiving all along): the run fails, the site stays whole."""
    kept = b"<html><body>" + b"<p>a page only the old deployment has</p>" * 40
    with open_service() as service:
        deploy(service, "blog", {"index.html": b"<h1>old</h1>", "kept.html": kept})
        new_page = b"<h1>uploaded</h1>"
        upload, missing = service.start_upload("blog", [_row("index.html", new_page),
                                                        _row("kept.html", kept)])
        assert missing == [hashlib.sha256(new_page).hexdigest()]  # kept.html is held
        newer = deploy(service, "blog", {"index.html": b"<h1>newer</h1>"})
        held_key = blob_key(hashlib.sha256(kept).hexdigest())
        housekeeping.prune(service, "blog", 1, grace=0)
        assert status(service, upload) == Status.RECEIVING  # prune kept the upload going
        assert not service.store.has([held_key])  # ... but swept what it held
        service.receive_blobs("blog", upload, io.BytesIO(_frame(new_page)))
        assert service.finish_upload("blog", upload).status == Status.QUEUED
        with pytest.raises(DeploymentFailed, match=r"a prune deleted \d stored objects"):
            service.run(upload)
        assert status(service, upload) == Status.FAILED
        assert alias_of(service, "blog") == newer.id


def test_a_cancel_while_a_batch_arrives_refuses_the_rest_of_it(remote: Server) -> None:
    api = Api(remote, remote.new_token("--name", "ci"))
    remote.create_site("stopped")
    data = os.urandom(3 << 20)
    upload = api.ok("POST", "/sites/stopped/uploads", 201,
                    json={"files": [_row("big.bin", data)]})["upload"]
    frame = _frame(data)
    halfway, go = threading.Event(), threading.Event()

    def body() -> Iterator[bytes]:
        yield frame[:1 << 20]
        halfway.set()
        go.wait(60)
        yield frame[1 << 20:]

    answers: list[Any] = []
    sender = threading.Thread(target=lambda: answers.append(api.call(
        "PUT", f"/sites/stopped/uploads/{upload}/blobs", content=body())))
    sender.start()
    try:
        assert halfway.wait(60)
        assert api.ok("POST", f"/deployments/{upload}/cancel")["status"] == "cancelled"
    finally:
        go.set()
        sender.join(60)
    [answer] = answers
    assert answer.status_code == 404, answer.text
    assert "its deployment is cancelled" in answer.json()["error"]
    assert not _staged(remote, upload)
    assert api.ok("GET", f"/deployments/{upload}")["status"] == "cancelled"
    assert api.call("POST", f"/sites/stopped/uploads/{upload}/finish").status_code == 404


def test_two_uploads_at_once_each_receive_and_the_newer_stays_live(remote: Server) -> None:
    api = Api(remote, remote.new_token("--name", "ci"))
    remote.create_site("pair")
    older_page, newer_page = b"<h1>older</h1>", b"<h1>newer</h1>"
    older = api.ok("POST", "/sites/pair/uploads", 201,
                   json={"files": [_row("index.html", older_page)]})["upload"]
    newer = api.ok("POST", "/sites/pair/uploads", 201,
                   json={"files": [_row("index.html", newer_page)]})["upload"]
    rows = api.ok("GET", "/sites/pair/deploys")["deployments"]
    assert [(r["id"], r["status"]) for r in rows] == [(newer, "receiving"), (older, "receiving")]
    api.ok("PUT", f"/sites/pair/uploads/{newer}/blobs", content=_frame(newer_page))
    api.ok("PUT", f"/sites/pair/uploads/{older}/blobs", content=_frame(older_page))
    api.ok("POST", f"/sites/pair/uploads/{newer}/finish", 202)
    assert api.finished(newer)["status"] == "live"
    api.ok("POST", f"/sites/pair/uploads/{older}/finish", 202)  # finished last, started first
    assert api.finished(older)["status"] != "live"
    assert remote.get("pair.localhost", "/").content == newer_page


def test_a_run_elsewhere_reads_the_kept_list_and_a_rewritten_manifest_is_parsed_again(
        ) -> None:
    """`start` keeps its checked list for a run in its own process; a runner elsewhere (here:
    that copy taken away first) reads list.json and builds the same site. The live manifest
    parsed at `start` is reused only while its bytes stay the same."""
    from pushsite.model import FileEntry, Manifest, manifest_key
    from pushsite.service import uploads

    kept = b"<html><body>" + b"<p>carried over, never sent again</p>" * 40
    with open_service() as service:
        old = deploy(service, "blog", {"index.html": b"<h1>old</h1>", "kept.html": kept})
        page = b"<h1>run elsewhere</h1>"
        upload, missing = service.start_upload("blog", [_row("index.html", page),
                                                        _row("kept.html", kept)])
        assert missing == [hashlib.sha256(page).hexdigest()]
        assert uploads._Lists.take(upload) is not None  # as another process would find it
        service.receive_blobs("blog", upload, io.BytesIO(_frame(page)))
        service.finish_upload("blog", upload)
        service.run(upload)
        assert alias_of(service, "blog") == upload
        files = service.manifest(upload).files
        assert (files["index.html"].hash, files["kept.html"].hash) == (
            hashlib.sha256(page).hexdigest(), hashlib.sha256(kept).hexdigest())

        raw = service.store.get(manifest_key(old.id))
        parsed = uploads._manifest_blobs(old.id, raw)[0]
        assert uploads._manifest_blobs(old.id, raw)[0] is parsed
        manifest = Manifest.from_bytes(raw)
        entry = manifest.files["kept.html"]
        manifest.files["kept.html"] = FileEntry(entry.hash, entry.size, entry.type,
                                                {"gzip": 3, "br": 7})
        again = uploads._manifest_blobs(old.id, manifest.to_bytes())[0]
        assert again[entry.hash][1] == {"gzip": 3, "br": 7} != parsed[entry.hash][1]
