"""The serverless shape end to end, on real servers the tests start: a bundle put in a moto
staging bucket -> S3 notification -> SQS -> `pushsite worker` subprocesses (or the Lambda
handler) -> blobs in SeaweedFS -> alias in DynamoDB -> `pushsite serve` answers.

The helpers here (bundles, a staging bucket wired to a queue) serve test_worker.py and
test_lambda.py too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from pushsite.config import load_config
from pushsite.model import Deployment, Status
from pushsite.service import Service
from tests.conftest import start_server


def make_bundle(files: dict[str, bytes], top: str = "site") -> bytes:
    """A tar.gz as `git archive` shapes it: everything under one top folder."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def big_bundle(megabytes: int, files: int, page: bytes = b"<h1>big</h1>") -> bytes:
    """Random (incompressible) data in several files, so deploying it takes a while."""
    size = (megabytes << 20) // files
    content = {f"data/part{n:02d}.bin": os.urandom(size) for n in range(files)}
    return make_bundle({"index.html": page, **content})


@dataclass
class Staging:
    """A staging bucket on moto whose ObjectCreated events go to an SQS queue (with a DLQ)."""

    endpoint: str
    bucket: str
    queue_name: str
    queue_url: str
    dead_url: str
    visibility: int
    s3: Any
    sqs: Any

    @property
    def pushsite_queue(self) -> str:
        """The queue as pushsite names it; ?visibility= is the workers' lease too."""
        return f"sqs://{self.queue_name}?endpoint={self.endpoint}&visibility={self.visibility}"

    def put(self, key: str, data: bytes, meta: dict[str, str] | None = None) -> str:
        """Upload a bundle (with x-amz-meta-* values); returns its ETag (without quotes)."""
        response = self.s3.put_object(Bucket=self.bucket, Key=key, Body=data,
                                      Metadata=meta or {})
        return str(response["ETag"]).strip('"')

    def receive(self, wait: int = 5) -> list[dict[str, Any]]:
        """Raw SQS messages (as Lambda's event source would get them)."""
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["All"])
        return list(response.get("Messages", []))

    def drain_test_event(self) -> None:
        """S3 sends one s3:TestEvent when notifications are set up; take it off the queue."""
        for message in self.receive(wait=1):
            assert json.loads(message["Body"]).get("Event") == "s3:TestEvent"
            self.delete(message)

    def delete(self, message: dict[str, Any]) -> None:
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def count(self, url: str) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                          "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"])


def make_staging(endpoint: str, visibility: int = 30, max_receives: int = 3) -> Staging:
    kwargs = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    s3 = boto3.client("s3", **kwargs)
    sqs = boto3.client("sqs", **kwargs)
    name = f"bundles-{uuid.uuid4().hex[:8]}"
    dead_url = sqs.create_queue(QueueName=f"{name}-dead")["QueueUrl"]
    dead_arn = sqs.get_queue_attributes(QueueUrl=dead_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(QueueName=name, Attributes={
        "VisibilityTimeout": str(visibility),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_arn,
                                     "maxReceiveCount": str(max_receives)}),
    })["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    bucket = f"staging-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "QueueConfigurations": [{
            "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".tar.gz"}]}},
        }]})
    staging = Staging(endpoint, bucket, name, queue_url, dead_url, visibility, s3, sqs)
    staging.drain_test_event()
    return staging


