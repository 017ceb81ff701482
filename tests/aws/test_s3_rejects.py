"""Staged keys that can never deploy are recorded where a user looks and never retried; a key
under a new name creates a site only when s3_create_sites is on."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from pushsite.aws.handler import handler
from pushsite.errors import SiteNotFound
from pushsite.model import Status
from pushsite.service import Service
from support.aws_staging import (
    Staging,
    deployments,
    make_bundle,
    make_staging,
    opened_services,
    use_aws_backends,
)


class Context:
    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def _event(staging: Staging) -> tuple[dict[str, object], list[str]]:
    messages = staging.receive()
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": m["Attributes"], "eventSource": "aws:sqs"} for m in messages]}, [
        m["MessageId"] for m in messages]


@pytest.fixture
def staging(moto: str, seaweed_url: str, dynamodb_url: str,
            monkeypatch: pytest.MonkeyPatch) -> Staging:
    use_aws_backends(monkeypatch, moto, seaweed_url, dynamodb_url)
    made = make_staging(moto)
    made.drain_test_event()
    monkeypatch.setenv("PUSHSITE_QUEUE", made.pushsite_queue)
    return made


@pytest.fixture
def service_for(staging: Staging) -> Iterator[Callable[[str], Service]]:
    with opened_services() as make:
        yield make


def test_unknown_site_is_rejected_with_its_key_and_not_retried(
        staging: Staging, service_for: Callable[[str], Service],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHSITE_S3_CREATE_SITES", "0")  # use_aws_backends turns it on
    caplog.set_level(logging.WARNING, logger="pushsite.s3events")
    staging.put("nosuch/main/bundle.tar.gz", make_bundle({"index.html": b"hi"}))
    event, _ids = _event(staging)
    assert handler(event, Context()) == {"batchItemFailures": []}  # acked: not retried
    [warning] = [r for r in caplog.records if r.name == "pushsite.s3events"]
    assert warning.levelno == logging.WARNING
    assert "rejected the staged bundle nosuch/main/bundle.tar.gz" in warning.getMessage()
    assert staging.count(staging.queue_url) == 1  # only the acked event: nothing re-sent
    with pytest.raises(SiteNotFound):
        service_for(staging.pushsite_queue).state.get_site("nosuch")


def test_invalid_branch_of_a_site_is_a_failed_deployment(
        staging: Staging, service_for: Callable[[str], Service]) -> None:
    service = service_for(staging.pushsite_queue)
    service.create_site("blog")
    staging.put("blog/bad..branch/bundle.tar.gz", make_bundle({"index.html": b"hi"}))
    event, _ids = _event(staging)
    assert handler(event, Context()) == {"batchItemFailures": []}
    [failed] = deployments(service, "blog")
    assert failed.status == Status.FAILED and "blog/bad..branch/bundle.tar.gz" in failed.error


def test_the_setting_lets_a_new_name_create_its_site(
        staging: Staging, service_for: Callable[[str], Service],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHSITE_S3_CREATE_SITES", "1")
    staging.put("fresh/main/bundle.tar.gz", make_bundle({"index.html": b"hi"}))
    event, _ids = _event(staging)
    assert handler(event, Context()) == {"batchItemFailures": []}
    [made] = deployments(service_for(staging.pushsite_queue), "fresh")
    assert made.status == Status.LIVE
