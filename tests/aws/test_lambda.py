"""The Lambda handler with the event shapes Lambda really sends (the bodies come from moto's S3
notifications through SQS), a fake context whose clock runs out, and real backends."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pushsite.aws import handler as handler_module
from pushsite.aws import mirror as mirror_module
from pushsite.aws.handler import handler
from pushsite.model import Status
from pushsite.service import Service, worker
from support.aws_staging import (
    Proxy,
    Staging,
    big_bundle,
    deployments,
    live,
    make_bundle,
    make_staging,
    opened_services,
    port_of,
    staging_through,
    use_aws_backends,
)


class FakeContext:
    """Lambda's context as far as the handler uses it: the time left, running down for real."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._end - time.monotonic()) * 1000))


def sqs_event(staging: Staging, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The event Lambda's SQS event source mapping builds from received messages."""
    return {"Records": [{
        "messageId": m["MessageId"],
        "receiptHandle": m["ReceiptHandle"],
        "body": m["Body"],
        "attributes": m["Attributes"],
        "messageAttributes": {},
        "md5OfBody": m["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{staging.queue_name}",
        "awsRegion": "us-east-1",
    } for m in messages]}


def invoke_batch(staging: Staging, messages: list[dict[str, Any]],
                 seconds: float = 120) -> list[str]:
    """Invoke as the event source mapping does: delete what succeeded, return failed ids."""
    result = handler(sqs_event(staging, messages), FakeContext(seconds))
    failed = [f["itemIdentifier"] for f in result["batchItemFailures"]]
    for message in messages:
        if message["MessageId"] not in failed:
            staging.delete(message)
    return failed


@pytest.fixture
def staging(moto: str, seaweed_url: str, dynamodb_url: str,
            monkeypatch: pytest.MonkeyPatch) -> Staging:
    """A staging bucket and queue; the handler's settings point at them (PUSHSITE_QUEUE)."""
    use_aws_backends(monkeypatch, moto, seaweed_url, dynamodb_url)
    made = make_staging(moto, visibility=30)
    monkeypatch.setenv("PUSHSITE_QUEUE", made.pushsite_queue)
    return made


@pytest.fixture
def service_for(staging: Staging) -> Iterator[Callable[[str], Service]]:
    with opened_services() as make:
        yield make


def test_s3_event_invoking_the_function_directly_deploys(
        staging: Staging, service_for: Callable[[str], Service]) -> None:
    staging.put("shop/main/bundle.tar.gz", make_bundle({"index.html": b"<h1>shop</h1>"}),
                meta={"commit": "c0ffee", "message": "New shop front"})
    (message,) = staging.receive()
    event = json.loads(message["Body"])  # what S3 hands a function it invokes directly
    assert event["Records"][0]["eventSource"] == "aws:s3"

    assert handler(event, FakeContext(60)) == {}

    service = service_for(staging.pushsite_queue)
    deployment = live(service, "shop")
    assert deployment is not None and deployment.source == "s3"
    assert (deployment.commit, deployment.message) == ("c0ffee", "New shop front")
    entry = service.manifest(deployment.id).files["index.html"]
    assert service.store.get(entry.key()) == b"<h1>shop</h1>"


def test_sqs_batch_reports_only_the_records_to_retry(
        staging: Staging, service_for: Callable[[str], Service]) -> None:
    staging.put("good/main/bundle.tar.gz", make_bundle({"index.html": b"good"}))
    staging.put("Not_A_Site/main/bundle.tar.gz", make_bundle({"index.html": b"bad name"}))
    staging.put("broken/main/bundle.tar.gz", b"this is not gzip")
    messages = staging.receive()
    while len(messages) < 3:
        messages += staging.receive()
    # An invalid name can never deploy: rejected with a log line, not retried
    # (tests/aws/test_s3_rejects.py); a broken bundle is a failed deployment.
    assert invoke_batch(staging, messages) == []

    service = service_for(staging.pushsite_queue)
    assert live(service, "good") is not None
    (broken,) = deployments(service, "broken")  # recorded as failed, not retried
    assert broken.status == Status.FAILED and "gzip" in broken.error


def test_test_event_and_other_records_are_skipped(
        staging: Staging, service_for: Callable[[str], Service]) -> None:
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": staging.bucket}
    removed = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete",
                            "s3": {"bucket": {"name": staging.bucket},
                                   "object": {"key": "site/main/x.tar.gz"}}}]}
    for body in (test_event, removed):
        staging.sqs.send_message(QueueUrl=staging.queue_url, MessageBody=json.dumps(body))
    messages = staging.receive()
    assert len(messages) == 2

    assert invoke_batch(staging, messages) == []
    assert service_for(staging.pushsite_queue).state.list_sites(limit=1) == []


