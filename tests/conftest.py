"""Shared fixtures (only fixtures: the helpers they use live in tests/support/): an isolated
PUSHSITE_HOME per test, sites and git repos built in tmp, a real `pushsite serve` subprocess on
a free 127.0.0.1 port, and the AWS backends' servers (moto, SeaweedFS), each started once per
run for tests/aws and tests/contracts alike."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.aws_servers import dummy_credentials, reset_moto, run_moto, run_seaweed, unique_bucket
from support.disk import tmpfs
from support.servers import Server, serving
from support.sites import GIT_ENV, git, write_files
from support.sslcontext import shared_default_context


@pytest.fixture(scope="session", autouse=True)
def _one_ssl_context() -> Iterator[None]:
    """httpx.get and its kind load no CA bundle per call (support/sslcontext.py)."""
    with shared_default_context():
        yield


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("PUSHSITE_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("PUSHSITE_HOME", str(home))
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    # the default home (config.default_home) in this test's folder, never the real one
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    return home


@pytest.fixture
def make_site(tmp_path: Path) -> Callable[..., Path]:
    """A folder holding the given files (default: a tiny site)."""
    counter = [0]

    def make(files: dict[str, str | bytes] | None = None) -> Path:
        counter[0] += 1
        root = tmp_path / f"site{counter[0]}"
        root.mkdir()
        return write_files(root, files or {"index.html": "<h1>hello</h1>",
                                           "css/a.css": "body{color:red}" * 40})

    return make


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """A git repository with the given files committed on `main`."""
    counter = [0]

    def make(files: dict[str, str | bytes]) -> Path:
        counter[0] += 1
        repo = tmp_path / f"repo{counter[0]}"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        write_files(repo, files)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "first")
        return repo

    return make


@pytest.fixture
def server(_isolated_env: Path) -> Iterator[Server]:
    with serving(_isolated_env) as srv:
        yield srv


# the AWS backends' servers ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def aws_credentials() -> Iterator[None]:
    """Dummy credentials so boto3 never looks for real ones."""
    with dummy_credentials():
        yield


@pytest.fixture(scope="session")
def moto_server(aws_credentials: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's standalone server; yields its endpoint URL."""
    with run_moto(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
def moto(moto_server: str) -> str:
    """The moto endpoint, emptied before the test."""
    reset_moto(moto_server)
    return moto_server


@pytest.fixture(scope="session")
def seaweed_server(
    aws_credentials: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """SeaweedFS `weed mini` (master, volume, filer, S3); yields the S3 endpoint URL."""
    with run_seaweed(tmp_path_factory.mktemp("seaweed")) as endpoint:
        yield endpoint


@pytest.fixture
def seaweed_url(seaweed_server: str) -> str:
    """An s3:// store URL on SeaweedFS in a bucket of its own."""
    return f"s3://{unique_bucket()}/site-data?endpoint={seaweed_server}&create=1"


@pytest.fixture
def moto_s3_url(moto: str) -> str:
    """An s3:// store URL on moto in a bucket of its own."""
    return f"s3://{unique_bucket()}/site-data?endpoint={moto}&create=1"


@pytest.fixture
def dynamodb_url(moto: str) -> str:
    return f"dynamodb://pushsite-{uuid.uuid4().hex[:8]}?endpoint={moto}&create=1"


@pytest.fixture
def sqs_url(moto: str) -> str:
    return f"sqs://deploys-{uuid.uuid4().hex[:8]}?endpoint={moto}&create=1"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, to be filled (support/disk.py)."""
    with tmpfs(tmp_path / "disk", "8m") as mount:
        yield mount


@pytest.fixture
def after_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every brotli left to the after pass, so a deployment queues its optimising message:
    none made while the deploy reads (deploy/early.py) nor at its end
    (builder.LATER_NOW_BYTES); tests/test_early_brotli.py covers those two."""
    from pushsite.deploy import builder, early

    monkeypatch.setattr(early, "CAPACITY", 0)
    monkeypatch.setattr(builder, "LATER_NOW_BYTES", -1)
