"""`pushsite prune` compacts a site's git repository: a refused push's objects stay in it,
unreachable (githook.py), and nothing else ever runs gc there (gc.auto=0). Real `git push`
against a real `pushsite serve`, real `git gc`."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_git_push import commit, push, remote

from pushsite.deploy.gitcommit import COMPACT_LOCK, objects_bytes
from support.api import Api
from support.servers import Server
from support.sites import git

HOUR = 3600
WAIT = 120  # seconds: a bound on waiting for the push's hook, never expected to be reached


@pytest.fixture
def token(server: Server) -> str:
    server.create_site("blog")
    return server.new_token("--name", "test")


def bare(server: Server) -> Path:
    return server.home / "repos" / "blog.git"


def has_object(repo: Path, oid: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", oid], cwd=repo,
                          capture_output=True, check=False).returncode == 0


def store_counts(repo: Path) -> dict[str, int]:
    """`git count-objects -v` (loose count, packs, ...) and the object store's bytes."""
    counts = {}
    for line in git(repo, "count-objects", "-v").splitlines():
        key, _, value = line.partition(": ")
        counts[key] = int(value)
    counts["bytes"] = objects_bytes(repo)
    return counts


def age(repo: Path, seconds: float) -> None:
    """Set every file of the object store back by `seconds`, as if written then."""
    when = time.time() - seconds
    for folder, _, files in os.walk(repo / "objects"):
        for name in files:
            os.utime(os.path.join(folder, name), (when, when))


def refused_pushes(server: Server, token: str, repo: Path) -> list[str]:
    """Three pushes whose deploy fails (a bad `_redirects`), each with new content: one of a
    few objects (loose in the server's repository), one of 150 (a pack), one large file."""
    bad = []
    contents: list[dict[str, str | bytes]] = [
        {"one.bin": os.urandom(300_000)},
        {f"many/{n}.bin": os.urandom(2_000) for n in range(150)},
        {"big.bin": os.urandom(1_000_000)},
    ]
    for n, files in enumerate(contents):
        commit(repo, {**files, "_redirects": f"/a{n} /b 999\n"}, f"bad {n}")
        done = push(repo, remote(server, token), "main")
        assert done.returncode != 0 and "deploy failed: _redirects line 1" in done.stderr
        bad.append(git(repo, "rev-parse", "HEAD"))
    return bad


def live_commits(server: Server) -> set[str]:
    admin = server.new_token("--name", "admin", "--admin")
    page = Api(server, admin).ok("GET", "/sites/blog/deploys")
    return {d["commit"] for d in page["deployments"] if d["status"] in ("ready", "live")}


