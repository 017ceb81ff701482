"""Figure 6: the edge under load, against nginx serving the same files with `gzip_static on`.

Two files from a real corpus: a small HTML page, and a 200 KB JavaScript file (the corpus's own
JavaScript, concatenated to that size). `wrk` (2 threads, 50 connections, gzip accepted) runs
against `pushsite serve` and against nginx in turns, on loopback, in the same invocation.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import httpx

from bench import product, tools
from bench.corpora import Corpus, scratch_dir
from bench.errors import BenchError
from bench.measure import TreeSampler, alternate, summarize
from bench.report import Figure, figure

JS_BYTES = 200 * 1024
CONNECTIONS = 50
SITE = "edge"


def _pick_html(corpus: Corpus) -> bytes:
    assert corpus.repo is not None
    pages = sorted(p for p in corpus.repo.rglob("*.html") if p.is_file() and not p.is_symlink())
    pages.sort(key=lambda p: abs(p.stat().st_size - 8 * 1024))
    return pages[0].read_bytes()


def _make_js(corpus: Corpus) -> bytes:
    assert corpus.repo is not None
    out = io.BytesIO()
    sources = sorted(p for p in corpus.repo.rglob("*.js") if p.is_file() and not p.is_symlink())
    if not sources:
        raise BenchError(f"Corpus {corpus.name} has no JavaScript to build the 200 KB file from.")
    while out.tell() < JS_BYTES:
        for src in sources:
            out.write(src.read_bytes() + b"\n")
            if out.tell() >= JS_BYTES:
                break
    return out.getvalue()[:JS_BYTES]


def build_site(corpus: Corpus, root: Path) -> tuple[Path, Path]:
    """The two files as a folder (for nginx, with .gz siblings) and as a bundle (for pushsite)."""
    files = {"index.html": _pick_html(corpus), "app.js": _make_js(corpus)}
    docroot = root / "docroot"
    docroot.mkdir(parents=True)
    for name, data in files.items():
        (docroot / name).write_bytes(data)
    subprocess.run(["gzip", "-9", "-k", *files], cwd=docroot, check=True)
    bundle = root / "edge.tar.gz"
    with tarfile.open(bundle, "w:gz", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "e" * 40}) as tar:  # fmt: skip
        for name, data in files.items():
            info = tarfile.TarInfo(f"edge/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return docroot, bundle


_NGINX_CONF = """daemon off;
user root;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    types {{ text/html html; application/javascript js; }}
    default_type application/octet-stream;
    gzip_static on;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{ listen 127.0.0.1:{port}; root {docroot}; }}
}}
"""


class _Nginx:
    def __init__(self, docroot: Path, prefix: Path) -> None:
        self.port = product.free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(prefix=prefix, port=self.port, docroot=docroot))
        self.proc = subprocess.Popen(
            [tools.require("nginx"), "-c", str(conf), "-p", str(prefix)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        product.wait_port(self.port, self.proc)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_P99 = re.compile(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def parse_wrk(text: str) -> tuple[float, float]:
    """Requests per second and p99 latency in ms from `wrk --latency` output."""
    rps, p99 = _RPS.search(text), _P99.search(text)
    if not rps or not p99:
        raise BenchError(f"wrk printed no rate or p99: {text[-300:]!r}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return float(rps.group(1)), float(p99.group(1)) * scale


def _wrk(port: int, path: str, seconds: int) -> tuple[float, float]:
    cmd = [
        tools.require("wrk"), "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
        "-H", "Accept-Encoding: gzip", "-H", f"Host: {SITE}.localhost",
        f"http://127.0.0.1:{port}/{path}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed: {proc.stderr.strip()[-300:]}")
    if "Non-2xx" in proc.stdout:
        raise BenchError(f"wrk got error answers from port {port}/{path}: {proc.stdout[-300:]}")
    return parse_wrk(proc.stdout)


def _encoding(port: int, path: str) -> str:
    """Status, coding and body bytes: the gzip levels differ (nginx serves `gzip -9`, pushsite
    what its deploy made), and bytes on the wire are a good part of a big file's cost."""
    resp = httpx.get(
        f"http://127.0.0.1:{port}/{path}",
        headers={"Host": f"{SITE}.localhost", "Accept-Encoding": "gzip"},
    )
    return (f"{resp.status_code} {resp.headers.get('content-encoding', 'identity')} "
            f"{resp.headers.get('content-length', '?')} B")


def edge(corpus: Corpus, runs: int, seconds: int) -> list[Figure]:
    """Requests/s and p99 for both files, pushsite against nginx, alternating."""
    root = Path(tempfile.mkdtemp(prefix="edge-", dir=scratch_dir()))
    figs: list[Figure] = []
    try:
        docroot, bundle = build_site(corpus, root)
        nginx = _Nginx(docroot, root)
        home = root / "home"
        home.mkdir()
        product.deploy(bundle, home, site=SITE)
        try:
            # As many HTTP processes as nginx has workers (`auto`: one per core), if serve can.
            extra: tuple[str, ...] = ()
            if not product.missing_command("serve", option="--http-workers"):
                extra = ("--http-workers", str(os.cpu_count() or 1))
            server_ctx = product.Server(home, extra)
            with server_ctx as server, TreeSampler(server.pid, 0.05) as sampler:
                for path, label in (("index.html", "edge-html"), ("app.js", "edge-js-200k")):
                    enc = f"pushsite {_encoding(server.port, path)}, "
                    enc += f"nginx {_encoding(nginx.port, path)}"
                    try:
                        subj, base = alternate(
                            lambda p=path: _wrk(server.port, p, seconds),  # type: ignore[misc]
                            lambda p=path: _wrk(nginx.port, p, seconds),  # type: ignore[misc]
                            runs,
                        )
                    except BenchError as exc:  # say what the server said, not only wrk
                        tail = server.log.read_text(errors="replace")[-600:]
                        raise BenchError(f"{exc}; pushsite serve ({server.port}, nginx "
                                         f"{nginx.port}) exit {server.proc.poll()}, log "
                                         f"ends: {tail}") from exc
                    figs.append(figure(
                        "edge_requests_per_s", label, summarize([s[0] for s in subj]), "req/s",
                        baseline=summarize([b[0] for b in base]), baseline_name="nginx gzip_static",
                        target=0.75, target_op=">=", peak_rss_mb=sampler.peak_mb,
                        note=f"{CONNECTIONS} connections, {seconds} s each; {enc}; "
                        f"serve {' '.join(extra) or '(default workers)'}",
                    ))  # fmt: skip
                    figs.append(figure(
                        "edge_p99_latency", label, summarize([s[1] for s in subj]), "ms",
                        baseline=summarize([b[1] for b in base]), baseline_name="nginx gzip_static",
                        target=20.0, target_of="value", target_op="<",
                        peak_rss_mb=sampler.peak_mb,
                    ))  # fmt: skip
        finally:
            nginx.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figs