def test_multipart_upload_and_redelivered_events_make_one_deployment(
        staging: Staging, service_for: Callable[[str], Service]) -> None:
    data = big_bundle(6, 2)
    key = "docs/main/bundle.tar.gz"
    upload = staging.s3.create_multipart_upload(Bucket=staging.bucket, Key=key)
    parts = []
    for number, start in enumerate(range(0, len(data), 5 << 20), start=1):
        part = staging.s3.upload_part(Bucket=staging.bucket, Key=key, PartNumber=number,
                                      UploadId=upload["UploadId"],
                                      Body=data[start:start + (5 << 20)])
        parts.append({"ETag": part["ETag"], "PartNumber": number})
    staging.s3.complete_multipart_upload(Bucket=staging.bucket, Key=key,
                                         UploadId=upload["UploadId"],
                                         MultipartUpload={"Parts": parts})
    messages = staging.receive()
    while len(messages) < 2:
        messages += staging.receive()
    names = sorted(json.loads(m["Body"])["Records"][0]["eventName"] for m in messages)
    assert names == ["ObjectCreated:CompleteMultipartUpload", "ObjectCreated:Put"]
    staging.sqs.send_message(QueueUrl=staging.queue_url, MessageBody=messages[0]["Body"])

    assert invoke_batch(staging, messages) == []
    assert invoke_batch(staging, staging.receive()) == []  # the redelivered copy

    service = service_for(staging.pushsite_queue)
    (only,) = deployments(service, "docs")
    assert only.status == Status.LIVE


