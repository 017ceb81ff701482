"""Outgoing notifications: what happened to a site, POSTed to the URLs its admin added.

An outcome (service/running.py, verbs.py) calls `announce`: one queue message per endpoint
that wants the event, sent from the durable queue by a worker (`deliver`), never from the
request or the run that caused it, so a slow or dead receiver delays nothing else.

Signed per the Standard Webhooks specification: `webhook-id` (the same for every attempt of
one message), `webhook-timestamp` (this attempt, seconds), `webhook-signature:
v1,<base64 HMAC-SHA256 of "id.timestamp.body">` keyed with the endpoint's secret (`whsec_`
and the base64 key; shown once). `format = "slack"` posts `{"text": ...}` instead of the
JSON event (signed the same way; Slack ignores the headers).

A failed attempt (no answer within the timeout, or not 2xx) is tried again after an
exponential backoff with jitter (Config.notify_retry, doubling, at most an hour) until the
message is Config.notify_window old (a day); an endpoint that has failed for a whole window
is disabled, and a log line says so. Each attempt goes in the endpoint's delivery log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pushsite import ids
from pushsite.errors import ConfigError, NotFound
from pushsite.model import (
    NOTIFY_EVENTS,
    NOTIFY_FORMATS,
    PRODUCTION,
    Deployment,
    Status,
)
from pushsite.names import branch_label
from pushsite.queues import MAX_DELAY
from pushsite.state import DELIVERIES_KEPT
from pushsite.state.counters import key

if TYPE_CHECKING:
    import httpx

    from pushsite.records import Delivery, NotifyEndpoint
    from pushsite.service.running import Running as ServiceBase

log = logging.getLogger("pushsite.notify")

MAX_BACKOFF = 3600.0
_FINISHED_EVENTS = {Status.FAILED: "deployment.failed", Status.TIMED_OUT: "deployment.timed_out",
                    Status.CANCELLED: "deployment.cancelled"}


def event_for(status: Status) -> str:
    """The event a deployment's status is announced as."""
    if status.servable:
        return "deployment.succeeded"
    if status in _FINISHED_EVENTS:
        return _FINISHED_EVENTS[status]
    return "deployment.started" if status == Status.RUNNING else "deployment.queued"


# endpoints ---------------------------------------------------------------------------------
def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def check_events(events: list[str] | None) -> list[str]:
    if not events:
        return list(NOTIFY_EVENTS)
    unknown = [e for e in events if e not in NOTIFY_EVENTS]
    if unknown:
        raise ConfigError(f"unknown event {unknown[0]!r}: use any of {', '.join(NOTIFY_EVENTS)}")
    return list(dict.fromkeys(events))


def check_endpoint(url: str, events: list[str] | None, fmt: str) -> tuple[str, list[str]]:
    url = url.strip()
    try:
        parsed = urlsplit(url) if "://" in url else None
    except ValueError:  # e.g. an unclosed [ in the host
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"invalid notification URL {url!r}: expected http:// or https://")
    if fmt not in NOTIFY_FORMATS:
        raise ConfigError(f"unknown format {fmt!r}: use {' or '.join(NOTIFY_FORMATS)}")
    return url, check_events(events)


def find_endpoint(service: ServiceBase, site: str, endpoint_id: str) -> NotifyEndpoint:
    for endpoint in service.state.list_endpoints(site):
        if endpoint.id == endpoint_id:
            return endpoint
    raise NotFound(f"site {site} has no notification endpoint {endpoint_id!r}; "
                   f"`pushsite notify list {site}` lists them")


# what an event says ----------------------------------------------------------------------------
def deployment_urls(service: ServiceBase, deployment: Deployment) -> dict[str, str]:
    config = service.config
    urls = {"deployment": config.site_url(f"{deployment.id}--{deployment.site}"),
            "branch": config.site_url(f"{branch_label(deployment.branch)}--{deployment.site}")}
    production = service.state.get_alias(deployment.site, PRODUCTION)
    if production is not None and production.deployment_id == deployment.id:
        urls["production"] = config.site_url(deployment.site)
    return urls


