"""Figure 6m: what counting for /metrics costs the edge (issue 19: at most 2% of its req/s).

Two `pushsite serve`s with the same site and the same `--http-workers` as figure 6, one with
metrics on (the default: each request adds 1 to a per-process integer slot, edge/respond.py
and state/counters.Tally, written to metrics.db every 2 s) and one with PUSHSITE_METRICS=0.
`wrk` asks each for the small HTML page (the highest request rate, so where a per-request cost
shows most) in alternating runs, flipping who goes first; the figure is the ratio of medians.
After the runs the metrics-on home's metrics.db must hold the requests wrk made, and the
other none: a figure of two servers that both count (or neither) would say nothing.

On a shared machine one run's rate swings by half, more than the 2% asked for, so the figure
also keeps the median of the paired ratios (each run with metrics on over the run of metrics
off next to it) and a bound that no neighbour's load moves: the nanoseconds the hot path's
counting costs (`Tally.count`, timed here) times the requests each HTTP process answered per
second with metrics off, as a share of that process's second.
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
from bench.measure import TreeSampler, alternate, summarize
from bench.report import Figure, figure

PATH = "index.html"
TARGET = 0.98  # metrics on keeps at least 98% of the requests per second


def _counted(home: Path) -> int:
    """The edge requests metrics.db holds (0 when the file was never made)."""
    path = home / "metrics.db"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT SUM(value) FROM counters WHERE name = ?",
                         ("pushsite_edge_requests_total",)).fetchone()
    return int(row[0] or 0)


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


def edge_metrics(corpus: Corpus, runs: int, seconds: int) -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="edge-metrics-", dir=scratch_dir()))
    try:
        _, bundle = build_site(corpus, root)
        homes = {}
        for side in ("on", "off"):
            homes[side] = root / side
            homes[side].mkdir()
            product.deploy(bundle, homes[side], site=SITE)
        extra: tuple[str, ...] = ("--http-workers", str(os.cpu_count() or 1))
        with product.Server(homes["on"], extra, env={"PUSHSITE_METRICS": "1"}) as on, \
                product.Server(homes["off"], extra, env={"PUSHSITE_METRICS": "0"}) as off, \
                TreeSampler(on.pid, 0.05) as on_rss, TreeSampler(off.pid, 0.05) as off_rss:
            counted_before = _counted(homes["on"])
            subj, base = alternate(lambda: _wrk(on.port, PATH, seconds),
                                   lambda: _wrk(off.port, PATH, seconds), runs)
        # the servers have stopped: their last counts are flushed (Tally.stop)
        counted = _counted(homes["on"]) - counted_before
        asked = sum(rps for rps, _ in subj) * seconds
        if counted < asked * 0.9 or _counted(homes["off"]):
            raise BenchError(f"metrics on counted {counted} edge requests of about "
                             f"{asked:.0f}, metrics off {_counted(homes['off'])}: the two "
                             "servers do not differ as this figure assumes")
        load = os.getloadavg()
        paired = statistics.median(s[0] / b[0] for s, b in zip(subj, base, strict=True))
        cost = count_ns()
        workers = int(extra[1])
        off_rps = statistics.median(b[0] for b in base)
        extras: dict[str, float | int | str] = {
            "paired_ratio_median": round(paired, 3), "count_ns": round(cost, 1),
            "count_share_bound": round(cost * off_rps / workers / 1e9, 5)}
        found = figure(
            "edge_metrics_requests_per_s", "edge-html", summarize([s[0] for s in subj]),
            "req/s", baseline=summarize([b[0] for b in base]), baseline_name="metrics off",
            target=TARGET, target_op=">=", peak_rss_mb=on_rss.peak_mb,
            baseline_peak_rss_mb=off_rss.peak_mb,
            note=f"{PATH}, {seconds} s each, serve {' '.join(extra)}; {counted} requests "
                 f"counted in metrics.db; load average {load[0]:.2f} {load[1]:.2f} "
                 f"{load[2]:.2f} at the end")
        found.extra.update(extras)
        return [found]
    finally:
        shutil.rmtree(root, ignore_errors=True)
