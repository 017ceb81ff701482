"""Figure 6m: what counting for /metrics costs the edge (issue 19: at most 2% of its req/s).

`pushsite serve` on the same site with the same `--http-workers` as figure 6, with metrics
on (the default: each request adds 1 to a per-process integer slot, edge/respond.py and
state/counters.Tally, written to metrics.db every 2 s) and with PUSHSITE_METRICS=0.
`wrk` asks for the small HTML page (the highest request rate, so where a per-request cost
shows most) in alternating runs, flipping who goes first, each run on a new server; the
figure is the ratio of medians.
After the runs the metrics-on home's metrics.db must hold the requests wrk made, and the
other none: a figure of two servers that both count (or neither) would say nothing.

On a shared machine one run's rate swings by half (an A/A run of two metrics-off servers gave
10,783-29,081 req/s), far more than the 2% asked for, so beside the rate there is what noise
moves much less: `edge_metrics_cpu_per_request`, the CPU time (user + system, /proc) the
server's whole process tree spent per request in each run, metrics on over off. The rate's
figure also keeps the median of paired ratios (each run over the run beside it) and a bound
that no neighbour's load moves: the nanoseconds `Tally.count` costs (timed here) times the
requests each HTTP process answered per second with metrics off, as a share of its second.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench import product
from bench.corpora import Corpus, scratch_dir
from bench.errors import BenchError
from bench.figures_edge import SITE, _wrk, build_site
from bench.measure import TreeSampler, alternate, summarize, tree
from bench.report import Figure, figure

PATH = "index.html"
TARGET = 0.98  # metrics on keeps at least 98% of the requests per second
EXTRA = ("--http-workers", str(os.cpu_count() or 1))  # as figure 6


def _counted(home: Path) -> int:
    """The edge requests metrics.db holds (0 when the file was never made)."""
    path = home / "metrics.db"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT SUM(value) FROM counters WHERE name = ?",
                         ("pushsite_edge_requests_total",)).fetchone()
    return int(row[0] or 0)


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and every descendant alive now."""
    total = 0
    for each in tree(pid):
        try:
            with open(f"/proc/{each}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return total / _TICKS


def _run(server: product.Server, seconds: int) -> tuple[float, float]:
    """One wrk run: requests per second, and the server's CPU microseconds per request."""
    before = cpu_seconds(server.pid)
    rps, _ = _wrk(server.port, PATH, seconds)
    used = cpu_seconds(server.pid) - before
    return rps, used / (rps * seconds) * 1e6


def count_ns(calls: int = 1_000_000) -> float:
    """Nanoseconds one `Tally.count` takes (what metrics on adds to every edge request), less
    the loop's own cost; the best of three."""
    from pushsite.state.counters import Tally

    tally = Tally()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter_ns()
        for _ in range(calls):
            tally.count(200, True)
        counting = time.perf_counter_ns() - started
        started = time.perf_counter_ns()
        for _ in range(calls):
            pass
        best = min(best, (counting - (time.perf_counter_ns() - started)) / calls)
    return best


def _settled(pid: int, idle: float = 0.05, every: float = 0.5, limit: float = 60.0) -> None:
    """Wait until the process tree uses less than `idle` of a core (started up)."""
    deadline = time.monotonic() + limit
    used = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(every)
        now = cpu_seconds(pid)
        if now - used < idle * every:
            return
        used = now
    raise BenchError(f"pushsite serve (pid {pid}) was still busy {limit:.0f} s after start")


def _fresh_run(home: Path, metrics: str, seconds: int, peaks: list[float]
               ) -> tuple[float, float]:
    """A new `pushsite serve` for one run: two long-lived servers differ by where the kernel
    put them (an A/A run of two metrics-off servers differed by 18% in req/s), a new pair of
    processes per run spreads that over both sides. One second of wrk warms it first."""
    env = {"PUSHSITE_METRICS": metrics}
    with product.Server(home, EXTRA, env=env) as server, \
            TreeSampler(server.pid, 0.05) as rss:
        _settled(server.pid)  # its HTTP processes still import after the port answers
        _wrk(server.port, PATH, 1)
        found = _run(server, seconds)
    peaks.append(rss.peak_mb)
    return found


def edge_metrics(corpus: Corpus, runs: int, seconds: int) -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="edge-metrics-", dir=scratch_dir()))
    try:
        _, bundle = build_site(corpus, root)
        homes = {}
        for side in ("on", "off"):
            homes[side] = root / side
            homes[side].mkdir()
            product.deploy(bundle, homes[side], site=SITE)
        on_peaks: list[float] = []
        off_peaks: list[float] = []
        subj, base = alternate(lambda: _fresh_run(homes["on"], "1", seconds, on_peaks),
                               lambda: _fresh_run(homes["off"], "0", seconds, off_peaks), runs)
        # the servers have stopped: their last counts are flushed (Tally.stop)
        counted = _counted(homes["on"])
        asked = sum(rps for rps, _ in subj) * seconds
        if counted < asked * 0.9 or _counted(homes["off"]):
            raise BenchError(f"metrics on counted {counted} edge requests of about "
                             f"{asked:.0f}, metrics off {_counted(homes['off'])}: the two "
                             "servers do not differ as this figure assumes")
        load = os.getloadavg()
        paired = statistics.median(s[0] / b[0] for s, b in zip(subj, base, strict=True))
        cost = count_ns()
        workers = int(EXTRA[1])
        off_rps = statistics.median(b[0] for b in base)
        extras: dict[str, float | int | str] = {
            "paired_ratio_median": round(paired, 3), "count_ns": round(cost, 1),
            "count_share_bound": round(cost * off_rps / workers / 1e9, 5)}
        found = figure(
            "edge_metrics_requests_per_s", "edge-html", summarize([s[0] for s in subj]),
            "req/s", baseline=summarize([b[0] for b in base]), baseline_name="metrics off",
            target=TARGET, target_op=">=", peak_rss_mb=max(on_peaks),
            baseline_peak_rss_mb=max(off_peaks),
            note=f"{PATH}, {seconds} s each (a new serve per run, warmed 1 s), serve "
                 f"{' '.join(EXTRA)}; {counted} requests "
                 f"counted in metrics.db; load average {load[0]:.2f} {load[1]:.2f} "
                 f"{load[2]:.2f} at the end")
        found.extra.update(extras)
        cpu = figure(
            "edge_metrics_cpu_per_request", "edge-html", summarize([s[1] for s in subj]), "µs",
            baseline=summarize([b[1] for b in base]), baseline_name="metrics off",
            target=2 - TARGET, target_op="<=", note="the server's process tree, user + system")
        cpu.extra["paired_ratio_median"] = round(statistics.median(
            s[1] / b[1] for s, b in zip(subj, base, strict=True)), 3)
        return [found, cpu]
    finally:
        shutil.rmtree(root, ignore_errors=True)
