"""/metrics on a real `pushsite serve --http-workers 2`: scraped during and after deploys made by
CLI processes, parsed with prometheus_client's own parser; every process's counts add up
whichever HTTP process answers; refused without an admin token unless the address is allowed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from support.servers import Server, start_server

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Server, token: str | None) -> Samples:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    # a new connection each time: any of the HTTP processes may answer
    answer = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_add_up_across_processes_and_need_an_admin_token(
        _isolated_env: Path, make_site: object) -> None:
    server = start_server(_isolated_env, args=("--http-workers", "2"))
    try:
        admin = server.new_token("--name", "ops", "--admin")
        deployer = server.new_token("--name", "ci")
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        bad = httpx.get(f"{server.url}/metrics", headers={"authorization": "Bearer nope"})
        assert bad.status_code == 401
        forbidden = httpx.get(f"{server.url}/metrics",
                              headers={"authorization": f"Bearer {deployer}"})
        assert forbidden.status_code == 403 and "admin" in forbidden.text
        before = scrape(server, admin)
        assert value(before, "pushsite_deployments_total", status="live", source="cli") == 0
        assert value(before, "pushsite_queue_depth") == 0

        # scraped all along while three CLI processes deploy
        seen: list[Samples] = []
        stop = threading.Event()

        def scraping() -> None:
            while not stop.is_set():
                seen.append(scrape(server, admin))

        thread = threading.Thread(target=scraping)
        thread.start()
        try:
            assert server.cli("sites", "create", "blog").returncode == 0
            for n in range(3):
                folder = make_site({"index.html": f"<h1>v{n}</h1>",  # type: ignore[operator]
                                    "big.css": "body{color:red}" * 400})
                done = server.cli("deploy", str(folder), "--site", "blog")
                assert done.returncode == 0, done.stderr
        finally:
            stop.set()
            thread.join()
        assert len(seen) >= 3
        counts = [value(s, "pushsite_deployments_total", status="live", source="cli")
                  for s in seen]
        assert counts == sorted(counts)  # never goes back, whichever process answered

        # edge requests in both HTTP processes (one connection each: the kernel spreads them)
        requests = 60
        statuses = []
        for n in range(requests):
            path = "/" if n % 3 else "/missing"
            statuses.append(httpx.get(f"{server.url}{path}", headers={"host": "blog.localhost"},
                                      timeout=10).status_code)
        assert statuses.count(200) == 40 and statuses.count(404) == 20
        deadline = time.monotonic() + 15
        while True:  # the edge adds its counts every 2 s
            after = scrape(server, admin)
            edge = {code: sum(value(after, "pushsite_edge_requests_total", code=code, cache=c)
                              for c in ("hit", "miss")) for code in ("2xx", "4xx")}
            if edge == {"2xx": 40, "4xx": 20} or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert edge == {"2xx": 40, "4xx": 20}
        hits = sum(value(after, "pushsite_edge_requests_total", code=code, cache="hit")
                   for code in ("2xx", "4xx"))
        assert hits >= 50  # all but the first of each path in each process
        assert value(after, "pushsite_edge_cache_hit_ratio") == hits / 60

        assert value(after, "pushsite_deployments_total", status="live", source="cli") == 3
        assert value(after, "pushsite_blobs_total", kind="new") >= 4
        assert value(after, "pushsite_blobs_total", kind="reused") >= 2  # big.css, twice
        assert value(after, "pushsite_deploy_bytes_read_total") > 3 * 6000
        assert value(after, "pushsite_deploy_bytes_stored_total") > 0
        for stage in ("read", "activate", "total"):
            assert value(after, "pushsite_deploy_stage_seconds_count", stage=stage) == 3
            assert value(after, "pushsite_deploy_stage_seconds_bucket", stage=stage,
                         le="+Inf") == 3
            assert value(after, "pushsite_deploy_stage_seconds_sum", stage=stage) > 0

        # a failed deploy counts as failed; the same numbers from every process
        broken = server.cli("deploy", "-", "--site", "blog", input=b"not gzip")
        assert broken.returncode != 0
        final = [scrape(server, admin) for _ in range(6)]
        assert {value(s, "pushsite_deployments_total", status="failed", source="cli")
                for s in final} == {1}
    finally:
        server.stop()


def test_a_configured_address_scrapes_without_a_token_and_off_means_no_metrics(
        _isolated_env: Path) -> None:
    allowed = start_server(_isolated_env, extra_env={"PUSHSITE_METRICS_ALLOW": "127.0.0.0/8"})
    try:
        assert "pushsite_queue_depth 0.0" in httpx.get(f"{allowed.url}/metrics").text
    finally:
        allowed.stop()
    elsewhere = start_server(_isolated_env, extra_env={"PUSHSITE_METRICS_ALLOW": "10.0.0.0/8"})
    try:
        assert httpx.get(f"{elsewhere.url}/metrics").status_code == 401
    finally:
        elsewhere.stop()
    off = start_server(_isolated_env, extra_env={"PUSHSITE_METRICS": "0",
                                                 "PUSHSITE_METRICS_ALLOW": "127.0.0.0/8"})
    try:
        assert httpx.get(f"{off.url}/metrics").status_code == 404
    finally:
        off.stop()


def test_an_http_process_that_stops_adds_its_last_counts(
        _isolated_env: Path, make_site: object) -> None:
    """The edge writes its counts every 2 s; what it counted since is written when the process
    stops (SIGTERM, as a restart or `pushsite serve`'s parent sends), not lost with it."""
    import sqlite3

    server = start_server(_isolated_env, args=("--http-workers", "2"))
    try:
        assert server.cli("sites", "create", "blog").returncode == 0
        folder = make_site()  # type: ignore[operator]
        assert server.cli("deploy", str(folder), "--site", "blog").returncode == 0
        for _ in range(200):  # new connections: both HTTP processes answer some
            answer = httpx.get(f"{server.url}/", headers={"host": "blog.localhost"}, timeout=10)
            assert answer.status_code == 200
    finally:
        server.stop()  # at once: most of the counts are still in the processes' slots
    with sqlite3.connect(_isolated_env / "metrics.db") as db:
        counted = db.execute("SELECT SUM(value) FROM counters WHERE name = ?",
                             ("pushsite_edge_requests_total",)).fetchone()[0]
    assert counted == 200
