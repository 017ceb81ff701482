"""The Lambda recovers too: an invocation ends by taking over deployments whose runner (a
killed invocation) stopped renewing its lease, so a bundle whose message is gone still goes
live, and a live runner's deployment is left alone. Real parts: moto S3/SQS, DynamoDB state,
SeaweedFS store; the handler is called as Lambda calls it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pushsite.aws.handler import handler
from pushsite.model import Status
from pushsite.service import Service
from pushsite.sources.s3bundle import bundle_key
from support.aws_staging import (
    Staging,
    live,
    make_bundle,
    make_staging,
    opened_services,
    use_aws_backends,
)


class FakeContext:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._end - time.monotonic()) * 1000))


@pytest.fixture
def staging(moto: str, seaweed_url: str, dynamodb_url: str,
            monkeypatch: pytest.MonkeyPatch) -> Staging:
    use_aws_backends(monkeypatch, moto, seaweed_url, dynamodb_url)
    made = make_staging(moto, visibility=30)
    monkeypatch.setenv("PUSHSITE_QUEUE", made.pushsite_queue)
    return made


@pytest.fixture
def service_for(staging: Staging) -> Iterator[Callable[[str], Service]]:
    with opened_services() as make:
        yield make


def sqs_record(message: dict[str, Any]) -> dict[str, Any]:
    return {"messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"], "attributes": message["Attributes"],
            "eventSource": "aws:sqs"}


def test_an_invocation_takes_over_an_expired_lease_and_leaves_a_live_one(
        staging: Staging, service_for: Callable[[str], Service]) -> None:
    service = service_for(staging.pushsite_queue)
    etag = staging.put("shop/main/bundle.tar.gz", make_bundle({"index.html": b"<h1>shop</h1>"}))
    for message in staging.receive():  # the S3 event's message is lost (a killed batch)
        staging.delete(message)
    key = bundle_key(staging.bucket, "shop/main/bundle.tar.gz", etag)
    stopped = service.accept("shop", None, enqueue=False, bundle_key=key)
    alive = service.accept("shop", None, enqueue=False, branch="preview", bundle_key=key)
    for deployment, lease_until in ((stopped, time.time() - 5), (alive, time.time() + 300)):
        deployment.status = Status.RUNNING
        deployment.started = time.time() - 60
        deployment.runner = f"lambda@169.254.1.{len(deployment.id) % 9}:1:dead"
        deployment.lease_until = lease_until
        assert service.state.update_deployment(deployment, expect_status=Status.QUEUED)

    assert handler({"deployment": "no-such-deployment"}, FakeContext(120)) == {}

    assert service.state.get_deployment(stopped.id).status == Status.QUEUED
    log = " ".join(line.message for line in service.state.get_logs(stopped.id))
    assert "runner lambda" in log and "stopped renewing its lease" in log
    assert service.state.get_deployment(alive.id).status == Status.RUNNING
    (message,) = staging.receive()
    assert json.loads(message["Body"]) == {"deployment": stopped.id}

    result = handler({"Records": [sqs_record(message)]}, FakeContext(120))
    assert result == {"batchItemFailures": []}
    staging.delete(message)
    done = live(service, "shop")
    assert done is not None and done.id == stopped.id
    assert service.state.get_deployment(alive.id).status == Status.RUNNING
