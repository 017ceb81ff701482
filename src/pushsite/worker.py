"""Workers: take deployments off a queue and run them, one at a time per worker.

While a deployment runs, a heartbeat keeps its queue item hidden (SQS visibility, or the
local queue's), so a long deploy is not handed to a second worker; a worker that dies stops
the heartbeat and the item reappears for another to finish (stored blobs are reused).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from pushsite.queues import QueueItem
from pushsite.service import Service

HEARTBEAT = 20.0
VISIBILITY = 60.0


class _Heartbeat:
    def __init__(self, service: Service, item: QueueItem) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(service, item), daemon=True)

    def _beat(self, service: Service, item: QueueItem) -> None:
        while not self._stop.wait(HEARTBEAT):
            # a missed beat only risks a second delivery, which the status check absorbs
            with contextlib.suppress(Exception):
                service.queue.extend(item, VISIBILITY)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def handle(service: Service, item: QueueItem) -> None:
    """Run what one message asks for; ack it unless the work must be retried."""
    from pushsite.aws_events import is_s3_event

    if is_s3_event(item.body):
        from pushsite.aws_events import handle_s3_event

        handle_s3_event(service, item.body)
    else:
        with _Heartbeat(service, item):
            service.process(item)
    service.queue.ack(item)


def run_worker(service: Service, *, once: bool = False, stop: threading.Event | None = None,
               echo: Callable[..., Any] | None = None, wait: float = 5.0) -> int:
    """Consume the queue until `stop` is set (or it is empty, with once); returns items done."""
    stop = stop or threading.Event()
    done = 0
    if echo:
        echo(f"worker: consuming {service.config.queue}")
    while not stop.is_set():
        item = service.queue.receive(wait_seconds=0 if once else wait)
        if item is None:
            if once:
                break
            continue
        handle(service, item)
        done += 1
    return done
