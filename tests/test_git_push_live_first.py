"""A `git push` under live first: answered once live, brotli made after by the server's worker.

The push's own deploy thread used to make the brotli variants too before answering
(`Running.run(optimise=True)`), so the push waited for them while the worker, taking the
"optimise" message the deploy queued, made the same variants beside it.
"""

from __future__ import annotations

import random
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_git_push import push, remote, token  # noqa: F401 - token is a fixture

from pushsite.deploy import builder as builder_module
from pushsite.deploy import early
from pushsite.deploy.builder import ManifestBuilder, Target
from pushsite.deploy.early import EarlyBrotli
from pushsite.deploy.gitcommit import SiteRepos, deploy_commit
from pushsite.deploy.later import Later
from pushsite.stores.local import LocalStore
from support.servers import Server


def _text(seed: int, size: int) -> str:
    """Compressible text that differs from seed to seed (no blob shared between files)."""
    rng = random.Random(seed)
    words = [f"w{rng.randrange(4000)}" for _ in range(size // 5)]
    return ("<p>" + " ".join(words) + "</p>\n")[:size]


def _log(server: Server, deployment_id: str) -> str:
    done = server.cli("log", deployment_id)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def test_push_is_answered_live_and_the_worker_optimises_once(
        server: Server, token: str, make_repo: Callable[..., Path]) -> None:  # noqa: F811
    # files over the deploy's 1 MiB of brotli before live: their brotli is made after live
    files = {f"page{i}.html": _text(i, 1_500_000) for i in range(3)}
    repo = make_repo(files)
    done = push(repo, remote(server, token), "main")
    assert done.returncode == 0, done.stderr
    assert "pushsite: production:" in done.stderr
    assert "optimised:" not in done.stderr  # the push did not wait for brotli
    found = re.search(r"deploying as (\w+)", done.stderr)
    assert found, done.stderr
    deployment_id = found.group(1)
    assert server.get("blog.localhost", "/page1").text == files["page1.html"]
    for _ in range(600):  # the worker takes the queued message: wait for its last line
        log = _log(server, deployment_id)
        if "optimised:" in log:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"deployment {deployment_id} was never optimised:\n{log}")
    assert log.count("optimising: making brotli variants") == 1, log
    # the edge looks again whether a served deployment's brotli is done at most every
    # PENDING_RECHECK (0.5 s): br is offered within that of the log line, identity until then
    for _ in range(100):
        answer = server.get("blog.localhost", "/page2", headers={"Accept-Encoding": "br"})
        assert answer.text == files["page2.html"]  # httpx decoded whatever it was sent
        if answer.headers.get("content-encoding") == "br":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("br was never offered once optimised")


class _Log:
    def info(self, stage: str, message: str, **fields: object) -> None: ...
    def warning(self, stage: str, message: str, **fields: object) -> None: ...


def test_a_push_makes_no_brotli_while_reading(
        tmp_path: Path, make_repo: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A push's reading keeps both cores busy (git cat-file, the pool): its deploy offers no
    blob to the early brotli thread (deploy/early.py), which a bundle of the same files
    does; the brotli is made after live, the manifest otherwise the bundle's."""
    offered: list[str] = []

    class Counting(EarlyBrotli):
        def offer(self, sha: str, data: bytes, content_type: str, fresh: bool = False) -> bool:
            offered.append(sha)
            return super().offer(sha, data, content_type, fresh)

    monkeypatch.setattr(early, "EarlyBrotli", Counting)
    monkeypatch.setattr(builder_module, "GZIP_NOW_BYTES", 1 << 30)  # offered: gzip first
    files = {f"p{i}.html": _text(i, 40_000) for i in range(40)}
    repos = SiteRepos(tmp_path / "repos")
    repos.create("blog")
    repo = make_repo(files)
    subprocess.run(["git", "push", "-q", str(repos.path("blog")), "main"], cwd=repo,
                   check=True, capture_output=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True,
                            capture_output=True, text=True).stdout.strip()
    built = {}
    for kind in ("bundle", "push"):
        store = LocalStore(tmp_path / f"store-{kind}")
        try:
            builder = ManifestBuilder(Later.now(Target(store)), _Log(), later=True)
            if kind == "push":
                manifest = deploy_commit(builder, repos, "blog", commit, "d1", 0.0, None)
            else:
                for path, text in files.items():
                    builder.add_small(path, text.encode())
                manifest = builder.finish("d1", "blog", commit, 0.0, strip_top=False)
            built[kind] = {path: (e.hash, e.size, e.type) for path, e in manifest.files.items()}
            if kind == "bundle":
                assert len(offered) == len(files)  # the bundle offered each blob
                offered.clear()
            else:
                assert offered == []
                assert manifest.pending == ["br"]
                assert all(set(e.encodings) == {"gzip"} for e in manifest.files.values())
        finally:
            store.close()
    assert built["push"] == built["bundle"]
