"""The proc-receive hook's own HTTP: every way an answer can be framed or cut short.

A real `git push` into a site repository made by SiteRepos runs the installed hook, which
calls a real HTTP server on 127.0.0.1; that server answers as each case says (the real
`pushsite serve` answers chunked: tests/test_push_rejects.py and test_git_push.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pushsite.deploy.gitcommit import SiteRepos
from pushsite.githook import verdict_line
from support.sites import git

Answer = Callable[[socket.socket, bytes], None]


def _chunked(conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for piece in (body[:7], body[7:]):  # a line split across two chunks
        conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    conn.sendall(b"0\r\n\r\n")


def _sized(conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def _until_closed(conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + body)


class _Server:
    """Answers each hook call with `answer`, and keeps what the hook sent."""

    def __init__(self, answer: Answer, body: bytes, host: str = "127.0.0.1") -> None:
        self.answer, self.body = answer, body
        self.requests: list[bytes] = []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, 0), family=family)
        literal = f"[{host}]" if ":" in host else host
        self.url = f"http://{literal}:{self.sock.getsockname()[1]}/internal/post-receive"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _, body = request.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                self.answer(conn, self.body)


@pytest.fixture
def pushing(tmp_path: Path, make_repo: Callable[..., Path]) -> Iterator[Callable[..., tuple]]:
    repo = make_repo({"index.html": "<p>x</p>"})
    bare = SiteRepos(tmp_path / "repos").create("blog")
    servers: list[_Server] = []

    def push(answer: Answer | None, body: bytes = b"", url: str = "",
             host: str = "127.0.0.1") -> tuple[subprocess.CompletedProcess[str], str,
                                               _Server | None]:
        server = _Server(answer, body, host) if answer else None
        if server:
            servers.append(server)
        env = {**os.environ, "PUSHSITE_HOOK_SECRET": "s3cret",
               "PUSHSITE_HOOK_URL": server.url if server else url}
        done = subprocess.run(["git", "push", str(bare), "HEAD:refs/heads/main"], cwd=repo,
                              env=env, capture_output=True, text=True, check=False)
        moved = subprocess.run(["git", "rev-parse", "--verify", "-q", "refs/heads/main"],
                               cwd=bare, capture_output=True, text=True, check=False)
        return done, moved.stdout.strip(), server

    yield push
    for server in servers:
        server.sock.close()


REFUSED = (b"pushsite: error: no good\n" + verdict_line({"refs/heads/main":
                                                          "deploy failed:  two\tspaces"}).encode())
ACCEPTED = b"pushsite: production: http://blog.localhost/\n" + verdict_line({}).encode()


@pytest.mark.parametrize("answer", [_chunked, _sized, _until_closed])
def test_a_refused_ref_stays_whatever_the_framing(pushing: Callable[..., tuple],
                                                  answer: Answer) -> None:
    done, moved, server = pushing(answer, REFUSED)
    assert done.returncode != 0
    assert "remote: pushsite: error: no good" in done.stderr
    assert "! [remote rejected] HEAD -> main (deploy failed: two spaces)" in done.stderr
    assert moved == ""
    request = server.requests[0]
    assert request.startswith(b"POST /internal/post-receive HTTP/1.1\r\n")
    assert b"X-Pushsite-Hook-Secret: s3cret\r\n" in request
    site, update = request.partition(b"\r\n\r\n")[2].decode().splitlines()
    assert site == "blog"
    assert update.split(" ")[0] == "0" * 40 and update.endswith(" refs/heads/main")


@pytest.mark.parametrize("answer", [_chunked, _sized, _until_closed])
def test_an_accepted_ref_moves(pushing: Callable[..., tuple], answer: Answer) -> None:
    done, moved, _ = pushing(answer, ACCEPTED)
    assert done.returncode == 0, done.stderr
    assert "remote: pushsite: production: http://blog.localhost/" in done.stderr
    assert moved != ""


def test_an_answer_cut_before_its_verdict_moves_the_ref_and_says_so(
        pushing: Callable[..., tuple]) -> None:
    done, moved, _ = pushing(_sized, b"pushsite: reading\n")
    assert done.returncode == 0, done.stderr
    assert "the server's answer ended early" in done.stderr
    assert moved != ""


def test_a_server_error_stores_the_commits(pushing: Callable[..., tuple]) -> None:
    def failing(conn: socket.socket, body: bytes) -> None:
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")

    done, moved, _ = pushing(failing)
    assert done.returncode == 0, done.stderr
    assert "could not reach the server to deploy (HTTP Error 503: Service Unavailable)" \
        in done.stderr
    assert moved != ""


def test_no_server_stores_the_commits(pushing: Callable[..., tuple]) -> None:
    closed = socket.create_server(("127.0.0.1", 0))  # a port nobody answers on
    port = closed.getsockname()[1]
    closed.close()
    done, moved, _ = pushing(None, url=f"http://127.0.0.1:{port}/internal/post-receive")
    assert done.returncode == 0, done.stderr
    assert "could not reach the server to deploy" in done.stderr
    assert moved != ""


def test_outside_pushsite_serve_the_ref_moves(pushing: Callable[..., tuple]) -> None:
    done, moved, _ = pushing(None)
    assert done.returncode == 0, done.stderr
    assert "pushed outside `pushsite serve`; not deployed" in done.stderr
    assert moved == git(Path(done.args[2]), "rev-parse", "refs/heads/main")


def test_the_hook_runs_without_site_packages(tmp_path: Path) -> None:
    """-IS in its first line: no site-packages, no PYTHON* variables (its start is on every
    push's way); it finds pushsite through the path it was written with."""
    hook = SiteRepos(tmp_path / "repos").create("blog") / "hooks" / "proc-receive"
    first = hook.read_text().splitlines()[0]
    assert first.endswith(" -IS") and first.startswith("#!")
    done = subprocess.run([*first[2:].split(), "-c", "import sys; print(sys.flags.no_site, "
                           "sys.flags.isolated)"], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "1"]


def test_a_server_on_an_ipv6_address_is_reached(pushing: Callable[..., tuple]) -> None:
    done, moved, server = pushing(_chunked, REFUSED, host="::1")
    assert "! [remote rejected] HEAD -> main (deploy failed: two spaces)" in done.stderr
    assert moved == ""
    assert b"\r\nHost: [::1]:" in server.requests[0]
