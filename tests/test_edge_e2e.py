"""End to end: `pushsite deploy` a folder, then read it back through `pushsite serve`'s edge.

One `pushsite serve` subprocess per module on a free port, with PUSHSITE_HOME in a temporary
folder; every deploy is a real `pushsite deploy` subprocess writing to the same home.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import brotli
import httpx
import pytest


@dataclass
class Server:
    port: int
    env: dict[str, str]
    home: Path

    def deploy(self, folder: Path, site: str, *extra: str) -> dict[str, object]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pushsite",
                "deploy",
                "--create",
                str(folder),
                "--site",
                site,
                "--json",
                *extra,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        data: dict[str, object] = json.loads(result.stdout)
        return data

    def wait_optimised(self, deployment_id: str) -> None:
        """Live first: brotli is made after the deployment went live, by this server's worker
        (the CLI hands it over when a server runs); its log says when that ended."""
        for _ in range(600):
            log = subprocess.run([sys.executable, "-m", "pushsite", "log", deployment_id],
                                 env=self.env, capture_output=True, text=True, timeout=60)
            if "optimised:" in log.stdout + log.stderr:
                return
            time.sleep(0.1)
        raise AssertionError(f"deployment {deployment_id} was never optimised: {log.stdout}")

    def deploy_process(self, folder: Path, site: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "pushsite", "deploy", "--create", str(folder), "--site", site],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def get(self, host: str, path: str, **headers: str) -> httpx.Response:
        """GET with the Host header set; header keywords use "_" for "-" (If_None_Match)."""
        sent = {"Host": host, "Accept-Encoding": "identity"}
        sent.update({k.replace("_", "-"): v for k, v in headers.items()})
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", headers=sent, timeout=10)

    def raw_get(self, host: str, path: str, accept: str) -> tuple[int, dict[str, str], bytes]:
        """The status, headers and undecoded body of a request sent as written."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": host, "Accept-Encoding": accept})
            response = conn.getresponse()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, headers, response.read()
        finally:
            conn.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSITE_")}
    env["PUSHSITE_HOME"] = str(home)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pushsite", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(300):
            if process.poll() is not None:
                raise AssertionError(f"pushsite serve exited: {process.stderr.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError("pushsite serve did not answer")
        yield Server(port, env, home)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


STYLE = ("body { color: #333; margin: 0 auto; max-width: 40em; }\n" * 40).encode()


def write_site(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def blog(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = write_site(
        tmp_path_factory.mktemp("blog"),
        {
            "index.html": b"<h1>home v1</h1>",
            "about.html": b"<h1>about</h1>",
            "docs/index.html": b"<h1>docs</h1>",
            "assets/app.3f9a2b7c.css": STYLE,
            "caf\u00e9 \u65e5\u672c.txt": b"unicode name",
            "404.html": b"<h1>lost</h1>",
            "_headers": b"/*\n  X-Frame-Options: DENY\n",
            "_redirects": b"/old /about 301\n/app/* /index.html 200\n",
        },
    )
    server.wait_optimised(str(server.deploy(folder, "blog")["id"]))
    return "blog.localhost"


def test_deployed_site_is_served_with_clean_urls(server: Server, blog: str) -> None:
    assert server.get(blog, "/").content == b"<h1>home v1</h1>"
    assert server.get(blog, "/about").content == b"<h1>about</h1>"
    docs = server.get(blog, "/docs?x=1")
    assert (docs.status_code, docs.headers["location"]) == (301, "/docs/?x=1")
    assert server.get(blog, "/docs/").content == b"<h1>docs</h1>"
    assert server.get(blog, "/caf%C3%A9%20%E6%97%A5%E6%9C%AC.txt").content == b"unicode name"
    missing = server.get(blog, "/nope")
    assert (missing.status_code, missing.content) == (404, b"<h1>lost</h1>")
    assert server.get(blog, "/%2e%2e/about.html").status_code == 400


def test_site_files_configure_headers_and_redirects(server: Server, blog: str) -> None:
    old = server.get(blog, "/old")
    assert (old.status_code, old.headers["location"]) == (301, "/about")
    assert old.headers["x-frame-options"] == "DENY"
    app = server.get(blog, "/app/some/route")
    assert (app.status_code, app.content) == (200, b"<h1>home v1</h1>")
    assert server.get(blog, "/").headers["x-frame-options"] == "DENY"
    assert server.get(blog, "/_headers").status_code == 404


def test_compressed_variants_validators_and_ranges(server: Server, blog: str) -> None:
    path = "/assets/app.3f9a2b7c.css"
    status, headers, body = server.raw_get(blog, path, "gzip, br")
    assert status == 200
    assert headers["content-type"].startswith("text/css")
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert headers["vary"] == "Accept-Encoding"
    assert headers["content-encoding"] == "br"
    assert brotli.decompress(body) == STYLE
    status, headers, body = server.raw_get(blog, path, "gzip")
    assert gzip.decompress(body) == STYLE
    etag = server.get(blog, path).headers["etag"]
    assert server.get(blog, path, If_None_Match=etag).status_code == 304
    part = server.get(blog, path, Range="bytes=5-9")
    assert (part.status_code, part.content) == (206, STYLE[5:10])
    assert part.headers["content-range"] == f"bytes 5-9/{len(STYLE)}"
    assert server.get(blog, path, Range="bytes=99999-").status_code == 416


def test_redeploy_is_visible_at_once_and_permalinks_stay(server: Server, tmp_path: Path) -> None:
    first = server.deploy(write_site(tmp_path / "a", {"index.html": b"one"}), "moving")
    assert server.get("moving.localhost", "/").content == b"one"
    server.deploy(write_site(tmp_path / "b", {"index.html": b"two"}), "moving")
    assert server.get("moving.localhost", "/").content == b"two"
    permalink = server.get(f"{first['id']}--moving.localhost", "/")
    assert permalink.content == b"one"
    assert permalink.headers["x-robots-tag"] == "noindex"
    assert "x-robots-tag" not in server.get("moving.localhost", "/").headers


def test_branch_preview(server: Server, tmp_path: Path) -> None:
    server.deploy(write_site(tmp_path / "main", {"index.html": b"main"}), "prev")
    server.deploy(
        write_site(tmp_path / "feature", {"index.html": b"feature"}),
        "prev",
        "--branch",
        "Feature/Login_Form",
    )
    preview = server.get("feature-login-form--prev.localhost", "/")
    assert (preview.content, preview.headers["x-robots-tag"]) == (b"feature", "noindex")
    assert server.get("prev.localhost", "/").content == b"main"
    assert server.get("other--prev.localhost", "/").status_code == 404


def test_other_hosts_reach_the_control_plane(server: Server) -> None:
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}"):
        response = server.get(host, "/api/health")
        assert response.json() == {"ok": True}


def test_serving_stays_correct_while_a_deployment_runs(server: Server, tmp_path: Path) -> None:
    server.deploy(write_site(tmp_path / "old", {"index.html": b"old"}), "busy")
    many = {f"pages/p{i}.html": (f"<p>{i}</p>" * 50).encode() for i in range(400)}
    process = server.deploy_process(
        write_site(tmp_path / "new", {"index.html": b"new", **many}), "busy"
    )
    try:
        while process.poll() is None:
            response = server.get("busy.localhost", "/")
            assert response.status_code == 200
            assert response.content in (b"old", b"new")
    finally:
        process.wait(60)
    assert process.returncode == 0, process.stderr.read()  # type: ignore[union-attr]
    assert server.get("busy.localhost", "/").content == b"new"
    assert server.get("busy.localhost", "/pages/p399").content == b"<p>399</p>" * 50


def test_large_files_stream_whole_and_in_ranges(server: Server, tmp_path: Path) -> None:
    data = os.urandom(5 << 20)  # above the edge's streaming threshold and the store's pack limit
    server.deploy(write_site(tmp_path / "big", {"video.bin": data}), "big")
    whole = server.get("big.localhost", "/video.bin")
    assert (whole.status_code, whole.headers["content-length"]) == (200, str(len(data)))
    assert whole.content == data
    part = server.get("big.localhost", "/video.bin", Range="bytes=1000000-3999999")
    assert (part.status_code, part.content) == (206, data[1_000_000:4_000_000])
    tail = server.get("big.localhost", "/video.bin", Range="bytes=-10")
    assert tail.content == data[-10:]
