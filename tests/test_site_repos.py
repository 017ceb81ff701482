"""Site repositories: made whole, then renamed into place, by whichever of two creators wins."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from pushsite.deploy.gitcommit import HOOK_NAMES, PIPE_BYTES, BlobStream, SiteRepos


def _config(repo: Path) -> list[str]:
    done = subprocess.run(["git", "config", "--local", "--list"], cwd=repo,
                          capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_a_new_repository_has_its_settings_and_hooks(tmp_path: Path) -> None:
    repo = SiteRepos(tmp_path / "repos").create("blog", branch="trunk")
    config = _config(repo)
    for line in ("core.bare=true", "http.receivepack=true", "receive.denynonfastforwards=false",
                 "receive.denydeletes=false", "receive.procreceiverefs=refs/heads",
                 "receive.procreceiverefs=refs/tags", "receive.autogc=false", "gc.auto=0"):
        assert line in config
    assert (repo / "HEAD").read_text() == "ref: refs/heads/trunk\n"
    for name in HOOK_NAMES:
        assert (repo / "hooks" / name).stat().st_mode & 0o111
    assert not (repo / "hooks" / "post-receive").exists()


def test_two_creators_at_once_leave_one_whole_repository(tmp_path: Path) -> None:
    root = tmp_path / "repos"
    start = threading.Barrier(4)
    made: list[Path] = []
    errors: list[BaseException] = []

    def create() -> None:
        start.wait()
        try:
            made.append(SiteRepos(root).create("blog"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert made == [root / "blog.git"] * 4
    assert [p.name for p in root.iterdir()] == ["blog.git"]  # no partial folder left behind
    assert _config(root / "blog.git").count("receive.procreceiverefs=refs/heads") == 1


def test_blobs_stream_whole_in_order_through_a_wide_pipe(
        tmp_path: Path, make_repo: Callable[..., Path]) -> None:
    """cat-file runs up to 1 MiB ahead of the reader (a widened pipe, buffered writes); each
    blob still comes whole and in order, read in pieces or skipped."""
    files = {"empty.txt": b"", "small.txt": b"x" * 100, "big.bin": os.urandom(3 << 20),
             "mid.html": b"<p>" * 70_000}
    repo = make_repo(files)
    oids = {name: subprocess.run(["git", "rev-parse", f"HEAD:{name}"], cwd=repo, text=True,
                                 capture_output=True, check=True).stdout.strip()
            for name in files}
    order = ["big.bin", "empty.txt", "mid.html", "small.txt", "empty.txt", "big.bin"]
    blobs = BlobStream(repo / ".git", [oids[name] for name in order])
    try:
        if sys.platform == "linux":
            assert fcntl.fcntl(blobs._proc.stdout, fcntl.F_GETPIPE_SZ) == PIPE_BYTES
        for index, name in enumerate(order):
            oid, size = blobs.next()
            assert (oid, size) == (oids[name], len(files[name]))
            if index < 2:
                continue  # left unread: the next blob still starts where it should
            pieces = []
            while piece := blobs.read(65_537):
                pieces.append(piece)
            assert b"".join(pieces) == files[name]
    finally:
        blobs.close()
