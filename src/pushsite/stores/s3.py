"""The object store on S3 or any S3-compatible server (SeaweedFS, MinIO, Ceph, R2).

    s3://bucket/prefix?endpoint=http://127.0.0.1:8333&create=1&workers=16

A deployment's new blobs and its manifest go into one pack object (packs.py, s3pack.py), so a
site of 1,000 files is one upload, not 3,000; `segment_mb` (4) is the size at which a pack is
cut into another object while the deploy goes on. (`packs=0`, one object per blob variant,
was a development version's layout: the option is refused now.)

Small puts go through a thread pool and `flush()` waits for them (boto3 clients are
thread-safe); at most `2 * workers` puts are in flight, so a fast producer blocks instead of
piling up bytes. Large objects use multipart upload with a bounded number of parts in memory.

`has()` answers with parallel HEAD requests, unless many keys fall in each folder: then it
lists a sample folder and, if folders are small, lists them all (one request per 1,000 stored
objects). Measured against SeaweedFS (16 workers, 2 cores), half the asked keys present:

    stored   asked   HEAD (requests)   LIST every folder (requests)   auto picks
     5,000      20   0.02 s (20)       0.04 s (18)                    HEAD
     5,000   1,000   1.2-1.6 s (1000)  0.7-0.8 s (254)                HEAD (cheaper on S3)
    20,000   1,000   1.1-1.4 s (1000)  2.1-2.4 s (254)                HEAD
    20,000   5,000   5.9-7.3 s (5000)  2.2-2.5 s (256)                LIST: 1.9 s (256)

A listing's time grows with the store (every object in the folder comes back), a HEAD's only
with the deploy; and on S3 a LIST is priced like a PUT, 12.5 times a HEAD.
`?has=head` or `?has=list` forces one way.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from pushsite.awssdk.client import BackendUrl, aws_errors, error_code, http_status, make_client
from pushsite.errors import BackendUnavailable, ConfigError, NotFound
from pushsite.stores.packs import Footer, make_ref, pack_key, parse_ref

if TYPE_CHECKING:
    from pushsite.stores.s3pack import S3Packer

MB = 1024 * 1024
_HEADERS = {
    "content-type": "ContentType",
    "content-encoding": "ContentEncoding",
    "cache-control": "CacheControl",
}
_MISSING = {"404", "NoSuchKey", "NotFound"}
MANIFESTS = "manifests/"
TAIL_GUESS = 512 * 1024  # one ranged GET reads the footer and the manifest of a site of
# up to ~2,500 files (a second round trip costs more than the extra bytes, even on AWS)
# has() lists a folder instead of HEADing its keys only when, on average, at least this many
# keys are asked per folder...
LIST_MIN_KEYS = 16
# ...and a sampled folder holds at most this many objects per asked key (a LIST costs 12.5
# HEADs on S3 and returns up to 1,000 keys; listing one object costs ~0.1 ms, a HEAD ~1.4 ms).
LIST_MAX_RATIO = 8


def _put_args(meta: dict[str, str] | None) -> dict[str, Any]:
    """S3 arguments for pushsite meta: three known headers, the rest as x-amz-meta-*."""
    args: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for name, value in (meta or {}).items():
        if name.lower() in _HEADERS:
            args[_HEADERS[name.lower()]] = value
        else:
            extra[name] = value
    if extra:
        args["Metadata"] = extra
    return args


def _read_full(source: BinaryIO, size: int) -> bytearray:
    """Up to `size` bytes, fewer only at the end of the stream (raw streams return short)."""
    readinto = getattr(source, "readinto", None)
    if readinto is None:  # a plain reader: read() into a growing buffer
        data = bytearray()
        while len(data) < size and (chunk := source.read(size - len(data))):
            data += chunk
        return data
    buffer = bytearray(size)
    filled = 0
    with memoryview(buffer) as view:
        while filled < size:
            count = readinto(view[filled:])
            if not count:
                break
            filled += count
    del buffer[filled:]
    return buffer


class _Body(io.RawIOBase):
    """A GetObject body as a plain readable stream, with botocore errors translated."""

    def __init__(self, body: Any, what: str) -> None:
        self._body = body
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with aws_errors(self._what):
            data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Store:
    """Blobs and manifests in one bucket under an optional key prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        target: BackendUrl,
        workers: int = 16,
        part_size: int = 8 * MB,
        has_strategy: str = "auto",
        segment_size: int = 4 * MB,
    ) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.has_strategy = has_strategy
        self.segment_size = segment_size
        self._what = f"S3 bucket {bucket!r}"
        self.client = make_client("s3", target, pool_size=max(workers, 10) + 4)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3-put")
        self._slots = threading.BoundedSemaphore(2 * workers)
        self._pending: dict[str, Future[None]] = {}  # key -> its queued put
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        # Multipart by hand, not upload_fileobj: s3transfer buffered about twice the object
        # for a non-seekable 20 MB stream (measured: 40 MB traced); this holds two parts.
        self.part_size = max(part_size, 5 * MB)  # S3's minimum for all but the last part
        if target.create:
            self._ensure_bucket()

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        target = BackendUrl.parse(url, "s3")
        if "packs" in target.options:
            raise ConfigError(f"invalid S3 store URL {url!r}: the `packs` option is gone "
                              "(a deployment's new blobs always go into packs); remove it")
        return cls(
            target.name,
            target.path,
            target=target,
            workers=target.int_option("workers", 16),
            part_size=target.int_option("part_mb", 8) * MB,
            has_strategy=target.options.get("has", "auto"),
            segment_size=target.int_option("segment_mb", 4) * MB,
        )

    def _ensure_bucket(self) -> None:
        with aws_errors(self._what):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if error_code(exc) not in _MISSING | {"NoSuchBucket"}:
                    raise
                try:
                    self.client.create_bucket(Bucket=self.bucket)
                except ClientError as race:  # another process made it since the HEAD
                    if error_code(race) != "BucketAlreadyOwnedByYou":
                        raise

    def full_key(self, key: str) -> str:
        return self.prefix + key

    # reading -------------------------------------------------------------------------------
    def has(self, keys: Iterable[str]) -> set[str]:
        """Which keys exist (or are queued by put). See the module docstring for how."""
        wanted = set(keys)
        with self._lock:
            queued = wanted.intersection(self._pending)  # put() but not yet landed
        wanted -= queued
        if not wanted:
            return queued
        folders: dict[str, set[str]] = {}
        for key in wanted:
            folders.setdefault(key.rpartition("/")[0], set()).add(key)
        found = set(queued)
        listed: list[str] = []
        if self.has_strategy == "list":
            listed = sorted(folders)
        elif self.has_strategy == "auto" and len(wanted) >= LIST_MIN_KEYS * len(folders):
            # Sample the busiest folder: list the rest only if folders are small enough that
            # a listing returns at most LIST_MAX_RATIO objects per asked key.
            busiest = max(folders, key=lambda folder: len(folders[folder]))
            sample = self._list_folder(busiest)
            found |= sample & folders.pop(busiest)
            if len(sample) <= LIST_MAX_RATIO * len(wanted) / (len(folders) + 1):
                listed = sorted(folders)
        for folder, in_folder in zip(
            listed, self._pool.map(self._list_folder, listed), strict=True
        ):
            found |= in_folder & folders.pop(folder)
        heads = sorted(key for group in folders.values() for key in group)
        for key, exists in zip(heads, self._pool.map(self._exists, heads), strict=True):
            if exists:
                found.add(key)
        return found

    def _exists(self, key: str) -> bool:
        with aws_errors(self._what):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
            except ClientError as exc:
                if error_code(exc) in _MISSING or http_status(exc) == 404:
                    return False
                raise
        return True

    def _list_folder(self, folder: str) -> set[str]:
        """Every key directly in one folder (`blobs/ab`), from a paginated listing."""
        prefix = f"{folder}/" if folder else ""
        return {key for key in self.keys(prefix) if "/" not in key[len(prefix) :]}

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end); a range past the end is cut short, as slicing would.

        `key` may be a ref into a pack (packs.py); a manifest key is looked for in its
        deployment's pack first.
        """
        if end is not None and end <= start:
            return b""
        ref = parse_ref(key)
        if ref is not None:
            pack, offset, length = ref
            end = length if end is None else min(end, length)
            if start >= end:
                return b""
            return self.get(pack, offset + start, offset + end)
        if key.startswith(MANIFESTS) and start == 0 and end is None:
            deployment_id = key[len(MANIFESTS):].removesuffix(".json")
            found = self._manifest_from_pack(deployment_id)
            if found is not None:
                return found
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.full_key(key)}
        if start or end is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        with aws_errors(self._what):
            try:
                response = self.client.get_object(**args)
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    raise NotFound(f"object {key!r} is not in {self._what}") from exc
                if error_code(exc) == "InvalidRange":
                    return b""  # start at or past the end (or an empty object)
                raise
            data: bytes = response["Body"].read()
        return data

    def open(self, key: str) -> BinaryIO:
        """A buffered stream of the object; the connection is held until it is closed."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.full_key(key)}
        ref = parse_ref(key)
        if ref is not None:
            key, offset, length = ref
            if not length:
                return io.BytesIO(b"")
            args = {"Bucket": self.bucket, "Key": self.full_key(key),
                    "Range": f"bytes={offset}-{offset + length - 1}"}
        with aws_errors(self._what):
            try:
                response = self.client.get_object(**args)
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    raise NotFound(f"object {key!r} is not in {self._what}") from exc
                raise
        return io.BufferedReader(_Body(response["Body"], self._what), buffer_size=256 * 1024)

    def size(self, key: str) -> int:
        """The object's length in bytes (one HEAD, none for a ref); raises NotFound.

        A key still being put (has() counts it) is waited for first, so has() and size()
        agree: a deploy's later copy of a file sizes the variants of the first copy."""
        ref = parse_ref(key)
        if ref is not None:
            return ref[2]
        with self._lock:
            queued = self._pending.get(key)
        if queued is not None:
            queued.exception()  # waits; a failure surfaces from flush()
        return int(self.head(key)["content-length"])

    # packs (see packs.py) -----------------------------------------------------------------
    def packer(self, deployment_id: str) -> S3Packer | None:
        """The pack a run of a deployment writes; every run's segments
        have names of their own, so a retry never overwrites what an earlier run stored."""
        from pushsite.stores.s3pack import S3Packer

        return S3Packer(self, deployment_id, segment_size=self.segment_size)

    def packed_blobs(self, deployment_id: str) -> dict[str, str]:
        """key -> ref of the blobs earlier runs of a deployment stored in segments (a run
        that timed out, or whose worker was killed): one LIST, one GET per segment."""
        found: dict[str, str] = {}
        for key in self.keys(pack_key(deployment_id) + "."):
            footer, _, _ = self._footer(key)
            found.update({blob: make_ref(key, offset, length)
                          for blob, (offset, length) in footer.blobs.items()})
        return found

    def _footer(self, key: str) -> tuple[Footer, bytes, int]:
        """A pack's footer, the tail read with it and the pack's size: one ranged GET of the
        tail (two when the footer is longer than the first guess)."""
        what = f"{key!r} in {self._what}"
        tail, size = self._tail(key, TAIL_GUESS)
        footer, needed = Footer.from_tail(tail, what)
        if footer is None:
            tail, size = self._tail(key, needed)
            footer, _ = Footer.from_tail(tail, what)
        assert footer is not None
        return footer, tail, size

    def _tail(self, key: str, count: int) -> tuple[bytes, int]:
        """The last `count` bytes of an object (all of it if shorter) and its full size."""
        with aws_errors(self._what):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key),
                                                  Range=f"bytes=-{count}")
            except ClientError as exc:
                if error_code(exc) in _MISSING:
                    raise NotFound(f"object {key!r} is not in {self._what}") from exc
                raise
            data: bytes = response["Body"].read()
        total = response.get("ContentRange", "").rpartition("/")[2]
        return data, int(total) if total.isdigit() else len(data)

    def _manifest_from_pack(self, deployment_id: str) -> bytes | None:
        """The manifest in a deployment's last segment, `packs/<id>`; None when it has none
        (a manifest stored on its own, by a git push or an earlier version)."""
        key = pack_key(deployment_id)
        try:
            footer, tail, size = self._footer(key)
        except NotFound:
            return None
        if footer.manifest is None:
            return None
        offset, length = footer.manifest
        in_tail = offset - (size - len(tail))
        if in_tail >= 0:
            return tail[in_tail:in_tail + length]
        return self.get(key, offset, offset + length)

    def head(self, key: str) -> dict[str, str]:
        """The object's meta in the shape `put` takes (lowercase names); raises NotFound."""
        with aws_errors(self._what):
            try:
                response = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
            except ClientError as exc:
                if error_code(exc) in _MISSING or http_status(exc) == 404:
                    raise NotFound(f"object {key!r} is not in {self._what}") from exc
                raise
        meta = {name: response[arg] for name, arg in _HEADERS.items() if response.get(arg)}
        meta.update(response.get("Metadata", {}))
        meta["content-length"] = str(response["ContentLength"])
        return meta

    def keys(self, prefix: str = "") -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        cut = len(self.prefix)
        with aws_errors(self._what):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
                for item in page.get("Contents", []):
                    yield item["Key"][cut:]

    def stamps(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """Every key under a prefix with its LastModified (seconds since the epoch, the
        server's clock), from the same paginated listing as keys()."""
        paginator = self.client.get_paginator("list_objects_v2")
        cut = len(self.prefix)
        with aws_errors(self._what):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
                for item in page.get("Contents", []):
                    yield item["Key"][cut:], item["LastModified"].timestamp()

    # writing -------------------------------------------------------------------------------
    def put(self, key: str, data: bytes, meta: dict[str, str] | None = None) -> None:
        """Queue an upload; errors surface from the next put or from flush().

        A second put of a key waits for the first, so the last put wins as it would in order.
        """
        self._raise_background_error()
        with self._lock:
            earlier = self._pending.get(key)
        if earlier is not None:
            earlier.exception()  # waits
        self._slots.acquire()
        try:
            future = self._pool.submit(self._put_now, key, data, meta)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._pending[key] = future
        future.add_done_callback(lambda done: self._done(key, done))

    def _put_now(self, key: str, data: bytes, meta: dict[str, str] | None) -> None:
        with aws_errors(self._what):
            self.client.put_object(
                Bucket=self.bucket, Key=self.full_key(key), Body=data, **_put_args(meta)
            )

    def _done(self, key: str, future: Future[None]) -> None:
        self._slots.release()
        with self._lock:
            if self._pending.get(key) is future:
                del self._pending[key]
            error = future.exception()
            if error is not None:
                self._errors.append(error)

    def _raise_background_error(self) -> None:
        with self._lock:
            if not self._errors:
                return
            error, self._errors = self._errors[0], []
        raise error

    def put_stream(
        self, key: str, source: BinaryIO, size: int, meta: dict[str, str] | None = None
    ) -> None:
        """Upload now: one PUT up to the part size, else multipart with at most two parts in
        memory (one uploading, one being read), whatever the object's size."""
        first = _read_full(source, self.part_size)
        if len(first) < self.part_size:
            with aws_errors(self._what):
                self.client.put_object(
                    Bucket=self.bucket, Key=self.full_key(key), Body=first, **_put_args(meta)
                )
            return
        with aws_errors(self._what):
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.full_key(key), **_put_args(meta)
            )["UploadId"]
        holder = [first]  # handed over, so this frame does not keep the first part alive
        del first
        try:
            parts = self._upload_parts(key, upload_id, holder, source)
            with aws_errors(self._what):
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.full_key(key),
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            with contextlib.suppress(BotoCoreError, ClientError):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.full_key(key), UploadId=upload_id
                )
            raise

    def _upload_parts(
        self, key: str, upload_id: str, holder: list[bytearray], source: BinaryIO
    ) -> list[dict[str, Any]]:
        """Upload part n while part n+1 is read; parts stay in order."""

        def upload(number: int, body: bytearray) -> dict[str, Any]:
            with aws_errors(self._what):
                response = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=self.full_key(key),
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                )
            return {"PartNumber": number, "ETag": response["ETag"]}

        parts: list[dict[str, Any]] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-part") as uploader:
            chunk, number = holder.pop(), 1
            running: Future[dict[str, Any]] | None = None
            while chunk:
                launched = uploader.submit(upload, number, chunk)
                del chunk  # the uploader holds the only reference
                if running is not None:
                    parts.append(running.result())
                running = launched
                chunk, number = _read_full(source, self.part_size), number + 1
            if running is not None:
                parts.append(running.result())
        return parts

    def delete(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == 1000:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, keys: list[str]) -> None:
        objects = [{"Key": self.full_key(key)} for key in keys]
        with aws_errors(self._what):
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
            )
        failed = [e for e in response.get("Errors", []) if e.get("Code") not in _MISSING]
        if failed:
            first = failed[0]
            raise BackendUnavailable(
                f"{self._what} could not delete {len(failed)} objects, first "
                f"{first.get('Key')!r} ({first.get('Code')}: {first.get('Message')}): try again"
            )

    def flush(self) -> None:
        """Wait for every queued put; raise the first failure."""
        while True:
            with self._lock:
                pending = list(self._pending.values())
            if not pending:
                break
            for future in pending:
                future.exception()  # waits; the error is collected by _done
        self._raise_background_error()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)
            self.client.close()
