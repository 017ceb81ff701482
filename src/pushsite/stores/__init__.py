"""Object stores: where blobs and manifests live, chosen by URL.

    file:///path/to/dir      stores/local.py  (small objects packed in SQLite, large ones as files)
    s3://bucket/prefix       stores/s3.py     (AWS S3 or any S3-compatible server)

Keys are '/'-separated strings such as `blobs/ab/<sha256>.gz` or `manifests/<id>.json`, or
refs into a pack object (`packs/<id>@<offset>+<length>`, see packs.py) for stores that pack.
Nothing here imports service, web, cli or aws.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from pushsite.backends import open_backend


class Packer(Protocol):
    """One deployment's pack: new blobs appended, then the manifest (stores/packs.py).

    A store that packs is a PackingStore (below).
    """

    key: str  # the object that will hold the manifest
    pending: str  # the open segment, stored as `key` by close(manifest): refs into it change

    def add(self, key: str, data: bytes) -> str:
        """Append a blob variant; its ref."""

    def add_stream(self, key: str, source: BinaryIO, size: int) -> str:
        """Append a large blob variant from a file object; its ref."""

    def close(self, manifest: bytes | None) -> None:
        """Finish the pack with the manifest (or, without one, an index for a retry)."""

    def abort(self) -> None:
        """Drop the pack: nothing becomes visible."""


class ObjectStore(Protocol):
    """The few things a deployer and an edge need from a place that keeps bytes."""

    def has(self, keys: Iterable[str]) -> set[str]:
        """Which of these keys exist (one round trip where the backend allows)."""

    def put(self, key: str, data: bytes, meta: dict[str, str] | None = None) -> None:
        """Store small content; may be buffered until flush()."""

    def put_stream(
        self, key: str, source: BinaryIO, size: int, meta: dict[str, str] | None = None
    ) -> None:
        """Store large content read from a file object, without holding it all in memory."""

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """The bytes of [start, end) of an object; raises NotFound."""

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object; raises NotFound."""

    def delete(self, keys: Iterable[str]) -> None:
        """Remove these keys; missing ones are ignored."""

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key under a prefix."""

    def stamps(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """Every key under a prefix with when it was written (seconds since the epoch; 0 when
        the backend does not know): prune keeps what is younger than its grace period."""

    def flush(self) -> None:
        """Make every put so far durable and visible."""

    def close(self) -> None: ...


# Optional abilities: a store declares one by having its methods, and callers ask with
# isinstance, so what a backend lacks is visible in its type (tests/contracts assert which
# backend has which).


@runtime_checkable
class PackingStore(Protocol):
    """Writes a deployment's new blobs into one pack object (stores/s3.py)."""

    def packer(self, deployment_id: str) -> Packer | None:
        """The deployment's pack to append to; None when this store writes loose objects."""

    def packed_blobs(self, deployment_id: str) -> dict[str, str]:
        """{key: ref} of the blobs earlier (timed-out) runs of the deployment sealed."""


@runtime_checkable
class SizedStore(Protocol):
    """Tells an object's size without reading it (else the deployer reads the bytes)."""

    def size(self, key: str) -> int:
        """The object's size in bytes; raises NotFound."""


@runtime_checkable
class SpoolingStore(Protocol):
    """Has its own file system: a large blob is spooled there and renamed into place, with
    no copy (stores/local.py)."""

    def temp_file(self) -> tuple[BinaryIO, Path]:
        """An open temporary file on the store's file system, and its path."""

    def adopt_file(self, key: str, path: Path) -> None:
        """Move a finished temporary file (from temp_file) into place under `key`: durable
        and seen by other actors by the time the next flush returns, as a put."""


_BACKENDS = {
    "file": "pushsite.stores.local:LocalStore",
    "s3": "pushsite.stores.s3:S3Store",
}


def open_object_store(url: str) -> ObjectStore:
    """Open the store a URL names; the backend module is imported only when used."""
    backend: ObjectStore = open_backend(url, _BACKENDS, "store")
    return backend
