"""A custom domain removed from its site is never renewed: Caddy (2.6, the Caddyfile `pushsite
caddyfile` prints) asks `/tls/allowed` again before it renews an on-demand certificate, and
pushsite refuses a name no site serves, so the certificate Caddy holds runs out and is not
replaced; a name still served is renewed. Another process removes the name (a second Service
on the server's state), as an admin's `pushsite domains remove` would.

Pebble issues certificates lasting VALIDITY seconds; Caddy renews one in its last third. Every
wait is derived from the certificates' own dates or polls for a state (bounded in count).
"""

from __future__ import annotations

import datetime
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography import x509

from pushsite.config import load_config
from pushsite.service import Service
from support.servers import free_port, start_server
from support.sites import write_files
from support.tlsparts import Caddy, Pebble, caddy, https_get, pebble, peer_certificate

BASE = "example.test"
VALIDITY = 20  # seconds


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Pebble, Caddy]]:
    root = tmp_path_factory.mktemp("renewal")
    server = start_server(root / "home", args=("--base-domain", BASE,
                                               "--forwarded-allow-ips", "127.0.0.1",
                                               "--public-url", f"https://{BASE}"))
    try:
        with pebble(root / "pebble", validity=VALIDITY) as acme:
            http_port, https_port = free_port(), free_port()
            admin = f"127.0.0.1:{free_port()}"
            made = subprocess.run(
                [sys.executable, "-m", "pushsite", "caddyfile", "--base-domain", BASE,
                 "--upstream", f"127.0.0.1:{server.port}", "--http-port", str(http_port),
                 "--https-port", str(https_port), "--acme-ca", acme.directory,
                 "--acme-ca-root", str(acme.tls_root), "--admin", admin,
                 "--storage", str(root / "caddy-data")],
                capture_output=True, text=True, check=True)
            with caddy(root / "caddy", made.stdout, http_port, https_port, admin) as proxy:
                yield server, acme, proxy
    finally:
        server.stop()


def _until(what: str, check: Callable[[], Any]) -> Any:
    """check()'s first true answer, polled (bounded in count, never in time)."""
    for _ in range(1200):
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


def _ends(der: bytes) -> datetime.datetime:
    return x509.load_der_x509_certificate(der).not_valid_after_utc


def test_a_removed_domain_is_not_renewed_and_a_served_one_is(
        front: tuple[Any, Pebble, Caddy]) -> None:
    server, acme, proxy = front
    folder = write_files(server.home.parent / "docs", {"index.html": "<h1>the docs</h1>"})
    assert server.cli("sites", "create", "docs").returncode == 0
    done = server.cli("deploy", str(folder), "--site", "docs")
    assert done.returncode == 0, done.stderr
    admin = Service(load_config(home=str(server.home)))
    try:
        admin.add_domain("docs", "old.docs.test")
        admin.add_domain("docs", "kept.docs.test")
        names = ("old.docs.test", "kept.docs.test")
        for name in names:  # each certified on its first request, and served
            assert "the docs" in https_get(proxy.https_port, name, acme.issuing_root).text

        def presented(name: str) -> bytes:
            return peer_certificate(proxy.https_port, name, acme.issuing_root)

        first = {name: presented(name) for name in names}
        admin.remove_domain("docs", "old.docs.test")
    finally:
        admin.close()
    # the served name gets a new certificate in its last third
    _until("the kept name renewed", lambda: presented("kept.docs.test") != first["kept.docs.test"])
    # the removed one is asked about too (it is as old), refused, and never replaced: until
    # its end each handshake presents the first certificate; after it, none verifies
    end = _ends(first["old.docs.test"])
    while datetime.datetime.now(datetime.UTC) <= end:
        try:
            assert presented("old.docs.test") == first["old.docs.test"]
        except ssl.SSLCertVerificationError:  # it ran out between the clock and the handshake
            assert datetime.datetime.now(datetime.UTC) > end - datetime.timedelta(seconds=1)
        time.sleep(VALIDITY / 40)
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        presented("old.docs.test")
    assert any("old.docs.test" in line and "not allowed by ask endpoint" in line
               for line in proxy.log.read_text().splitlines())  # asked at renewal, refused
    kept = https_get(proxy.https_port, "kept.docs.test", acme.issuing_root)
    assert kept.status_code == 200 and "the docs" in kept.text
