"""Figure 6b: a big site served like a small one (issue 20).

One `pushsite serve` holds two sites: tiny200k (200,000 files, the file limit; its manifest is
read through its index by path) and the small corpus. Each request asks a path not asked
before, so every one is a miss of the edge's caches (plans and answers): the big site's p99
against the small site's in the same run (target: at most 5 ms), and the small site's p99
while a second client sends the big site misses, against the same with the second client
asking the small site (the same load without the big site: must not move).
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time

import httpx

from bench import corpora, product
from bench.measure import summarize
from bench.report import Figure, figure

REQUESTS = 2000


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else values[0]


def _timed(server: product.Server, client: httpx.Client, site: str, paths: list[str],
           out: list[float]) -> None:
    for path in paths:
        started = time.perf_counter()
        response = server.get(client, site, path)
        out.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{site}/{path} answered {response.status_code}")


def bigsite(runs: int) -> list[Figure]:
    big = corpora.get("tiny200k")
    small = corpora.get("small")
    assert small.repo is not None
    listed = subprocess.run(["git", "ls-files", "*.html"], cwd=small.repo, check=True,
                            capture_output=True, text=True).stdout.split()
    small_paths = [p for p in listed if (small.repo / p).is_file()]
    home = product.fresh_home("bigsite")
    try:
        product.deploy(big.bundle, home, site="big")
        product.deploy(small.bundle, home, site="small")
        big_p99s, small_p99s, alone, beside = [], [], [], []
        with product.Server(home) as server, httpx.Client(timeout=10.0) as client:
            server.get(client, "big", "d0000/p00.html")  # the first read of its index head
            server.get(client, "small", small_paths[0])
            for run in range(runs):
                start = 1 + run * REQUESTS
                paths = [f"d{i // 100:04d}/p{i % 100:02d}.html"
                         for i in range(start, start + REQUESTS)]
                big_ms: list[float] = []
                small_ms: list[float] = []
                _timed(server, client, "big", paths, big_ms)
                # the small site's own pages, each new to this run's query string
                mine = [f"{p}?r={run}" for p in small_paths[:REQUESTS // 2]]
                _timed(server, client, "small", mine, small_ms)
                big_p99s.append(_p99(big_ms))
                small_p99s.append(_p99(small_ms))
                # the small site while a second client sends misses: to the small site
                # itself (the baseline: the same load), then to the big site
                half = small_paths[:REQUESTS // 2]
                more = [f"d{i // 100:04d}/p{i % 100:02d}.html"
                        for i in range(100_000 + start, 100_000 + start + REQUESTS)]
                for other_site, other_paths, into, tag in (
                        ("small", [f"{p}?o={run}" for p in half], alone, "a"),
                        ("big", more, beside, "b")):
                    other: list[float] = []
                    during: list[float] = []
                    with httpx.Client(timeout=10.0) as second:
                        pusher = threading.Thread(target=_timed, args=(
                            server, second, other_site, other_paths, other))
                        pusher.start()
                        _timed(server, client, "small", [f"{p}?{tag}={run}" for p in half],
                               during)
                        pusher.join()
                    into.append(_p99(during))
    finally:
        product.remove(home)
    return [
        figure("edge_miss_p99_200k_files", "tiny200k", summarize(big_p99s), "ms",
               baseline=summarize(small_p99s), baseline_name="small site misses, p99",
               target=5.0, target_of="value",
               note=f"{REQUESTS} new paths per run, one client, sequential"),
        figure("edge_other_site_p99_beside_200k", "small", summarize(beside), "ms",
               baseline=summarize(alone),
               baseline_name="the same, the second client asking the small site",
               note="p99 while a second client sends the 200,000-file site new paths"),
    ]
