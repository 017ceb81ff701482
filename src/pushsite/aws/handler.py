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
(mirror.py), for S3 website hosting or a CDN; a failed mirror is retried with the message.

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
import os
import time
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from pushsite.config import load_config
from pushsite.model import PRODUCTION
from pushsite.queues import QueueItem
from pushsite.service import Service
from pushsite.service.worker import dispatch, recover

MARGIN = 10.0  # seconds kept for recording the outcome (at most a tenth of what is left)
_logger = logging.getLogger("pushsite.aws")
_services: dict[tuple[str, str, str], Service] = {}
_recovered: dict[int, float] = {}  # id(service) -> monotonic time of its last recovery


class LambdaContext(Protocol):
    """What the handler uses of Lambda's context object."""

    def get_remaining_time_in_millis(self) -> int: ...


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Deploy what the event names; for SQS batches, report the records to retry."""
    service = _service()
    try:
        records = event.get("Records") or []
        if records and records[0].get("eventSource") == "aws:sqs":
            return _sqs_batch(service, records, context)
        item = QueueItem(body=event, receipt="", attempts=1)
        _mirror(service, dispatch(service, item, timeout=_time_left(context)))
        return {}
    finally:
        if context.get_remaining_time_in_millis() / 1000 > MARGIN:
            _recover(service)


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
               context: LambdaContext) -> dict[str, Any]:
    failures = []
    for record in records:
        message_id = str(record.get("messageId", ""))
        timeout = _time_left(context)
        if timeout <= 0:  # no time to start it: SQS delivers it again
            failures.append({"itemIdentifier": message_id})
            continue
        try:
            _mirror(service, dispatch(service, _queue_item(record), timeout=timeout))
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


def _mirror(service: Service, deployment_ids: list[str]) -> None:
    """Mirror each of these deployments that production now serves, if a mirror is set."""
    target = os.environ.get("PUSHSITE_MIRROR", "")
    if not target:
        return
    from pushsite.aws.mirror import mirror_deployment

    for deployment_id in deployment_ids:
        site = service.state.get_deployment(deployment_id).site
        alias = service.state.get_alias(site, PRODUCTION)
        if alias is None or alias.deployment_id != deployment_id:
            continue
        report = mirror_deployment(service.manifest(deployment_id), service.store,
                                   site_target(target, site))
        _logger.info("mirrored %s %s: %d uploaded, %d unchanged, %d deleted", site,
                     deployment_id, report.uploaded, report.unchanged, report.deleted)


def site_target(mirror: str, site: str) -> str:
    """`s3://bucket/prefix?query` -> `s3://bucket/prefix/<site>?query`."""
    parts = urlsplit(mirror)
    path = f"{parts.path.rstrip('/')}/{site}"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def _time_left(context: LambdaContext) -> float:
    """Seconds a deploy may run: what the context has left, minus the margin."""
    remaining = context.get_remaining_time_in_millis() / 1000
    return remaining - min(MARGIN, remaining * 0.1)


def _service() -> Service:
    """One Service per backend configuration, kept while the container lives."""
    config = load_config()
    key = (config.store, config.state, config.queue)
    if key not in _services:
        _services[key] = Service(config)
        _services[key].runner_kind = "lambda"
    return _services[key]
