"""The mirror as Lambda runs it: a no-change mirror diffs records instead of asking the
bucket, a deadline stops it between batches and the next run finishes the job."""

from __future__ import annotations

import time
from typing import Any

import boto3
import pytest

from pushsite.aws import mirror as mirror_module
from pushsite.aws.mirror import MirrorTimeout, mirror_deployment
from pushsite.model import FileEntry, Manifest, blob_key
from pushsite.stores.local import LocalStore


class Counting:
    """A real boto3 client that counts the calls made to it by name."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return attribute(*args, **kwargs)

        return counted


def _manifest(store: LocalStore, files: dict[str, bytes]) -> Manifest:
    import hashlib

    entries = {}
    for path, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        store.put(blob_key(digest), data)
        entries[path] = FileEntry(digest, len(data), "application/octet-stream")
    store.flush()
    return Manifest("d1", "blog", 0.0, files=entries)


@pytest.fixture
def bucket(moto: str) -> Any:
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    s3.create_bucket(Bucket="hosting")
    return s3


def test_a_mirror_without_changes_makes_no_request_to_the_bucket(
        bucket: Any, moto: str, tmp_path: Any) -> None:
    store = LocalStore.from_url(f"file://{tmp_path / 'store'}")
    manifest = _manifest(store, {f"f{n}.bin": b"x%d" % n for n in range(40)})
    target = f"s3://hosting/blog?endpoint={moto}"
    assert mirror_deployment(manifest, store, target).uploaded == 40
    counting = Counting(bucket)
    report = mirror_deployment(manifest, store, target, s3_client=counting)
    assert (report.uploaded, report.unchanged, report.deleted) == (0, 40, 0)
    assert counting.calls == {}  # no LIST, no HEAD, no PUT
    del manifest.files["f0.bin"]
    report = mirror_deployment(manifest, store, target, s3_client=counting)
    assert report.deleted == 1 and counting.calls == {"delete_objects": 1}


def test_a_deadline_stops_the_mirror_and_the_next_run_finishes_it(
        bucket: Any, moto: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore.from_url(f"file://{tmp_path / 'store'}")
    target = f"s3://hosting/blog?endpoint={moto}"
    mirror_deployment(_manifest(store, {"old.bin": b"old"}), store, target)
    manifest = _manifest(store, {f"f{n}.bin": b"y%d" % n for n in range(10)} | {"old.bin": b"old"})
    monkeypatch.setattr(mirror_module, "WORKERS", 1)  # chunks of 4 objects
    clock = iter([0.0, 0.0, 99.0])  # two chunks in time, then past the deadline
    monkeypatch.setattr(mirror_module, "_now", lambda: next(clock, 99.0))
    with pytest.raises(MirrorTimeout) as stopped:
        mirror_deployment(manifest, store, target, deadline=50.0)
    assert stopped.value.report.uploaded == 8
    monkeypatch.setattr(mirror_module, "_now", time.monotonic)
    counting = Counting(bucket)
    report = mirror_deployment(manifest, store, target, s3_client=counting)
    assert (report.uploaded, report.unchanged) == (2, 9)
    assert "head_object" not in counting.calls and "list_objects_v2" not in counting.calls
    keys = {o["Key"] for o in bucket.list_objects_v2(Bucket="hosting")["Contents"]}
    assert keys == {f"blog/f{n}.bin" for n in range(10)} | {"blog/old.bin"}
