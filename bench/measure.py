"""Measuring helpers: wall time and peak RSS of a whole process tree, and run statistics.

Peak RSS is the larger of two readings, both sampled from /proc every few milliseconds: the sum
of the RSS of every process in the tree (catches pipelines and worker pools, which no single
process shows), and the largest single process's own high-water mark, VmHWM (catches a spike
between two samples). `wait4`'s ru_maxrss is not used: a forked child inherits its parent's
high-water mark before exec, so it reports the benchmark's own size for a tiny `sh`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

S = TypeVar("S")
B = TypeVar("B")


@dataclass(frozen=True)
class Run:
    """One measured process run."""

    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str
    # seconds until the process first wrote to stdout (`pushsite deploy --json` prints the
    # moment the deployment is live, then makes its brotli variants); None if it never did
    first_output: float | None = None


@dataclass(frozen=True)
class Summary:
    """Median, min and max of several runs of one measurement."""

    median: float
    min: float
    max: float
    n: int


def summarize(values: Sequence[float]) -> Summary:
    """Median with its range; the median resists the shared machine's noise better than a mean."""
    if not values:
        raise ValueError("summarize needs at least one value")
    return Summary(statistics.median(values), min(values), max(values), len(values))


def children(pid: int) -> list[int]:
    """Direct children of `pid`, read from every thread's /proc children list."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants still alive."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children(current))
    return out


def rss_bytes(pid: int) -> tuple[int, int]:
    """Resident set size of one process and its high-water mark; zeros if it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return rss, hwm


def tree_rss_bytes(pid: int) -> tuple[int, int]:
    """Summed RSS of a process and every descendant, and the largest single high-water mark."""
    total = top = 0
    for p in tree(pid):
        rss, hwm = rss_bytes(p)
        total += rss
        top = max(top, hwm)
    return total, top


class TreeSampler:
    """Samples a process tree's summed RSS in a thread; `peak_mb` is the highest seen.

    Every 20 ms: each sample reads /proc files per thread of the tree, and at 5 ms the sampler
    took ~10% of a core from what it measured (a 0.35 s deploy read 0.42 s). A single
    process's peak is exact anyway (its kernel high-water mark, VmHWM); only the sum over a
    tree of processes (the naive pipeline's gzips) depends on the interval.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            total, top = tree_rss_bytes(self.pid)
            self.peak = max(self.peak, total, top)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def run(
    cmd: Sequence[str] | str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 3600.0,
) -> Run:
    """Run a command (a string goes to `sh -c`), timing it and tracking its tree's peak RSS.

    Output goes to temporary files, never pipes, so a chatty child cannot block on a full pipe
    and the reader costs nothing while the clock runs.
    """
    argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    full_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=full_env, cwd=cwd, stdout=out, stderr=err)
        with TreeSampler(proc.pid) as sampler:
            deadline = start + timeout
            first: float | None = None
            while True:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
                if first is None and os.fstat(out.fileno()).st_size:
                    first = time.perf_counter() - start
                if pid:
                    break
                if time.perf_counter() > deadline:
                    proc.kill()
                    pid, status = os.waitpid(proc.pid, 0)
                    break
                time.sleep(0.002)
            seconds = time.perf_counter() - start
            if first is None and os.fstat(out.fileno()).st_size:
                first = seconds
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    return Run(seconds, sampler.peak_mb, proc.returncode, stdout, stderr, first)


def alternate(
    subject: Callable[[], S],
    baseline: Callable[[], B],
    runs: int,
    baseline_runs: int | None = None,
) -> tuple[list[S], list[B]]:
    """Run subject and baseline `runs` times each, interleaved, flipping who goes first.

    Interleaving spreads the shared machine's slow moments over both sides; flipping the order
    cancels a warm-cache advantage for whoever runs second. `baseline_runs` caps the baseline's
    runs when it is very slow (the subject still runs `runs` times).
    """
    cap = runs if baseline_runs is None else min(runs, baseline_runs)
    subj: list[S] = []
    base: list[B] = []
    for i in range(runs):
        if i >= cap:
            subj.append(subject())
        elif i % 2 == 0:
            base.append(baseline())
            subj.append(subject())
        else:
            subj.append(subject())
            base.append(baseline())
    return subj, base
