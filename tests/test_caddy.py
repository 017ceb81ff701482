"""Caddy in front of `pushsite serve`, with the Caddyfile `pushsite caddyfile` prints, getting
certificates on demand from Pebble (PEBBLE_VA_ALWAYS_VALID=1: no DNS). All real processes on
free 127.0.0.1 ports: pushsite decides (GET /tls/allowed) which names get a certificate."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from pushsite.config import load_config
from pushsite.service import Service
from support.servers import Server, free_port, start_server
from support.sites import write_files
from support.tlsparts import Caddy, Pebble, caddy, https_get, pebble

BASE = "example.test"


@dataclass
class Front:
    server: Server
    pebble: Pebble
    caddy: Caddy

    def get(self, host: str, path: str = "/") -> httpx.Response:
        return https_get(self.caddy.https_port, host, self.pebble.issuing_root, path)

    def ask(self, domain: str) -> int:
        return httpx.get(f"{self.server.url}/tls/allowed", params={"domain": domain},
                         timeout=10).status_code

    def service(self) -> Service:
        return Service(load_config(home=str(self.server.home)))

    def deploy(self, site: str, text: str, branch: str = "main", extra: dict[str, str] | None
               = None) -> None:
        folder = write_files(self.server.home.parent / f"src-{site}-{branch}",
                             {"index.html": f"<h1>{text}</h1>", **(extra or {})})
        if branch == "main":  # sites are created on purpose, never by a deploy
            created = self.server.cli("sites", "create", site)
            assert created.returncode == 0, created.stderr
        done = self.server.cli("deploy", str(folder), "--site", site, "--branch", branch)
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    root = tmp_path_factory.mktemp("caddy")
    server = start_server(root / "home", args=("--base-domain", BASE, "--tls-previews",
                                               "--forwarded-allow-ips", "127.0.0.1",
                                               "--public-url", f"https://{BASE}"))
    try:
        with pebble(root / "pebble") as acme:
            http_port, https_port = free_port(), free_port()
            admin = f"127.0.0.1:{free_port()}"
            made = subprocess.run(
                [sys.executable, "-m", "pushsite", "caddyfile", "--base-domain", BASE,
                 "--email", "ops@example.test", "--upstream", f"127.0.0.1:{server.port}",
                 "--http-port", str(http_port), "--https-port", str(https_port),
                 "--acme-ca", acme.directory, "--acme-ca-root", str(acme.tls_root),
                 "--admin", admin, "--storage", str(root / "caddy-data")],
                capture_output=True, text=True, check=True)
            with caddy(root / "caddy", made.stdout, http_port, https_port, admin) as proxy:
                yield Front(server, acme, proxy)
    finally:
        server.stop()


def test_a_custom_domain_gets_a_certificate_on_its_first_request_and_serves_the_site(
        front: Front) -> None:
    front.deploy("blog", "the blog", extra={
        "_headers": "/*\n  Strict-Transport-Security: max-age=63072000\n"})
    front.service().add_domain("blog", "www.blog.test")  # an admin's claim: approved
    answer = front.get("www.blog.test")  # verified against Pebble's root: Caddy got one
    assert answer.status_code == 200 and "the blog" in answer.text
    # the per-site HSTS header (chosen: the site's own _headers) reaches the visitor
    assert answer.headers["strict-transport-security"] == "max-age=63072000"
    own = front.get(f"blog.{BASE}")
    assert own.status_code == 200 and "the blog" in own.text


def test_a_name_no_site_serves_gets_no_certificate(front: Front) -> None:
    front.deploy("shop", "the shop")
    front.service().add_domain("shop", "pending.shop.test", approve=False)
    for name in ("nobody.test", f"nosuchsite.{BASE}", "pending.shop.test", f"a.b.{BASE}"):
        assert front.ask(name) == 404, name
        with pytest.raises(httpx.ConnectError):  # the handshake fails: Caddy has no certificate
            front.get(name)
    front.service().approve_domain("shop", "pending.shop.test")
    approved = front.get("pending.shop.test")
    assert approved.status_code == 200 and "the shop" in approved.text


def test_a_domain_removed_from_a_site_stops_being_allowed(front: Front) -> None:
    front.deploy("docs", "the docs")
    service = front.service()
    service.add_domain("docs", "old.docs.test")
    service.add_domain("docs", "gone.docs.test")
    assert front.get("old.docs.test").status_code == 200  # certified and served
    service.remove_domain("docs", "old.docs.test")
    service.remove_domain("docs", "gone.docs.test")
    assert front.ask("old.docs.test") == 404 and front.ask("gone.docs.test") == 404
    with pytest.raises(httpx.ConnectError):  # released before any request: never certified
        front.get("gone.docs.test")
    # Caddy keeps the certificate it already has; the site no longer answers on that name
    assert "the docs" not in front.get("old.docs.test").text


def test_a_preview_host_works_when_enabled(front: Front) -> None:
    front.deploy("app", "production app")
    front.deploy("app", "feature preview", branch="feature")
    preview = front.get(f"feature--app.{BASE}")
    assert preview.status_code == 200 and "feature preview" in preview.text
    with pytest.raises(httpx.ConnectError):  # a branch that was never pushed: no certificate
        front.get(f"nothing--app.{BASE}")


def test_plain_http_redirects_to_https(front: Front) -> None:
    answer = httpx.get(f"http://127.0.0.1:{front.caddy.http_port}/a/b?c=1",
                       headers={"Host": f"blog.{BASE}"}, timeout=10)
    assert answer.status_code == 308
    assert answer.headers["location"] == f"https://blog.{BASE}:{front.caddy.https_port}/a/b?c=1"


def test_the_dashboard_behind_caddy_knows_it_is_https(front: Front) -> None:
    """Caddy's X-Forwarded-Proto is believed (it is a configured proxy): Secure cookies."""
    page = front.get(BASE, "/login")  # the control plane's host: its certificate from start
    assert page.status_code == 200
    assert "secure" in page.headers["set-cookie"].lower()
    direct = httpx.get(f"{front.server.url}/login", timeout=10,
                       headers={"X-Forwarded-Proto": "https"})  # from 127.0.0.1, trusted
    assert "secure" in direct.headers["set-cookie"].lower()
