"""`pushsite serve` as the edge of the serverless shape: blobs in SeaweedFS, state in moto's
DynamoDB, the DynamoDB calls counted by a relay in front of moto (bench/awscalls.py).

What the serve process may cost DynamoDB: one alias lookup per host per second at most
(edge/hosts.py); what it must still show: its own deploys at once, other processes' deploys
and rollbacks soon after (STALE_SECONDS), without a restart.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.awscalls import DynamoCalls
from support.api import Api
from support.aws_staging import make_bundle, wait_for
from support.servers import Server, start_server


@pytest.fixture
def calls(moto: str) -> Iterator[DynamoCalls]:
    with DynamoCalls(moto) as counting:
        yield counting


@pytest.fixture
def aws_env(calls: DynamoCalls, seaweed_url: str) -> dict[str, str]:
    table = f"pushsite-{uuid.uuid4().hex[:8]}"
    return {"PUSHSITE_STORE": seaweed_url,
            "PUSHSITE_STATE": f"dynamodb://{table}?endpoint={calls.url}&create=1"}


@pytest.fixture
def server(aws_env: dict[str, str], _isolated_env: Path) -> Iterator[Server]:
    srv = start_server(_isolated_env, extra_env=aws_env,
                       log=_isolated_env.parent / "serve.log")
    try:
        yield srv
    finally:
        srv.stop()


def _cli_ok(server: Server, *args: str) -> str:
    """`pushsite ARGS` in a process of its own, on the server's backends."""
    done = server.cli(*args)
    assert done.returncode == 0, done.stderr.decode()
    return done.stderr.decode() + done.stdout.decode()


def _site_folder(root: Path, title: str) -> Path:
    root.mkdir()
    (root / "index.html").write_text(f"<h1>{title}</h1>")
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_text(f"<p>docs of {title}</p>")
    (root / "style.css").write_text("body{color:red}" * 50)
    (root / "404.html").write_text(f"<p>lost in {title}</p>")
    return root


def _shows(server: Server, host: str, text: str) -> Callable[[], bool]:
    return lambda: text in server.get(host).text


def test_serve_on_seaweedfs_and_dynamodb_serves_deploys_and_rollbacks_of_other_processes(
        server: Server, tmp_path: Path) -> None:
    host = "blog.localhost"
    _cli_ok(server, "sites", "create", "blog")
    _cli_ok(server, "deploy", str(_site_folder(tmp_path / "v1", "first")), "--site", "blog")
    # deployed by the CLI's process: serve sees it within STALE_SECONDS, with no restart
    wait_for(_shows(server, host, "<h1>first</h1>"), "the first deploy to be served")
    page = server.get(host, "/docs/", headers={"Accept-Encoding": "gzip"})
    assert page.status_code == 200 and page.text == "<p>docs of first</p>"
    assert page.headers["content-type"].startswith("text/html")
    style = server.get(host, "/style.css", headers={"Accept-Encoding": "gzip"})
    assert style.headers.get("content-encoding") == "gzip"  # the stored variant, from SeaweedFS
    assert style.text == "body{color:red}" * 50
    redirect = server.get(host, "/docs")
    assert redirect.status_code in (301, 308) and redirect.headers["location"].endswith("/docs/")
    missing = server.get(host, "/nowhere")
    assert missing.status_code == 404 and "lost in first" in missing.text

    _cli_ok(server, "deploy", str(_site_folder(tmp_path / "v2", "second")), "--site", "blog")
    wait_for(_shows(server, host, "<h1>second</h1>"), "the second deploy to be served")
    assert "lost in second" in server.get(host, "/nowhere").text

    _cli_ok(server, "rollback", "blog")
    wait_for(_shows(server, host, "<h1>first</h1>"), "the rollback to be served")
    assert server.get(host, "/docs/").text == "<p>docs of first</p>"


