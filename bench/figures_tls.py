"""Figure 6t: the edge over HTTPS (`pushsite serve --tls-cert/--tls-key`) against nginx with
`ssl` on, the same certificate (ECDSA P-256, made here) and the same two files as figure 6.

`wrk` keeps its 50 connections alive, so this is the cost of TLS records on each answer (and
one handshake per connection), not of a handshake per request; both servers also run over
plain HTTP in the same invocation, so TLS's own cost to each shows beside the comparison.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench import product, tools
from bench.corpora import Corpus, scratch_dir
from bench.errors import BenchError
from bench.figures_edge import _NGINX_CONF, CONNECTIONS, SITE, build_site, parse_wrk
from bench.measure import alternate, summarize
from bench.report import Figure, figure


def _certificate(root: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the site's host (wrk does not verify)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{SITE}.localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{SITE}.localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))  # fmt: skip
    cert_path, key_path = root / "cert.pem", root / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Nginx:
    """nginx with the figure-6 configuration, one plain and one `ssl` listener."""

    def __init__(self, docroot: Path, prefix: Path, cert: Path, key: Path) -> None:
        self.port, self.tls_port = product.free_port(), product.free_port()
        tls = (f"server {{ listen 127.0.0.1:{self.tls_port} ssl; root {docroot}; "
               f"ssl_certificate {cert}; ssl_certificate_key {key}; }}")
        conf = prefix / "nginx.conf"
        text = _NGINX_CONF.format(prefix=prefix, port=self.port, docroot=docroot)
        conf.write_text(text.rstrip().removesuffix("}") + f"    {tls}\n}}\n")
        self.proc = subprocess.Popen([tools.require("nginx"), "-c", str(conf), "-p", str(prefix)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        product.wait_port(self.port, self.proc)
        product.wait_port(self.tls_port, self.proc)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _wrk(scheme: str, port: int, path: str, seconds: int) -> tuple[float, float]:
    cmd = [tools.require("wrk"), "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
           "-H", "Accept-Encoding: gzip", "-H", f"Host: {SITE}.localhost",
           f"{scheme}://127.0.0.1:{port}/{path}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or "Non-2xx" in done.stdout:
        raise BenchError(f"wrk on {scheme}://127.0.0.1:{port}/{path} failed: "
                                 f"{(done.stderr or done.stdout).strip()[-300:]}")
    return parse_wrk(done.stdout)


def tls(corpus: Corpus, runs: int, seconds: int) -> list[Figure]:
    """Requests/s over HTTPS for the HTML page, pushsite against nginx, alternating."""
    root = Path(tempfile.mkdtemp(prefix="edge-tls-", dir=scratch_dir()))
    figs: list[Figure] = []
    try:
        docroot, bundle = build_site(corpus, root)
        cert, key = _certificate(root)
        nginx = _Nginx(docroot, root, cert, key)
        plain_home, tls_home = root / "home", root / "home-tls"
        plain_home.mkdir()
        # sites are created on purpose now (a deploy to an unknown site fails)
        subprocess.run([*product.pushsite_argv(), "sites", "create", SITE], check=False,
                       env={**os.environ, "PUSHSITE_HOME": str(plain_home)}, capture_output=True)
        product.deploy(bundle, plain_home, site=SITE)
        workers = ("--http-workers", str(os.cpu_count() or 1))
        try:
            with product.Server(plain_home, workers) as plain:
                http = alternate(lambda: _wrk("http", plain.port, "index.html", seconds),
                                 lambda: _wrk("http", nginx.port, "index.html", seconds), runs)
            shutil.copytree(plain_home, tls_home, ignore=shutil.ignore_patterns("server.json"))
            extra = (*workers, "--tls-cert", str(cert), "--tls-key", str(key))
            with product.Server(tls_home, extra) as served:
                https = alternate(lambda: _wrk("https", served.port, "index.html", seconds),
                                  lambda: _wrk("https", nginx.tls_port, "index.html", seconds),
                                  runs)
        finally:
            nginx.close()
        ours_http, nginx_http = (summarize([r[0] for r in side]) for side in http)
        ours, theirs = (summarize([r[0] for r in side]) for side in https)
        figs.append(figure(
            "edge_tls_requests_per_s", "edge-html-https", ours, "req/s", baseline=theirs,
            baseline_name="nginx ssl", target=0.75, target_op=">=",
            note=f"{CONNECTIONS} keep-alive connections, {seconds} s each, same ECDSA "
            f"certificate; plain HTTP in the same run: pushsite {ours_http.median:.0f}, nginx "
            f"{nginx_http.median:.0f} req/s; serve {' '.join(workers)}",
        ))  # fmt: skip
        figs.append(figure(
            "edge_tls_p99_latency", "edge-html-https", summarize([r[1] for r in https[0]]),
            "ms", baseline=summarize([r[1] for r in https[1]]), baseline_name="nginx ssl",
            target=20.0, target_of="value", target_op="<",
        ))  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figs
