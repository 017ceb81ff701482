"""A push on a git host: its webhook reaches `pushsite serve`, which answers at once, fetches
the commit's archive from the host's API (here a local server serving real `git archive`
output) and deploys it."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from support.servers import Server
from support.sites import git


class ArchiveHost:
    """Serves GitHub's `/repos/<owner>/<repo>/tarball/<sha>` from a real repository."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.requests: list[str] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                host.requests.append(self.path)
                sha = self.path.rsplit("/", 1)[-1]
                done = subprocess.run(["git", "archive", "--format=tar.gz",
                                       "--prefix=owner-site-x/", sha], cwd=host.repo,
                                      capture_output=True)
                if done.returncode != 0:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-gzip")
                self.send_header("Content-Length", str(len(done.stdout)))
                self.end_headers()
                self.wfile.write(done.stdout)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archive_host(make_repo: Callable[..., Path]) -> Iterator[ArchiveHost]:
    host = ArchiveHost(make_repo({"index.html": "<p>from github</p>"}))
    try:
        yield host
    finally:
        host.close()


def github_push(commit: str, branch: str = "main", deleted: bool = False) -> bytes:
    return json.dumps({
        "ref": f"refs/heads/{branch}", "before": "1" * 40,
        "after": "0" * 40 if deleted else commit, "deleted": deleted, "forced": False,
        "repository": {"full_name": "owner/site", "name": "site"},
        "head_commit": None if deleted else {"id": commit, "message": "from the host"},
        "pusher": {"name": "someone"},
    }).encode()


def send_hook(server: Server, site: str, secret: str, body: bytes, delivery: str,
              signature: str | None = None) -> httpx.Response:
    mac = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(f"{server.url}/hooks/github/{site}", content=body, timeout=10, headers={
        "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature or mac, "Content-Type": "application/json"})


def configure(server: Server, site: str, base_url: str) -> str:
    created = server.cli("deploy", "--create", "--site", site, "-", input=_tiny_bundle())
    assert created.returncode == 0
    done = server.cli("hooks", site, "--base-url", base_url)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(None, 1) for line in done.stdout.decode().splitlines())
    assert lines["github"].endswith(f"/hooks/github/{site}")
    return lines["secret"].strip()


def _tiny_bundle() -> bytes:
    import gzip
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("s/index.html")
        data = b"<p>before</p>"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def wait_for(check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_signed_push_fetches_archive_and_goes_live(server: Server,
                                                   archive_host: ArchiveHost) -> None:
    secret = configure(server, "blog", archive_host.url)
    commit = git(archive_host.repo, "rev-parse", "HEAD")
    started = time.monotonic()
    answer = send_hook(server, "blog", secret, github_push(commit), "d-1")
    assert answer.status_code == 200 and time.monotonic() - started < 1.0
    assert answer.json()["ok"] is True
    wait_for(lambda: server.get("blog.localhost").text == "<p>from github</p>")
    assert archive_host.requests == [f"/repos/owner/site/tarball/{commit}"]
    # the same delivery again queues nothing
    again = send_hook(server, "blog", secret, github_push(commit), "d-1")
    assert again.status_code == 200
    time.sleep(0.5)
    assert len(archive_host.requests) == 1


def test_bad_signature_is_401_and_queues_nothing(server: Server,
                                                 archive_host: ArchiveHost) -> None:
    configure(server, "blog", archive_host.url)
    commit = git(archive_host.repo, "rev-parse", "HEAD")
    answer = send_hook(server, "blog", "wrong", github_push(commit), "d-2")
    assert answer.status_code == 401 and answer.json()["ok"] is False
    time.sleep(0.5)
    assert archive_host.requests == []
    assert server.get("blog.localhost").text == "<p>before</p>"


def test_missing_archive_fails_the_deployment_clearly(server: Server,
                                                      archive_host: ArchiveHost) -> None:
    secret = configure(server, "blog", archive_host.url)
    answer = send_hook(server, "blog", secret, github_push("f" * 40), "d-3")
    assert answer.status_code == 200
    deployment = answer.json()["events"][0]["deployment"]

    def failed() -> bool:
        done = server.cli("deploys", "blog", "--json")
        rows = [json.loads(line) for line in done.stdout.decode().splitlines()]
        return any(r["id"] == deployment and r["status"] == "failed" for r in rows)

    wait_for(failed)
    log = server.cli("log", deployment).stdout.decode()
    assert "404" in log
    assert server.get("blog.localhost").text == "<p>before</p>"