def test_a_cold_container_reserves_the_requeue_cost_before_its_deadline(
        staging: Staging, service_for: Callable[[str], Service],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With less time than the first SQS client costs, nothing starts: SQS redelivers."""
    monkeypatch.setattr(worker, "requeue_seconds", {})
    staging.put("small/main/bundle.tar.gz", make_bundle({"index.html": b"hi"}))
    messages = staging.receive()
    assert invoke_batch(staging, messages, handler_module.COLD_REQUEUE) == [
        m["MessageId"] for m in messages]
    assert deployments(service_for(staging.pushsite_queue), "small") == []


def test_deadline_mid_deploy_times_out_and_the_next_invocations_resume(
        staging: Staging, service_for: Callable[[str], Service],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # no re-queue reserve here: the budgets below are the deploy's own (the reserve has a
    # test above)
    class NoReserve(dict[str, float]):
        def __setitem__(self, key: str, value: float) -> None:
            super().__setitem__(key, 0.0)

    monkeypatch.setattr(worker, "requeue_seconds", NoReserve(last=0.0))
    staging.put("big/main/bundle.tar.gz", big_bundle(48, 12))
    service = service_for(staging.pushsite_queue)
    budget = 0.1  # far less than the deploy needs (it packs 48 MB in about half a second)
    assert invoke_batch(staging, staging.receive(), budget) == []
    (first,) = deployments(service, "big")
    assert first.status == Status.TIMED_OUT and "ran out of time" in first.error

    # Each invocation gets a little more time until one stops with blobs stored; the next
    # gets plenty, and must skip those blobs (the deployer reuses what the timed-out runs
    # sealed in their packs).
    invocations, stored = 1, set[str]()
    while live(service, "big") is None:
        assert invocations < 40, "the deployment made no progress across invocations"
        (message,) = staging.receive()
        assert json.loads(message["Body"]) == {"deployment": first.id, "resumes": invocations}
        stored = {k for k in service.store.packed_blobs(first.id)  # type: ignore[attr-defined]
                  if not k.endswith((".gz", ".br"))}
        budget = 120 if stored else budget + 0.1
        assert invoke_batch(staging, [message], budget) == []
        invocations += 1

    done = service.state.get_deployment(first.id)
    assert done.status == Status.LIVE and stored, "no timed-out run stored a blob"
    assert done.blobs_reused >= len(stored) and done.blobs_new + done.blobs_reused == 13
    assert len(service.manifest(done.id).files) == 13
    assert [d.id for d in deployments(service, "big")] == [first.id]
    assert staging.count(staging.queue_url) == 0


def test_a_production_deploy_is_mirrored_when_a_mirror_is_set(
        staging: Staging, monkeypatch: pytest.MonkeyPatch) -> None:
    hosting = f"hosting-{staging.bucket}"
    staging.s3.create_bucket(Bucket=hosting)
    monkeypatch.setenv("PUSHSITE_MIRROR", f"s3://{hosting}/www?endpoint={staging.endpoint}")
    staging.put("shop/main/bundle.tar.gz", make_bundle({"index.html": b"<h1>shop</h1>"}))
    staging.put("shop/preview/bundle.tar.gz", make_bundle({"index.html": b"a preview"}))
    messages = staging.receive()
    while len(messages) < 2:
        messages += staging.receive()

    assert invoke_batch(staging, messages) == []

    page = staging.s3.get_object(Bucket=hosting, Key="www/shop/index.html")
    assert page["Body"].read() == b"<h1>shop</h1>"  # the preview branch is not mirrored
    assert page["ContentType"].startswith("text/html")


def test_one_deadline_covers_every_bundle_of_an_event(
        staging: Staging, service_for: Callable[[str], Service],
        monkeypatch: pytest.MonkeyPatch) -> None:
    staging.put("big/main/bundle.tar.gz", big_bundle(16, 4))
    staging.put("small/main/bundle.tar.gz", make_bundle({"index.html": b"small"}))
    messages = staging.receive()
    while len(messages) < 2:
        messages += staging.receive()
    for message in messages:
        staging.delete(message)
    records = sorted((json.loads(m["Body"])["Records"][0] for m in messages),
                     key=lambda r: "small" in r["s3"]["object"]["key"])
    event = {"Records": records}  # one S3 event naming two bundles: big, then small

    # the big bundle downloads at 8 MB/s, so it cannot be read within the budget
    with staging_through(Proxy(port_of(staging.endpoint), rate=8e6), monkeypatch):
        assert handler(event, FakeContext(0.8)) == {}

    service = service_for(staging.pushsite_queue)
    (big,) = deployments(service, "big")
    (small,) = deployments(service, "small")
    assert big.status == small.status == Status.TIMED_OUT  # small had no time left to start
    queued = [json.loads(m["Body"]) for m in staging.receive()]
    assert sorted(b["deployment"] for b in queued) == sorted([big.id, small.id])


def test_a_bundle_replaced_before_its_deployment_finished_fails_it(
        staging: Staging, service_for: Callable[[str], Service]) -> None:
    service = service_for(staging.pushsite_queue)
    staging.put("big/main/bundle.tar.gz", make_bundle({"index.html": b"old"}))
    (old_event,) = staging.receive()
    staging.delete(old_event)
    handler(json.loads(old_event["Body"]), FakeContext(0))  # no time: it times out at once
    (old,) = deployments(service, "big")
    assert old.status == Status.TIMED_OUT
    for message in staging.receive():  # the resume message is lost
        staging.delete(message)
    staging.put("big/main/bundle.tar.gz", make_bundle({"index.html": b"new"}))
    assert invoke_batch(staging, staging.receive()) == []
    newer = live(service, "big")
    assert newer is not None and newer.id != old.id

    handler(json.loads(old_event["Body"]), FakeContext(60))  # S3 sends the old event again

    old = service.state.get_deployment(old.id)
    assert old.status == Status.FAILED and "replaced or removed" in old.error
    assert live(service, "big") == newer


def test_an_unknown_deployment_id_is_acked_with_a_warning_naming_it(
        staging: Staging, service_for: Callable[[str], Service],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A message naming no deployment that exists (its site deleted, or sent by hand) can
    never succeed: it is deleted from the queue at once, and the log says which id it was."""
    hosting = f"hosting-{staging.bucket}"
    staging.s3.create_bucket(Bucket=hosting)
    # with a mirror set, the handler also looks the deployment up after the run
    monkeypatch.setenv("PUSHSITE_MIRROR", f"s3://{hosting}/www?endpoint={staging.endpoint}")
    staging.sqs.send_message(QueueUrl=staging.queue_url,
                             MessageBody=json.dumps({"deployment": "0nosuchdeployment"}))
    messages = staging.receive()

    with caplog.at_level("WARNING", logger="pushsite.queue"):
        assert invoke_batch(staging, messages) == []

    warnings = [r.getMessage() for r in caplog.records if r.name == "pushsite.queue"]
    assert any("0nosuchdeployment" in w and "does not exist" in w for w in warnings), warnings
    assert staging.count(staging.queue_url) == 0  # acked, nothing re-queued


def test_a_mirror_the_max_delete_guard_refuses_is_recorded_on_its_deployment(
        staging: Staging, service_for: Callable[[str], Service],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal is on the deployment's record (the API's and `deploys --json`'s `mirror`)
    and in its log; the record is acked, and the hosting copy stays whole."""
    from support.cli import ok

    hosting = f"hosting-{staging.bucket}"
    staging.s3.create_bucket(Bucket=hosting)
    monkeypatch.setenv("PUSHSITE_MIRROR", f"s3://{hosting}/www?endpoint={staging.endpoint}")
    pages = {f"p{n}.html": b"<p>%d</p>" % n for n in range(4)}
    staging.put("shop/main/bundle.tar.gz", make_bundle(pages))
    assert invoke_batch(staging, staging.receive()) == []
    service = service_for(staging.pushsite_queue)
    first = live(service, "shop")
    assert first is not None and first.mirror.startswith("mirrored: 4 uploaded")

    # three of the four mirrored pages would go: 75%, over the default limit of 50%
    staging.put("shop/main/bundle.tar.gz", make_bundle({"p0.html": b"<p>only</p>"}))
    assert invoke_batch(staging, staging.receive()) == []  # not retried: the answer is final

    second = live(service, "shop")
    assert second is not None and second.id != first.id
    assert second.mirror.startswith("refused: ") and "would delete 3 of its 4" in second.mirror
    keys = {o["Key"] for o in staging.s3.list_objects_v2(Bucket=hosting)["Contents"]}
    assert keys == {f"www/shop/p{n}.html" for n in range(4)}  # the copy is left as it was
    assert staging.count(staging.queue_url) == 0
    rows = [json.loads(line) for line in ok("deploys", "shop", "--json").stdout.splitlines()]
    assert rows[0]["id"] == second.id and rows[0]["mirror"] == second.mirror
    assert "not mirrored: mirroring to" in ok("log", second.id).stdout


def test_a_bundle_that_replaced_its_key_goes_live_though_the_older_id_sorts_after_it(
        staging: Staging, service_for: Callable[[str], Service]) -> None:
    """The key holds the newer object, so its deployment goes live even where the older
    object's deployment has an id that sorts after its own. That happens by chance when both
    were uploaded within one Last-Modified second (an object's id is that second, then a hash):
    half the time the older one kept production, and the test above failed once that way. The
    older deployment is made here as stage_from_bucket makes one, with an id an hour ahead so
    that it sorts after the newer object's whatever the clock does (no race with the second)."""
    from pushsite.queues import QueueItem
    from pushsite.sources.s3bundle import bundle_key, object_deployment_id

    key = "shop/main/bundle.tar.gz"
    older_etag = staging.put(key, make_bundle({"index.html": b"<p>older</p>"}))
    (event,) = staging.receive()
    staging.delete(event)  # its deployment is made below, with the id it needs
    service = service_for(staging.pushsite_queue)
    older_id = object_deployment_id(time.time() + 3600, f"{staging.bucket}/{key}@{older_etag}")
    service.accept("shop", None, source="s3", enqueue=False, deployment_id=older_id,
                   bundle_key=bundle_key(staging.bucket, key, older_etag))
    service.process(QueueItem({"deployment": older_id}, receipt="", attempts=1))
    assert (older := live(service, "shop")) is not None and older.id == older_id

    newer_etag = staging.put(key, make_bundle({"index.html": b"<p>newer</p>"}))
    assert invoke_batch(staging, staging.receive()) == []

    newer = live(service, "shop")
    assert newer is not None and newer.bundle_key.endswith(f"#{newer_etag}")
    assert newer.id > older_id
    assert service.state.get_deployment(older_id).status == Status.READY
    entry = service.manifest(newer.id).files["index.html"]
    assert service.store.get(entry.key()) == b"<p>newer</p>"
    # another event of the newer object (S3 delivers at least once) finds the deployment its
    # first event made, under the id moved past the older one's
    again = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                          "s3": {"bucket": {"name": staging.bucket},
                                 "object": {"key": key, "eTag": newer_etag}}}]}
    assert handler(again, FakeContext(60)) == {}
    assert [d.id for d in deployments(service, "shop")] == [newer.id, older_id]


