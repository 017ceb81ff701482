"""SqsQueue against moto's SQS, including messages an S3 bucket sends on its own."""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import unquote_plus

import boto3
import pytest

from pushsite.errors import ConfigError
from pushsite.queues import open_queue
from pushsite.queues.sqs import SqsQueue


def _open(url: str) -> SqsQueue:
    queue = open_queue(url)
    assert isinstance(queue, SqsQueue)
    return queue


def test_send_receive_ack(sqs_url: str) -> None:
    queue = _open(sqs_url)
    try:
        assert queue.receive() is None
        queue.send({"deployment": "01abc", "n": [1, 2]})
        item = queue.receive(wait_seconds=1)
        assert item is not None
        assert item.body == {"deployment": "01abc", "n": [1, 2]}
        assert item.attempts == 1
        queue.ack(item)
        assert queue.receive() is None
    finally:
        queue.close()


def test_release_makes_it_visible_again_as_another_attempt(sqs_url: str) -> None:
    queue = _open(sqs_url)
    try:
        queue.send({"deployment": "01abc"})
        first = queue.receive(wait_seconds=1)
        assert first is not None
        assert queue.receive() is None  # hidden while held
        queue.release(first)
        again = queue.receive(wait_seconds=1)
        assert again is not None
        assert again.body == {"deployment": "01abc"}
        assert again.attempts == 2
    finally:
        queue.close()


def test_extend_keeps_it_hidden_past_the_visibility_timeout(sqs_url: str) -> None:
    queue = _open(sqs_url + "&visibility=1")
    try:
        queue.send({"deployment": "held"})
        queue.send({"deployment": "lapsed"})
        held = queue.receive(wait_seconds=1)
        lapsed = queue.receive(wait_seconds=1)
        assert held is not None and lapsed is not None
        queue.extend(held, 60)
        time.sleep(1.5)  # the 1 s visibility timeout runs out for the one not extended
        back = queue.receive(wait_seconds=2)
        assert back is not None
        assert back.body == lapsed.body
        assert back.attempts == 2
        queue.ack(back)
        assert queue.receive(wait_seconds=1) is None  # the extended one stays hidden
    finally:
        queue.close()


def test_s3_event_notifications_pass_through_as_the_body(moto: str) -> None:
    name = f"staging-{uuid.uuid4().hex[:8]}"
    queue = _open(f"sqs://{name}?endpoint={moto}&create=1")
    sqs = boto3.client("sqs", endpoint_url=moto, region_name="us-east-1")
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    try:
        arn = sqs.get_queue_attributes(QueueUrl=queue.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        s3.create_bucket(Bucket=name)
        s3.put_bucket_notification_configuration(
            Bucket=name,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
            },
        )
        s3.put_object(Bucket=name, Key="bundles/blog/main.tar.gz", Body=b"bundle")
        bodies = []
        while (item := queue.receive(wait_seconds=1)) is not None:
            bodies.append(item.body)
            queue.ack(item)
    finally:
        queue.close()
    assert {"Event": "s3:TestEvent", "Bucket": name}.items() <= bodies[0].items()
    record = bodies[1]["Records"][0]
    assert record["eventName"].startswith("ObjectCreated:")
    assert record["s3"]["bucket"]["name"] == name
    # passed through untouched: S3 form-encodes the key (moto encodes "/" too), so consumers
    # must unquote_plus it
    assert record["s3"]["object"]["key"] == "bundles%2Fblog%2Fmain.tar.gz"
    assert unquote_plus(record["s3"]["object"]["key"]) == "bundles/blog/main.tar.gz"


def test_body_that_is_not_a_json_object_is_kept_raw(sqs_url: str, moto: str) -> None:
    queue = _open(sqs_url)
    sqs = boto3.client("sqs", endpoint_url=moto, region_name="us-east-1")
    try:
        sqs.send_message(QueueUrl=queue.queue_url, MessageBody="not json")
        sqs.send_message(QueueUrl=queue.queue_url, MessageBody=json.dumps([1, 2]))
        first, second = queue.receive(wait_seconds=1), queue.receive(wait_seconds=1)
    finally:
        queue.close()
    assert first is not None and second is not None
    assert [first.body, second.body] == [{"raw": "not json"}, {"raw": "[1, 2]"}]


def test_missing_queue_without_create_is_a_config_error(moto: str) -> None:
    with pytest.raises(ConfigError, match="create=1"):
        open_queue(f"sqs://no-such-queue?endpoint={moto}")


def test_a_queue_url_names_the_queue_directly(sqs_url: str, moto: str) -> None:
    made = _open(sqs_url)
    path = made.queue_url.split("://", 1)[1].split("/", 1)[1]  # account/name
    try:
        named = _open(f"sqs://sqs.us-east-1.amazonaws.com/{path}?endpoint={moto}")
        try:
            made.send({"via": "name"})
            item = named.receive(wait_seconds=1)
            assert item is not None and item.body == {"via": "name"}
        finally:
            named.close()
    finally:
        made.close()
