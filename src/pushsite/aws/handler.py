"""The Lambda entry point: `pushsite.aws.handler.handler(event, context)`.

It takes three shapes of event:

- an SQS batch (the template's event source mapping): each record's body is an S3 event or a
  `{"deployment": id}` message; records whose work must be retried are returned as
  `batchItemFailures` (the mapping sets ReportBatchItemFailures), so the others are deleted;
- an S3 event (the bucket invoking the function directly);
- `{"deployment": id}` (an invocation by hand or by another function).

Each deploy gets the time the context has left, minus MARGIN for writing the outcome and
queueing the rest: it stops before Lambda kills it, records `timed_out` with how far it got,
and sends `{"deployment": id}` to the queue (PUSHSITE_QUEUE) so the next invocation resumes
where the stored blobs end. A bundle of any size finishes across invocations. A record that
starts with too little time left is handed back to SQS untouched.

With PUSHSITE_MIRROR set (`s3://hosting-bucket[/prefix]`, as the template sets it), a
deployment that went live on production is also mirrored to `<mirror>/<site>/` as plain files
(mirror.py), for S3 website hosting or a CDN. Out of time, the mirror stops between batches
and queues `{"mirror": {"site": name}}`, which the next invocation finishes from the mirror's
record (nothing written twice); an outage is retried with the message; a refusal by the
max-delete guard is final (not retried). Each outcome is on the deployment (`mirror`).

Each invocation ends with Service.recover, in the time its records left over (more than
MARGIN; at most once per lease in a container): a deployment whose runner stopped renewing its
lease (a killed invocation, a dead worker) is taken over or failed cleanly, so nothing waits
for a `serve` restart. It comes last so that it never takes a deploy's time. Deployments run here
hold leases as runner `lambda`.

Settings come from PUSHSITE_* variables (config.py); the Service is kept for the container's
life, as Lambda reuses it between invocations.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Protocol

from pushsite.aws.targets import site_target  # noqa: F401 - kept importable from here
from pushsite.config import load_config
from pushsite.errors import ConfigError
from pushsite.queues import QueueItem
from pushsite.service import Service, worker
from pushsite.service.worker import dispatch, recover

MARGIN = 10.0  # seconds kept for recording the outcome (at most a tenth of what is left)
# Seconds reserved for re-queueing the rest until this container has measured it: the first
# SQS client of a process took 0.87 s (botocore loading its model); later sends take ~20 ms.
COLD_REQUEUE = 1.5
_logger = logging.getLogger("pushsite.aws")
_services: dict[tuple[str, str, str], Service] = {}
_recovered: dict[int, float] = {}  # id(service) -> monotonic time of its last recovery


class LambdaContext(Protocol):
    """What the handler uses of Lambda's context object."""

    def get_remaining_time_in_millis(self) -> int: ...


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Deploy what the event names; for SQS batches, report the records to retry."""
    # The clock starts here: everything after (the backends, the staging look-up) is in it.
    deadline = _deadline(context)
    service = _service()
    try:
        records = event.get("Records") or []
        if records and records[0].get("eventSource") == "aws:sqs":
            return _sqs_batch(service, records, deadline)
        _run(service, QueueItem(body=event, receipt="", attempts=1), deadline)
        return {}
    finally:
        if deadline - time.monotonic() > MARGIN:
            _recover(service)


def _deadline(context: LambdaContext) -> float:
    """When work must stop: Lambda's end, less the margin for the outcome and the measured
    cost of re-queueing the rest (the first SQS client of a container costs most)."""
    remaining = context.get_remaining_time_in_millis() / 1000
    measured = worker.requeue_seconds.get("last")
    requeue = COLD_REQUEUE if measured is None else 2 * measured
    return time.monotonic() + remaining - min(MARGIN, remaining * 0.1) - requeue


def _run(service: Service, item: QueueItem, deadline: float) -> None:
    """One message: a mirror to go on with, or a deployment / S3 event (then the mirror)."""
    if "mirror" in item.body:
        _mirror(service, [str(item.body["mirror"].get("deployment", ""))], deadline,
                site=str(item.body["mirror"].get("site", "")))
        return
    ids = dispatch(service, item, timeout=max(deadline - time.monotonic(), 0.0))
    _mirror(service, ids, deadline)


def _recover(service: Service) -> None:
    """Service.recover, at most once per lease in this container (each lists the running
    and queued deployments); a failure is logged and the deploys go on."""
    now = time.monotonic()
    if now < _recovered.get(id(service), float("-inf")) + service.lease:
        return
    _recovered[id(service)] = now
    settled = recover(service)
    if settled:
        _logger.info("recovered %d deployment(s): %s", len(settled), ", ".join(settled))


def _sqs_batch(service: Service, records: list[dict[str, Any]],
               deadline: float) -> dict[str, Any]:
    failures = []
    for record in records:
        message_id = str(record.get("messageId", ""))
        if deadline - time.monotonic() <= 0:  # no time to start it: SQS delivers it again
            failures.append({"itemIdentifier": message_id})
            continue
        try:
            _run(service, _queue_item(record), deadline)
        except Exception:
            _logger.exception("message %s is left for a retry", message_id)
            failures.append({"itemIdentifier": message_id})
    return {"batchItemFailures": failures}


def _queue_item(record: dict[str, Any]) -> QueueItem:
    """A QueueItem from an SQS record as Lambda passes it (the body is the message text)."""
    try:
        body = json.loads(record.get("body") or "")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"raw": record.get("body")}
    attempts = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
    return QueueItem(body=body, receipt=str(record.get("receiptHandle", "")), attempts=attempts)


def _mirror(service: Service, deployment_ids: list[str], deadline: float,
            site: str = "") -> None:
    """Mirror the production of each of these deployments' sites, if a mirror is set.

    Out of time, the rest is queued as `{"mirror": ...}` for the next invocation; a mirror the
    max-delete guard refuses is logged in the deployment's log and not retried (the same
    manifest would be refused again).
    """
    from pushsite.aws.mirror import MirrorTimeout, live_sites, mirror_production

    if not service.config.mirror:
        return
    sites = [site] if site else live_sites(service, deployment_ids)
    for name in sites:
        try:
            report = mirror_production(service, name, deadline=deadline)
        except MirrorTimeout:
            worker.send_timed(service, {"mirror": {"site": name}})
            continue
        except ConfigError as exc:
            _logger.error("not mirrored: %s", exc)
            continue
        _logger.info("mirrored %s: %s", name, report.summary())


def _service() -> Service:
    """One Service per backend configuration, kept while the container lives."""
    config = load_config()
    key = (config.store, config.state, config.queue)
    if key not in _services:
        _services[key] = Service(config)
        _services[key].runner_kind = "lambda"
    return _services[key]
