"""A push that fails when its deploy fails: the deploy runs in the proc-receive hook, and a
failure refuses the ref (real `git push` against a real `pushsite serve`)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_git_push import commit, push, remote

from support.api import Api
from support.servers import Server, serving
from support.sites import git


@pytest.fixture
def token(server: Server) -> str:
    server.create_site("blog")
    return server.new_token("--name", "test")


def remote_ref(server: Server, site: str, ref: str = "refs/heads/main") -> str:
    """The branch as the server's repository holds it ("" when it does not exist)."""
    done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", ref],
                          cwd=server.home / "repos" / f"{site}.git", capture_output=True,
                          text=True, check=False)
    return done.stdout.strip()


def test_a_failed_deploy_rejects_the_push_and_the_branch_stays(
        server: Server, token: str, make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>good</p>"})
    assert push(repo, remote(server, token), "main").returncode == 0
    good = git(repo, "rev-parse", "HEAD")
    assert remote_ref(server, "blog") == good
    commit(repo, {"_redirects": "/a /b 999\n"}, "bad redirects")
    done = push(repo, remote(server, token), "main")
    assert done.returncode != 0, done.stderr
    assert "! [remote rejected] main -> main (deploy failed: _redirects line 1" in done.stderr
    assert "the push is refused" in done.stderr
    assert remote_ref(server, "blog") == good  # the branch stays where it was
    assert server.get("blog.localhost", "/").text == "<p>good</p>"
    # the same push, fixed, goes through
    commit(repo, {"_redirects": "/a /b 301\n"}, "fixed")
    done = push(repo, remote(server, token), "main")
    assert done.returncode == 0, done.stderr
    assert remote_ref(server, "blog") == git(repo, "rev-parse", "HEAD")


def test_a_new_branch_that_fails_is_not_created(server: Server, token: str,
                                                make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "x", "_headers": "no colon here\n  nor here\n"})
    git(repo, "checkout", "-q", "-b", "broken")
    done = push(repo, remote(server, token), "broken")
    assert done.returncode != 0
    assert "[remote rejected] broken -> broken (deploy failed:" in done.stderr
    assert remote_ref(server, "blog", "refs/heads/broken") == ""


def test_the_site_setting_keeps_the_commits_as_before(server: Server, token: str,
                                                      make_repo: Callable[..., Path]) -> None:
    admin = server.new_token("--name", "admin", "--admin")
    Api(server, admin).ok("PATCH", "/sites/blog", json={"reject_failed_pushes": False})
    repo = make_repo({"index.html": "<p>good</p>"})
    push(repo, remote(server, token), "main")
    commit(repo, {"_redirects": "/a /b 999\n"}, "bad redirects")
    done = push(repo, remote(server, token), "main")
    assert done.returncode == 0, done.stderr
    assert "_redirects line 1" in done.stderr and "the site was not updated" in done.stderr
    assert remote_ref(server, "blog") == git(repo, "rev-parse", "HEAD")
    assert server.get("blog.localhost", "/").text == "<p>good</p>"


def test_an_old_repository_gets_the_new_hooks(server: Server, token: str,
                                              make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>one</p>"})
    assert push(repo, remote(server, token), "main").returncode == 0
    bare = server.home / "repos" / "blog.git"
    (bare / "hooks" / "proc-receive").unlink()  # as the oldest versions left it
    git(bare, "config", "--unset-all", "receive.procReceiveRefs")
    git(bare, "config", "--unset", "receive.autogc")
    older = {}
    for name in ("post-receive", "pre-receive"):  # a Python start per push each
        older[name] = bare / "hooks" / name
        older[name].write_text("#!/bin/sh\nexit 0\n")
        older[name].chmod(0o755)
    commit(repo, {"_redirects": "/a /b 999\n"}, "bad redirects")
    done = push(repo, remote(server, token), "main")
    assert done.returncode != 0 and "deploy failed: _redirects line 1" in done.stderr
    assert (bare / "hooks" / "proc-receive").exists()
    assert not any(hook.exists() for hook in older.values())
    assert git(bare, "config", "receive.autogc") == "false"


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[Server]:
    with serving(tmp_path / "impatient", extra_env={"PUSHSITE_WAIT": "0.01"}) as srv:
        yield srv


def test_a_deploy_that_outlives_the_wait_is_accepted_and_goes_on(
        impatient: Server, make_repo: Callable[..., Path]) -> None:
    impatient.create_site("slow")
    token = impatient.new_token("--name", "t")
    # a build that takes 2 s against a wait of 0.01 s: slow on any machine (300 files of
    # 20 KB deployed in 0.05 s on a quiet one, inside the wait's first look)
    command = "sleep 2; mkdir -p out; cp index.html out/"
    repo = make_repo({"pushsite.toml": f"[build]\ncommand = '{command}'\npublish = 'out'\n",
                      "index.html": "<p>late</p>"})
    done = push(repo, remote(impatient, token, "slow"), "main")
    assert done.returncode == 0, done.stderr
    assert "the push is accepted and the deploy goes on; it will be at http://" in done.stderr
    assert remote_ref(impatient, "slow") == git(repo, "rev-parse", "HEAD")
    deadline = time.monotonic() + 60
    while impatient.get("slow.localhost", "/").status_code != 200:
        assert time.monotonic() < deadline, "the deploy never went live"
        time.sleep(0.2)
    assert impatient.get("slow.localhost", "/").text == "<p>late</p>"


def test_the_hook_call_back_refuses_what_is_not_updates(server: Server, token: str) -> None:
    """The call-back takes the site's name, then `old new ref` lines, with the secret only
    the server and its hooks know; anything else deploys nothing."""
    import httpx

    secret = (server.home / "hook-secret").read_text().strip()
    url = f"{server.url}/internal/post-receive"
    zero = "0" * 40
    said = httpx.post(url, content=f"blog\n{zero} refs/heads/main\n".encode(),
                      headers={"X-Pushsite-Hook-Secret": secret}, timeout=10)
    assert said.status_code == 400 and "not `old new ref`" in said.text
    said = httpx.post(url, content=b"", headers={"X-Pushsite-Hook-Secret": secret}, timeout=10)
    assert said.status_code == 400
    said = httpx.post(url, content=f"blog\n{zero} {zero} refs/heads/main\n".encode(),
                      headers={"X-Pushsite-Hook-Secret": "wrong"}, timeout=10)
    assert said.status_code == 403
    # a whole update of a branch that never existed: nothing to deploy, every ref answered
    said = httpx.post(url, content=f"blog\n{zero} {zero} refs/heads/main\n".encode(),
                      headers={"X-Pushsite-Hook-Secret": secret}, timeout=10)
    assert said.status_code == 200
    assert said.text.endswith("\x00pushsite-verdicts \n")
    assert server.get("blog.localhost", "/").status_code != 200
