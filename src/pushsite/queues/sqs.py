"""The queue on Amazon SQS (or any SQS-compatible server).

    sqs://queue-name?endpoint=http://127.0.0.1:5000&create=1&visibility=300
    sqs://sqs.eu-west-1.amazonaws.com/123456789012/queue-name     (a queue URL, https)

Bodies are JSON objects. Messages an S3 bucket sends on its own (event notifications) are
S3 event JSON; they pass through unchanged as the body dict, `{"Records": [...]}` or the
`s3:TestEvent` a bucket sends once when notifications are configured. Object keys in S3 events
are form-encoded (`a%2Fb+c` for "a/b c"): consumers must `urllib.parse.unquote_plus` them.
`receive` long-polls (SQS allows at most 20 s per call; longer waits poll again).
`attempts` is SQS's ApproximateReceiveCount: a released message counts again when redelivered.
`create=1` creates the queue when absent with the given visibility timeout (default 300 s).
`receive` hides a message for `?visibility=` seconds (default LEASE, 60), whatever the queue's
own timeout (the template's is 90 minutes, for Lambda): that is the lease a worker renews
(service/worker.py), so a worker that dies is replaced after it, not after the queue's.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from botocore.exceptions import ClientError

from pushsite.awssdk.client import BackendUrl, aws_errors, error_code, make_client
from pushsite.errors import ConfigError
from pushsite.queues import MAX_DELAY, QueueItem

_MAX_WAIT = 20  # SQS's limit for one long poll
_MAX_VISIBILITY = 43_200  # 12 hours, SQS's limit
LEASE = 60  # seconds a received message stays hidden; service/worker.py's VISIBILITY
_MISSING_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


class SqsQueue:
    """One SQS queue; thread-safe because the boto3 client is."""

    def __init__(self, queue_url: str, *, target: BackendUrl) -> None:
        self.queue_url = queue_url
        self.visibility = min(max(target.int_option("visibility", LEASE), 1), _MAX_VISIBILITY)
        self._what = f"SQS queue {queue_url!r}"
        self._client = make_client("sqs", target)

    @classmethod
    def from_url(cls, url: str) -> SqsQueue:
        target = BackendUrl.parse(url, "sqs")
        if target.path:  # sqs://host/account/name names the queue URL itself
            return cls(f"https://{target.name}/{target.path}", target=target)
        client = make_client("sqs", target)
        name = target.name
        with aws_errors(f"SQS queue {name!r}"):
            try:
                queue_url = client.get_queue_url(QueueName=name)["QueueUrl"]
            except ClientError as exc:
                if error_code(exc) not in _MISSING_QUEUE:
                    raise
                if not target.create:
                    raise ConfigError(
                        f"the SQS queue {name!r} does not exist: create it, or add ?create=1 "
                        "to the queue URL"
                    ) from exc
                visibility = target.int_option("visibility", 300)
                queue_url = client.create_queue(
                    QueueName=name,
                    Attributes={"VisibilityTimeout": str(visibility)},
                )["QueueUrl"]
            finally:
                client.close()
        return cls(queue_url, target=target)

    def send(self, body: dict[str, Any], delay: float = 0.0) -> None:
        """`delay` is capped at SQS's 900 s (MAX_DELAY); a longer wait is the consumer's."""
        extra = {"DelaySeconds": min(int(MAX_DELAY), math.ceil(delay))} if delay > 0 else {}
        with aws_errors(self._what):
            self._client.send_message(
                QueueUrl=self.queue_url, MessageBody=json.dumps(body, separators=(",", ":")),
                **extra,
            )

    def receive(self, wait_seconds: float = 0.0) -> QueueItem | None:
        """The next message, long-polling up to `wait_seconds` (in whole seconds)."""
        deadline = time.monotonic() + wait_seconds
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            wait = min(_MAX_WAIT, math.ceil(remaining))
            with aws_errors(self._what):
                response = self._client.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=1,
                    WaitTimeSeconds=wait,
                    VisibilityTimeout=self.visibility,
                    MessageSystemAttributeNames=["ApproximateReceiveCount"],
                )
            messages = response.get("Messages", [])
            if messages:
                return _item(messages[0])
            if time.monotonic() >= deadline:
                return None

    def ack(self, item: QueueItem) -> None:
        with aws_errors(self._what):
            self._client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=item.receipt)

    def release(self, item: QueueItem) -> None:
        self._set_visibility(item, 0)

    def extend(self, item: QueueItem, seconds: float) -> None:
        self._set_visibility(item, min(_MAX_VISIBILITY, max(0, math.ceil(seconds))))

    def _set_visibility(self, item: QueueItem, seconds: int) -> None:
        with aws_errors(self._what):
            self._client.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=item.receipt, VisibilityTimeout=seconds
            )

    def close(self) -> None:
        self._client.close()


def _item(message: dict[str, Any]) -> QueueItem:
    """A QueueItem from an SQS message; a body that is not a JSON object is kept as `raw`."""
    try:
        body = json.loads(message["Body"])
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"raw": message["Body"]}
    attempts = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
    return QueueItem(body=body, receipt=message["ReceiptHandle"], attempts=attempts)
