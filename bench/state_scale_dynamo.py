"""Issue 20, state at scale on DynamoDB: what each listing asks of the table, counted.

`python -m bench.state_scale_dynamo [--sites 300] [--deployments 3000]`

Starts moto's standalone server with a counting relay in front (bench/awscalls.py), writes a
population through DynamoState's own methods, then runs every listing of
bench/state_scale.py once through the relay and prints, for each, the DynamoDB calls it made
by operation. What is checked is the shape of the calls, not their speed: a listing is one
Query on the table or an index (a page of it), or a batch of item reads, never a Scan.

Why this size (chosen where the issue is silent): moto is an in-memory Python model whose
Query time grows with the table (~700 ms a Query at 3,000 deployments on a loaded machine),
so its latency says nothing about DynamoDB's; what the calls look like does not depend on the
size once a listing has more than a page to choose from. 300 sites are three pages of sites,
and 3,000 deployments put ~300 under the busiest site's key, so a listing that read a whole
partition or the whole index would show as extra Query pages; writing them took 3 minutes
under load. Results: bench/results/state_scale_dynamo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import product
from bench.awscalls import DynamoCalls
from bench.corpora import scratch_dir
from bench.figures_s3 import _CREDS
from bench.state_scale import _RARE, _WORDS
from pushsite.ids import new_id
from pushsite.model import PRODUCTION, Deployment, LogLine, Site, Status
from pushsite.state import SITE_PAGE, every_site
from pushsite.state.dynamodb import DynamoState
from pushsite.web.dashboard import SITES_SHOWN

_OPERATIONS = ("Query", "Scan", "GetItem", "BatchGetItem")


def generate(state: DynamoState, sites: int, deployments: int, seed: int = 20) -> None:
    """Sites, deployments (skewed as in state_scale.py), a production alias a site and one
    log line a deployment, written through the state's own methods."""
    rng = random.Random(seed)
    names = [f"site-{n:05d}" for n in range(sites)]
    for name in names:
        state.put_site(Site(name))
    start = time.time() - 2 * 365 * 86400
    step = 2 * 365 * 86400 / deployments
    latest: dict[str, str] = {}
    running = set(rng.sample(range(deployments // 2, deployments), 20))
    for n in range(deployments):
        site = names[min(int(sites * rng.random() ** 2.5), sites - 1)]
        branch = "main" if rng.random() < 0.7 else f"feature-{rng.randrange(20)}"
        status = Status.RUNNING if n in running else rng.choice(
            (Status.LIVE, Status.READY, Status.FAILED))
        deployment = Deployment(new_id(start + n * step), site, branch, status=status,
                                created=start + n * step, message="a change")
        state.create_deployment(deployment)
        words = rng.sample(_WORDS, 5) + ([rng.choice(_RARE)] if rng.random() < 0.01 else [])
        state.append_logs([LogLine(deployment.id, deployment.created, "info", "deploy",
                                   " ".join(words), {})])
        if branch == "main":
            latest[site] = deployment.id
    for site, deployment_id in latest.items():
        state.move_alias(site, PRODUCTION, deployment_id, deployment_id)


def listings(state: DynamoState, rng: random.Random) -> dict[str, Callable[[], object]]:
    """The listings of bench/state_scale.py, on this state."""
    names = [s.name for s in every_site(state)]
    busy = names[:20]
    ids = [d.id for d in state.list_deployments(limit=500)]

    def dashboard_home() -> None:
        page = state.list_sites(after=rng.choice(names), limit=SITES_SHOWN)
        state.site_heads([record.name for record in page])

    def keyset_page() -> None:
        first = state.list_deployments(busy[0], limit=51)
        state.list_deployments(busy[0], limit=51, before=first[-1].id)

    return {
        "api_sites (list_sites, a page of 100)": lambda: state.list_sites(
            after=rng.choice(names), limit=SITE_PAGE),
        "dashboard_sites_with_newest (a page of 50)": dashboard_home,
        "site_deployments_page (limit 50, busiest)": lambda: state.list_deployments(
            busy[0], limit=50),
        "site_deployments_next_page (keyset)": keyset_page,
        "site_branch_deployments": lambda: state.list_deployments(busy[0], branch="main",
                                                                  limit=21),
        "site_status_deployments (live)": lambda: state.list_deployments(
            busy[0], status=Status.LIVE, limit=50),
        "all_deployments_newest": lambda: state.list_deployments(limit=50),
        "running (recovery, metrics)": lambda: state.list_deployments(status=Status.RUNNING,
                                                                      limit=100),
        "find_deployments (id prefix)": lambda: state.find_deployments(rng.choice(ids)[:12]),
        "site_aliases": lambda: state.list_aliases(busy[0]),
        "deployment_log": lambda: state.get_logs(rng.choice(ids)),
        "log_search (rare word, busiest)": lambda: state.search_logs(busy[0], _RARE[0]),
        "log_search (common word, busiest)": lambda: state.search_logs(busy[0], _WORDS[0]),
        "every_site (walk, all pages)": lambda: sum(1 for _ in every_site(state)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.state_scale_dynamo",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=300)
    parser.add_argument("--deployments", type=int, default=3000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                             "state_scale_dynamo.json"))
    args = parser.parse_args(argv)
    os.environ.update(_CREDS)
    root = Path(tempfile.mkdtemp(prefix="dynamo-scale-", dir=scratch_dir()))
    port = product.free_port()
    with (root / "moto.log").open("wb") as log:
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
        try:
            product.wait_port(port, moto, timeout=60)
            results = _run(f"http://127.0.0.1:{port}", args.sites, args.deployments)
        finally:
            product.stop(moto)
    doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sites": args.sites,
           "deployments": args.deployments, "listings": results}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def _run(endpoint: str, sites: int, deployments: int) -> dict[str, dict[str, Any]]:
    began = time.monotonic()
    writer = DynamoState.from_url(f"dynamodb://scale?endpoint={endpoint}&create=1")
    generate(writer, sites, deployments)
    print(f"generated {sites} sites, {deployments} deployments in "
          f"{time.monotonic() - began:.0f} s", file=sys.stderr)
    results: dict[str, dict[str, Any]] = {}
    with DynamoCalls(endpoint) as calls:
        state = DynamoState.from_url(f"dynamodb://scale?endpoint={calls.url}")
        for name, call in listings(state, random.Random(7)).items():
            calls.reset()
            began = time.perf_counter()
            call()
            took = (time.perf_counter() - began) * 1000
            made = Counter({op: calls.count(op) for op in _OPERATIONS if calls.count(op)})
            results[name] = {"calls": dict(made), "moto_ms": round(took, 1)}
            verdict = "SCAN" if made["Scan"] else ""
            shown = ", ".join(f"{op} {n}" for op, n in made.items())
            print(f"{name:42} {shown:36} (moto {took:7.1f} ms) {verdict}")
    return results


if __name__ == "__main__":
    raise SystemExit(main())
