"""A push's quarantined objects stay readable for every deploy of that push until the last
one ends, and a git process starting while another push edits `objects/info/alternates`
never reads a cut-off file (one push of two branches failed with an object "missing" when
its second branch's deploy ended first)."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from pushsite.deploy.gitcommit import SiteRepos


def _incoming(repos: SiteRepos, site: str, name: str) -> str:
    folder = repos.path(site) / "objects" / f"incoming-{name}"
    folder.mkdir()
    return str(folder)


def _alternates(repos: SiteRepos, site: str) -> list[str]:
    path = repos.path(site) / "objects" / "info" / "alternates"
    return path.read_text().splitlines() if path.exists() else []


def test_each_deploy_of_a_push_holds_its_quarantine_until_it_ends(tmp_path: Path) -> None:
    repos = SiteRepos(tmp_path / "repos")
    repos.create("blog")
    folder = _incoming(repos, "blog", "push1")
    first, second = repos.quarantine("blog", folder), repos.quarantine("blog", folder)
    first.__enter__()
    second.__enter__()
    second.__exit__(None, None, None)  # the second branch's deploy ends first
    assert str(Path(folder).resolve()) in _alternates(repos, "blog")  # the first still reads
    first.__exit__(None, None, None)
    assert _alternates(repos, "blog") == []


def test_a_reader_never_sees_the_alternates_file_cut_off(tmp_path: Path) -> None:
    repos = SiteRepos(tmp_path / "repos")
    repos.create("blog")
    held = str(Path(_incoming(repos, "blog", "held")).resolve())
    churn = _incoming(repos, "blog", "churn")
    path = repos.path("blog") / "objects" / "info" / "alternates"
    stop = threading.Event()
    seen: list[list[str]] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(path.read_text().splitlines())

    with repos.quarantine("blog", held):
        reader = threading.Thread(target=read)
        reader.start()
        try:
            for _ in range(300):  # another push of the same site comes and goes
                with repos.quarantine("blog", churn):
                    pass
        finally:
            stop.set()
            reader.join()
        done = subprocess.run(["git", "count-objects", "-v"], cwd=repos.path("blog"),
                              capture_output=True, text=True)
        assert done.returncode == 0 and "error" not in done.stderr, done.stderr
    assert seen and all(held in lines for lines in seen)
