"""Figures 3b and 4: `git push` to pushsite's built-in remote, timed to the first HTTP 200.

The clock starts when `git push` starts and stops at the first 200 answer carrying the new
content at the site's URL once the push has returned (the page is polled every 10 ms from the
start; the figure is the later of the two). The baseline is the same push into a plain bare
repository on disk: the cost of git alone. Figure 4 also gives `_visible`: the first 200 with
the new content whether or not the push has returned (a push is answered after its hook, its
deploy live first: visitors see the change before `git push` exits).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench import product
from bench.corpora import Corpus, scratch_dir
from bench.errors import BenchError
from bench.measure import TreeSampler, alternate, summarize
from bench.report import Figure, figure

_TOKEN = re.compile(r"//[^/@\s]+@")
_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def missing() -> str:
    """Why the git remote cannot be measured yet, or ""."""
    return product.missing_command("serve") or product.missing_command("tokens", "create")


def _git(cwd: Path, *args: str) -> None:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **_ENV}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        said = " ".join(args) + ": " + proc.stderr.strip()[-400:]
        raise BenchError(f"git {_TOKEN.sub('//***@', said)} failed")


class _Clone:
    """A working clone of a corpus repository where one-file changes are committed."""

    def __init__(self, corpus: Corpus) -> None:
        assert corpus.repo is not None
        self.corpus = corpus
        self.dir = Path(tempfile.mkdtemp(prefix=f"clone-{corpus.name}-", dir=scratch_dir()))
        _git(self.dir, "clone", "-q", str(corpus.repo), ".")

    def first_marker(self) -> bytes:
        """Bytes from the page every figure polls, as the corpus ships it."""
        data = (self.dir / self.corpus.change_path).read_bytes().rstrip()
        return data[-40:]

    def change(self) -> bytes:
        """Commit a one-file change; return the marker that proves it is live."""
        marker = f"<!-- bench push {uuid.uuid4().hex} -->"
        with open(self.dir / self.corpus.change_path, "a") as fh:
            fh.write(f"\n{marker}\n")
        _git(self.dir, "commit", "-q", "-am", "one-file change")
        return marker.encode()

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _push(clone: _Clone, url: str) -> None:
    _git(clone.dir, "push", "-q", url, "HEAD:refs/heads/main")


class _Remote:
    """A pushsite server with a token: the subject's git remote."""

    def __init__(self, corpus: Corpus) -> None:
        self.home = product.fresh_home(f"git-{corpus.name}")
        self.server = product.Server(self.home).__enter__()
        self.sampler = TreeSampler(self.server.pid, interval=0.02).__enter__()
        token = self.server.create_token()
        self.site = "bench"
        self.server.create_site(self.site)
        self.url = f"http://{token}@127.0.0.1:{self.server.port}/{self.site}.git"
        self.corpus = corpus

    def push_to_live(self, clone: _Clone, marker: bytes) -> float:
        return max(self.push_timed(clone, marker))

    def push_timed(self, clone: _Clone, marker: bytes) -> tuple[float, float]:
        """Seconds from `git push` until the new content is served, and until it returned."""
        seen: list[float] = []
        poll = threading.Thread(target=lambda: seen.append(self.server.wait_content(
            self.site, self.corpus.change_path, marker)), daemon=True)
        start = time.monotonic()
        poll.start()
        try:
            _push(clone, self.url)
            returned = time.monotonic() - start
        finally:
            poll.join()
        if not seen:
            raise BenchError(f"{self.corpus.change_path} never showed the pushed content")
        return seen[0] - start, returned

    def close(self) -> float:
        self.sampler.__exit__()
        self.server.__exit__()
        product.remove(self.home)
        return self.sampler.peak_mb


def _bare_push(clone: _Clone, bare: Path) -> float:
    start = time.monotonic()
    _push(clone, str(bare))
    return time.monotonic() - start


def _new_bare() -> Path:
    bare = Path(tempfile.mkdtemp(prefix="bare-", dir=scratch_dir()))
    _git(bare, "init", "-q", "--bare")
    return bare


def first_and_one_file(corpus: Corpus, runs: int) -> list[Figure]:
    """Figure 4: a first push of the corpus, then a one-file change, each to live."""
    firsts: list[float] = []
    visible: list[float] = []
    ones: list[float] = []
    base_firsts: list[float] = []
    base_ones: list[float] = []
    peaks: list[float] = []

    def subject() -> None:
        clone, remote = _Clone(corpus), _Remote(corpus)
        try:
            seen, returned = remote.push_timed(clone, clone.first_marker())
            firsts.append(max(seen, returned))
            visible.append(seen)
            ones.append(remote.push_to_live(clone, clone.change()))
        finally:
            peaks.append(remote.close())
            clone.close()

    def baseline() -> None:
        clone, bare = _Clone(corpus), _new_bare()
        try:
            base_firsts.append(_bare_push(clone, bare))
            clone.change()
            base_ones.append(_bare_push(clone, bare))
        finally:
            clone.close()
            shutil.rmtree(bare, ignore_errors=True)

    alternate(subject, baseline, runs)
    rss = max(peaks)
    common = {"baseline_name": "git push to a bare repo", "target_of": "value", "target_op": "<"}
    return [
        figure("push_first_to_live", corpus.name, summarize(firsts), "s",
               baseline=summarize(base_firsts), target=1.0, peak_rss_mb=rss,  # issue 20
               note="peak RSS is the pushsite serve tree", **common),  # type: ignore[arg-type]
        figure("push_first_visible", corpus.name, summarize(visible), "s",
               baseline=summarize(base_firsts), target=1.0, peak_rss_mb=rss,
               note="the first 200 with the content, polled while the push runs",
               **common),  # type: ignore[arg-type]
        figure("push_one_file_to_live", corpus.name, summarize(ones), "s",
               baseline=summarize(base_ones), target=1.0, peak_rss_mb=rss,
               **common),  # type: ignore[arg-type]
    ]  # fmt: skip


def incremental_push(corpus: Corpus, runs: int) -> list[Figure]:
    """Figure 3b: one server holding the corpus; `runs` one-file pushes, each timed to live."""
    clone, remote, bare = _Clone(corpus), _Remote(corpus), _new_bare()
    peak = 0.0
    try:
        first = remote.push_to_live(clone, clone.first_marker())
        _bare_push(clone, bare)
        markers: list[bytes] = []

        def subject() -> float:
            markers.append(clone.change())
            return remote.push_to_live(clone, markers[-1])

        def baseline() -> float:
            return _bare_push(clone, bare)

        # The subject commits the change, so the baseline pushes the same commit after it.
        ones, base = [], []
        for _ in range(runs):
            ones.append(subject())
            base.append(baseline())
    finally:
        peak = remote.close()
        clone.close()
        shutil.rmtree(bare, ignore_errors=True)
    return [
        figure(
            "incremental_git_push_to_live",
            corpus.name,
            summarize(ones),
            "s",
            baseline=summarize(base),
            baseline_name="git push to a bare repo",
            target=1.0,
            target_of="value",
            target_op="<",
            peak_rss_mb=peak,
            note=f"first push of the whole corpus took {first:.1f} s to live",
        )
    ]
