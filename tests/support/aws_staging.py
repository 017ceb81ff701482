"""The serverless shape's parts for tests: bundles, a staging bucket on moto whose events go to
an SQS queue, the AWS backends in the environment, and staged bundles read through a proxy that
misbehaves like a network (support/proxy.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from pushsite.config import load_config
from pushsite.model import Deployment, Status
from pushsite.service import Service
from support.proxy import Proxy


def make_bundle(files: dict[str, bytes], top: str = "site", level: int = 9) -> bytes:
    """A tar.gz as `git archive` shapes it: everything under one top folder."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=level) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def big_bundle(megabytes: int, files: int, page: bytes = b"<h1>big</h1>") -> bytes:
    """Random (incompressible) data in several files, so deploying it takes a while. Gzip
    level 0: random data does not shrink at any level, and level 9 spent ~28 ms of CPU a MiB
    finding that out (1.3 s for the 48 MiB ones)."""
    size = (megabytes << 20) // files
    content = {f"data/part{n:02d}.bin": os.urandom(size) for n in range(files)}
    return make_bundle({"index.html": page, **content}, level=0)


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
    # staged keys create their sites here (off by default; tests/aws/test_s3_rejects.py)
    env = {"PUSHSITE_STORE": store, "PUSHSITE_STATE": state, "AWS_ENDPOINT_URL_S3": moto,
           "PUSHSITE_WORKERS": "2", "PUSHSITE_S3_CREATE_SITES": "1"}
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


def live(service: Service, site: str) -> Deployment | None:
    alias = service.state.get_alias(site, "production")
    if alias is None:
        return None
    deployment = service.state.get_deployment(alias.deployment_id)
    return deployment if deployment.status == Status.LIVE else None


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
