"""S3Store against real servers: SeaweedFS for data, moto where S3-specific headers matter."""

from __future__ import annotations

import hashlib
import io
import socket
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.exceptions import ClientError

from pushsite.errors import BackendUnavailable, ConfigError, NotFound
from pushsite.model import blob_key
from pushsite.stores import open_object_store
from pushsite.stores.s3 import MB, S3Store


def _open(url: str) -> S3Store:
    store = open_object_store(url)
    assert isinstance(store, S3Store)
    return store


def _raw_client(endpoint: str) -> object:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.mark.parametrize("server", ["seaweed_url", "moto_s3_url"])
def test_meta_becomes_headers_and_user_metadata(
    server: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(server)
    store = _open(url)
    try:
        store.put(
            "blobs/ab/abc.gz",
            b"compressed",
            {
                "content-type": "text/html; charset=utf-8",
                "content-encoding": "gzip",
                "cache-control": "public, max-age=31536000, immutable",
                "sha256": "abc",
            },
        )
        store.flush()
        meta = store.head("blobs/ab/abc.gz")
    finally:
        store.close()
    assert meta["content-type"] == "text/html; charset=utf-8"
    assert meta["content-encoding"] == "gzip"
    assert meta["cache-control"] == "public, max-age=31536000, immutable"
    assert meta["sha256"] == "abc"
    assert meta["content-length"] == "10"


def test_prefix_keeps_keys_inside_it(seaweed_url: str, seaweed_server: str) -> None:
    store = _open(seaweed_url)
    try:
        store.put("manifests/x.json", b"{}")
        store.flush()
        assert list(store.keys()) == ["manifests/x.json"]
    finally:
        store.close()
    bucket = urlsplit(seaweed_url).netloc
    client = _raw_client(seaweed_server)
    listed = client.list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
    assert [o["Key"] for o in listed["Contents"]] == ["site-data/manifests/x.json"]


def test_background_put_failure_surfaces_in_flush(moto: str) -> None:
    """moto, unlike SeaweedFS, does not create a bucket on first upload."""
    store = _open(f"s3://no-such-bucket-here/p?endpoint={moto}")
    try:
        store.put("a", b"1")
        with pytest.raises(ConfigError, match="no-such-bucket-here") as caught:
            store.flush()
        assert caught.value.__cause__ is not None
        store.flush()  # the error is reported once
    finally:
        store.close()


def test_unreachable_endpoint_is_backend_unavailable(aws_credentials: None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens
    store = _open(f"s3://bucket/p?endpoint=http://127.0.0.1:{port}")
    try:
        with pytest.raises(BackendUnavailable) as caught:
            store.get("blobs/00/x")
        assert caught.value.__cause__ is not None
        assert str(port) in str(caught.value)
    finally:
        store.close()


def test_missing_object_is_not_found(seaweed_url: str) -> None:
    store = _open(seaweed_url)
    try:
        with pytest.raises(NotFound):
            store.get("blobs/00/missing")
        with pytest.raises(NotFound):
            store.open("blobs/00/missing")
    finally:
        store.close()


def _count_requests(store: S3Store) -> dict[str, int]:
    counts: dict[str, int] = {}

    def count(model: object, **_: object) -> None:
        name = getattr(model, "name", "?")
        counts[name] = counts.get(name, 0) + 1

    store.client.meta.events.register("before-call.s3.*", count)
    return counts


def test_has_heads_a_few_keys_and_lists_a_crowded_folder(seaweed_url: str) -> None:
    store = _open(seaweed_url)
    crowded = [f"blobs/aa/{i:04d}" for i in range(60)]
    sparse = [blob_key(hashlib.sha256(str(i).encode()).hexdigest()) for i in range(5)]
    try:
        for key in crowded + sparse:
            store.put(key, b"x")
        store.flush()
        requests = _count_requests(store)
        asked = crowded[:30] + [f"blobs/aa/absent{i}" for i in range(10)]
        assert store.has(asked) == set(crowded[:30])
        assert requests == {"ListObjectsV2": 1}
        requests.clear()
        assert store.has(sparse[:3] + ["blobs/ff/absent"]) == set(sparse[:3])
        assert requests == {"HeadObject": 4}
    finally:
        store.close()


@pytest.mark.parametrize("strategy", ["head", "list", "auto"])
def test_every_has_strategy_gives_the_same_answer(seaweed_url: str, strategy: str) -> None:
    store = _open(f"{seaweed_url}&has={strategy}")
    stored = [blob_key(hashlib.sha256(str(i).encode()).hexdigest()) for i in range(80)]
    stored += [f"blobs/bb/{i:03d}" for i in range(40)] + ["blobs/bb/sub/deeper"]
    try:
        for key in stored:
            store.put(key, b"x")
        store.flush()
        asked = stored[:50] + stored[80:100] + ["blobs/bb/sub", "blobs/bb/999", "blobs/cc/1"]
        assert store.has(asked) == set(stored[:50] + stored[80:100])
    finally:
        store.close()


def test_has_counts_queued_puts(moto_s3_url: str) -> None:
    store = _open(moto_s3_url)
    try:
        store.put("blobs/aa/queued", b"x")
        assert "blobs/aa/queued" in store.has(["blobs/aa/queued"])
        store.flush()
        assert store.has(["blobs/aa/queued"]) == {"blobs/aa/queued"}
    finally:
        store.close()


class _ReadOnly:
    """A source with read() only (no readinto), returning short reads like a socket."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 100_000) if size > 0 else 100_000)


def test_multipart_from_a_read_only_source_keeps_order_and_meta(seaweed_url: str) -> None:
    data = b"".join(i.to_bytes(4, "big") for i in range(3 * 1024 * 1024 // 2))  # 6 MiB
    store = _open(f"{seaweed_url}&part_mb=5")
    try:
        requests = _count_requests(store)
        source = cast(BinaryIO, _ReadOnly(data))
        store.put_stream("blobs/mp/big", source, len(data), {"content-type": "video/mp4"})
        assert requests["UploadPart"] == 2
        assert store.head("blobs/mp/big")["content-type"] == "video/mp4"
        assert store.get("blobs/mp/big") == data
    finally:
        store.close()


class _Broken(io.RawIOBase):
    """Gives `good` bytes, then fails as a dropped upload connection would."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            raise OSError("connection reset by peer")
        count = min(len(buffer), self.left)
        buffer[:count] = b"z" * count
        self.left -= count
        return count


def test_failed_stream_aborts_the_multipart_upload(moto_s3_url: str, moto: str) -> None:
    store = _open(f"{moto_s3_url}&part_mb=5")
    try:
        with pytest.raises(OSError, match="reset"):
            store.put_stream("blobs/mp/broken", cast(BinaryIO, _Broken(7 * MB)), 12 * MB)
    finally:
        store.close()
    client = _raw_client(moto)
    uploads = client.list_multipart_uploads(Bucket=store.bucket)  # type: ignore[attr-defined]
    assert uploads.get("Uploads", []) == []
    listed = client.list_objects_v2(Bucket=store.bucket)  # type: ignore[attr-defined]
    assert listed.get("Contents", []) == []


def test_create_tolerates_a_bucket_another_process_made_meanwhile(seaweed_url: str) -> None:
    store = _open(seaweed_url)
    try:
        # the race: this process's HEAD said "missing", then another one created the bucket
        # (the real CreateBucket answers BucketAlreadyOwnedByYou)
        store.client.head_bucket = _missing  # type: ignore[method-assign]
        store._ensure_bucket()
        store.put("blobs/00/after-race", b"x")
        store.flush()
        assert store.get("blobs/00/after-race") == b"x"
    finally:
        store.close()


def _missing(**_: object) -> None:
    raise ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadBucket")
