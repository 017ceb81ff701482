"""What one request may cost the server: oversized or slow heads are refused at once, over a
real `pushsite serve`, while every other client keeps being answered."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.servers import Server, serving

HEAD_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("bounded") / "home"
    with serving(home, extra_env={"PUSHSITE_HEAD_TIMEOUT": str(HEAD_TIMEOUT)}) as srv:
        yield srv


def _exchange(server: Server, raw: bytes, wait: float = 10) -> bytes:
    """Send raw bytes, return whatever the server answers before it closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)  # refused mid-send: the answer was written before the close
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def _rss_kib(pid: int) -> int:
    total = 0
    for child in [pid, *_children(pid)]:
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found + [grand for child in found for grand in _children(child)]


def test_a_head_larger_than_32_kib_is_refused_431_without_reading_the_rest(edge: Server) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Big: " + b"a" * (8 << 20) + b"\r\n\r\n"
    answer = _exchange(edge, raw)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"larger than 32 KiB" in answer


def test_one_header_line_over_8_kib_is_refused_431(edge: Server) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"b" * (10 << 10) + b"\r\n\r\n"
    answer = _exchange(edge, raw)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"'x-long' is longer than 8 KiB" in answer


def test_many_headers_under_the_line_limit_still_count_towards_the_head(edge: Server) -> None:
    lines = b"".join(b"X-H%d: %s\r\n" % (i, b"c" * 4000) for i in range(12))
    answer = _exchange(edge, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + lines + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_a_request_target_over_8_kib_is_refused_414(edge: Server) -> None:
    raw = b"GET /" + b"p" * (9 << 10) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answer = _exchange(edge, raw)
    assert answer.startswith(b"HTTP/1.1 414 "), answer[:200]


def test_ordinary_requests_with_big_but_allowed_heads_are_answered(edge: Server) -> None:
    headers = {"X-Fine": "d" * 6000, "Cookie": "e" * 7000}
    response = httpx.get(f"{edge.url}/api/health", headers=headers, timeout=10)
    assert response.status_code == 200


def test_a_head_that_trickles_in_is_answered_408_and_closed(edge: Server) -> None:
    """The clock runs from the head's first byte: bytes trickling in (as a slow-loris client
    sends them) do not wind it back. Were each byte to restart it, the answer would come
    HEAD_TIMEOUT after the last byte (2.7 s here), not after the first (1.5 s)."""
    trickle, step = 6, 0.2
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        answer = b""
        for _ in range(trickle):
            sock.settimeout(step)
            try:
                answer += sock.recv(4096)
            except TimeoutError:
                sock.sendall(b"X")
                continue
            break  # the server answered (or closed): send nothing more
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                answer += chunk
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert elapsed < HEAD_TIMEOUT + trickle * step - 0.2, elapsed


def test_huge_heads_neither_stall_other_clients_nor_keep_memory(edge: Server) -> None:
    before = _rss_kib(edge.process.pid)
    stop = threading.Event()
    # made once: building it (64 MiB and a copy) took ~100 ms of CPU a round in each of the
    # four floods, on the cores the server shares
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"f" * (64 << 20)

    def flood() -> None:
        while not stop.is_set():
            _exchange(edge, huge)

    floods = [threading.Thread(target=flood) for _ in range(4)]
    for thread in floods:
        thread.start()
    try:
        for _ in range(20):
            response = httpx.get(f"{edge.url}/api/health", timeout=5)
            assert response.status_code == 200
    finally:
        stop.set()
        for thread in floods:
            thread.join(60)
    grown = _rss_kib(edge.process.pid) - before
    assert grown < 64 << 10, f"the server grew by {grown} KiB"


def test_a_git_path_outside_what_git_asks_for_is_404_not_500(edge: Server) -> None:
    token = edge.new_token("--name", "git")
    auth = base64.b64encode(f"x:{token}".encode())
    for rest in (b"../../state.db", b"info/../../x", b"config", b"hooks/post-receive"):
        raw = (b"GET /blog.git/" + rest + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Authorization: Basic " + auth + b"\r\nConnection: close\r\n\r\n")
        answer = _exchange(edge, raw)
        assert answer.startswith(b"HTTP/1.1 404 "), (rest, answer[:300])
        assert b"is not something git asks a repository for" in answer


def test_a_range_of_thousands_of_digits_is_416_not_500(edge: Server, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>ranges</p>")
    done = edge.cli("deploy", "--create", str(site), "--site", "ranges")
    assert done.returncode == 0, done.stderr
    response = edge.get("ranges.localhost", "/", headers={"Range": "bytes=" + "9" * 5000 + "-"})
    assert response.status_code == 416
