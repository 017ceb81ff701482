"""pushsite's own HTTPS (`serve --tls-cert/--tls-key`, reloaded on SIGHUP in every HTTP
process), the ask endpoint Caddy consults (/tls/allowed) and its speed with many sites, and
proxy headers believed only from configured proxies. Real `pushsite serve` processes."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from pushsite.config import load_config
from pushsite.model import PRODUCTION
from pushsite.service import Service
from support.servers import Server, free_port, start_server
from support.service import bundle
from support.sites import write_files
from support.tlsparts import Authority, client_context, peer_certificate, wait_until

BASE = "example.test"


def _deploy(server: Server, site: str, text: str, branch: str = "main") -> None:
    folder = write_files(server.home.parent / f"src-{site}-{branch}-{time.monotonic_ns()}",
                         {"index.html": f"<h1>{text}</h1>"})
    if branch == "main":
        created = server.cli("sites", "create", site)
        assert created.returncode == 0, created.stderr
    done = server.cli("deploy", str(folder), "--site", site, "--branch", branch)
    assert done.returncode == 0, done.stderr


def _ask(server: Server, domain: str) -> int:
    return httpx.get(f"{server.url}/tls/allowed", params={"domain": domain},
                     timeout=10).status_code


# the ask endpoint ------------------------------------------------------------------------------
def test_ask_allows_only_names_pushsite_serves(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", args=("--base-domain", BASE))
    try:
        _deploy(server, "blog", "blog")
        _deploy(server, "blog", "feature", branch="feature")
        service = Service(load_config(home=str(server.home)))
        service.add_domain("blog", "www.blog.test")
        service.add_domain("blog", "pending.blog.test", approve=False)
        service.create_site("fresh")  # never deployed: serves nothing yet
        assert _ask(server, f"blog.{BASE}") == 200
        assert _ask(server, f"BLOG.{BASE}.") == 200  # as DNS compares names
        assert _ask(server, "www.blog.test") == 200
        for refused in ("pending.blog.test", "nobody.test", f"nosite.{BASE}", BASE,
                        f"fresh.{BASE}",
                        f"feature--blog.{BASE}",  # previews: off by default
                        "127.0.0.1", "localhost", f"blog.{BASE}:443", "bad name", "a" * 300):
            assert _ask(server, refused) == 404, refused
        assert httpx.get(f"{server.url}/tls/allowed", timeout=10).status_code == 400
        service.approve_domain("blog", "pending.blog.test")
        assert _ask(server, "pending.blog.test") == 200
        service.remove_domain("blog", "www.blog.test")
        assert _ask(server, "www.blog.test") == 404
    finally:
        server.stop()


def test_ask_allows_previews_and_permalinks_only_when_enabled(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", args=("--base-domain", BASE, "--tls-previews"))
    try:
        _deploy(server, "blog", "blog")
        _deploy(server, "blog", "feature", branch="feature")
        service = Service(load_config(home=str(server.home)))
        alias = service.state.get_alias("blog", "production")
        assert alias is not None
        assert _ask(server, f"feature--blog.{BASE}") == 200
        assert _ask(server, f"{alias.deployment_id.lower()}--blog.{BASE}") == 200
        assert _ask(server, f"never-pushed--blog.{BASE}") == 404  # nothing served there
        assert _ask(server, f"feature--nosite.{BASE}") == 404
    finally:
        server.stop()


def test_ask_answers_right_with_many_sites(tmp_path: Path) -> None:
    """2,000 live sites with a custom domain each: every answer is right (the edge's
    resolution: reads by key, cached until the state changes); its time is printed."""
    home = tmp_path / "home"
    service = Service(load_config(home=str(home), base_domain=BASE))
    service.create_site("s0")
    live = service.run(service.accept("s0", io.BytesIO(bundle({"index.html": b"s0"}))).id)
    count = 2000
    for n in range(count):
        if n:
            service.create_site(f"s{n}")
            # production of every site: s0's deployment (the ask reads only where aliases point)
            assert service.state.move_alias(f"s{n}", PRODUCTION, live.id, live.id)
        service.add_domain(f"s{n}", f"www.s{n}.test")
    service.close()
    server = start_server(home, args=("--base-domain", BASE))
    try:
        names = [f"s{n}.{BASE}" for n in range(0, count, 7)] + [
            f"www.s{n}.test" for n in range(3, count, 7)] + ["nobody.test"] * 50
        with httpx.Client(base_url=server.url, timeout=10) as client:
            client.get("/tls/allowed", params={"domain": "warm.test"})
            times = []
            for name in names:
                started = time.perf_counter()
                answer = client.get("/tls/allowed", params={"domain": name})
                times.append(time.perf_counter() - started)
                assert answer.status_code == (404 if name == "nobody.test" else 200), name
            plain = []  # the same round trip to a route that reads nothing
            for _ in names:
                started = time.perf_counter()
                client.get("/api/health")
                plain.append(time.perf_counter() - started)
        median, floor = statistics.median(times), statistics.median(plain)
        print(f"\n/tls/allowed with {count} sites and {count} domains: median "
              f"{median * 1000:.2f} ms, p95 {sorted(times)[int(len(times) * .95)] * 1000:.2f} ms "
              f"over {len(times)} calls; /api/health on the same client: median "
              f"{floor * 1000:.2f} ms")  # a figure for the README, never asserted: speed
        # belongs to the bench, and a loaded machine would fail a bound here
    finally:
        server.stop()


# pushsite's own TLS ----------------------------------------------------------------------------
@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path / "ca")


@contextmanager
def _serving_tls(tmp_path: Path, cert: Path, key: Path, workers: int) -> Iterator[tuple[int, int]]:
    port = free_port()
    env = {**os.environ, "PUSHSITE_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(
        [sys.executable, "-m", "pushsite", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--tls-cert", str(cert), "--tls-key", str(key), "--http-workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("workers", [1, 2])
def test_https_answers_and_sighup_reloads_the_certificate_in_every_process(
        tmp_path: Path, authority: Authority, workers: int) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = authority.issue(["localhost", "127.0.0.1"], cert, key)
    with _serving_tls(tmp_path, cert, key, workers) as (port, pid):
        context = client_context(authority.pem)
        wait_until("https answers", lambda: httpx.get(
            f"https://127.0.0.1:{port}/api/health", verify=context, timeout=2).status_code == 200)
        assert peer_certificate(port, "localhost", authority.pem) == first
        # what other commands on the home are told: the control plane speaks https
        served = json.loads((tmp_path / "home" / "server.json").read_text())
        assert served["url"] == f"https://127.0.0.1:{port}"
        # a keep-alive connection opened before the reload
        kept = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        kept.request("GET", "/api/health")
        assert kept.getresponse().read() == b'{"ok":true}'
        before = kept.sock

        second = authority.issue(["localhost", "127.0.0.1"], cert, key)
        assert second != first
        os.kill(pid, signal.SIGHUP)
        # every new connection, whichever process the kernel hands it to, gets the new one
        wait_until("the new certificate is served", lambda: peer_certificate(
            port, "localhost", authority.pem) == second, timeout=10)
        for _ in range(24):
            assert peer_certificate(port, "localhost", authority.pem) == second
        # the connection made before the reload is still open and still answers
        kept.request("GET", "/api/health")
        assert kept.getresponse().read() == b'{"ok":true}'
        assert kept.sock is before
        kept.close()
        # a pair that does not load is refused and the server keeps the last good one
        other = Authority(tmp_path / "other-ca")
        other.issue(["localhost"], tmp_path / "other.pem", key)  # a key that is not cert's
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.5)
        assert peer_certificate(port, "localhost", authority.pem) == second


def test_tls_needs_both_files_and_a_matching_pair(tmp_path: Path, authority: Authority) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    authority.issue(["localhost"], cert, key)
    env = {**os.environ, "PUSHSITE_HOME": str(tmp_path / "home")}
    alone = subprocess.run([sys.executable, "-m", "pushsite", "serve", "--port",
                            str(free_port()), "--tls-cert", str(cert)],
                           env=env, capture_output=True, text=True, timeout=60)
    assert alone.returncode == 2 and "--tls-cert and --tls-key go together" in alone.stderr
    authority.issue(["localhost"], tmp_path / "other.pem", tmp_path / "other-key.pem")
    wrong = subprocess.run([sys.executable, "-m", "pushsite", "serve", "--port",
                            str(free_port()), "--tls-cert", str(cert), "--tls-key",
                            str(tmp_path / "other-key.pem")],
                           env=env, capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0
    assert wrong.stderr.strip().splitlines()[-1].startswith("error: cannot use the certificate")


# proxy headers ---------------------------------------------------------------------------------
def _login_cookie(server: Server, headers: dict[str, str]) -> str:
    answer = httpx.get(f"{server.url}/login", headers=headers, timeout=10)
    assert answer.status_code == 200
    return answer.headers["set-cookie"].lower()


def test_forwarded_headers_from_an_untrusted_peer_change_nothing(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", args=("--base-domain", BASE))  # trusts no one
    try:
        _deploy(server, "blog", "the blog")
        spoofed = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9",
                   "X-Forwarded-Host": f"blog.{BASE}"}
        assert "secure" not in _login_cookie(server, {})
        assert "secure" not in _login_cookie(server, spoofed)  # still plain http
        page = httpx.get(f"{server.url}/login", headers=spoofed, timeout=10)
        assert "the blog" not in page.text  # routed on Host (127.0.0.1), not the claim
        site = server.get(f"blog.{BASE}", headers={"X-Forwarded-Host": "127.0.0.1"})
        assert "the blog" in site.text
    finally:
        server.stop()


def test_forwarded_headers_from_a_configured_proxy_are_believed(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", args=("--base-domain", BASE,
                                                   "--forwarded-allow-ips", "127.0.0.0/8"))
    try:
        _deploy(server, "blog", "the blog")
        assert "secure" not in _login_cookie(server, {})
        assert "secure" in _login_cookie(server, {"X-Forwarded-Proto": "https"})
        for _ in range(3):  # the edge's shortcut must not answer for the Host header
            routed = httpx.get(f"{server.url}/", timeout=10,
                               headers={"X-Forwarded-Host": f"blog.{BASE}"})
            assert "the blog" in routed.text
            back = server.get(f"blog.{BASE}", headers={"X-Forwarded-Host": "127.0.0.1"})
            assert "the blog" not in back.text
    finally:
        server.stop()


def test_public_url_sets_the_scheme_of_printed_urls(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", args=("--base-domain", BASE, "--public-url",
                                                   f"https://{BASE}"))
    try:
        _deploy(server, "blog", "the blog")
        listed = server.cli("status", "--json")
        assert listed.returncode == 0, listed.stderr
        assert f'"public_url": "https://{BASE}"' in listed.stdout.decode()
    finally:
        server.stop()
