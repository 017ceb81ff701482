"""S3Store against real servers: SeaweedFS for data, moto where S3-specific headers matter."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from urllib.parse import urlsplit

import boto3
import pytest

from pushsite.errors import BackendUnavailable, ConfigError, NotFound
from pushsite.model import blob_key
from pushsite.stores import open_object_store
from pushsite.stores.s3 import S3Store


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


def test_has_strategies_agree(seaweed_server: str) -> None:
    """Both has() strategies give the same answer; prints their cost against SeaweedFS."""
    url = f"s3://bench-{os.getpid()}-{time.monotonic_ns() % 10**6}/p?endpoint={seaweed_server}"
    store = _open(url + "&create=1")
    stored = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(600)]
    absent = [hashlib.sha256(f"x{i}".encode()).hexdigest() for i in range(300)]
    try:
        for digest in stored:
            store.put(blob_key(digest), b"x")
        store.flush()
        asked = [blob_key(d) for d in stored[:300] + absent]
        results = {}
        for strategy in ("head", "list"):
            store.has_strategy = strategy
            began = time.perf_counter()
            results[strategy] = store.has(asked)
            print(f"has() {strategy}: {len(asked)} keys in {time.perf_counter() - began:.3f} s")
    finally:
        store.close()
    expected = {blob_key(d) for d in stored[:300]}
    assert results["head"] == expected
    assert results["list"] == expected