def use_aws_backends(monkeypatch: pytest.MonkeyPatch, moto: str, store: str,
                     state: str) -> dict[str, str]:
    """PUSHSITE_* for the serverless shape: blobs in SeaweedFS, state in DynamoDB on moto;
    the staging bucket is read through boto3's AWS_ENDPOINT_URL_S3 (moto)."""
    env = {"PUSHSITE_STORE": store, "PUSHSITE_STATE": state, "AWS_ENDPOINT_URL_S3": moto,
           "PUSHSITE_WORKERS": "2"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@contextlib.contextmanager
def opened_services() -> Iterator[Callable[[str], Service]]:
    """Make Services over the environment's backends and a given queue URL; close them."""
    made: list[Service] = []

    def make(queue: str) -> Service:
        made.append(Service(load_config(queue=queue)))
        return made[-1]

    try:
        yield make
    finally:
        for service in made:
            service.close()


@pytest.fixture
def aws_env(moto: str, seaweed_url: str, dynamodb_url: str,
            monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return use_aws_backends(monkeypatch, moto, seaweed_url, dynamodb_url)


@pytest.fixture
def service_for(aws_env: dict[str, str]) -> Iterator[Callable[[str], Service]]:
    with opened_services() as make:
        yield make


def wait_for(check: Callable[[], Any], what: str, seconds: float = 60) -> Any:
    """Poll until `check` returns something truthy (a liveness bound, not a timing assert)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def deployments(service: Service, site: str) -> list[Deployment]:
    return service.state.list_deployments(site, limit=100)


def start_worker(env: dict[str, str], queue: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pushsite", "worker", "--queue", queue],
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def live(service: Service, site: str) -> Deployment | None:
    alias = service.state.get_alias(site, "production")
    if alias is None:
        return None
    deployment = service.state.get_deployment(alias.deployment_id)
    return deployment if deployment.status == Status.LIVE else None


# the tests --------------------------------------------------------------------------------


def test_bundle_in_staging_is_served_after_worker_deploys_it(
        moto: str, aws_env: dict[str, str], service_for: Callable[[str], Service],
        tmp_path: Path) -> None:
    staging = make_staging(moto)
    service = service_for(staging.pushsite_queue)
    worker = start_worker(aws_env, staging.pushsite_queue, tmp_path / "worker.log")
    server = None
    try:
        staging.put("blog/main/bundle.tar.gz", make_bundle({
            "index.html": b"<h1>first version</h1>", "about/index.html": b"about us"}))
        first = wait_for(lambda: live(service, "blog"), "the first bundle to go live")
        server = start_server(tmp_path / "serve-home", extra_env=aws_env)
        page = server.get(f"blog.localhost:{server.port}")
        assert page.status_code == 200 and page.text == "<h1>first version</h1>"
        assert server.get(f"blog.localhost:{server.port}", "/about/").text == "about us"

        staging.put("blog/main/bundle.tar.gz", make_bundle({"index.html": b"<h1>second</h1>"}))
        second = wait_for(lambda: (d := live(service, "blog")) and d.id != first.id and d,
                          "the second bundle to go live")
        assert second.id > first.id
        assert server.get(f"blog.localhost:{server.port}").text == "<h1>second</h1>"
        assert server.get(f"{first.id}--blog.localhost:{server.port}").text == \
            "<h1>first version</h1>"
    finally:
        stop(worker)
        if server is not None:
            server.stop()
    assert staging.count(staging.queue_url) == 0
    assert staging.count(staging.dead_url) == 0


def test_worker_killed_mid_deploy_is_finished_by_another(
        moto: str, aws_env: dict[str, str], service_for: Callable[[str], Service],
        tmp_path: Path) -> None:
    staging = make_staging(moto, visibility=3)
    service = service_for(staging.pushsite_queue)
    # 1 MB pack segments: the first is stored long before the 48 MB deploy ends
    env = {**aws_env, "PUSHSITE_WORKERS": "1",
           "PUSHSITE_STORE": aws_env["PUSHSITE_STORE"] + "&segment_mb=1"}
    first = start_worker(env, staging.pushsite_queue, tmp_path / "first.log")
    second = None
    try:
        staging.put("docs/main/site.tar.gz", big_bundle(48, 12))
        running = wait_for(lambda: [d for d in deployments(service, "docs")
                                    if d.status == Status.RUNNING], "the deploy to start")[0]
        wait_for(lambda: any(True for _ in service.store.keys("packs/")), "a first stored pack")
        second = start_worker(env, staging.pushsite_queue, tmp_path / "second.log")
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert service.state.get_deployment(running.id).status == Status.RUNNING

        done = wait_for(lambda: live(service, "docs"), "the second worker to finish it", 90)
        assert done.id == running.id
        assert done.blobs_reused >= 1  # what the killed worker stored was not stored again
        assert [d.id for d in deployments(service, "docs")] == [running.id]
        lines = [line.message for line in service.state.get_logs(running.id)]
        assert any("taken over" in line for line in lines)
    finally:
        stop(first)
        if second is not None:
            stop(second)


class Proxy:
    """A TCP proxy to a local server that can misbehave like a network: relay at most `rate`
    bytes a second back to each client, or cut the first connection once it has relayed
    `cut_after` bytes back (a staging download that breaks mid-bundle)."""

    def __init__(self, upstream_port: int, *, cut_after: int | None = None,
                 rate: float | None = None) -> None:
        self.cut_after = cut_after
        self.rate = rate
        self.cuts = 0
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True),
                             daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, downstream: bool) -> None:
        relayed = 0
        try:
            while data := source.recv(65536):
                target.sendall(data)
                relayed += len(data)
                if not downstream:
                    continue
                if self.rate:
                    time.sleep(len(data) / self.rate)
                if self.cut_after is not None and self.cuts == 0 and relayed > self.cut_after:
                    self.cuts += 1
                    break
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closing = True
        self._listener.close()


@contextlib.contextmanager
def staging_through(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    """Read staged bundles through the proxy (the staging client is made per bucket)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    try:
        yield proxy
    finally:
        proxy.close()


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_a_staging_download_that_breaks_mid_bundle_resumes_where_it_stopped(
        moto: str, aws_env: dict[str, str], service_for: Callable[[str], Service],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pushsite.service.worker import run_worker

    staging = make_staging(moto)
    service = service_for(staging.pushsite_queue)
    with staging_through(Proxy(port_of(moto), cut_after=3 << 20), monkeypatch) as proxy:
        staging.put("blog/main/bundle.tar.gz", big_bundle(8, 4, page=b"whole"))
        run_worker(service, once=True, wait=5)

    assert proxy.cuts == 1
    deployment = live(service, "blog")
    assert deployment is not None and deployment.files == 5
