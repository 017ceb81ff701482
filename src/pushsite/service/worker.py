"""Workers: take deployments off a queue and run them, one at a time per worker.

While a deployment runs, a heartbeat keeps its queue item hidden (SQS visibility, or the
local queue's), so a long deploy is not handed to a second worker; a worker that dies stops
the heartbeat and the item reappears for another to finish (stored blobs are reused). The
lease is the queue URL's `?visibility=` (else VISIBILITY): SQS hides a received message for
exactly that (queues/sqs.py), the first beat renews it at once and then every third of it.

A message whose work fails outside a deployment (a backend unreachable, an event naming no
valid site) is neither acked nor released: it reappears after the visibility timeout, and SQS
moves it to the dead-letter queue after the redrive policy's maxReceiveCount. A deployment
that runs out of time goes back on the queue and resumes, at most MAX_RESUMES times.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pushsite.deploy.early import nice_this_thread
from pushsite.errors import DeploymentNotFound
from pushsite.model import Status
from pushsite.queues import QueueItem
from pushsite.service.optimisemessage import is_optimise_message
from pushsite.service.s3events import handle_s3_event, is_s3_event
from pushsite.service.verbs import DEFAULT_TIMEOUT, Service

VISIBILITY = 60.0
requeue_seconds: dict[str, float] = {}  # "last": how long the last re-queue's send took
_logger = logging.getLogger("pushsite.worker")
MAX_RESUMES = 50
SIDE_THREADS = 8  # deliveries (notifications, commit statuses) in flight per worker


def lease_seconds(queue_url: str) -> float:
    """How long a worker's message stays hidden per renewal: the queue URL's visibility."""
    raw = parse_qs(urlsplit(queue_url).query).get("visibility", [""])[-1]
    try:
        return max(float(raw), 1.0) if raw else VISIBILITY
    except ValueError:
        return VISIBILITY


class _Heartbeat:
    def __init__(self, service: Service, item: QueueItem) -> None:
        self._stop = threading.Event()
        self._lease = lease_seconds(service.config.queue)
        self._thread = threading.Thread(target=self._beat, args=(service, item), daemon=True)

    def _beat(self, service: Service, item: QueueItem) -> None:
        wait = 0.0  # the first beat at once: the message's hiding starts from its receipt
        while not self._stop.wait(wait):
            wait = self._lease / 3
            # a missed beat only risks a second delivery, which the status check absorbs
            with contextlib.suppress(Exception):
                service.queue.extend(item, self._lease)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def dispatch(service: Service, item: QueueItem,
             timeout: float | None = DEFAULT_TIMEOUT) -> list[str]:
    """Run what one message asks for (a deployment, or an S3 event's bundles); a deployment
    that ran out of time is queued again to resume. Raises when the message must be retried;
    returns the ids of the deployments it named."""
    if is_side_message(item.body):
        deliver_side(service, item.body)
        return []
    if is_optimise_message(item.body):  # the after pass: never in the next deploy's way
        niced(service.process, item, timeout=timeout)
        return []
    if is_s3_event(item.body):
        deployment_ids = handle_s3_event(service, item.body, attempts=item.attempts,
                                         timeout=timeout)
    else:
        service.process(item, timeout=timeout)
        deployment_ids = [str(item.body["deployment"])] if item.body.get("deployment") else []
    for deployment_id in deployment_ids:
        _resume_later(service, deployment_id, int(item.body.get("resumes", 0)))
    return deployment_ids


def niced(work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`work` on a thread of its own at nice +10 (deploy/early.nice_this_thread), waited
    for: the brotli after pass of a live deployment takes what CPU a deploy leaves. Threads
    it starts (the optimiser's workers) inherit the nice on Linux. Its result, or its
    exception, is `work`'s."""
    outcome: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        nice_this_thread()
        try:
            outcome.append(work(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="pushsite-optimise", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def is_side_message(body: dict[str, Any]) -> bool:
    """A notification or a commit status (service/notify.py, statuses.py): work for the side
    pool, never in the way of a deployment."""
    return "notify" in body or "status" in body


def deliver_side(service: Service, body: dict[str, Any]) -> None:
    from pushsite.service import notify, statuses

    if "notify" in body:
        notify.deliver(service, body["notify"])
    else:
        statuses.deliver(service, body["status"])


class SidePool:
    """Deliveries on threads of their own (SIDE_THREADS at once), so a receiver that hangs
    until its timeout delays neither deployments nor other receivers. With every thread busy,
    a delivery goes back to the queue for a second (it counts as no attempt of ours)."""

    def __init__(self, service: Service, threads: int = 0) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._service = service
        self._slots = threading.BoundedSemaphore(threads or SIDE_THREADS)
        self._pool = ThreadPoolExecutor(threads or SIDE_THREADS,
                                        thread_name_prefix="pushsite-side")

    def submit(self, item: QueueItem) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(Exception):
                self._service.queue.extend(item, 1.0)
            return
        self._pool.submit(self._run, item)

    def _run(self, item: QueueItem) -> None:
        try:
            with _Heartbeat(self._service, item):
                deliver_side(self._service, item.body)
            self._service.queue.ack(item)
        except Exception as exc:  # noqa: BLE001 - left on the queue: it reappears, is retried
            _logger.warning("a delivery stays queued for a retry (%s: %s)",
                            type(exc).__name__, exc)
        finally:
            self._slots.release()

    def close(self) -> None:
        self._pool.shutdown(wait=False)  # unacked deliveries reappear on the queue


def _resume_later(service: Service, deployment_id: str, resumes: int) -> None:
    try:
        deployment = service.state.get_deployment(deployment_id)
    except DeploymentNotFound:
        return
    if deployment.status != Status.TIMED_OUT:
        return
    log = service.log_for(deployment)
    if resumes >= MAX_RESUMES:
        log.error("timed_out", f"gave up after {resumes} resumed runs; deploy it again with "
                  "a longer timeout")
    else:
        send_timed(service, {"deployment": deployment_id, "resumes": resumes + 1})
        log.info("timed_out", f"queued again to resume (run {resumes + 2}); stored blobs "
                 "are skipped")
    log.flush()


def send_timed(service: Service, body: dict[str, Any]) -> None:
    """Queue a message and remember how long that took: the Lambda handler reserves that
    much before its deadline, so a re-queue never runs past Lambda's limit."""
    started = time.monotonic()
    service.queue.send(body)
    requeue_seconds["last"] = time.monotonic() - started


def recover(service: Service, echo: Callable[..., Any] | None = None) -> list[str]:
    """Service.recover for a loop that must go on: a failure (the state unreachable) is
    reported, and the next round tries again."""
    try:
        settled = service.recover()
    except Exception as exc:  # noqa: BLE001 - reported; recovery runs again next round
        _logger.warning("recovery failed (%s: %s); retried in %.0f s", type(exc).__name__,
                        exc, service.lease)
        if echo:
            echo(f"worker: recovery failed ({type(exc).__name__}: {exc}); retried later")
        return []
    if settled and echo:
        echo(f"worker: recovered {len(settled)} deployment(s): {', '.join(settled)}")
    return settled


@dataclass(frozen=True)
class FollowUp:
    """What the entry point does after a message ran (its mirror, PUSHSITE_MIRROR): follow
    the deployments the message named, or go on with the sites a `mirror` message names
    (the Lambda queues one when its mirror paused at the deadline)."""

    deployment_ids: list[str] = field(default_factory=list)
    mirror_sites: list[str] = field(default_factory=list)


def is_mirror_message(body: dict[str, Any]) -> bool:
    """`{"mirror": {"site": ...}}`: a hosting copy to go on with, not a deployment."""
    return isinstance(body.get("mirror"), dict)


def handle(service: Service, item: QueueItem,
           after: Callable[[FollowUp], Any] | None = None) -> None:
    """Run what one message asks for, keeping it hidden meanwhile; then ack it. `after`
    gets what the entry point follows up (the mirror).

    A `mirror` message reaching a runner without a follow-up (no PUSHSITE_MIRROR here, while
    the runner that queued it had one) is acked with a warning naming the setting: retrying
    it here could never do it."""
    with _Heartbeat(service, item):
        if is_mirror_message(item.body):
            site = str(item.body["mirror"].get("site", ""))
            if after is None:
                _logger.warning("a mirror of %r was asked for, but PUSHSITE_MIRROR is not set "
                                "for this worker: not mirrored", site)
            elif site:
                after(FollowUp(mirror_sites=[site]))
        else:
            deployment_ids = dispatch(service, item)
            if after is not None:
                after(FollowUp(deployment_ids=deployment_ids))
    service.queue.ack(item)


def run_worker(service: Service, *, once: bool = False, stop: threading.Event | None = None,
               echo: Callable[..., Any] | None = None, wait: float = 5.0,
               kind: str = "worker", after: Callable[[FollowUp], Any] | None = None) -> int:
    """Consume the queue until `stop` is set (or it is empty, with once); returns items done.

    `kind` names this runner in the leases it holds (`serve` for serve's worker). Every
    lease, and at the start, it runs Service.recover: deployments whose runner stopped
    renewing its lease are taken over wherever that runner was. `after`: see handle.
    """
    stop = stop or threading.Event()
    service.runner_kind = kind
    if echo:
        echo(f"worker: consuming {service.config.queue}")
    side = SidePool(service)
    try:
        return _consume(service, stop, side, once=once, echo=echo, wait=wait, after=after)
    finally:
        side.close()


def _consume(service: Service, stop: threading.Event, side: SidePool, *, once: bool,
             echo: Callable[..., Any] | None, wait: float,
             after: Callable[[FollowUp], Any] | None = None) -> int:
    done = 0
    next_recovery = 0.0
    while not stop.is_set():
        if time.monotonic() >= next_recovery:
            next_recovery = time.monotonic() + service.lease
            recover(service, echo)
        try:
            item = service.queue.receive(wait_seconds=0 if once else wait)
        except Exception as exc:  # the queue unreachable: the worker waits and tries again
            _logger.warning("receiving from the queue failed (%s: %s)", type(exc).__name__, exc)
            if echo:
                echo(f"worker: the queue is unreachable ({type(exc).__name__}: {exc})")
            if once:
                raise
            stop.wait(max(wait, 1.0))
            continue
        if item is None:
            if once:
                break
            continue
        if is_side_message(item.body) and not once:
            side.submit(item)
            done += 1
            continue
        try:
            handle(service, item, after)
        except Exception as exc:  # left on the queue: retried, then dead-lettered
            if echo:
                echo(f"worker: message left for a retry ({type(exc).__name__}: {exc})")
            continue
        done += 1
    return done
