"""Outgoing notifications through the real parts: a Service with its local backends, its worker
on a thread (as `pushsite serve` runs it), and receivers that are HTTP servers on 127.0.0.1.
Every signature is checked with the `standardwebhooks` package, not with our own code."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from pushsite.errors import ConfigError
from pushsite.model import Status
from pushsite.service import Service
from support.receivers import WAIT, Receiver, receivers_fixture, running_fixture
from support.service import bundle, site_files

receivers = pytest.fixture(receivers_fixture)
running = pytest.fixture(running_fixture)


def verified(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """Every body the receiver got, verified by the standardwebhooks package (raises if any
    signature, id or timestamp is wrong)."""
    return [Webhook(secret).verify(r.body, r.headers) for r in receiver.seen]


def deploy(service: Service, text: str, *, ok: bool = True) -> str:
    data = bundle(site_files(text)) if ok else b"this is not a gzip stream"
    return service.accept("blog", io.BytesIO(data)).id


def finished(service: Service, deployment_id: str) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        found = service.state.get_deployment(deployment_id)
        if found.status.finished and found.status != Status.READY:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"deployment {deployment_id} is still {found.status}")
        time.sleep(0.02)


def test_every_event_is_signed_retried_and_nothing_waits_for_a_hanging_receiver(
        running: Callable[..., Service], receivers: Callable[..., Receiver]) -> None:
    service = running(notify_retry=0.2, notify_timeout=3.0)
    service.create_site("blog")
    good = receivers()
    flaky = receivers(answer=lambda n: 500 if n <= 2 else 204)
    hanging = receivers(answer=lambda n: 0, hang=8.0)
    slack = receivers()
    hang_ep = service.add_endpoint("blog", hanging.url)  # first: its deliveries are taken first
    good_ep = service.add_endpoint("blog", good.url)
    flaky_ep = service.add_endpoint("blog", flaky.url, ["deployment.succeeded"])
    slack_ep = service.add_endpoint("blog", slack.url, ["deployment.failed"], "slack")
    assert good_ep.secret.startswith("whsec_") and good_ep.secret != flaky_ep.secret

    first = deploy(service, "one")
    record = finished(service, first)
    good.wait_for(lambda: "deployment.succeeded" in good.events(), "succeeded")
    # queued, started and succeeded reached the good receiver while the hanging one held its
    # three deliveries open (3 s each): at once, not after the hang
    succeeded = next(r for r in good.seen if b"deployment.succeeded" in r.body)
    assert succeeded.at - record.finished < 1.5, succeeded.at - record.finished
    assert len(hanging.seen) >= 1 and hanging.seen[0].at < succeeded.at
    # each delivery is on its own (no order between them); the event time says the order
    payloads = sorted(verified(good, good_ep.secret), key=lambda p: p["timestamp"])
    assert [p["type"] for p in payloads] == ["deployment.queued", "deployment.started",
                                             "deployment.succeeded"]
    data = payloads[2]["data"]
    assert data["deployment"]["id"] == first and data["deployment"]["status"] == "live"
    assert set(data["urls"]) == {"deployment", "branch", "production"}
    assert data["urls"]["deployment"].startswith(f"http://{first}--blog.")
    assert payloads[2]["timestamp"].endswith("Z")
    assert "secret" not in json.dumps(payloads) and "bundle_key" not in data["deployment"]

    # the flaky receiver answered 500 twice: the same message came a third time, verified
    flaky.wait_for(lambda: len(flaky.seen) == 3, "the third attempt")
    assert [r.answered for r in flaky.seen] == [500, 500, 204]
    assert len({r.headers["webhook-id"] for r in flaky.seen}) == 1
    assert [p["type"] for p in verified(flaky, flaky_ep.secret)] == ["deployment.succeeded"] * 3
    gaps = [b.at - a.at for a, b in zip(flaky.seen, flaky.seen[1:], strict=False)]
    assert all(gap >= 0.09 for gap in gaps), gaps  # backoff (0.2 s, halved at most by jitter)
    log = service.deliveries("blog", flaky_ep.id)
    assert [(d.attempt, d.outcome, d.status) for d in log] == [
        (3, "delivered", 204), (2, "retrying", 500), (1, "retrying", 500)]
    assert all(d.latency > 0 for d in log)

    # a failure: its error and kind; Slack's receiver gets one line of text
    broken = deploy(service, "", ok=False)
    assert finished(service, broken).status == Status.FAILED
    good.wait_for(lambda: "deployment.failed" in good.events(), "failed")
    failed = next(p for p in verified(good, good_ep.secret)
                  if p["type"] == "deployment.failed")["data"]["deployment"]
    assert failed["id"] == broken and failed["error"] and failed["error_kind"] == "BundleRejected"
    slack.wait_for(lambda: len(slack.seen) == 1, "slack")
    text = slack.seen[0].json()
    assert set(text) == {"text"} and broken in text["text"] and "failed" in text["text"]
    assert Webhook(slack_ep.secret).verify(slack.seen[0].body, slack.seen[0].headers)

    # a rollback changes production; a cancel is announced too
    second = deploy(service, "two")
    finished(service, second)
    service.rollback("blog", first)
    good.wait_for(lambda: "site.production_changed" in good.events(), "production_changed")
    changed = next(p for p in verified(good, good_ep.secret)
                   if p["type"] == "site.production_changed")["data"]
    assert (changed["production"], changed["previous"], changed["reason"]) == (
        first, second, "rollback")
    waiting = service.accept("blog", io.BytesIO(bundle(site_files("x"))), enqueue=False)
    service.cancel(waiting.id)
    good.wait_for(lambda: "deployment.cancelled" in good.events(), "cancelled")
    # the hanging endpoint's log shows timeouts (status 0), retried
    hung = service.deliveries("blog", hang_ep.id)
    assert hung and hung[-1].status == 0 and hung[-1].outcome == "retrying"
    assert "Timeout" in hung[-1].error


def test_an_endpoint_failing_for_the_whole_window_is_disabled_with_a_log_line(
        running: Callable[..., Service], receivers: Callable[..., Receiver],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "pushsite.notify")
    service = running(notify_retry=0.1, notify_window=1.0, notify_timeout=2.0)
    service.create_site("blog")
    down = receivers(answer=lambda n: 503)
    endpoint = service.add_endpoint("blog", down.url, ["deployment.succeeded"])
    finished(service, deploy(service, "one"))
    deadline = time.monotonic() + WAIT
    given_up: set[str] = set()
    while not service.list_endpoints("blog")[0].disabled:
        assert time.monotonic() < deadline, "never disabled"
        newest = service.deliveries("blog", endpoint.id, limit=1)
        if newest and newest[0].outcome == "gave_up" and newest[0].message_id not in given_up:
            given_up.add(newest[0].message_id)
            # that message was a window old at its first attempt (a loaded machine): it was
            # given up alone, before the endpoint had failed a window; the next one goes on
            finished(service, deploy(service, f"again {time.monotonic()}"))
        time.sleep(0.05)
    # the attempt that disabled it is logged just after the endpoint is written
    while (log := service.deliveries("blog", endpoint.id))[0].outcome != "gave_up":
        assert time.monotonic() < deadline, f"disabled, but its log ends {log[0]}"
        time.sleep(0.05)
    assert log[0].outcome == "gave_up" and {d.outcome for d in log[1:]} <= {"retrying",
                                                                            "gave_up"}
    assert "retrying" in {d.outcome for d in log[1:]}
    assert len(log) >= 3 and all(d.status == 503 for d in log)
    assert any("disabled" in r.getMessage() and endpoint.id in r.getMessage()
               for r in caplog.records)
    # a disabled endpoint is told nothing more; adding its URL again enables it
    count = len(down.seen)
    finished(service, deploy(service, "two"))
    time.sleep(0.5)
    assert len(down.seen) == count
    again = service.add_endpoint("blog", down.url, ["deployment.succeeded"])
    assert again.id == endpoint.id and not again.disabled and again.secret == endpoint.secret


def test_endpoints_are_checked_and_removed_with_their_log(running: Callable[..., Service]) -> None:
    service = running()
    service.create_site("blog")
    with pytest.raises(ConfigError, match="unknown event"):
        service.add_endpoint("blog", "https://x.example/", ["deployment.exploded"])
    with pytest.raises(ConfigError, match="http:// or https://"):
        service.add_endpoint("blog", "ftp://x.example/")
    with pytest.raises(ConfigError, match="format"):
        service.add_endpoint("blog", "https://x.example/", None, "teams")
    endpoint = service.add_endpoint("blog", "https://x.example/")
    assert service.remove_endpoint("blog", endpoint.id).url == "https://x.example/"
    assert service.list_endpoints("blog") == []


def test_a_redeploy_is_announced_started_then_succeeded_and_a_promote_changes_production(
        running: Callable[..., Service], receivers: Callable[..., Receiver]) -> None:
    service = running(notify_retry=0.2)
    service.create_site("blog")
    good = receivers()
    endpoint = service.add_endpoint("blog", good.url)
    first = deploy(service, "one")
    finished(service, first)
    good.wait_for(lambda: good.events().count("deployment.succeeded") == 1, "first succeeded")

    again = service.redeploy(first)
    assert again.id != first and again.status == Status.LIVE

    def about(deployment_id: str) -> list[str]:
        payloads = sorted(verified(good, endpoint.secret), key=lambda p: p["timestamp"])
        return [p["type"] for p in payloads
                if p["data"].get("deployment", {}).get("id") == deployment_id]

    good.wait_for(lambda: "deployment.succeeded" in about(again.id), "redeploy succeeded")
    # created running, never queued: started is its first event, as a push's run sends it
    assert about(again.id) == ["deployment.started", "deployment.succeeded"]
    started = next(p for p in verified(good, endpoint.secret)
                   if p["type"] == "deployment.started"
                   and p["data"]["deployment"]["id"] == again.id)["data"]["deployment"]
    assert started["source"] == "redeploy" and started["status"] == "running"

    service.promote(first)
    good.wait_for(lambda: "site.production_changed" in good.events(), "production_changed")
    changed = next(p for p in verified(good, endpoint.secret)
                   if p["type"] == "site.production_changed")["data"]
    assert (changed["production"], changed["previous"], changed["reason"]) == (
        first, again.id, "promote")


def test_a_given_up_message_is_sent_again_with_its_id_once_the_endpoint_is_enabled(
        running: Callable[..., Service], receivers: Callable[..., Receiver]) -> None:
    from pushsite.errors import NotFound

    service = running(notify_retry=0.1, notify_window=1.0, notify_timeout=2.0)
    service.create_site("blog")
    healthy = {"now": False}
    flaky = receivers(answer=lambda n: 204 if healthy["now"] else 503)
    endpoint = service.add_endpoint("blog", flaky.url, ["deployment.succeeded"])
    first = deploy(service, "one")
    finished(service, first)
    deadline = time.monotonic() + WAIT
    while not (log := [d for d in service.deliveries("blog", endpoint.id)
                       if d.outcome == "gave_up"]):
        assert time.monotonic() < deadline, "never given up"
        time.sleep(0.05)
    given_up = log[-1]
    assert given_up.message is not None and given_up.message["data"]["deployment"]["id"] == first
    assert all(d.message is None for d in service.deliveries("blog", endpoint.id)
               if d.outcome != "gave_up")
    if service.list_endpoints("blog")[0].disabled:
        with pytest.raises(ConfigError, match="enable it again first"):
            service.resend_delivery("blog", endpoint.id, given_up.message_id)
        service.add_endpoint("blog", flaky.url, ["deployment.succeeded"])
    with pytest.raises(NotFound, match="no given-up message"):
        service.resend_delivery("blog", endpoint.id, "msg_nope")
    healthy["now"] = True
    tried = len(flaky.seen)
    service.resend_delivery("blog", endpoint.id, given_up.message_id)
    flaky.wait_for(lambda: flaky.seen[-1].answered == 204, "the message sent again")
    again = flaky.seen[tried:]
    assert [r.headers["webhook-id"] for r in again] == [given_up.message_id]
    payload = Webhook(endpoint.secret).verify(again[0].body, again[0].headers)
    assert payload["type"] == "deployment.succeeded"
    assert payload["data"]["deployment"]["id"] == first
    deadline = time.monotonic() + WAIT
    while (newest := service.deliveries("blog", endpoint.id, limit=1)[0]).outcome != "delivered":
        assert time.monotonic() < deadline, f"the log ends {newest}"
        time.sleep(0.05)
    assert (newest.message_id, newest.attempt, newest.status) == (given_up.message_id, 1, 204)


def test_a_given_up_message_is_sent_again_once_however_often_it_is_asked(
        tmp_path: Any) -> None:
    """A double click on "Send again", or two admins at once, queue the message once: the
    state remembers which given-up attempt was sent again (two Services on one home)."""
    from pushsite.config import load_config
    from pushsite.model import Delivery

    first, second = Service(load_config()), Service(load_config())
    try:
        first.create_site("blog")
        endpoint = first.add_endpoint("blog", "http://127.0.0.1:9/hook", ["deployment.succeeded"])
        message = {"id": "msg_1", "type": "deployment.succeeded", "data": {}}
        first.state.append_delivery(Delivery(endpoint.id, "msg_1", "deployment.succeeded", 5,
                                             "gave_up", message=message))

        answers = [first.resend_delivery("blog", endpoint.id, "msg_1"),
                   second.resend_delivery("blog", endpoint.id, "msg_1")]

        assert answers == [True, False]
        queued = [first.queue.receive(wait_seconds=0) for _ in range(3)]
        notes = [item.body["notify"] for item in queued if item is not None]
        assert [(n["id"], n["attempt"]) for n in notes] == [("msg_1", 1)]
    finally:
        first.close()
        second.close()
