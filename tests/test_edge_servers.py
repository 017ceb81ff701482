"""The edge's fast paths through a real `pushsite serve --http-workers 2`.

uvicorn runs the shortcut protocol (pushsite.edge.uvicorn_shortcut): a cached answer must never
outlive a deploy or a rollback made by another process, conditional and range requests must
bypass the cache, and the control plane must work as before.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.servers import Server, start_server
from support.sites import write_files

SITE = "fast"
HOST = f"{SITE}.localhost"


@pytest.fixture
def served(_isolated_env: Path) -> Iterator[Server]:
    running = start_server(_isolated_env, args=("--http-workers", "2"))
    try:
        yield running
    finally:
        running.stop()


def _deploy(server: Server, tmp_path: Path, text: str) -> str:
    folder = write_files(tmp_path / text, {"index.html": text, "app.js": "let x = 1;\n" * 300})
    done = server.cli("deploy", "--create", str(folder), "--site", SITE, "--json")
    assert done.returncode == 0, done.stderr
    import json

    return str(json.loads(done.stdout)["id"])


def _raw(server: Server, method: str, path: str, **headers: str) -> tuple[int, dict[str, str],
                                                                            bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers={"Host": HOST, **headers})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_cached_answers_never_outlive_a_deploy_or_rollback(served: Server, tmp_path: Path) -> None:
    first = _deploy(served, tmp_path, "one")
    for _ in range(6):  # both processes, several times: the answers are cached by now
        assert served.get(HOST, "/").text == "one"
    _deploy(served, tmp_path, "two")
    for _ in range(6):
        assert served.get(HOST, "/").text == "two"
    done = served.cli("rollback", SITE, first)
    assert done.returncode == 0, done.stderr
    for _ in range(6):
        assert served.get(HOST, "/").text == "one"


def test_conditional_range_and_head_bypass_the_cached_answer(served: Server,
                                                             tmp_path: Path) -> None:
    _deploy(served, tmp_path, "page")
    for _ in range(4):
        code, headers, body = _raw(served, "GET", "/app.js", **{"Accept-Encoding": "gzip"})
        assert (code, headers["content-encoding"]) == (200, "gzip")
    etag = headers["etag"]
    code, _, body = _raw(served, "GET", "/app.js", **{"Accept-Encoding": "gzip",
                                                      "If-None-Match": etag})  # fmt: skip
    assert (code, body) == (304, b"")
    code, headers, body = _raw(served, "GET", "/app.js", Range="bytes=0-5")
    assert (code, body, headers["content-range"]) == (206, b"let x ", "bytes 0-5/3300")
    for _ in range(3):
        code, headers, body = _raw(served, "HEAD", "/app.js")
        assert (code, body, headers["content-length"]) == (200, b"", "3300")


def test_the_control_plane_answers_beside_the_edge(served: Server, tmp_path: Path) -> None:
    _deploy(served, tmp_path, "page")
    assert served.get(HOST, "/").text == "page"
    token = served.new_token()
    response = httpx.get(f"{served.url}/api/sites", headers={"Authorization": f"Bearer {token}"},
                         timeout=10)  # fmt: skip
    assert response.status_code == 200
    assert SITE in response.text
    assert httpx.get(f"{served.url}/api/sites", timeout=10).status_code == 401
