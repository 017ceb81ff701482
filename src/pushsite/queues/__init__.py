"""Queues: how an accepted bundle reaches a deployer; chosen by URL.

    local:                      queues/local.py  (SQLite, durable, in the embedded default)
    sqs://queue-name-or-url     queues/sqs.py

A message is a small dict: {"deployment": id} for a deployment accepted by pushsite, or the
raw S3 event record of a bundle that landed in a staging bucket. Delivery is at least once:
consumers dedup (StateStore.remember) and a deployment's status guards against running twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pushsite.backends import open_backend


@dataclass
class QueueItem:
    body: dict[str, Any]
    receipt: str  # what ack/release/extend need to name this delivery
    attempts: int = 1


class Queue(Protocol):
    def send(self, body: dict[str, Any], delay: float = 0.0) -> None:
        """Add a message, received no sooner than `delay` seconds from now (a backend may
        cap the delay: SQS at MAX_DELAY; a consumer that wants longer re-sends it)."""

    def receive(self, wait_seconds: float = 0.0) -> QueueItem | None:
        """The next item, hidden from other consumers until acked, released or expired."""

    def ack(self, item: QueueItem) -> None:
        """Done: delete it."""

    def release(self, item: QueueItem) -> None:
        """Not done: make it visible again (counts as an attempt)."""

    def extend(self, item: QueueItem, seconds: float) -> None:
        """Keep it hidden for `seconds` more while a long deploy runs."""

    def close(self) -> None: ...


MAX_DELAY = 900.0  # seconds: SQS's DelaySeconds limit, which every backend honours at least


_BACKENDS = {
    "local": "pushsite.queues.local:LocalQueue",
    "sqs": "pushsite.queues.sqs:SqsQueue",
}


def open_queue(url: str) -> Queue:
    """Open the queue a URL names; the backend is imported only when used."""
    backend: Queue = open_backend(url, _BACKENDS, "queue")
    return backend
