"""A `git push` under live first: answered once live, brotli made after by the server's worker.

The push's own deploy thread used to make the brotli variants too before answering
(`Running.run(optimise=True)`), so the push waited for them while the worker, taking the
"optimise" message the deploy queued, made the same variants beside it.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from pathlib import Path

from test_git_push import push, remote, token  # noqa: F401 - token is a fixture

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
