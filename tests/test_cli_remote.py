"""`pushsite deploy --server URL --token T`: the real CLI, deploying to a real `pushsite serve`."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pushsite.config import load_config
from pushsite.remote import api_base
from pushsite.service import Service
from support.api import Api
from support.servers import Server, free_port, serving
from support.sites import git, git_bundle


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("remote") / "home") as srv:
        yield srv


@pytest.fixture(scope="module")
def token(remote: Server) -> str:
    return remote.new_token("--name", "ci")


@pytest.fixture
def client_home(tmp_path: Path) -> Path:
    """The CI machine's data directory: a remote deploy must leave it untouched."""
    return tmp_path / "client-home"


def run_cli(home: Path, *args: str, env: dict[str, str] | None = None,
            input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run `pushsite` as a CI job would: its own home, no PUSHSITE_* but those given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSITE_")}
    done = subprocess.run([sys.executable, "-m", "pushsite", *args], input=input,
                          env={**base, "PUSHSITE_HOME": str(home), **(env or {})},
                          capture_output=True, timeout=120, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


def errors_of(stderr: str) -> list[str]:
    """The stderr of a failed run as messages: rich wraps a long one over several lines."""
    return [" ".join(part.split()) for part in ("\n" + stderr).split("\nerror: ")[1:]]


def test_deploy_a_folder_to_a_server(remote: Server, token: str, client_home: Path,
                                     make_site: Callable[..., Path]) -> None:
    folder = make_site({"index.html": "<h1>from ci</h1>", "docs/a.txt": "a"})
    done = run_cli(client_home, "deploy", "--create", str(folder), "--site", "ci-one", "--server",
                   remote.url, "--token", token, "-m", "from CI")
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.split())  # rich wraps long lines when stderr is no terminal
    assert f"production: http://ci-one.localhost:{remote.port}/ deployment: " in said
    assert "live: 2 files, 2 new blobs, 0 reused, " in said
    assert "wrote the manifest" in done.stderr  # the deployment's log, followed live
    assert "from ci" in remote.get("ci-one.localhost", "/").text
    assert not client_home.exists()
    record = Api(remote, token).ok("GET", "/sites/ci-one/deploys")["deployments"][0]
    assert (record["message"], record["source"]) == ("from CI", "api")
    assert said.endswith(f"; deployment {record['id']}")


def test_json_output_is_the_deployment_with_urls(remote: Server, token: str, client_home: Path,
                                                 make_site: Callable[..., Path]) -> None:
    done = run_cli(client_home, "deploy", "--create", str(make_site()), "--site", "ci-json",
                   "--branch", "feature/login", "--json", "--server", remote.url + "/", "--token",
                   token)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["status"] == "live" and data["branch"] == "feature/login"
    assert data["urls"]["branch"] == f"http://feature-login--ci-json.localhost:{remote.port}/"
    assert {"id", "files", "blobs_new", "blobs_reused", "bytes_stored", "seconds"} <= set(data)
    assert "wrote the manifest" not in done.stderr  # --json keeps stderr quiet


def test_env_vars_name_the_server_and_token_and_stdin_takes_a_bundle(
        remote: Server, token: str, client_home: Path, tmp_path: Path,
        make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<h1>piped from git</h1>"})
    bundle = git_bundle(repo, tmp_path / "b.tar.gz").read_bytes()
    done = run_cli(client_home, "deploy", "--create", "-", "--site", "ci-env", input=bundle,
                   env={"PUSHSITE_SERVER": remote.url, "PUSHSITE_TOKEN": token})
    assert done.returncode == 0, done.stderr
    assert "piped from git" in remote.get("ci-env.localhost", "/").text
    record = Api(remote, token).ok("GET", "/sites/ci-env/deploys")["deployments"][0]
    assert record["commit"] == git(repo, "rev-parse", "HEAD")


def test_a_rejected_bundle_exits_3_with_one_line(remote: Server, token: str, client_home: Path,
                                                 tmp_path: Path) -> None:
    bundle = tmp_path / "broken.tar.gz"
    bundle.write_bytes(gzip.compress(b"definitely not a tar archive" * 30))
    done = run_cli(client_home, "deploy", "--create", str(bundle), "--site", "ci-bad", "--json",
                   "--server", remote.url, "--token", token)
    assert done.returncode == 3, done.stderr
    assert len(errors_of(done.stderr)) == 1
    assert done.stderr.startswith("error: the bundle is not a valid tar.gz")
    failed = json.loads(done.stdout)  # --json prints the failed deployment, as locally
    assert failed["status"] == "failed" and failed["exit_code"] == 3


def test_a_bad_site_config_exits_3(remote: Server, token: str, client_home: Path,
                                   make_site: Callable[..., Path]) -> None:
    folder = make_site({"index.html": "x", "_redirects": "/a\n"})
    done = run_cli(client_home, "deploy", "--create", str(folder), "--site", "ci-conf", "--server",
                   remote.url, "--token", token)
    assert done.returncode == 3, done.stderr
    assert "error: _redirects line 1" in done.stderr


@pytest.mark.parametrize(("args", "code", "words"), [
    (("--token", "psk_not_a_token"), 8, "a valid deploy token is required"),
    ((), 8, "--server needs a deploy token"),
    (("--token", "t", "--site", "Bad Name"), 2, "invalid site name 'Bad Name'"),
])
def test_token_and_name_problems_exit_with_their_code(
        remote: Server, client_home: Path, make_site: Callable[..., Path],
        args: tuple[str, ...], code: int, words: str) -> None:
    site_args = () if "--site" in args else ("--site", "ci-auth")
    done = run_cli(client_home, "deploy", "--create", str(make_site()), *site_args, "--server",
                   remote.url, *args)
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith("error: ") and len(errors_of(done.stderr)) == 1
    assert words in errors_of(done.stderr)[0]


def test_a_token_for_another_site_exits_8(remote: Server, client_home: Path,
                                          make_site: Callable[..., Path]) -> None:
    other = remote.new_token("--site", "elsewhere")
    done = run_cli(client_home, "deploy", str(make_site()), "--site", "ci-forbidden",
                   "--server", remote.url, "--token", other)
    assert done.returncode == 8
    assert errors_of(done.stderr) == ["this token is limited to site 'elsewhere', not "
                                      "'ci-forbidden'; use a token made for that site or for "
                                      "every site"]


def test_an_unreachable_server_exits_7(client_home: Path, make_site: Callable[..., Path]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_cli(client_home, "deploy", str(make_site()), "--site", "x", "--server", url,
                   "--token", "t")
    assert done.returncode == 7
    assert done.stderr.startswith("error: ") and len(errors_of(done.stderr)) == 1
    assert errors_of(done.stderr)[0].startswith(f"could not reach the pushsite server at {url}")


def test_a_server_url_that_is_not_one_exits_2(client_home: Path,
                                              make_site: Callable[..., Path]) -> None:
    done = run_cli(client_home, "deploy", str(make_site()), "--site", "x", "--server",
                   "ftp://example", "--token", "t")
    assert done.returncode == 2
    assert "invalid --server 'ftp://example'" in errors_of(done.stderr)[0]
    assert api_base("https://deploy.example.com/") == "https://deploy.example.com/api"
    assert api_base("http://127.0.0.1:8000/api") == "http://127.0.0.1:8000/api"


def test_a_deploy_that_outlives_its_timeout_is_cancelled_and_exits_6(
        server: Server, tmp_path: Path, make_site: Callable[..., Path]) -> None:
    """The worker is held on a bundle that never arrives (a FIFO), so ours waits in the queue."""
    token = server.new_token("--name", "ci")
    api = Api(server, token)
    service = Service(load_config(home=str(server.home)))
    fifo: Path | None = None
    try:
        blocker = service.accept("blocker", None, enqueue=False)
        fifo = service.config.staging / f"{blocker.id}.tar.gz"
        fifo.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(fifo)
        blocker.bundle_key = fifo.name
        service.state.update_deployment(blocker)
        service.queue.send({"deployment": blocker.id})
        for _ in range(400):
            if api.ok("GET", f"/deployments/{blocker.id}")["status"] == "running":
                break
            time.sleep(0.05)
        assert api.ok("GET", f"/deployments/{blocker.id}")["status"] == "running"
        done = run_cli(tmp_path / "client", "deploy", "--create", str(make_site()), "--site",
                       "ci-slow", "--timeout", "2", "--server", server.url, "--token", token)
        assert done.returncode == 6, done.stderr
        assert "did not finish within 2s, so it was cancelled" in errors_of(done.stderr)[0]
        ours = api.ok("GET", "/sites/ci-slow/deploys")["deployments"][0]
        assert ours["status"] == "cancelled"
    finally:
        if fifo is not None and fifo.exists():
            with contextlib.suppress(OSError):  # ENXIO: the worker never opened it
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the bundle ends empty
        service.close()
