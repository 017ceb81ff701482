"""Figure 6d: the edge of the serverless shape, `pushsite serve` over S3 (SeaweedFS) and
DynamoDB (moto), against the same serve over the local store and SQLite, in the same run.

`wrk` (2 threads, 50 connections, gzip accepted) asks both for the same small HTML page in
turns. A relay in front of moto (bench/awscalls.py) counts the GetItem calls on the site's
production alias during each DynamoDB run: the edge keeps an alias answer at most 1 s
(edge/hosts.py), so the reads follow the clock (about one a second per HTTP process), not the
request rate. Without that cache every request made one consistent read (issue 14: 50
requests, 50 reads), i.e. 10,000 reads per 10,000 requests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from bench import product, tools
from bench.awscalls import DynamoCalls
from bench.corpora import Corpus, scratch_dir
from bench.errors import BenchError
from bench.figures_edge import CONNECTIONS, SITE, build_site, parse_wrk
from bench.figures_s3 import _CREDS, BUCKET, Weed
from bench.measure import TreeSampler, alternate, summarize
from bench.report import Figure, figure

_TOTAL = re.compile(r"(\d+) requests in")


def missing() -> str:
    """Why the figure cannot run, or ""."""
    try:
        import moto  # noqa: F401
    except ImportError:
        return "moto is not installed (pip install 'moto[server]')"
    return product.missing_command("serve", option="--state")


class _Moto:
    """moto's standalone server on a free loopback port."""

    def __init__(self, root: Path) -> None:
        self.port = product.free_port()
        self.log = open(root / "moto.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **_CREDS})
        product.wait_port(self.port, self.proc, timeout=60)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        product.stop(self.proc)
        self.log.close()


def _wrk(port: int, seconds: int) -> tuple[float, int]:
    """Requests per second and the number of requests of one wrk run on the page."""
    cmd = [tools.require("wrk"), "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
           "-H", "Accept-Encoding: gzip", "-H", f"Host: {SITE}.localhost",
           f"http://127.0.0.1:{port}/index.html"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or "Non-2xx" in proc.stdout:
        raise BenchError(f"wrk on port {port} failed: {(proc.stderr or proc.stdout)[-300:]}")
    total = _TOTAL.search(proc.stdout)
    if not total:
        raise BenchError(f"wrk printed no request count: {proc.stdout[-300:]!r}")
    return parse_wrk(proc.stdout)[0], int(total.group(1))


def aws_edge(corpus: Corpus, runs: int, seconds: int) -> list[Figure]:
    """Requests/s of the edge on S3 + DynamoDB against local + SQLite; alias reads per
    10,000 requests over DynamoDB."""
    root = Path(tempfile.mkdtemp(prefix="awsedge-", dir=scratch_dir()))
    weed = moto = calls = None
    try:
        _docroot, bundle = build_site(corpus, root)
        weed, moto = Weed(root), _Moto(root)
        calls = DynamoCalls(moto.endpoint)
        table = f"bench-{uuid.uuid4().hex[:8]}"
        aws = {**_CREDS, "PUSHSITE_STORE": f"s3://{BUCKET}/edge?endpoint={weed.endpoint}",
               "PUSHSITE_STATE": f"dynamodb://{table}?endpoint={calls.url}&create=1"}
        homes = {name: root / f"home-{name}" for name in ("aws", "local")}
        for name, home in homes.items():
            home.mkdir()
            product.deploy(bundle, home, site=SITE, env=aws if name == "aws" else None)
        extra: tuple[str, ...] = ()
        if not product.missing_command("serve", option="--http-workers"):
            extra = ("--http-workers", str(os.cpu_count() or 1))
        reads: list[float] = []  # per 10,000 requests
        per_second: list[float] = []
        with product.Server(homes["aws"], extra, env=aws) as on_aws, \
                product.Server(homes["local"], extra) as local, \
                TreeSampler(on_aws.pid, 0.05) as aws_memory, \
                TreeSampler(local.pid, 0.05) as local_memory:
            on_aws.wait_content(SITE, "index.html", b"<")
            local.wait_content(SITE, "index.html", b"<")

            def subject() -> float:
                calls.reset()
                rate, total = _wrk(on_aws.port, seconds)
                alias = calls.count("GetItem", f"site#{SITE}",
                                    "alias#production")
                reads.append(alias * 10_000 / max(total, 1))
                per_second.append(alias / seconds)
                return rate

            subj, base = alternate(subject, lambda: _wrk(local.port, seconds)[0], runs)
        workers = " ".join(extra) or "(default workers)"
        processes = int(extra[1]) if extra else 1
        return [
            figure("edge_requests_per_s", "s3-dynamodb-html", summarize(subj), "req/s",
                   baseline=summarize(base), baseline_name="local store + SQLite",
                   peak_rss_mb=aws_memory.peak_mb, baseline_peak_rss_mb=local_memory.peak_mb,
                   note=f"{CONNECTIONS} connections, {seconds} s each; SeaweedFS + moto "
                   f"DynamoDB through a counting relay; serve {workers}"),
            figure("edge_state_reads_per_10k", "s3-dynamodb-html", summarize(reads), "reads",
                   baseline=summarize([10_000.0]), baseline_name="uncached (1 per request)",
                   peak_rss_mb=aws_memory.peak_mb,
                   note="GetItem on the production alias per 10,000 requests; the uncached "
                   "baseline is by construction (one consistent read per request)"),
            figure("edge_state_reads_per_s", "s3-dynamodb-html", summarize(per_second),
                   "reads/s", target=float(processes) + 1, target_of="value",
                   target_op="<=", peak_rss_mb=aws_memory.peak_mb,
                   note=f"GetItem on the one host's alias per second under load; at most one a "
                   f"second per HTTP process ({processes}), plus a boundary read"),
        ]
    finally:
        for part in (calls, moto, weed):
            if part is not None:
                part.close()
        shutil.rmtree(root, ignore_errors=True)
