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


def test_a_webhook_deploy_puts_its_counters_in_the_state_while_it_runs(
        server: Server, api: Api, tmp_path: Path) -> None:
    """A git host's push reaches /hooks/github/SITE; the archive it fetches deploys under the
    same ProgressWriter as a push: files read, bytes and stage reach the state while it runs."""
    from test_webhook_deploy import ArchiveHost, configure, github_push, send_hook

    repo = many_files_repo(tmp_path / "hosted", 20000)
    host = ArchiveHost(repo)
    try:
        secret = configure(server, "hooked", host.url)
        answer = send_hook(server, "hooked", secret,
                           github_push(git(repo, "rev-parse", "HEAD")), "progress-1")
        assert answer.status_code == 200, answer.text
        [event] = answer.json()["events"]
        running: list[dict[str, object]] = []
        data: dict[str, object] = {}
        for _ in range(6000):  # a guard against hanging, not a time limit
            data = api.ok("GET", f"/deployments/{event['deployment']}")
            if data["exit_code"] is not None:
                break
            if data["status"] == "running" and data["files"]:
                running.append(data)
            time.sleep(0.05)
    finally:
        host.close()
    assert data["status"] == "live" and data["source"] == "webhook:github", data
    files = [int(str(row["files"])) for row in running]
    assert len(set(files)) >= 2 and files == sorted(files), files  # rising while it ran
    assert all(row["stage"] and row["progress"] and int(str(row["bytes_in"])) > 0
               for row in running), running
    assert data["files"] == 20000 and data["stage"] == "done"
