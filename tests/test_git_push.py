"""`git push` to `pushsite serve`: real git clients over HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from support.servers import Server
from support.sites import git, write_files


def push(repo: Path, url: str, *refspecs: str,
         force: bool = False) -> subprocess.CompletedProcess[str]:
    args = ["git", "push", *(["--force"] if force else []), url, *refspecs]
    return subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=120)


@pytest.fixture
def token(server: Server) -> str:
    server.create_site("blog")  # the site the tests push to
    return server.new_token("--name", "test")


def remote(server: Server, token: str, site: str = "blog") -> str:
    return f"http://x:{token}@127.0.0.1:{server.port}/{site}.git"


def commit(repo: Path, files: dict[str, str | bytes], message: str) -> None:
    write_files(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def test_first_push_goes_live_and_reports_url(server: Server, token: str,
                                              make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>v1</p>"})
    done = push(repo, remote(server, token), "main")
    assert done.returncode == 0, done.stderr
    assert "remote: pushsite: production: http://blog.localhost:" in done.stderr
    assert server.get("blog.localhost", "/").text == "<p>v1</p>"


def test_fast_forward_reads_only_changed_files(server: Server, token: str,
                                               make_repo: Callable[..., Path]) -> None:
    repo = make_repo({f"p{i}.html": f"<p>{i}</p>" * 20 for i in range(30)})
    assert push(repo, remote(server, token), "main").returncode == 0
    commit(repo, {"p3.html": "<p>new</p>"}, "change one")
    done = push(repo, remote(server, token), "main")
    assert "1 changed file to read, 29 carried over unchanged" in done.stderr
    assert "1 new blob," in done.stderr
    assert server.get("blog.localhost", "/p3").text == "<p>new</p>"


def test_force_push_deploys_the_rewritten_commit(server: Server, token: str,
                                                 make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>v1</p>"})
    commit(repo, {"index.html": "<p>v2</p>"}, "second")
    push(repo, remote(server, token), "main")
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    commit(repo, {"index.html": "<p>rewritten</p>"}, "rewritten")
    assert push(repo, remote(server, token), "main").returncode != 0  # not a fast-forward
    done = push(repo, remote(server, token), "main", force=True)
    assert done.returncode == 0 and "pushsite: production:" in done.stderr
    assert server.get("blog.localhost", "/").text == "<p>rewritten</p>"


def test_two_branches_in_one_push_and_branch_delete(server: Server, token: str,
                                                    make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>main</p>"})
    git(repo, "checkout", "-q", "-b", "feature/New_UI")
    commit(repo, {"index.html": "<p>feature</p>"}, "feature work")
    done = push(repo, remote(server, token), "main", "feature/New_UI")
    assert done.returncode == 0, done.stderr
    assert "remote: pushsite: preview: http://feature-new-ui--blog.localhost:" in done.stderr
    assert "pushsite: live:" not in done.stderr
    assert server.get("blog.localhost", "/").text == "<p>main</p>"
    preview = server.get("feature-new-ui--blog.localhost", "/")
    assert preview.text == "<p>feature</p>"
    assert preview.headers["x-robots-tag"] == "noindex"
    done = push(repo, remote(server, token), ":feature/New_UI")
    assert done.returncode == 0 and "preview is gone" in done.stderr
    assert server.get("feature-new-ui--blog.localhost", "/").status_code == 404
    assert server.get("blog.localhost", "/").text == "<p>main</p>"


def test_wrong_or_missing_token_is_refused(server: Server, token: str,
                                           make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "x"})
    done = push(repo, f"http://x:wrong@127.0.0.1:{server.port}/blog.git", "main")
    assert done.returncode != 0 and "Authentication failed" in done.stderr
    assert server.get("blog.localhost", "/").status_code == 404


def test_site_token_cannot_push_to_another_site(server: Server, token: str,
                                                make_repo: Callable[..., Path]) -> None:
    scoped = server.new_token("--site", "blog")
    repo = make_repo({"index.html": "x"})
    assert push(repo, remote(server, scoped, "blog"), "main").returncode == 0
    done = push(repo, remote(server, scoped, "other"), "main")
    assert done.returncode != 0 and "403" in done.stderr


def test_failed_deploy_keeps_commits_and_says_site_not_updated(
        server: Server, token: str, make_repo: Callable[..., Path]) -> None:
    # the site's setting (reject_failed_pushes false) keeps today's behaviour: by default a
    # failed deploy refuses the push (tests/test_push_rejects.py)
    admin = server.new_token("--name", "admin", "--admin")
    assert server.cli("sites", "list").returncode == 0
    import httpx

    assert httpx.patch(f"{server.url}/api/sites/blog", json={"reject_failed_pushes": False},
                       headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    repo = make_repo({"index.html": "<p>good</p>"})
    push(repo, remote(server, token), "main")
    commit(repo, {"_redirects": "/a /b 999\n"}, "bad redirects")
    done = push(repo, remote(server, token), "main")
    assert done.returncode == 0
    assert "_redirects line 1" in done.stderr and "the site was not updated" in done.stderr
    assert server.get("blog.localhost", "/").text == "<p>good</p>"


def test_clone_and_fetch_work_with_protocol_v2(server: Server, token: str,
                                               make_repo: Callable[..., Path],
                                               tmp_path: Path) -> None:
    repo = make_repo({"index.html": "<p>clone me</p>"})
    push(repo, remote(server, token), "main")
    target = tmp_path / "clone"
    done = subprocess.run(["git", "-c", "protocol.version=2", "clone", "-q",
                           remote(server, token), str(target)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert (target / "index.html").read_text() == "<p>clone me</p>"


def test_twenty_megabyte_push(server: Server, token: str, make_repo: Callable[..., Path]) -> None:
    files: dict[str, str | bytes] = {f"img/{i}.jpg": os.urandom(1 << 20) for i in range(20)}
    files["index.html"] = "<p>big</p>"
    repo = make_repo(files)
    done = push(repo, remote(server, token), "main")
    assert done.returncode == 0, done.stderr
    assert "pushsite: production:" in done.stderr
    response = server.get("blog.localhost", "/img/7.jpg")
    assert response.status_code == 200 and len(response.content) == 1 << 20


def test_tags_are_ignored_unless_the_site_deploys_them(server: Server, token: str,
                                                       make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>v1</p>"})
    git(repo, "tag", "-a", "v1.0", "-m", "release")
    done = push(repo, remote(server, token), "main", "v1.0")
    assert "refs/tags/v1.0 ignored" in done.stderr
    commit(repo, {"index.html": "<p>v2</p>", "pushsite.toml": "tags = true\n"}, "deploy tags")
    push(repo, remote(server, token), "main")
    git(repo, "tag", "-a", "v2.0", "-m", "release two")
    done = push(repo, remote(server, token), "v2.0")
    assert done.returncode == 0 and "http://tag-v2-0--blog.localhost:" in done.stderr
    assert server.get("tag-v2-0--blog.localhost", "/").text == "<p>v2</p>"
