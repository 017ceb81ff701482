"""Figure 1c: cold deploy against the naive pipeline with both on tmpfs (compute only).

Figure 1 runs both on the disk, where the naive pipeline's thousands of small writes swing its
time more than pushsite changes (issue 20). Here the bundle is copied to tmpfs, pushsite's
PUSHSITE_HOME (store, state, spools) and the naive pipeline's temp dir are on tmpfs too, and
TMPDIR points there for both: what is left is reading, hashing, compressing and bookkeeping.

Two pushsite modes, each against the same run's naive pipeline:
- every variant first (`PUSHSITE_LIVE_FIRST=0`): gzip and brotli made before the process
  ends; the fair comparison with a pipeline that gzips everything (target: at most 0.5);
- live first (the default): the time until `pushsite deploy --json` printed the live
  deployment (brotli is made after that), and its whole run beside it.
Beside the wall times, the CPU seconds of each side's process tree: on a shared machine the
naive pipeline's many processes and pushsite's threads get unequal shares of the cores, and
CPU time is what the comparison is about once the disk is out.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import baselines, measure, product
from bench.corpora import Corpus
from bench.errors import BenchError
from bench.measure import alternate, summarize
from bench.report import Figure, figure

TMPFS = Path(os.environ.get("PUSHSITE_BENCH_TMPFS", "/dev/shm"))


def missing(tmpfs: Path = TMPFS) -> str:
    """Why the figure cannot run here (no tmpfs there), or ""."""
    if not tmpfs.is_dir() or not os.access(tmpfs, os.W_OK):
        return f"{tmpfs} is not a writable folder (set PUSHSITE_BENCH_TMPFS to a tmpfs)"
    with open("/proc/mounts") as mounts:
        kinds = {line.split()[1]: line.split()[2] for line in mounts if len(line.split()) > 2}
    if kinds.get(str(tmpfs.resolve())) != "tmpfs":
        return f"{tmpfs} is not a tmpfs mount point (set PUSHSITE_BENCH_TMPFS to one)"
    return ""


def _room(corpus: Corpus, tmpfs: Path) -> None:
    """A store (identity and variants) and an extraction: each a few times the bundle (the
    corpora unpack to about 7 times their gzipped size)."""
    need = 20 * corpus.bundle.stat().st_size
    free = shutil.disk_usage(tmpfs).free
    if free < need:
        raise BenchError(f"{tmpfs} has {free >> 20} MiB free, {corpus.name} needs about "
                         f"{need >> 20} MiB; free some or set PUSHSITE_BENCH_TMPFS")


@contextmanager
def _scratch(corpus: Corpus, tmpfs: Path) -> Iterator[Path]:
    """A folder on tmpfs holding a copy of the bundle; removed afterwards."""
    _room(corpus, tmpfs)
    root = Path(tempfile.mkdtemp(prefix=f"pushsite-compute-{corpus.name}-", dir=tmpfs))
    try:
        (root / "tmp").mkdir()
        shutil.copyfile(corpus.bundle, root / corpus.bundle.name)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _children_cpu() -> float:
    """CPU seconds (user + system) of every child this process has waited for so far: each
    run's difference is its whole tree's (a tree waits for its own), which a busy machine
    does not inflate the way it inflates wall time."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _naive(bundle: Path, root: Path, cpu: list[float]) -> measure.Run:
    """The naive pipeline of figure 1 extracting into a temp dir on tmpfs."""
    dest = Path(tempfile.mkdtemp(prefix="naive-", dir=root))
    try:
        before = _children_cpu()
        result = measure.run(baselines.naive_command(bundle, dest), env={"TMPDIR": str(root)})
        cpu.append(_children_cpu() - before)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    if result.returncode != 0:
        raise BenchError(f"the naive pipeline on tmpfs failed with exit {result.returncode}: "
                         f"{result.stderr.strip()[-300:]}")
    return result


def _deploy(bundle: Path, root: Path, live_first: bool, cpu: list[float]) -> product.Deploy:
    """One `pushsite deploy` into a fresh home on tmpfs, removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=root))
    env = {"TMPDIR": str(root / "tmp"), "PUSHSITE_LIVE_FIRST": "1" if live_first else "0"}
    try:
        before = _children_cpu()
        done = product.deploy(bundle, home, env=env)
        cpu.append(_children_cpu() - before)
        return done
    finally:
        shutil.rmtree(home, ignore_errors=True)


def compute(corpus: Corpus, runs: int, tmpfs: Path = TMPFS) -> list[Figure]:
    """Both pushsite modes and the naive pipeline, interleaved, all on tmpfs."""
    with _scratch(corpus, tmpfs) as root:
        bundle = root / corpus.bundle.name
        befores: list[product.Deploy] = []
        firsts: list[product.Deploy] = []
        cpu_before: list[float] = []
        cpu_first: list[float] = []
        cpu_naive: list[float] = []

        def subject() -> None:
            # the two modes flip order too, so neither always runs on a warmer machine
            order = (False, True) if len(befores) % 2 == 0 else (True, False)
            for live_first in order:
                if live_first:
                    firsts.append(_deploy(bundle, root, True, cpu_first))
                else:
                    befores.append(_deploy(bundle, root, False, cpu_before))

        _, naives = alternate(subject, lambda: _naive(bundle, root, cpu_naive), runs)
    naive = summarize([n.seconds for n in naives])
    naive_rss = max(n.peak_rss_mb for n in naives)
    name = "naive tar+gzip -P2 on tmpfs"
    doc = befores[-1].doc
    note = f"files={doc.get('files')} blobs_new={doc.get('blobs_new')} (bundle, home, TMPDIR "
    note += "and the naive temp dir on tmpfs)"
    lives = [d.run.first_output for d in firsts if d.run.first_output is not None]
    figs = [
        figure("compute_cold_deploy", corpus.name, summarize([d.run.seconds for d in befores]),
               "s", baseline=naive, baseline_name=name, target=0.5,
               peak_rss_mb=max(d.run.peak_rss_mb for d in befores),
               baseline_peak_rss_mb=naive_rss,
               note="every variant before live (PUSHSITE_LIVE_FIRST=0); " + note),
        figure("compute_live_first_total", corpus.name,
               summarize([d.run.seconds for d in firsts]), "s", baseline=naive,
               baseline_name=name, peak_rss_mb=max(d.run.peak_rss_mb for d in firsts),
               baseline_peak_rss_mb=naive_rss,
               note="live first, the whole run (brotli after the alias moved)"),
    ]  # fmt: skip
    figs.append(figure(
        "compute_cold_deploy_cpu", corpus.name, summarize(cpu_before), "cpu s",
        baseline=summarize(cpu_naive), baseline_name="naive tar+gzip -P2 on tmpfs, CPU",
        note="user + system seconds of the whole process tree, every variant first (live "
             f"first: median {summarize(cpu_first).median:.2f} cpu s)",
    ))
    if lives:
        figs.append(figure(
            "compute_time_to_live", corpus.name, summarize(lives), "s", baseline=naive,
            baseline_name=name, peak_rss_mb=max(d.run.peak_rss_mb for d in firsts),
            baseline_peak_rss_mb=naive_rss,
            note="live first: until `pushsite deploy --json` printed the live deployment",
        ))
    return figs


def chosen(names: str, small: bool) -> list[Corpus]:
    """The corpora asked for with --corpora, else small and medium (and large without
    --small); built on first use like every corpus."""
    from bench import corpora

    wanted = [n.strip() for n in names.split(",") if n.strip()]
    return [corpora.get(n) for n in wanted or ("small", "medium", *(() if small else ("large",)))]
