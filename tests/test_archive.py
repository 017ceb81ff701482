"""Fetching a commit's archive over real HTTP from a local server that serves `git archive`."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import tarfile
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pushsite.errors import BundleTooLarge, ConfigError, DeploymentFailed
from pushsite.sources.archive import ArchiveSource, archive_request, fetch_archive, source_for
from pushsite.sources.webhooks import PushEvent

TOKEN = "glpat-s3cr3t-t0ken"
GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Ada",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_AUTHOR_DATE": "2026-01-02T03:04:05Z",
    "GIT_COMMITTER_DATE": "2026-01-02T03:04:05Z",
}


def git(cwd: Path, *args: str) -> bytes:
    done = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True)
    return done.stdout


def make_repo(path: Path, files: dict[str, bytes]) -> str:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "Publish the site")
    return git(path, "rev-parse", "HEAD").decode().strip()


def git_archive_command(repo: Path, commit: str) -> list[str]:
    prefix = f"acme-www-{commit[:7]}/"
    return ["git", "-C", str(repo), "archive", "--format=tar.gz", f"--prefix={prefix}", commit]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("git") / "www"
    commit = make_repo(
        path,
        {
            "index.html": b"<!doctype html><h1>Hello</h1>\n",
            "css/site.css": b"body { color: #222 }\n",
            "about/index.html": b"<p>About us</p>\n",
        },
    )
    return path, commit


@pytest.fixture(scope="module")
def archive(repo: tuple[Path, str]) -> bytes:
    path, commit = repo
    done = subprocess.run(git_archive_command(path, commit), env=GIT_ENV, capture_output=True)
    assert done.returncode == 0 and done.stdout[:2] == b"\x1f\x8b"
    return done.stdout


# -- a tiny real HTTP server -------------------------------------------------------------------

App = Callable[[BaseHTTPRequestHandler], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: App
    seen: list[tuple[str, dict[str, str]]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        headers = {key.lower(): value for key, value in self.headers.items()}
        self.server.seen.append((self.path, headers))
        self.server.app(self)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(app: App) -> Iterator[tuple[str, _Server]]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.app, server.seen = app, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


def serving(data: bytes) -> App:
    def app(handler: BaseHTTPRequestHandler) -> None:
        reply(handler, 200, data, Content_Type="application/x-gzip")

    return app


def members(data: bytes) -> tuple[list[str], str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile()), tar.pax_headers["comment"]


def source(provider: str, base: str, commit: str, **extra: str) -> ArchiveSource:
    return ArchiveSource(provider, base, "acme/www", commit, token=TOKEN, **extra)


# -- the request each host expects ------------------------------------------------------------

SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"
EXPECTED = {
    "github": (f"/repos/acme/www/tarball/{SHA}", "authorization", f"Bearer {TOKEN}"),
    "gitlab": (
        f"/api/v4/projects/acme%2Fwww/repository/archive.tar.gz?sha={SHA}",
        "private-token",
        TOKEN,
    ),
    "gitea": (f"/api/v1/repos/acme/www/archive/{SHA}.tar.gz", "authorization", f"token {TOKEN}"),
    "forgejo": (f"/api/v1/repos/acme/www/archive/{SHA}.tar.gz", "authorization", f"token {TOKEN}"),
    "bitbucket": (f"/acme/www/get/{SHA}.tar.gz", "authorization", f"Bearer {TOKEN}"),
}


@pytest.mark.parametrize("provider", sorted(EXPECTED))
def test_request_names_the_commit_and_sends_the_token_only_in_a_header(provider: str) -> None:
    url, headers = archive_request(source(provider, "https://git.example.com/", SHA))
    path, header, value = EXPECTED[provider]
    assert url == "https://git.example.com" + path
    assert {k.lower(): v for k, v in headers.items()}[header] == value
    assert TOKEN not in url


def test_public_hosts_are_the_default_bases() -> None:
    assert archive_request(source("github", "", SHA))[0].startswith("https://api.github.com/repos/")
    assert archive_request(source("gitlab", "", SHA))[0].startswith("https://gitlab.com/api/v4/")
    bitbucket = archive_request(source("bitbucket", "", SHA))[0]
    assert bitbucket == f"https://bitbucket.org/acme/www/get/{SHA}.tar.gz"


def test_github_enterprise_base_and_gitlab_project_id() -> None:
    url, _ = archive_request(source("github", "https://ghe.example.com/api/v3", SHA))
    assert url == f"https://ghe.example.com/api/v3/repos/acme/www/tarball/{SHA}"
    url, _ = archive_request(source("gitlab", "https://gitlab.example.com", SHA, project_id="42"))
    assert (
        url == f"https://gitlab.example.com/api/v4/projects/42/repository/archive.tar.gz?sha={SHA}"
    )
    nested = ArchiveSource("gitlab", "", "group/sub/www", SHA)
    assert "/projects/group%2Fsub%2Fwww/" in archive_request(nested)[0]


def test_no_token_sends_no_credentials() -> None:
    _, headers = archive_request(ArchiveSource("github", "", "acme/www", SHA))
    assert not {"authorization", "private-token"} & {k.lower() for k in headers}


@pytest.mark.parametrize(
    "bad",
    [
        ArchiveSource("svn", "", "acme/www", SHA),
        ArchiveSource("github", "", "acme/../etc", SHA),
        ArchiveSource("github", "", "acme/www/extra", SHA),
        ArchiveSource("github", "", "acme/www", "main; rm -rf"),
        ArchiveSource("github", "file:///etc", "acme/www", SHA),
        ArchiveSource("gitlab", "", "acme/www", SHA, project_id="42/../1"),
    ],
)
def test_bad_sources_are_config_errors(bad: ArchiveSource) -> None:
    with pytest.raises(ConfigError):
        archive_request(bad)


def test_source_for_a_push_event_keeps_gitlab_project_id() -> None:
    event = PushEvent(
        "gitlab",
        "d1",
        "acme/www",
        "refs/heads/main",
        "main",
        None,
        SHA,
        False,
        False,
        "",
        "",
        project_id="42",
    )
    built = source_for(event, "https://gitlab.example.com", TOKEN)
    expected = ArchiveSource("gitlab", "https://gitlab.example.com", "acme/www", SHA, TOKEN, "42")
    assert built == expected


# -- fetching over HTTP -----------------------------------------------------------------------


@pytest.mark.parametrize("provider", sorted(EXPECTED))
def test_fetches_the_real_git_archive_from_each_host(
    provider: str, repo: tuple[Path, str], archive: bytes
) -> None:
    _, commit = repo
    path, header, value = EXPECTED[provider]
    with serve(serving(archive)) as (base, server):
        dest = io.BytesIO()
        written = fetch_archive(source(provider, base, commit), dest, backoff=0.01)
    assert server.seen[0][0] == path.replace(SHA, commit)
    assert server.seen[0][1][header] == value
    assert written == len(archive) and dest.getvalue() == archive
    names, pax_commit = members(dest.getvalue())
    prefix = f"acme-www-{commit[:7]}/"
    assert names == [prefix + n for n in ("about/index.html", "css/site.css", "index.html")]
    assert pax_commit == commit


def test_redirect_to_another_origin_drops_the_token(repo: tuple[Path, str], archive: bytes) -> None:
    _, commit = repo
    with serve(serving(archive)) as (codeload, downloads):

        def redirect(handler: BaseHTTPRequestHandler) -> None:
            reply(handler, 302, Location=f"{codeload}/acme/www/legacy.tar.gz/{commit}")

        with serve(redirect) as (api, apis):
            dest = io.BytesIO()
            fetch_archive(source("github", api, commit), dest, backoff=0.01)
    assert dest.getvalue() == archive
    assert apis.seen[0][1]["authorization"] == f"Bearer {TOKEN}"
    assert downloads.seen[0][0] == f"/acme/www/legacy.tar.gz/{commit}"
    assert "authorization" not in downloads.seen[0][1]


def test_redirect_on_the_same_origin_keeps_the_token(
    repo: tuple[Path, str], archive: bytes
) -> None:
    _, commit = repo

    def app(handler: BaseHTTPRequestHandler) -> None:
        if handler.path.startswith("/api/"):
            reply(handler, 307, Location="/download/www.tar.gz")
        else:
            reply(handler, 200, archive)

    with serve(app) as (base, server):
        dest = io.BytesIO()
        fetch_archive(source("gitlab", base, commit), dest, backoff=0.01)
    assert dest.getvalue() == archive
    assert [headers["private-token"] for _, headers in server.seen] == [TOKEN, TOKEN]


def test_retries_after_two_503s(repo: tuple[Path, str], archive: bytes) -> None:
    _, commit = repo
    calls = []

    def flaky(handler: BaseHTTPRequestHandler) -> None:
        calls.append(handler.path)
        if len(calls) <= 2:
            reply(handler, 503, b"upstream busy")
        else:
            reply(handler, 200, archive)

    with serve(flaky) as (base, _):
        dest = io.BytesIO()
        assert fetch_archive(source("gitea", base, commit), dest, backoff=0.01) == len(archive)
    assert len(calls) == 3 and dest.getvalue() == archive


def test_gives_up_after_the_last_retry(repo: tuple[Path, str]) -> None:
    _, commit = repo

    def down(handler: BaseHTTPRequestHandler) -> None:
        reply(handler, 502, b"bad gateway")

    with serve(down) as (base, server), pytest.raises(DeploymentFailed) as failure:
        fetch_archive(source("github", base, commit), io.BytesIO(), retries=2, backoff=0.01)
    assert len(server.seen) == 3
    assert "3 times" in str(failure.value) and "502" in str(failure.value)


def test_a_broken_download_is_rewound_and_retried(repo: tuple[Path, str], archive: bytes) -> None:
    _, commit = repo
    calls = []

    def cut(handler: BaseHTTPRequestHandler) -> None:
        calls.append(1)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(archive)))
        handler.end_headers()
        handler.wfile.write(archive if len(calls) > 1 else archive[: len(archive) // 2])
        handler.close_connection = True

    with serve(cut) as (base, _):
        dest = io.BytesIO(b"kept")
        dest.seek(4)
        fetch_archive(source("github", base, commit), dest, backoff=0.01)
    assert len(calls) == 2
    assert dest.getvalue() == b"kept" + archive


class _Pipe(io.RawIOBase):
    """A destination that cannot seek, like a pipe to a deployer."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk: bytes) -> int:  # type: ignore[override]
        self.data += chunk
        return len(chunk)