def deployment_data(service: ServiceBase, deployment: Deployment) -> dict[str, Any]:
    data = deployment.to_dict()
    for private in ("bundle_key", "runner", "lease_until"):
        data.pop(private, None)
    return {"deployment": data, "urls": deployment_urls(service, deployment)}


def summary(event: str, data: dict[str, Any]) -> str:
    """One line for people (the Slack format)."""
    if event == "site.production_changed":
        return (f"{data['site']}: production now serves {data['production']} "
                f"({data['reason']}) {data['urls'].get('production', '')}").strip()
    d = data["deployment"]
    head = f"{d['site']} ({d['branch']}) deployment {d['id']}"
    if event == "deployment.succeeded":
        return f"{head} is {d['status']}: {' '.join(data['urls'].values())}"
    if event in ("deployment.failed", "deployment.timed_out", "deployment.cancelled"):
        return f"{head} {event.rpartition('.')[2].replace('_', ' ')}: {d['error']}"
    return f"{head} {event.rpartition('.')[2]}"


# sending -------------------------------------------------------------------------------------
def announce(service: ServiceBase, site: str, event: str, data: dict[str, Any]) -> int:
    """Queue one message per endpoint of `site` that wants `event`; returns how many."""
    now = time.time()
    sent = 0
    for endpoint in service.state.list_endpoints(site):
        if not endpoint.wants(event):
            continue
        service.queue.send({"notify": {
            "endpoint": endpoint.id, "site": site, "id": f"msg_{ids.new_id(now)}",
            "event": event, "time": now, "data": data, "attempt": 1, "first": now}})
        sent += 1
    return sent


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks `webhook-signature` header value."""
    key_bytes = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key_bytes, signed, hashlib.sha256).digest()).decode()


def render(endpoint: NotifyEndpoint, message: dict[str, Any]) -> bytes:
    event, data = message["event"], message["data"]
    if endpoint.format == "slack":
        body: dict[str, Any] = {"text": summary(event, data)}
    else:
        stamp = datetime.fromtimestamp(message["time"], UTC).isoformat(timespec="microseconds")
        stamp = stamp.replace("+00:00", "Z")
        body = {"type": event, "timestamp": stamp, "data": data}
    return json.dumps(body, separators=(",", ":")).encode()


_clients: dict[float, httpx.Client] = {}
_clients_lock = threading.Lock()


def client(timeout: float) -> httpx.Client:
    """One pooled client per process (thread-safe), never following redirects.

    httpx is imported here, not at the top: announcing is on every deploy's path and httpx
    costs ~0.1 s of a one-shot CLI deploy's start-up; only delivering needs it.
    """
    import httpx

    with _clients_lock:
        found = _clients.get(timeout)
        if found is None:
            found = _clients[timeout] = httpx.Client(
                timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                follow_redirects=False, headers={"user-agent": "pushsite-notify"})
        return found


def backoff(attempt: int, base: float) -> float:
    """Seconds before attempt `attempt + 1`: doubling from `base`, at most an hour, with
    "equal jitter" (half fixed, half random) so that failed receivers are not hit in step."""
    ceiling = min(MAX_BACKOFF, base * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not secrecy


def postpone(service: ServiceBase, kind: str, message: dict[str, Any], due: float) -> None:
    """Send `message` again to arrive at `due`; a wait longer than the queue's longest delay
    (SQS: 15 minutes) arrives early, and the worker sends it on again (`not_yet`)."""
    message["due"] = due
    service.queue.send({kind: message}, delay=min(MAX_DELAY, max(0.0, due - time.time())))


def not_yet(service: ServiceBase, kind: str, message: dict[str, Any]) -> bool:
    """A message the queue gave early (its delay was capped): sent on; True when so."""
    due = float(message.get("due", 0))
    if due - time.time() > 1.0:
        postpone(service, kind, message, due)
        return True
    return False


def deliver(service: ServiceBase, message: dict[str, Any]) -> Delivery | None:
    """One attempt to deliver one message; never raises for the receiver's failures (those are
    retried by a new message), only when the state or the queue fails (the worker leaves the
    message on the queue). Returns the delivery log entry, None when nothing was sent."""
    import httpx  # see client()

    if not_yet(service, "notify", message):
        return None
    try:
        endpoint = find_endpoint(service, message["site"], message["endpoint"])
    except NotFound:
        return None  # removed (or its site deleted) meanwhile
    if endpoint.disabled:
        return None
    config = service.config
    body = render(endpoint, message)
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "webhook-id": message["id"],
               "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(endpoint.secret, message["id"], timestamp, body)}
    attempt = int(message.get("attempt", 1))
    started = time.monotonic()
    status, error = 0, ""
    try:
        answer = client(config.notify_timeout).post(endpoint.url, content=body, headers=headers)
        status = answer.status_code
        if not 200 <= status < 300:
            error = f"answered {status}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    latency = round(time.monotonic() - started, 4)
    now = time.time()
    if not error:
        outcome = "delivered"
        if endpoint.failing_since:
            endpoint.failing_since = 0.0
            service.state.update_endpoint(endpoint)
    else:
        endpoint.failing_since = endpoint.failing_since or now
        if now - endpoint.failing_since >= config.notify_window:
            outcome = "gave_up"
            endpoint.disabled = True
            log.warning("notification endpoint %s of site %s (%s) disabled: its deliveries "
                        "have failed for %.0f s (last: %s); `pushsite notify add` it again to "
                        "resume", endpoint.id, endpoint.site, endpoint.url,
                        now - endpoint.failing_since, error)
        elif now - float(message["first"]) >= config.notify_window:
            outcome = "gave_up"  # this message only: the endpoint has not failed a window
        else:
            outcome = "retrying"
        service.state.update_endpoint(endpoint)
    kept = {k: message[k] for k in _RESENT} if outcome == "gave_up" else None
    from pushsite.records import Delivery  # a worker's: a deploy only queues messages

    delivery = Delivery(endpoint.id, message["id"], message["event"], attempt, outcome, status,
                        latency, error, now, kept)
    service.state.append_delivery(delivery)
    if outcome == "retrying":
        wait = backoff(attempt, config.notify_retry)
        postpone(service, "notify", {**message, "attempt": attempt + 1}, now + wait)
    count(service, "webhook", outcome)
    return delivery


_RESENT = ("endpoint", "site", "id", "event", "time", "data")  # a message, less its attempts


def resend(service: ServiceBase, endpoint: NotifyEndpoint, message_id: str) -> bool:
    """Queue again a message the endpoint's log shows given up: the same `webhook-id` (so a
    receiver that did get it can tell), the same body, and a new retry window from now.

    Each given-up attempt is sent again once, whoever asks (a double click, two admins, two
    servers): the state remembers it. False when it had already been sent again; a later
    give-up of the resent message is a new attempt, which may be sent again in its turn."""
    if endpoint.disabled:
        raise ConfigError(f"endpoint {endpoint.id} is disabled; enable it again first "
                          f"(`pushsite notify add {endpoint.site} {endpoint.url}`)")
    for delivery in service.state.list_deliveries(endpoint.id, DELIVERIES_KEPT):
        if delivery.message_id == message_id and delivery.message is not None:
            if not service.state.remember(
                    f"resent:{endpoint.id}:{message_id}:{delivery.time!r}"):
                return False
            service.queue.send({"notify": {**delivery.message, "attempt": 1,
                                           "first": time.time()}})
            return True
    raise NotFound(f"the delivery log of endpoint {endpoint.id} has no given-up message "
                   f"{message_id!r} to send again (only given-up ones are kept to resend)")


def count(service: ServiceBase, kind: str, outcome: str) -> None:
    service.counters.add_quietly({key("pushsite_notifications_total", kind=kind,
                                      outcome=outcome): 1.0})
