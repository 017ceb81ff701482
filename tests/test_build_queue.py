"""Builds wait their turn: at most `builds` run at once on a machine (lock files every
process shares), and a push that a newer push to the same branch overtook while it waited is
skipped (cancelled, with a log line), never built: by the queue (service/queueing.py) when it
is still queued, by the build's own check while it waits for a build slot."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from pushsite.deploy.build import build_slot
from support.servers import serving
from support.sites import git, write_files


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, stage: str, message: str, **fields: object) -> None:
        self.lines.append(message)

    def warning(self, stage: str, message: str, **fields: object) -> None:
        self.lines.append(message)


def test_one_slot_means_one_build_at_a_time() -> None:
    log = Lines()
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with build_slot(1, lambda: None, log):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(10)
    threading.Timer(0.6, release.set).start()
    started = time.monotonic()
    with build_slot(1, lambda: None, log):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]
    assert time.monotonic() - started >= 0.5
    assert log.lines == ["waiting for a build slot (1 builds run at once here)"]


def test_a_queued_build_overtaken_by_a_newer_push_is_skipped(tmp_path: Path) -> None:
    with serving(tmp_path / "home", extra_env={"PUSHSITE_BUILDS": "1",
                                               "PUSHSITE_WAIT": "120"}) as server:
        assert server.cli("sites", "create", "queue").returncode == 0
        token = server.new_token("--name", "t")
        repo = tmp_path / "repo"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        commits = []
        for name in ("a", "b", "c"):
            pause = 8 if name == "a" else 1  # b waits behind a long enough for c to come
            command = f"sleep {pause}; mkdir -p out; echo {name} > out/index.html"
            write_files(repo, {"pushsite.toml": f"[build]\ncommand = '{command}'\n"
                                                "publish = 'out'\n"})
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", name)
            commits.append(git(repo, "rev-parse", "HEAD"))
        url = f"http://x:{token}@127.0.0.1:{server.port}/queue.git"
        outputs: dict[str, str] = {}

        def push(name: str, commit: str) -> None:
            outputs[name] = subprocess.run(
                ["git", "push", url, f"{commit}:refs/heads/main"], cwd=repo,
                capture_output=True, text=True, timeout=120).stderr

        def started(count: int) -> None:
            """Wait until `count` deployments exist and the first one's build runs."""
            for _ in range(600):
                rows = server.cli("deploys", "queue", "--json").stdout.decode().splitlines()
                if len(rows) >= count:
                    first = json.loads(rows[-1])["id"]
                    if "running `sleep 8" in server.cli("log", first).stdout.decode():
                        return
                time.sleep(0.05)
            raise AssertionError("the first build never started")

        threads = []
        for count, (name, commit) in enumerate(zip("abc", commits, strict=True), start=1):
            threads.append(threading.Thread(target=push, args=(name, commit)))
            threads[-1].start()
            started(count)
        for thread in threads:
            thread.join()
        assert "pushsite: production:" in outputs["a"], outputs["a"]
        assert "superseded by" in outputs["b"], outputs["b"]
        assert "pushsite: production:" in outputs["c"], outputs["c"]
        assert server.get("queue.localhost", "/").text.strip() == "c"
