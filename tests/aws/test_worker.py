"""Workers on SQS with moto's real S3 -> SQS notifications: duplicates, order, encoded keys,
dead letters, and several workers sharing one queue."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from pushsite import ids
from pushsite.model import Status
from pushsite.service import Service
from pushsite.service.worker import run_worker
from pushsite.sources.s3bundle import object_deployment_id, parse_bundle_key
from support.aws_staging import (
    Staging,
    big_bundle,
    deployments,
    live,
    make_bundle,
    make_staging,
    opened_services,
    use_aws_backends,
    wait_for,
)


@pytest.fixture
def service_for(moto: str, seaweed_url: str, dynamodb_url: str,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Service]]:
    use_aws_backends(monkeypatch, moto, seaweed_url, dynamodb_url)
    with opened_services() as make:
        yield make


@contextmanager
def workers(*services: Service) -> Iterator[None]:
    """Run a worker thread per service until the block ends."""
    stop = threading.Event()
    threads = [threading.Thread(target=run_worker, args=(s,), kwargs={"stop": stop, "wait": 1})
               for s in services]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def event_bodies(staging: Staging, count: int) -> list[str]:
    """Take `count` S3 event messages off the queue and return their bodies."""
    messages = []
    while len(messages) < count:
        messages += staging.receive()
    for message in messages:
        staging.delete(message)
    return [m["Body"] for m in messages]


def deliver(staging: Staging, service: Service, body: str) -> None:
    """Put one event on the queue and let a worker handle what is there."""
    staging.sqs.send_message(QueueUrl=staging.queue_url, MessageBody=body)
    run_worker(service, once=True)


def test_duplicate_events_make_one_deployment(
        moto: str, service_for: Callable[[str], Service]) -> None:
    staging = make_staging(moto)
    service = service_for(staging.pushsite_queue)
    staging.put("blog/main/bundle.tar.gz", make_bundle({"index.html": b"hello"}))
    (body,) = event_bodies(staging, 1)
    for _ in range(3):
        staging.sqs.send_message(QueueUrl=staging.queue_url, MessageBody=body)

    assert run_worker(service, once=True) == 3

    (only,) = deployments(service, "blog")
    assert only.status == Status.LIVE
    assert staging.count(staging.queue_url) == 0


def test_an_older_event_arriving_late_never_replaces_the_newer_bundle(
        moto: str, service_for: Callable[[str], Service]) -> None:
    staging = make_staging(moto)
    service = service_for(staging.pushsite_queue)
    staging.put("blog/main/bundle.tar.gz", make_bundle({"index.html": b"old"}))
    staging.put("blog/main/bundle.tar.gz", make_bundle({"index.html": b"new"}))
    old, new = sorted(event_bodies(staging, 2),
                      key=lambda b: json.loads(b)["Records"][0]["eventTime"])

    deliver(staging, service, new)
    deliver(staging, service, old)  # its object was replaced: skipped

    (only,) = deployments(service, "blog")
    assert only.status == Status.LIVE
    entry = service.manifest(only.id).files["index.html"]
    assert service.store.get(entry.key()) == b"new"


def test_an_older_bundle_under_another_key_deploys_but_does_not_go_live(
        moto: str, service_for: Callable[[str], Service]) -> None:
    staging = make_staging(moto)
    service = service_for(staging.pushsite_queue)
    staging.put("blog/main/first.tar.gz", make_bundle({"index.html": b"first"}))
    time.sleep(1.1)  # ids carry the upload's Last-Modified second
    staging.put("blog/main/second.tar.gz", make_bundle({"index.html": b"second"}))
    first, second = sorted(event_bodies(staging, 2), key=lambda b: "second" in b)

    deliver(staging, service, second)
    deliver(staging, service, first)

    older, newer = sorted(deployments(service, "blog"), key=lambda d: d.id)
    assert newer.status == Status.LIVE
    assert older.status == Status.READY  # complete, at its own URL, but not at the alias
    assert live(service, "blog") == newer


def test_keys_are_url_decoded(moto: str, service_for: Callable[[str], Service]) -> None:
    staging = make_staging(moto)
    service = service_for(staging.pushsite_queue)
    staging.put("blog/feature/a+b/my bundle.tar.gz", make_bundle({"index.html": b"preview"}))
    (body,) = event_bodies(staging, 1)
    assert "my+bundle" in body  # S3 encodes a space as '+', and '+' as %2B

    deliver(staging, service, body)

    (deployment,) = deployments(service, "blog")
    assert deployment.branch == "feature/a+b" and deployment.status == Status.LIVE
    alias = service.state.get_alias("blog", "branch/feature/a+b")
    assert alias is not None and alias.deployment_id == deployment.id


def test_an_invalid_site_in_a_key_is_rejected_not_dead_lettered(
        moto: str, service_for: Callable[[str], Service]) -> None:
    """An invalid name can never deploy: retrying it until the dead-letter queue only hid it
    from pushsite. It is rejected with a log line naming the key, and its message acked."""
    staging = make_staging(moto, visibility=1, max_receives=2)
    service = service_for(staging.pushsite_queue)
    staging.put("Not_A_Site/main/bundle.tar.gz", make_bundle({"index.html": b"x"}))
    staging.put("good/main/bundle.tar.gz", make_bundle({"index.html": b"ok"}))

    with workers(service):
        wait_for(lambda: live(service, "good"), "the good bundle to go live")
        wait_for(lambda: staging.count(staging.queue_url) == 0, "the queue to empty")
    time.sleep(2)  # past the visibility timeout: nothing comes back
    assert staging.count(staging.queue_url) == 0
    assert staging.count(staging.dead_url) == 0


def test_workers_share_a_queue_and_keep_long_deploys_hidden(
        moto: str, service_for: Callable[[str], Service]) -> None:
    staging = make_staging(moto, visibility=1)  # a 1 s lease: renewed every third of it
    first, second = service_for(staging.pushsite_queue), service_for(staging.pushsite_queue)
    staging.put("big/main/bundle.tar.gz", big_bundle(48, 12))
    for site in ("one", "two", "three"):
        staging.put(f"{site}/main/bundle.tar.gz", make_bundle({"index.html": site.encode()}))

    with workers(first, second):
        for site in ("big", "one", "two", "three"):
            wait_for(lambda site=site: live(first, site), f"{site} to go live", 90)

    for site in ("big", "one", "two", "three"):
        (deployment,) = deployments(first, site)
        messages = [line.message for line in first.state.get_logs(deployment.id)]
        assert messages.count("reading the bundle") == 1, messages
        assert not any("taken over" in m for m in messages)
    assert staging.count(staging.queue_url) == 0


def test_derived_ids_have_the_id_shape_and_sort_by_upload_time() -> None:
    first = object_deployment_id(1_800_000_000.9, "staging/blog/main/a.tar.gz@e1")
    assert ids.looks_like_id(first)
    assert ids.id_time(first) == 1_800_000_000  # the Last-Modified second
    assert object_deployment_id(1_800_000_000.2, "staging/blog/main/a.tar.gz@e1") == first
    assert object_deployment_id(1_800_000_000, "staging/blog/main/a.tar.gz@e2") != first
    assert object_deployment_id(1_800_000_001, "staging/blog/main/0.tar.gz@e0") > first


def test_a_staged_bundle_key_may_hold_hashes() -> None:
    assert parse_bundle_key("s3://b/blog/main/#1 a.tar.gz#abc-2") == (
        "b", "blog/main/#1 a.tar.gz", "abc-2")


def test_a_worker_mirrors_what_it_put_live_when_a_mirror_is_set(
        service_for: Callable[[str], Service], moto: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`pushsite worker` follows production into the hosting bucket as the Lambda does (a
    builder is such a worker): the production branch is mirrored, a preview is not."""
    from support.cli import ok

    staging = make_staging(moto)
    hosting = f"hosting-{staging.bucket}"
    staging.s3.create_bucket(Bucket=hosting)
    monkeypatch.setenv("PUSHSITE_MIRROR", f"s3://{hosting}?endpoint={moto}")
    staging.put("shop/main/bundle.tar.gz", make_bundle({"index.html": b"<h1>shop</h1>"}))
    staging.put("shop/preview/bundle.tar.gz", make_bundle({"index.html": b"a preview"}))

    done = ok("worker", "--queue", staging.pushsite_queue, "--once")

    assert "worker: mirrored shop: 1 uploaded" in done.stderr
    page = staging.s3.get_object(Bucket=hosting, Key="shop/index.html")
    assert page["Body"].read() == b"<h1>shop</h1>"
    production = live(service_for(staging.pushsite_queue), "shop")
    assert production is not None and production.mirror.startswith("mirrored: 1 uploaded")