def test_prune_drops_what_refused_pushes_left_and_the_next_push_works(
        server: Server, token: str, make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>good</p>"})
    assert push(repo, remote(server, token), "main").returncode == 0
    # as in a repository made by an older version, git's default: a push of under 100
    # objects leaves them loose
    git(bare(server), "config", "receive.unpackLimit", "100")
    bad = refused_pushes(server, token, repo)
    before = store_counts(bare(server))
    assert before["bytes"] > 1_300_000 and before["packs"] >= 1 and before["count"] > 0
    assert all(has_object(bare(server), oid) for oid in bad)  # there, unreachable
    age(bare(server), 2 * HOUR)  # past prune's grace (the prune_grace setting: 1 hour)
    # refused within the grace: kept for now (and what it reaches: so not on top of the others)
    git(repo, "reset", "-q", "--hard", "HEAD~3")
    commit(repo, {"recent.bin": os.urandom(100_000), "_redirects": "/r /b 999\n"}, "recent")
    assert push(repo, remote(server, token), "main").returncode != 0
    recent = git(repo, "rev-parse", "HEAD")
    before["bytes"] = objects_bytes(bare(server))
    done = server.cli("prune", "blog", "--keep", "1")
    assert done.returncode == 0, done.stderr
    freed = before["bytes"] - objects_bytes(bare(server))
    assert f"freed {freed:,} bytes of its git repository" in done.stderr.decode()
    after = store_counts(bare(server))
    assert not any(has_object(bare(server), oid) for oid in bad)
    assert has_object(bare(server), recent) and has_object(bare(server), f"{recent}:recent.bin")
    assert after["bytes"] < before["bytes"] - 1_300_000  # the random content is gone
    # one pack of what is reachable, one cruft pack of the recent refused push
    assert (after["count"], after["packs"], after["garbage"]) == (0, 2, 0)
    assert git(bare(server), "config", "receive.unpackLimit") == "1"  # pushes come as packs
    commits = live_commits(server)
    assert commits and all(has_object(bare(server), oid) for oid in commits)
    git(bare(server), "fsck", "--no-progress")  # nothing reachable went
    # the next push still works: it sends the content again, and goes live
    commit(repo, {"_redirects": "/a /b 301\n", "index.html": "<p>fixed</p>"}, "fixed")
    done = push(repo, remote(server, token), "main")
    assert done.returncode == 0, done.stderr
    assert server.get("blog.localhost", "/").text == "<p>fixed</p>"
    assert git(bare(server), "rev-parse", "main") == git(repo, "rev-parse", "HEAD")


@pytest.mark.parametrize("files", [3, 150], ids=["small", "large"])
def test_a_push_in_flight_while_prune_compacts_goes_live_with_its_objects(
        server: Server, token: str, make_repo: Callable[..., Path], tmp_path: Path,
        files: int) -> None:
    """The push's objects are in the repository, unreachable, between git moving them out
    of quarantine and the hook's update-ref: a wrapper holds the hook there while prune
    runs `git gc`, with the default grace. Even a push of a few objects is kept as a pack
    (receive.unpackLimit=1) with git's `.keep` file on it until its refs are updated."""
    repo = make_repo({"index.html": "<p>one</p>"})
    assert push(repo, remote(server, token), "main").returncode == 0
    refused_pushes(server, token, repo)
    age(bare(server), 2 * HOUR)
    arrived, go = tmp_path / "arrived", tmp_path / "go"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    wrapper = hooks / "proc-receive"
    wrapper.write_text(f"#!/bin/sh\ntouch {arrived}\nwhile [ ! -e {go} ]; do sleep 0.05; done\n"
                       f"exec {bare(server) / 'hooks' / 'proc-receive'}\n")
    wrapper.chmod(0o755)
    git(bare(server), "config", "core.hooksPath", str(hooks))
    git(repo, "reset", "-q", "--hard", "HEAD~3")  # the refused commits are not sent again
    commit(repo, {"index.html": "<p>two</p>", "new.bin": os.urandom(500_000),
                  **{f"more/{n}.txt": f"file {n}\n" for n in range(files - 3)}}, "two")
    pushed: list[subprocess.CompletedProcess[str]] = []
    pusher = threading.Thread(target=lambda: pushed.append(
        push(repo, remote(server, token), "main", force=True)))
    pusher.start()
    try:
        deadline = time.monotonic() + WAIT
        while not arrived.exists():
            assert time.monotonic() < deadline and pusher.is_alive(), pushed
            time.sleep(0.05)
        head = git(repo, "rev-parse", "HEAD")
        assert has_object(bare(server), head) and git(bare(server), "rev-parse", "main") != head
        assert list((bare(server) / "objects" / "pack").glob("*.keep"))
        # git compares whole seconds: let the clock pass the push's objects' second, so an
        # expiry of "now" would drop them
        written = max(p.stat().st_mtime for p in (bare(server) / "objects").rglob("*")
                      if p.is_file())
        while time.time() < written + 1.5:
            time.sleep(0.05)
        done = server.cli("prune", "blog", "--keep", "1")
        assert done.returncode == 0, done.stderr
        assert "git repository" in done.stderr.decode()
        assert has_object(bare(server), head)
    finally:
        go.touch()
        pusher.join(WAIT)
    assert pushed and pushed[0].returncode == 0, pushed
    assert server.get("blog.localhost", "/").text == "<p>two</p>"
    assert git(bare(server), "rev-parse", "main") == head
    git(bare(server), "fsck", "--no-progress")
    assert store_counts(bare(server))["bytes"] < 1_800_000  # the refused pushes' went


def test_a_second_compaction_at_once_is_skipped_and_the_prune_succeeds(
        server: Server, token: str, make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>one</p>"})
    assert push(repo, remote(server, token), "main").returncode == 0
    bad = refused_pushes(server, token, repo)
    age(bare(server), 2 * HOUR)
    # another prune of the site holds the lock: this one skips the repository
    with open(bare(server) / COMPACT_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = server.cli("prune", "blog", "--keep", "1")
    assert done.returncode == 0, done.stderr
    assert "freed 0 bytes of its git repository" in done.stderr.decode()
    assert all(has_object(bare(server), oid) for oid in bad)
    # an admin's `git gc` runs (its gc.pid names a live process on this machine): the same
    (bare(server) / "gc.pid").write_text(f"{os.getpid()} {socket.gethostname()}")
    done = server.cli("prune", "blog", "--keep", "1")
    assert done.returncode == 0, done.stderr
    assert all(has_object(bare(server), oid) for oid in bad)
    (bare(server) / "gc.pid").unlink()
    done = server.cli("prune", "blog", "--keep", "1")
    assert done.returncode == 0, done.stderr
    assert not any(has_object(bare(server), oid) for oid in bad)


def test_two_prunes_at_once_both_succeed(server: Server, token: str,
                                         make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>one</p>"})
    assert push(repo, remote(server, token), "main").returncode == 0
    bad = refused_pushes(server, token, repo)
    age(bare(server), 2 * HOUR)
    results: list[subprocess.CompletedProcess[bytes]] = []
    threads = [threading.Thread(target=lambda: results.append(
        server.cli("prune", "blog", "--keep", "1"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert not any(has_object(bare(server), oid) for oid in bad)
    git(bare(server), "fsck", "--no-progress")
    assert server.get("blog.localhost", "/").text == "<p>one</p>"