def test_a_broken_download_into_a_pipe_is_not_retried(repo: tuple[Path, str]) -> None:
    _, commit = repo
    first_part = os.urandom(256 * 1024)  # more than one chunk reaches the pipe before the cut

    def cut(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(2 * len(first_part)))
        handler.end_headers()
        handler.wfile.write(first_part)
        handler.close_connection = True

    pipe = _Pipe()
    with serve(cut) as (base, server), pytest.raises(DeploymentFailed, match="rewound"):
        fetch_archive(source("github", base, commit), pipe, backoff=0.01)  # type: ignore[arg-type]
    assert len(server.seen) == 1 and 0 < len(pipe.data) < 2 * len(first_part)


@pytest.mark.parametrize("status", [401, 403, 404])
def test_client_errors_fail_at_once_naming_the_url_not_the_token(
    status: int, repo: tuple[Path, str]
) -> None:
    _, commit = repo

    def refuse(handler: BaseHTTPRequestHandler) -> None:
        reply(handler, status, b'{"message": "Not Found"}')

    with serve(refuse) as (base, server), pytest.raises(DeploymentFailed) as failure:
        fetch_archive(source("gitlab", base, commit), io.BytesIO(), backoff=0.01)
    message = str(failure.value)
    assert len(server.seen) == 1
    assert f"HTTP {status}" in message
    assert f"{base}/api/v4/projects/acme%2Fwww/repository/archive.tar.gz?sha={commit}" in message
    assert TOKEN not in message