def test_a_worker_goes_on_with_a_mirror_the_lambda_left_paused(
        service_for: Callable[[str], Service], moto: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Lambda out of time queues `{"mirror": {"site": ...}}`; a `pushsite worker` on the
    same queue finishes that mirror rather than acking it unread. Without PUSHSITE_MIRROR it
    acks it with a warning naming the setting."""
    from support.cli import ok

    staging = make_staging(moto)
    hosting = f"hosting-{staging.bucket}"
    staging.s3.create_bucket(Bucket=hosting)
    staging.put("shop/main/bundle.tar.gz", make_bundle({"index.html": b"<h1>shop</h1>"}))
    ok("worker", "--queue", staging.pushsite_queue, "--once")  # live, never mirrored
    mirror_message = json.dumps({"mirror": {"site": "shop"}})

    staging.sqs.send_message(QueueUrl=staging.queue_url, MessageBody=mirror_message)
    unset = ok("worker", "--queue", staging.pushsite_queue, "--once")
    assert "PUSHSITE_MIRROR is not set" in unset.stderr
    assert staging.s3.list_objects_v2(Bucket=hosting).get("KeyCount") == 0

    monkeypatch.setenv("PUSHSITE_MIRROR", f"s3://{hosting}?endpoint={moto}")
    staging.sqs.send_message(QueueUrl=staging.queue_url, MessageBody=mirror_message)
    done = ok("worker", "--queue", staging.pushsite_queue, "--once")

    assert "worker: mirrored shop: 1 uploaded" in done.stderr
    page = staging.s3.get_object(Bucket=hosting, Key="shop/index.html")
    assert page["Body"].read() == b"<h1>shop</h1>"
    production = live(service_for(staging.pushsite_queue), "shop")
    assert production is not None and production.mirror.startswith("mirrored: 1 uploaded")
