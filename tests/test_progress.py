"""Progress that moves: a running deployment's counters reach the state while it runs (the
API returns them, a push prints a counting `remote:` line), and an upload is `receiving`
from its first bytes."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.api import Api
from support.servers import Server, serving
from support.sites import git


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # one compression thread, so a push of many files runs for a few seconds
    with serving(tmp_path_factory.mktemp("progress") / "home",
                 extra_env={"PUSHSITE_WORKERS": "1"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def api(server: Server) -> Api:
    return Api(server, server.new_token("--name", "progress"))


def many_files_repo(root: Path, count: int) -> Path:
    """One commit of `count` pages, made by `git fast-import` (no work tree: quick)."""
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    parts = []
    for n in range(count):
        data = f"<p>page {n}</p>\n".encode() * 60
        parts.append(b"blob\nmark :%d\ndata %d\n%s\n" % (n + 1, len(data), data))
    parts.append(b"commit refs/heads/main\ncommitter T <t@example.com> 1700000000 +0000\n"
                 b"data 5\nmany\n")
    parts.extend(b"M 100644 :%d p/%d.html\n" % (n + 1, n) for n in range(count))
    subprocess.run(["git", "fast-import", "--quiet"], cwd=root, input=b"".join(parts) + b"\n",
                   check=True, capture_output=True)
    return root


def test_a_push_prints_counting_lines_and_the_api_sees_the_counters_rise(
        server: Server, api: Api, tmp_path: Path) -> None:
    server.create_site("counted")
    repo = many_files_repo(tmp_path / "repo", 20000)
    url = f"http://x:{api.token}@127.0.0.1:{server.port}/counted.git"
    push = subprocess.Popen(["git", "push", url, "main"], cwd=repo, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: list[int] = []
    try:
        while push.poll() is None:
            rows = api.ok("GET", "/sites/counted/deploys")["deployments"]
            if rows and rows[0]["status"] == "running" and rows[0]["files"]:
                assert rows[0]["stage"] and rows[0]["progress"]
                seen.append(rows[0]["files"])
            time.sleep(0.1)
    finally:
        _, err = push.communicate(timeout=120)
    assert push.returncode == 0, err
    assert len(set(seen)) >= 2 and seen == sorted(seen), seen  # rising while it ran
    counting = [line for line in err.splitlines() if "files read" in line]
    assert counting and counting[0].startswith("remote: pushsite: read: "), err
    [last] = api.ok("GET", "/sites/counted/deploys")["deployments"]
    assert last["files"] == 20000 and last["production"] is True and last["stage"] == "done"


def test_an_upload_is_receiving_from_its_first_bytes(server: Server, api: Api,
                                                     tmp_path: Path) -> None:
    server.create_site("arriving")
    repo = many_files_repo(tmp_path / "r", 50)
    tgz = subprocess.run(["git", "archive", "--format=tar.gz", "HEAD"], cwd=repo,
                         capture_output=True, check=True).stdout
    go = threading.Event()

    def body() -> Iterator[bytes]:
        yield tgz[:100]
        go.wait(30)
        yield tgz[100:]

    answer: dict[str, object] = {}
    sender = threading.Thread(target=lambda: answer.update(api.ok(
        "POST", "/sites/arriving/deploys", 202, content=body(),
        headers={"Content-Type": "application/gzip"})))
    sender.start()
    try:
        rows: list[dict[str, object]] = []
        for _ in range(200):
            rows = api.ok("GET", "/sites/arriving/deploys")["deployments"]
            if rows:
                break
            time.sleep(0.05)
        assert rows and rows[0]["status"] == "receiving" and rows[0]["exit_code"] is None
    finally:
        go.set()
        sender.join(30)
    assert answer["id"] == rows[0]["id"]
    assert api.finished(str(answer["id"]))["status"] == "live"