def test_refused_connection_is_retried_then_fails() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gone = source("github", f"http://127.0.0.1:{port}", SHA)
    with pytest.raises(DeploymentFailed, match="2 times.*ConnectError"):
        fetch_archive(gone, io.BytesIO(), retries=1, backoff=0.01, timeout=5)


def test_over_max_bytes_is_bundle_too_large(repo: tuple[Path, str], archive: bytes) -> None:
    _, commit = repo
    with serve(serving(archive)) as (base, _), pytest.raises(BundleTooLarge):
        fetch_archive(source("github", base, commit), io.BytesIO(), max_bytes=len(archive) - 1)


def test_large_archive_streams_with_flat_memory(tmp_path: Path) -> None:
    size = 24 * 1024 * 1024
    random_data = os.urandom(size)  # incompressible: the archive is as large as the file
    commit = make_repo(tmp_path / "big", {"video.bin": random_data, "index.html": b"<p>big</p>"})
    del random_data
    sent = hashlib.sha256()

    def stream_git_archive(handler: BaseHTTPRequestHandler) -> None:
        # HTTP/1.0 without Content-Length: the body ends when the connection closes.
        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-gzip")
        handler.end_headers()
        command = git_archive_command(tmp_path / "big", commit)
        with subprocess.Popen(command, stdout=subprocess.PIPE, env=GIT_ENV) as proc:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(64 * 1024):
                sent.update(chunk)
                handler.wfile.write(chunk)
        handler.close_connection = True

    with serve(stream_git_archive) as (base, _), open(tmp_path / "out.tar.gz", "wb") as dest:
        tracemalloc.start()
        try:
            written = fetch_archive(source("bitbucket", base, commit), dest, backoff=0.01)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert written > size
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while streaming {written}"
    received = hashlib.sha256((tmp_path / "out.tar.gz").read_bytes()).hexdigest()
    assert received == sent.hexdigest()
