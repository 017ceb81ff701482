"""Issue 20, part 4: the state's listings with 10,000 sites and 1,000,000 deployments.

`python -m bench.state_scale [--sites 10000] [--deployments 1000000] [--logs 2] [--samples 200]`

Writes a SQLite state of that size (the schema made by pushsite's own SqliteState, the rows
added in bulk, cached under the bench cache by size), then times every listing the API and
the dashboard make, through SqliteState's own methods, `--samples` times each with random
sites and ids, and prints p50 / p95 / max against the issue's target (p95 <= 50 ms).
Results go to bench/results/state_scale.json.

Shape of the data (chosen where the issue is silent): deployments spread over two years,
sites drawn with a skew (the busiest site has ~200 times the median's deployments), 70% on
`main`, the rest on 20 feature branches a site; statuses mostly live/ready/failed, with 20
running and 50 queued in all; a production alias and two branch aliases a site; `--logs`
log lines a deployment (40 is typical; the default 2 keeps generation to minutes, and the
search figures say how many lines they searched).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.corpora import cache_dir
from pushsite.ids import new_id
from pushsite.model import Deployment, Status
from pushsite.state import SITE_PAGE, every_site
from pushsite.state.sqlite import SqliteState
from pushsite.web.dashboard import SITES_SHOWN

TARGET_MS = 50.0
YEARS = 2
_WORDS = ("deployed", "files", "read", "blobs", "reused", "optimised", "brotli", "variants",
          "alias", "moved", "production", "preview", "build", "started", "finished")
_RARE = ("timeout", "upstream", "checksum", "refused", "quota")


def generate(path: Path, sites: int, deployments: int, logs: int, seed: int = 20) -> None:
    """A state of `sites` sites and `deployments` deployments, written in bulk."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    for leftover in part.parent.glob(part.name + "*"):
        leftover.unlink()
    SqliteState(part).close()  # the schema, exactly as pushsite makes it
    db = sqlite3.connect(part, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    names = [f"site-{n:05d}" for n in range(sites)]
    start = time.time() - YEARS * 365 * 86400
    db.execute("BEGIN")
    db.executemany("INSERT INTO sites (name, production_branch, created) VALUES (?, 'main', ?)",
                   [(name, start) for name in names])
    columns = [row[1] for row in db.execute("PRAGMA table_info(deployments)")]
    marks = ", ".join("?" for _ in columns)
    insert = f"INSERT INTO deployments ({', '.join(repr(c) for c in columns)}) VALUES ({marks})"
    log_insert = ("INSERT INTO logs (deployment_id, site, seq, time, level, stage, message, "
                  "fields) VALUES (?, ?, ?, ?, 'info', ?, ?, '{}')")
    step = YEARS * 365 * 86400 / deployments
    latest: dict[tuple[str, str], str] = {}
    recent = rng.sample(range(max(deployments - 5000, deployments // 2), deployments), 70)
    special = {n: Status.QUEUED if k < 50 else Status.RUNNING for k, n in enumerate(recent)}
    rows: list[tuple[Any, ...]] = []
    lines: list[tuple[Any, ...]] = []
    for n in range(deployments):
        created = start + n * step
        site = names[min(int(sites * rng.random() ** 2.5), sites - 1)]
        branch = "main" if rng.random() < 0.7 else f"feature-{rng.randrange(20)}"
        status = special.get(n) or rng.choice((Status.LIVE, Status.READY, Status.READY,
                                               Status.FAILED))
        deployment = Deployment(new_id(created), site, branch, status=status,
                                commit=f"{rng.getrandbits(160):040x}", message="a change",
                                source="git", created=created, started=created + 1,
                                finished=created + 9, files=rng.randrange(50, 5000),
                                progress="done")
        doc = asdict(deployment)
        doc["status"] = str(status)
        rows.append(tuple(doc[c] for c in columns))
        latest[(site, branch)] = deployment.id
        for seq in range(1, logs + 1):
            words = rng.sample(_WORDS, 5)
            if rng.random() < 0.001:
                words.append(rng.choice(_RARE))
            lines.append((deployment.id, site, seq, created + seq, "deploy", " ".join(words)))
        if len(rows) >= 20_000:
            db.executemany(insert, rows)
            db.executemany(log_insert, lines)
            rows.clear()
            lines.clear()
    db.executemany(insert, rows)
    db.executemany(log_insert, lines)
    aliases = [(site, "production" if branch == "main" else f"branch/{branch}", dep, dep, start)
               for (site, branch), dep in latest.items()
               if branch == "main" or branch in ("feature-1", "feature-2")]
    db.executemany("INSERT INTO aliases VALUES (?, ?, ?, ?, ?)", aliases)
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()
    part.rename(path)


def _time(call: Callable[[], object], samples: int) -> dict[str, float]:
    """Wall time, and this process's CPU time beside it: on a loaded machine (2 cores shared
    by a dozen processes) most of a slow sample's wall time is waiting for a core."""
    took, cpu = [], []
    for _ in range(samples):
        began, began_cpu = time.perf_counter(), time.process_time()
        call()
        took.append((time.perf_counter() - began) * 1000)
        cpu.append((time.process_time() - began_cpu) * 1000)
    took.sort()
    cpu.sort()
    p95 = int(0.95 * (len(took) - 1))
    return {"p50_ms": statistics.median(took), "p95_ms": took[p95], "max_ms": took[-1],
            "cpu_p50_ms": statistics.median(cpu), "cpu_p95_ms": cpu[p95],
            "samples": len(took)}


def listings(state: SqliteState, rng: random.Random) -> dict[str, Callable[[], object]]:
    """Every listing the API and the dashboard make, as one call each (web/api.py,
    web/dashboard.py, service/verbs.py: the callers named beside each)."""
    names = [s.name for s in every_site(state)]
    busy = names[:50]  # the skew puts most deployments on the first sites
    some = state.list_deployments(limit=2000)
    ids = [d.id for d in some]

    def site() -> str:
        return rng.choice(busy) if rng.random() < 0.5 else rng.choice(names)

    def sites_page() -> None:  # api.py /api/sites?after=: a page of 100 anywhere in the list
        state.list_sites(after=rng.choice(names), limit=SITE_PAGE)

    def dashboard_home() -> None:  # dashboard.py: a page of sites with their newest and live
        page = state.list_sites(after=rng.choice(names), limit=SITES_SHOWN)
        state.site_heads([record.name for record in page])

    def keyset_page() -> None:
        name = rng.choice(busy)
        first = state.list_deployments(name, limit=51)
        state.list_deployments(name, limit=51, before=first[-1].id)

    return {
        "api_sites (list_sites, a page of 100)": sites_page,
        "dashboard_sites_with_newest (a page of 50)": dashboard_home,
        "site_deployments_page (limit 50)": lambda: state.list_deployments(site(), limit=50),
        "site_deployments_next_page (keyset)": keyset_page,
        "site_branch_deployments": lambda: state.list_deployments(site(), branch="main",
                                                                  limit=21),
        "site_status_deployments (live)": lambda: state.list_deployments(
            site(), status=Status.LIVE, limit=50),
        "all_deployments_newest": lambda: state.list_deployments(limit=50),
        "running (recovery, metrics)": lambda: state.list_deployments(status=Status.RUNNING,
                                                                      limit=100),
        "queued (metrics)": lambda: state.list_deployments(status=Status.QUEUED, limit=100),
        "find_deployments (id prefix)": lambda: state.find_deployments(rng.choice(ids)[:6]),
        "site_aliases": lambda: state.list_aliases(site()),
        "deployment_log": lambda: state.get_logs(rng.choice(ids)),
        "log_search (rare word)": lambda: state.search_logs(site(), rng.choice(_RARE)),
        "log_search (common word)": lambda: state.search_logs(site(), rng.choice(_WORDS)),
        # the dashboard's search page 10 asks for 10 * 50 + 1 hits (dashboard.py)
        "log_search page 10 (common word)": lambda: state.search_logs(
            site(), rng.choice(_WORDS), limit=501),
        # not a listing: what prune's marks and a typo's hints walk (every page of sites)
        "every_site (walk, all pages)": lambda: sum(1 for _ in every_site(state)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.state_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--deployments", type=int, default=1_000_000)
    parser.add_argument("--logs", type=int, default=2, help="log lines a deployment")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--only", default="", help="listings whose name contains this")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "state_scale.json"))
    args = parser.parse_args(argv)
    path = cache_dir() / "state" / f"state-{args.sites}-{args.deployments}-{args.logs}.db"
    if not path.exists():
        began = time.monotonic()
        print(f"generating {path} ...", file=sys.stderr)
        generate(path, args.sites, args.deployments, args.logs)
        print(f"generated in {time.monotonic() - began:.0f} s", file=sys.stderr)
    state = SqliteState(path)
    results: dict[str, dict[str, float]] = {}
    try:
        rng = random.Random(7)
        for name, call in listings(state, rng).items():
            if args.only and args.only not in name:
                continue
            call()  # the first call warms the page cache, as a running server's would be
            samples = args.samples if "(walk" not in name else max(args.samples // 10, 5)
            results[name] = _time(call, samples)
            r = results[name]
            verdict = "met" if r["p95_ms"] <= TARGET_MS else "MISSED"
            if "(walk" in name:
                verdict = "(not a listing)"
            print(f"{name:40} p50 {r['p50_ms']:8.2f} ms  p95 {r['p95_ms']:8.2f} ms  "
                  f"max {r['max_ms']:8.2f} ms  cpu p50 {r['cpu_p50_ms']:6.2f} "
                  f"p95 {r['cpu_p95_ms']:6.2f} ms  {verdict}")
    finally:
        state.close()
    doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "sites": args.sites, "deployments": args.deployments, "log_lines": args.logs,
           "target_p95_ms": TARGET_MS, "load_average": _load(), "listings": results}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def _load() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


if __name__ == "__main__":
    raise SystemExit(main())
