"""Real TLS parts for tests: certificates made here (the `cryptography` package), Pebble (Let's
Encrypt's test ACME server, Debian package `pebble`) and Caddy (Debian package `caddy`), each
started on free 127.0.0.1 ports and stopped by the test; HTTPS requests with a chosen SNI."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.servers import free_port


# certificates ----------------------------------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


class Authority:
    """A throw-away certificate authority; its root is `self.pem`."""

    def __init__(self, folder: Path, name: str = "pushsite test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.pem = folder / "ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, names: list[str], cert_path: Path, key_path: Path) -> bytes:
        """A leaf for `names` (DNS names or IP addresses) written as PEM; its DER returned."""
        key = ec.generate_private_key(ec.SECP256R1())
        alternative: list[x509.GeneralName] = []
        for name in names:
            try:
                alternative.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternative.append(x509.DNSName(name))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(_name(names[0]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        _write_key(key, key_path)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert.public_bytes(serialization.Encoding.DER)


def client_context(cafile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


def peer_certificate(port: int, server_name: str, cafile: Path) -> bytes:
    """The DER certificate a TLS server on 127.0.0.1:port presents for `server_name`
    (verified against `cafile`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            client_context(cafile).wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def https_get(port: int, host: str, cafile: Path, path: str = "/",
              **kwargs: object) -> httpx.Response:
    """GET https://<host><path> sent to 127.0.0.1:port (SNI and Host: `host`), verified
    against `cafile`: what `curl --resolve host:port:127.0.0.1 --cacert cafile` does."""
    with httpx.Client(verify=client_context(cafile), timeout=30) as client:
        return client.get(f"https://127.0.0.1:{port}{path}", headers={"Host": host},
                          extensions={"sni_hostname": host}, **kwargs)  # type: ignore[arg-type]


def wait_until(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (OSError, httpx.TransportError, ssl.SSLError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Pebble ----------------------------------------------------------------------------------------
@dataclass
class Pebble:
    directory: str  # the ACME directory URL
    tls_root: Path  # the CA of Pebble's own HTTPS listener (what an ACME client must trust)
    issuing_root: Path  # the root Pebble signs certificates under (what visitors must trust)


@contextmanager
def pebble(folder: Path, validity: int = 0) -> Iterator[Pebble]:
    """Pebble on free ports, validating nothing (PEBBLE_VA_ALWAYS_VALID=1: no DNS needed);
    `validity`: seconds its certificates last (default Pebble's, years)."""
    folder.mkdir(parents=True, exist_ok=True)
    authority = Authority(folder / "listener")
    authority.issue(["127.0.0.1", "localhost"], folder / "cert.pem", folder / "key.pem")
    port, management = free_port(), free_port()
    config = folder / "pebble.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{port}", "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(folder / "cert.pem"), "privateKey": str(folder / "key.pem"),
        "httpPort": free_port(), "tlsPort": free_port(), "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
        **({"certificateValidityPeriod": validity} if validity else {})}}))
    env = {**os.environ, "PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_VA_NOSLEEP": "1",
           "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "100"}
    log = (folder / "pebble.log").open("wb")
    process = subprocess.Popen(["pebble", "-config", str(config)], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        context = client_context(authority.pem)
        wait_until("pebble answers", lambda: httpx.get(
            f"https://127.0.0.1:{port}/dir", verify=context, timeout=2).status_code == 200)
        root = httpx.get(f"https://127.0.0.1:{management}/roots/0", verify=context, timeout=5)
        assert root.status_code == 200, root.text
        issuing = folder / "issuing-root.pem"
        issuing.write_bytes(root.content)
        yield Pebble(f"https://127.0.0.1:{port}/dir", authority.pem, issuing)
    finally:
        _stop(process)
        log.close()


# Caddy -----------------------------------------------------------------------------------------
@dataclass
class Caddy:
    http_port: int
    https_port: int
    admin: str
    log: Path


@contextmanager
def caddy(folder: Path, caddyfile: str, http_port: int, https_port: int,
          admin: str) -> Iterator[Caddy]:
    """`caddy run` with this Caddyfile, its data and config folders under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "Caddyfile"
    path.write_text(caddyfile)
    env = {**os.environ, "HOME": str(folder), "XDG_DATA_HOME": str(folder / "data"),
           "XDG_CONFIG_HOME": str(folder / "config")}
    log_path = folder / "caddy.log"
    log = log_path.open("wb")
    process = subprocess.Popen(["caddy", "run", "--config", str(path), "--adapter", "caddyfile"],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until("caddy's admin endpoint answers", lambda: process.poll() is None and httpx.get(
            f"http://{admin}/config/", timeout=2).status_code == 200)
        yield Caddy(http_port, https_port, admin, log_path)
    finally:
        _stop(process)
        log.close()