def test_a_busy_host_costs_at_most_one_alias_read_a_second(
        server: Server, calls: DynamoCalls, tmp_path: Path) -> None:
    """50 page views or more of each of two sites: each site's production alias is read at
    most once per started second of the run, not once per request (moto answers every read:
    the count is of requests that reached DynamoDB)."""
    for name in ("blog", "shop"):
        _cli_ok(server, "sites", "create", name)
        _cli_ok(server, "deploy", str(_site_folder(tmp_path / name, name)), "--site", name)
        wait_for(_shows(server, f"{name}.localhost", f"<h1>{name}</h1>"), f"{name} served")
    calls.reset()
    started = time.monotonic()
    views = 0
    # 50 views of each at least, and on until each alias was read since the reset: the wait
    # above left both cached, and 100 quick views can all fall within that second (0 reads)
    while views < 50 or not all(calls.count("GetItem", f"site#{name}", "alias#production")
                                for name in ("blog", "shop")):
        assert views < 5_000, "no alias read in 5,000 page views of each site"
        for name in ("blog", "shop"):
            assert server.get(f"{name}.localhost").status_code == 200
        views += 1
    elapsed = time.monotonic() - started

    bound = int(elapsed) + 2  # reads at most one second apart, plus the first
    for name in ("blog", "shop"):
        reads = calls.count("GetItem", f"site#{name}", "alias#production")
        assert 1 <= reads <= bound, (name, reads, elapsed)


def test_a_deploy_and_a_rollback_made_by_serve_itself_show_on_the_next_request(
        server: Server, tmp_path: Path) -> None:
    """Its own writes drop the cached answers at once (DynamoState.own_writes): no second of
    staleness for what a push to, or a rollback on, this server did. A visitor keeps asking
    all along, so an answer cached just before each move is always there to go stale."""
    api = Api(server, server.new_token("--name", "admin", "--admin"))
    host = "blog.localhost"
    one = api.deploy(make_bundle({"index.html": b"<h1>one</h1>"}), "blog")
    assert server.get(host).text == "<h1>one</h1>"
    two = api.deploy(make_bundle({"index.html": b"<h1>two</h1>"}), "blog")
    assert two["status"] == "live"
    assert server.get(host).text == "<h1>two</h1>"
    stop = threading.Event()

    def visitor() -> None:
        while not stop.is_set():
            server.get(host)

    thread = threading.Thread(target=visitor, daemon=True)
    thread.start()
    try:
        for _ in range(3):
            assert api.ok("POST", "/sites/blog/rollback")["id"] == one["id"]
            assert server.get(host).text == "<h1>one</h1>"
            assert api.ok("POST", f"/deployments/{two['id']}/activate")["status"] == "live"
            assert server.get(host).text == "<h1>two</h1>"
    finally:
        stop.set()
        thread.join()


def test_edge_stale_zero_reads_the_alias_on_every_request(
        aws_env: dict[str, str], calls: DynamoCalls, _isolated_env: Path,
        tmp_path: Path) -> None:
    """PUSHSITE_EDGE_STALE=0 turns the one-second cache off: every page view reads the
    production alias, so another process's deploy shows on the very next request."""
    srv = start_server(_isolated_env, extra_env={**aws_env, "PUSHSITE_EDGE_STALE": "0"},
                       log=_isolated_env.parent / "serve.log")
    try:
        _cli_ok(srv, "sites", "create", "blog")
        _cli_ok(srv, "deploy", str(_site_folder(tmp_path / "v1", "first")), "--site", "blog")
        assert "<h1>first</h1>" in srv.get("blog.localhost").text
        calls.reset()
        for _ in range(20):
            assert srv.get("blog.localhost").status_code == 200
        assert calls.count("GetItem", "site#blog", "alias#production") >= 20
        _cli_ok(srv, "deploy", str(_site_folder(tmp_path / "v2", "second")), "--site", "blog")
        assert "<h1>second</h1>" in srv.get("blog.localhost").text
    finally:
        srv.stop()