def test_a_mirror_stopped_at_its_deadline_is_finished_by_the_next_invocation(
        staging: Staging, service_for: Callable[[str], Service],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler stops the mirror between batches at its deadline, queues the rest, and
    the redelivered message finishes it without writing an object twice (the hosting bucket
    is versioned: every PUT is a version)."""
    hosting = f"hosting-{staging.bucket}"
    staging.s3.create_bucket(Bucket=hosting)
    staging.s3.put_bucket_versioning(Bucket=hosting,
                                     VersioningConfiguration={"Status": "Enabled"})
    monkeypatch.setenv("PUSHSITE_MIRROR", f"s3://{hosting}/www?endpoint={staging.endpoint}")
    monkeypatch.setattr(mirror_module, "WORKERS", 1)  # batches of 4 objects
    checks: list[float] = []

    def clock() -> float:
        """The mirror's clock: two batches in time, then past the handler's deadline."""
        checks.append(time.monotonic())
        return checks[-1] if len(checks) <= 2 else float("inf")

    monkeypatch.setattr(mirror_module, "_now", clock)
    pages = {f"p{n}.html": b"<p>%d</p>" % n for n in range(10)}
    staging.put("shop/main/bundle.tar.gz", make_bundle(pages))
    assert invoke_batch(staging, staging.receive()) == []

    service = service_for(staging.pushsite_queue)
    deployment = live(service, "shop")
    assert deployment is not None and deployment.mirror.startswith("paused: 8 uploaded")
    (message,) = staging.receive()
    assert json.loads(message["Body"]) == {"mirror": {"site": "shop"}}
    monkeypatch.setattr(mirror_module, "_now", time.monotonic)

    assert invoke_batch(staging, [message]) == []

    versions = staging.s3.list_object_versions(Bucket=hosting)["Versions"]
    assert sorted(v["Key"] for v in versions) == sorted(f"www/shop/{p}" for p in pages)
    done = service.state.get_deployment(deployment.id)
    assert done.mirror.startswith("mirrored: 2 uploaded, 8 unchanged")
    assert staging.count(staging.queue_url) == 0
