"""Bundles staged in an S3 bucket: an object's identity, its deployment id, and its bytes.

Below the service (service/base.py reads a staged bundle through `open_bundle`); the event
adapter that turns an S3 event into a deployment is service/s3events.py.

The deployment's id is derived from the object itself: its Last-Modified second, then 80 bits
of sha256("<bucket>/<key>@<etag>"). Every event about one upload (S3 delivers at least once,
and a multipart upload sends two, `Put` and `CompleteMultipartUpload`, with one ETag) names
the same id, so the first event creates the deployment and the others find it: a worker that
died mid-deploy is resumed, never doubled. Ids still sort by upload time, so a newer bundle
wins the alias. Within one second the hash would decide, so an object that replaced another at
its key takes the millisecond after every deployment of that key whose id sorts later
(`id_after`; service/s3events.py): the key now holds it, so it is the newer one. Two bundles
uploaded within the same second to one branch under *different* keys are still ordered by the
hash (use one key per branch).

A deployment remembers its bundle as `s3://<bucket>/<key>#<etag>` (`bundle_key`). Every read
sends If-Match with that ETag, so a bundle replaced at the same key is never mistaken for the
one the event named (the older event is skipped: the newer object has its own event), and a
connection that breaks mid-bundle resumes with a ranged GET from the byte where it stopped.
Staged objects are left in the bucket; the staging bucket's lifecycle rule expires them.

The staging client uses the default S3 endpoint, or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
(boto3's own variables) for an S3-compatible server.
"""

from __future__ import annotations

import functools
import hashlib
import io
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from pushsite.awssdk.client import BackendUrl, aws_errors, error_code, http_status, make_client
from pushsite.errors import ConfigError, DeploymentFailed

SCHEME = "s3://"
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # ids.py's Crockford base32
_GONE = {"404", "NoSuchKey", "NotFound", "412", "PreconditionFailed"}
_READ_RETRIES = 3


def bundle_key(bucket: str, key: str, etag: str) -> str:
    return f"{SCHEME}{bucket}/{key}#{etag}"


def parse_bundle_key(text: str) -> tuple[str, str, str]:
    """(bucket, key, etag) of `s3://bucket/key#etag`; the ETag never holds '#', a key may."""
    rest, _, etag = text.removeprefix(SCHEME).rpartition("#")
    bucket, _, key = rest.partition("/")
    if not text.startswith(SCHEME) or not bucket or not key:
        raise ConfigError(f"invalid staged bundle {text!r}: expected s3://bucket/key#etag")
    return bucket, key, etag


def object_deployment_id(modified: float, identity: str) -> str:
    """An id in ids.py's shape (48 bits of ms, 80 bits) that one object always maps to."""
    ms = int(modified) * 1000
    tail = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:10], "big")
    return _encode(ms, 10) + _encode(tail, 16)


def id_after(earlier: str, ours: str) -> str:
    """`ours` (an object's id) moved to the millisecond after `earlier`, its tail kept: it then
    sorts after `earlier` and before any id of a later millisecond."""
    ms = 0
    for char in earlier[:10]:
        ms = (ms << 5) | _ALPHABET.index(char)
    return _encode(ms + 1, 10) + ours[10:]


def _encode(value: int, length: int) -> str:
    return "".join(_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(length)))


@functools.lru_cache(maxsize=16)
def _client(bucket: str) -> Any:
    """One thread-safe client per staging bucket, kept for the process (a Lambda container)."""
    target = BackendUrl.parse(f"s3://{bucket}", "s3")
    return make_client("s3", target, pool_size=4)


def _quoted(etag: str) -> str:
    return f'"{etag}"'


def head_bundle(bucket: str, key: str, etag: str = "") -> dict[str, Any] | None:
    """HeadObject of a staged bundle (If-Match `etag` when given); None when the object is
    gone or was replaced since the event that named it."""
    args: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if etag:
        args["IfMatch"] = _quoted(etag)
    with aws_errors(f"staged bundle s3://{bucket}/{key}"):
        try:
            head: dict[str, Any] = _client(bucket).head_object(**args)
        except ClientError as exc:
            if error_code(exc) in _GONE or http_status(exc) in (404, 412):
                return None
            raise
    return head


def open_bundle(text: str) -> BinaryIO:
    """A buffered stream of a staged bundle (`s3://bucket/key#etag`)."""
    bucket, key, etag = parse_bundle_key(text)
    return io.BufferedReader(_ObjectReader(bucket, key, etag), buffer_size=1 << 20)


class _ObjectReader(io.RawIOBase):
    """GetObject as a stream that re-opens at its offset (If-Match) when a connection drops."""

    def __init__(self, bucket: str, key: str, etag: str) -> None:
        self._bucket, self._key, self._etag = bucket, key, etag
        self._what = f"staged bundle s3://{bucket}/{key}"
        self._offset = 0
        self._body: Any = None
        self._open()

    def _open(self) -> None:
        args: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key}
        if self._etag:
            args["IfMatch"] = _quoted(self._etag)
        if self._offset:
            args["Range"] = f"bytes={self._offset}-"
        with aws_errors(self._what):
            try:
                self._body = _client(self._bucket).get_object(**args)["Body"]
            except ClientError as exc:
                if error_code(exc) in _GONE or http_status(exc) in (404, 412):
                    raise DeploymentFailed(
                        f"the {self._what} is gone or was replaced since its event; a newer "
                        "upload deploys on its own event"
                    ) from exc
                raise

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        for attempt in range(_READ_RETRIES + 1):
            try:
                data = self._body.read(len(buffer))
                break
            except BotoCoreError:
                if attempt == _READ_RETRIES:
                    with aws_errors(self._what):
                        raise
                self._body.close()
                self._open()
        buffer[: len(data)] = data
        self._offset += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed and self._body is not None:
            self._body.close()
        super().close()
