"""The ObjectStore contract, run against every backend: the local folder, S3 on SeaweedFS, S3
on moto."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from collections.abc import Iterator
from typing import BinaryIO, cast

import pytest

from pushsite.errors import NotFound
from pushsite.model import blob_key, manifest_key
from pushsite.stores import ObjectStore, open_object_store

BACKENDS = ["file", "s3-seaweedfs", "s3-moto"]  # every backend, unconditionally

MB = 1024 * 1024
STREAM_SIZE = 20 * MB


@pytest.fixture(params=BACKENDS)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ObjectStore]:
    if request.param == "file":
        url = f"file://{tmp_path_factory.mktemp('store')}"
    elif request.param == "s3-seaweedfs":
        url = request.getfixturevalue("seaweed_url") + "&part_mb=5"
    else:
        url = request.getfixturevalue("moto_s3_url") + "&part_mb=5"
    opened = open_object_store(url)
    try:
        yield opened
    finally:
        opened.close()


_PERIOD = 251  # byte p of a generated stream is p % 251
_BLOCK = bytes(i % _PERIOD for i in range(_PERIOD * 256))


class _Generated(io.RawIOBase):
    """`size` bytes of a repeating pattern, made on demand: the source holds no object."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.position = 0
        self.produced = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.size - self.position, _PERIOD * 255)
        start = self.position % _PERIOD
        chunk = _BLOCK[start : start + count]
        buffer[:count] = chunk
        self.position += count
        self.produced.update(chunk)
        return count


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_then_get_round_trips(store: ObjectStore) -> None:
    store.put("manifests/one.json", b'{"v":1}', {"content-type": "application/json"})
    store.put("manifests/one.json", b'{"v":2}')  # a later put replaces
    store.flush()
    assert store.get("manifests/one.json") == b'{"v":2}'
    assert store.get("manifests/one.json") == b'{"v":2}'


def test_has_on_mixed_present_and_absent_keys(store: ObjectStore) -> None:
    present = [blob_key(_digest(str(i).encode())) for i in range(40)]
    absent = [blob_key(_digest(f"absent{i}".encode())) for i in range(40)]
    for key in present:
        store.put(key, b"x")
    store.put(blob_key(_digest(b"gz"), "gzip"), b"x")
    store.flush()
    assert store.has(present[:25] + absent) == set(present[:25])
    assert store.has([]) == set()
    assert store.has(absent) == set()
    # a variant's key is not its identity's, and vice versa
    assert store.has([blob_key(_digest(b"gz"))]) == set()


def test_ranged_get(store: ObjectStore) -> None:
    store.put("blobs/ra/range", b"0123456789")
    store.flush()
    assert store.get("blobs/ra/range", 2, 5) == b"234"
    assert store.get("blobs/ra/range", 7) == b"789"
    assert store.get("blobs/ra/range", 0, 1) == b"0"
    assert store.get("blobs/ra/range", 8, 100) == b"89"
    assert store.get("blobs/ra/range", 4, 4) == b""
    assert store.get("blobs/ra/range", 10) == b""


def test_missing_key_is_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        store.get("blobs/00/missing")
    with pytest.raises(NotFound):
        store.get("blobs/00/missing", 1, 2)
    with pytest.raises(NotFound):
        store.open("blobs/00/missing")


def test_open_streams_the_object(store: ObjectStore) -> None:
    data = bytes(range(256)) * 5000  # 1.28 MB: above the local store's pack limit
    store.put("blobs/op/big", data)
    store.put("blobs/op/small", b"small")
    store.flush()
    with store.open("blobs/op/big") as stream:
        assert stream.read(10) == data[:10]
        assert stream.read() == data[10:]
    with store.open("blobs/op/small") as stream:
        assert stream.read() == b"small"


def test_keys_under_a_prefix_and_delete(store: ObjectStore) -> None:
    keys = ["manifests/a.json", "manifests/b.json", "blobs/aa/1", "blobs/ab/2"]
    for key in keys:
        store.put(key, b"{}")
    store.flush()
    assert sorted(store.keys("manifests/")) == ["manifests/a.json", "manifests/b.json"]
    assert sorted(store.keys()) == sorted(keys)
    store.delete(["manifests/a.json", "blobs/aa/1", "blobs/zz/never-there"])
    assert sorted(store.keys()) == ["blobs/ab/2", "manifests/b.json"]
    assert store.has(keys) == {"blobs/ab/2", "manifests/b.json"}
    store.delete([])


def test_put_stream_of_20_mb_keeps_memory_flat(store: ObjectStore) -> None:
    source = _Generated(STREAM_SIZE)
    key = manifest_key("large-stream")
    tracemalloc.start()
    try:
        stream = cast(BinaryIO, source)
        store.put_stream(key, stream, STREAM_SIZE, {"content-type": "application/octet-stream"})
        store.flush()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert source.position == STREAM_SIZE
    print(f"put_stream peak traced memory: {peak / MB:.1f} MB for {STREAM_SIZE / MB:.0f} MB")
    assert peak < STREAM_SIZE * 0.75
    tail = bytes(p % _PERIOD for p in range(STREAM_SIZE - 3, STREAM_SIZE))
    assert store.get(key, STREAM_SIZE - 3) == tail
    total = hashlib.sha256()
    with store.open(key) as stream:
        while chunk := stream.read(1 << 20):
            total.update(chunk)
    assert total.hexdigest() == source.produced.hexdigest()
