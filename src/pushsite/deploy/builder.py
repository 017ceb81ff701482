"""The deployer: files in, blobs and a manifest out.

Stages, in the order a bundle meets them:

1. read    a driver (tarball.py for a tar.gz stream, folder.py for a folder, gitcommit.py for
           a pushed commit) feeds files
           one by one in stream order; nothing is extracted to disk and nothing seeks.
2. hash    small files (up to SMALL_FILE) are gathered in batches; a pool of threads (one per
           core: sha256, isal and brotli all release the GIL) hashes a batch, asks the store
           once which blobs it already has, and compresses and stores only the new ones.
           Large files stream through sha256 and both compressors in one pass, into a
           temporary file, so memory stays flat whatever their size.
3. bound   a budget of bytes in flight (InFlight) blocks the reader while the pool is behind:
           back-pressure, so a slow store never makes memory grow.
4. finish  links resolve to their targets' entries, the single top folder is stripped,
           pushsite.toml's `publish` and `exclude` apply, `_headers` and `_redirects` are
           parsed, and the manifest is written. Activation is the service's job.

A deadline and a stop check run alongside: when either fires, the pipeline stops between two
files and raises, and nothing it wrote is visible at any alias (blobs are content-addressed
and unreferenced until a manifest names them, so a retry reuses them for free).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import itertools
import json
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from pushsite import pathindex
from pushsite.deploy import early, encode, handover
from pushsite.deploy.entries import Entries
from pushsite.deploy.keyset import KeySet
from pushsite.deploy.later import Later
from pushsite.deploy.paths import common_top_folder, is_published
from pushsite.errors import (
    BundleRejected,
    DeploymentCancelled,
    DeploymentTimedOut,
    SiteConfigError,
)
from pushsite.limits import human_size
from pushsite.model import (
    FAST_GZIP,
    FileEntry,
    Manifest,
    blob_key,
    fast_gzip_key,
    manifest_key,
    pending_key,
)
from pushsite.stores import ObjectStore, Packer, SizedStore, SpoolingStore

SMALL_FILE = 1 << 20  # read whole and handled in the pool; above this, streamed
BATCH_BYTES = 1 << 20
BATCH_FILES = 128
# 24 MiB: same speed with 2 workers, 10-14 MB more peak RSS; 8 MiB: ~2-4 MB less than 12 on
# large (one pair each, with the smaller SQLite caches), its time cost not settled at load 5-10
IN_FLIGHT_BYTES = 12 << 20
# what a file costs in flight beyond its bytes (its path, the pending record, the bytes object,
# later its entry): counted against the budget, so 200,000 tiny files are never all read ahead
# of the pool (they were: 13 MB of records for 1.5 MB of data)
FILE_OVERHEAD = 512
# at most this much text wanting later variants is compressed before live instead (~10 ms)
LATER_NOW_BYTES = 1 << 20
# live first, a deploy's new text gets its gzip in the pool while the new compressible bytes
# so far are at most this (isal: ~3 ms a MiB); past it a blob is stored identity only and its
# gzip and brotli are made after live (encode.gzip_undecided): medium's 69 MB of text cost
# ~177 ms of isal before live, and a deploy that big is served identity for a few seconds
GZIP_NOW_BYTES = 1 << 20
# what a deploy knows of a stored blob: its variants' sizes, and where they live when packed
Known = tuple[dict[str, int], dict[str, str] | None]
CHUNK = 1 << 20
STREAM_COST = 4 << 20  # what a large file being compressed in the pool counts in flight
CONFIG_FILES = ("_headers", "_redirects", "pushsite.toml")
_CONFIG_ENDS = tuple("/" + name for name in CONFIG_FILES)  # in a folder: basename's test
CONFIG_MAX = 1 << 20


class Log(Protocol):
    """What the deployer needs of a deployment's log (logs.DeployLog provides it)."""

    def info(self, stage: str, message: str, **fields: object) -> None: ...

    def warning(self, stage: str, message: str, **fields: object) -> None: ...


class Readable(Protocol):
    """A large file's bytes as a driver hands them on: a bundle member (BundleReader), a git
    blob (gitcommit.BlobStream), an open file."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass
class Counters:
    files: int = 0
    bytes_in: int = 0
    bytes_stored: int = 0
    blobs_new: int = 0
    blobs_reused: int = 0
    carried: int = 0  # files a push carried over from the previous manifest, unread

    def describe(self) -> str:
        carried = f"{self.carried} carried over, " if self.carried else ""
        return (f"{self.files} files ({carried}{human_size(self.bytes_in)} read), "
                f"{self.blobs_new} new blobs, {self.blobs_reused} reused")


@dataclass
class Deadline:
    """When to stop: a monotonic time, and a check for cancellation made every `every` s."""

    at: float | None = None
    cancelled: Callable[[], bool] | None = None
    every: float = 1.0
    _next_check: float = 0.0
    expired: bool = False  # set when the deadline fired (a pack is then sealed, not dropped)

    @classmethod
    def after(cls, seconds: float | None, cancelled: Callable[[], bool] | None = None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds, cancelled)

    def check(self, counters: Counters) -> None:
        now = time.monotonic()
        if self.at is not None and now >= self.at:
            self.expired = True
            raise DeploymentTimedOut(
                f"the deploy ran out of time after {counters.describe()}; the live site is "
                "unchanged, and a retry reuses what was stored"
            )
        if self.cancelled is not None and now >= self._next_check:
            self._next_check = now + self.every
            if self.cancelled():
                raise DeploymentCancelled(
                    f"the deploy was cancelled after {counters.describe()}; the live site is "
                    "unchanged"
                )


class InFlight:
    """A budget of bytes handed to the pool and not yet stored (back-pressure)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, amount: int) -> None:
        with self._cond:
            while self._used and self._used + amount > self._limit:
                self._cond.wait()
            self._used += amount

    def release(self, amount: int) -> None:
        with self._cond:
            self._used -= amount
            self._cond.notify_all()

    def set_limit(self, limit: int) -> None:
        """A new limit; bytes already handed out stay, later acquires wait below it."""
        with self._cond:
            self._limit = limit
            self._cond.notify_all()


@dataclass(frozen=True)
class Target:
    """Where a deploy writes: the store, the blobs it is known to hold already (hash ->
    stored variants, so such a file costs no store query), and, on a store that packs
    (stores/packs.py), the pack every new blob and the manifest go to."""

    store: ObjectStore
    known: Mapping[str, Known] = field(default_factory=dict)
    packer: Packer | None = None
    # the store's optional abilities, asked once per deploy: an isinstance check against a
    # runtime Protocol costs 10-25 us on Python 3.11, a getattr 0.1
    sized: SizedStore | None = field(init=False, default=None)
    spooling: SpoolingStore | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        store = self.store
        object.__setattr__(self, "sized", store if isinstance(store, SizedStore) else None)
        object.__setattr__(self, "spooling",
                           store if isinstance(store, SpoolingStore) else None)


class _PoolMark(threading.local):
    """True on the builder's own pool threads (set as each starts)."""

    inside = False


class _Settled:
    """A claim once settled: what later copies take (an Event per blob held to the end of a
    deploy cost ~500 bytes, 100 MB on 200,000 files)."""

    __slots__ = ("known",)

    def __init__(self, known: Known | None) -> None:
        self.known = known


_ASK_STORE = _Settled(None)


class _Claim:
    """The first copy of a blob in a deploy: later copies wait for it and take what it stored,
    so they never ask the store about a blob that is still being written (a look-up there
    could see some variants and not others: a cold deploy of many identical files failed
    with "object ... is not in the store"). `known` None: ask the store (it had the blob).

    Waiting is on a lock held until settled: every new blob makes one, and a lock costs a
    tenth of a threading.Event (a Condition and its lock), under the GIL, on the pool."""

    __slots__ = ("_unsettled", "known")

    def __init__(self) -> None:
        self._unsettled = threading.Lock()
        self._unsettled.acquire()
        self.known: Known | None = None

    def settle(self, known: Known | None) -> None:
        """Called once (the builder's _settle_claim takes the claim out of its table first)."""
        if self._unsettled.locked():
            self.known = known
            self._unsettled.release()

    def wait(self) -> None:
        with self._unsettled:
            pass


@dataclass(slots=True)
class _Pending:
    path: str
    data: bytes
    git: str = ""


@dataclass
class _Link:
    path: str
    target: str | None
    kind: str


@dataclass
class ManifestBuilder:
    """Collects files into blobs and entries; `finish` turns them into a Manifest.

    Thread use: the driver calls add_* from one thread; the pool only runs `_store_batch`.
    The target may still be opening (`Later.start`): reading and hashing go on meanwhile,
    and `_open()` waits for it where the store is first needed.
    """

    target: Later[Target]
    log: Log
    deadline: Deadline = field(default_factory=Deadline)
    workers: int = 2
    in_flight_bytes: int = IN_FLIGHT_BYTES
    counters: Counters = field(default_factory=Counters)
    progress: Callable[[Counters], None] | None = None
    # the manifest of the deployment this one most likely resembles (its branch's, else
    # production's): a git push carries unchanged files over from it
    previous: Manifest | None = None
    # live first: brotli (encode.LATER) is made after the alias moved (deploy/optimise.py);
    # a store that packs (S3) still makes every variant before, as a Lambda has no "after"
    later: bool = False

    def __post_init__(self) -> None:
        self.entries = Entries()  # spilled to disk past entries.SPILL_FILES files
        self.dirs: set[str] = set()
        self.config_files: dict[str, bytes] = {}
        self._links: list[_Link] = []
        self._batch: list[_Pending] = []
        self._batch_bytes = 0
        self._futures: deque[Future[None]] = deque()
        self._opened: Target | None = None
        self._pool_mark = _PoolMark()
        self._pool = ThreadPoolExecutor(max(self.workers, 1), thread_name_prefix="deploy",
                                        initializer=self._mark_pool_thread)
        # each extra thread holds its own batch and compressor state: more threads than two
        # share the budget, so memory stays flat whatever the worker count
        workers = max(self.workers, 1)
        budget = self.in_flight_bytes * min(workers, 2) // workers
        # while the store is still opening the workers hold their hashed batches: reading
        # runs twice as far ahead, so a slow store (S3: ~0.2 s) overlaps with more of the
        # site's reading and hashing; the peak (late in a big deploy) is unchanged
        opening = not self.target.done()
        self._budget = InFlight(budget * 2 if opening else budget)
        if opening:
            self.target.when_done(lambda: self._budget.set_limit(budget))
        # by raw digest: claims being stored, and on a store that packs those settled too
        self._claimed: dict[bytes, _Claim | _Settled] = {}
        # on a loose store, a settled claim leaves only a key (keyset.py: ~16 bytes, not the
        # ~110 of a dict entry, 22 MB on 200,000 files); a key found is confirmed in the store
        self._asked = KeySet()
        self._packed: dict[str, Known] = {}  # blobs this deploy appended to its pack
        # blobs still wanting a later variant, handed to the optimiser in this process
        self.wanting = handover.Wanting()
        # their brotli made meanwhile from the bytes the pool holds, when a core is idle
        self._early = (early.EarlyBrotli(lambda: self._open().store, early.CAPACITY)
                       if self.later else None)
        self._early_after: early.EarlyBrotli | None = None  # going on, for the after pass
        self._text_new = 0  # new compressible bytes met so far (GZIP_NOW_BYTES)
        self._gzip_left = False  # some blob's gzip is left for the after pass (_later_now)
        self._lock = threading.Lock()

    def without_early(self) -> None:
        """No brotli while reading (early.py), for a deploy whose reading leaves no core idle:
        a git push, where `git cat-file` inflates on one core and the pool hashes and
        compresses on the other. The early thread then took CPU from both, and `finish`
        waited for the brotli of the blob in its hand. Called before the first file."""
        self._early = None

    # feeding -------------------------------------------------------------------------------
    def add_small(self, path: str, data: bytes, git: str = "") -> None:
        """A file read whole; hashed, compressed and stored by the pool."""
        self.deadline.check(self.counters)
        if ((path.endswith(_CONFIG_ENDS) or path in CONFIG_FILES)  # posixpath.basename's
                and len(data) <= CONFIG_MAX):  # answer, without a Python call a file
            self.config_files[path] = data
        self._batch.append(_Pending(path, data, git))
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_FILES:
            self._submit()

    def add_stream(self, path: str, source: Readable, size: int, git: str = "") -> None:
        """A large file: one pass through sha256 into a temporary file; only a blob the
        store lacks is then compressed (from that file), so a redeploy costs a hash."""
        self.deadline.check(self.counters)
        content_type = encode.media_type(path)
        digest = hashlib.sha256()
        outputs = {"": self._temp()}
        total = 0
        sha, claimed, handed = "", False, False
        try:
            while chunk := source.read(CHUNK):
                total += len(chunk)
                digest.update(chunk)
                outputs[""][0].write(chunk)
                self.deadline.check(self.counters)
            sha = digest.hexdigest()
            target = self._open()
            claimed = sha not in target.known and self._claim(sha)
            new = claimed and (target.packer is not None or not target.store.has([blob_key(sha)]))
            if claimed and not new:
                self._settle_claim(sha, None)  # stored before this deploy: ask the store
            if not new:
                encodings, refs = self._known_variants(sha, content_type, total)
                self._record(path, FileEntry(sha, total, content_type, encodings, git, refs),
                             False, 0)
                return
            if total < encode.MIN_COMPRESS_SIZE or not encode.is_compressible(content_type):
                handed = True  # nothing to compress: stored here (a rename, mostly)
                self._store_stream(path, sha, total, content_type, git, outputs)
                return
            # compressed and stored by the pool while this thread reads on: gzip -6 of a
            # 25 MB script is ~0.45 s that reading (gunzip) used to wait for. Counted
            # against the budget like a batch, so a bundle of many large files keeps a
            # few spooled at a time (open files, disk), not all of them
            self._budget.acquire(STREAM_COST)
            future = self._pool.submit(self._store_stream, path, sha, total, content_type, git,
                                       outputs)
            handed = True

            def done(future: Future[None]) -> None:
                self._budget.release(STREAM_COST)
                if future.cancelled():
                    self._drop_stream(sha, outputs)

            future.add_done_callback(done)
            self._futures.append(future)
        finally:
            if not handed:
                self._drop_stream(sha if claimed else "", outputs)

    def _store_stream(self, path: str, sha: str, total: int, content_type: str, git: str,
                      outputs: dict[str, tuple[BinaryIO, Path | None]]) -> None:
        """A new large blob (add_stream): its variants from the spooled identity, stored."""
        try:
            deferring = self._deferring(self._open())
            fast = encode.is_fast(content_type, deferring)
            compress = (total >= encode.MIN_COMPRESS_SIZE
                        and encode.is_compressible(content_type))
            later = compress and deferring and not self._gzip_now(total)
            if compress and not later:
                outputs["gzip"] = self._temp()  # discarded in _drop_stream
                if not deferring:
                    outputs["br"] = self._temp()
                self._compress_file(outputs, content_type, fast)
            sizes = {enc: handle.tell() for enc, (handle, _) in outputs.items()}
            encodings = {enc: n for enc, n in sizes.items()
                         if enc and encode.worth_keeping(n, total)}
            keys = {enc: blob_key(sha, enc) for enc in ("", *encodings)}
            if fast and "gzip" in keys:
                keys["gzip"] = fast_gzip_key(sha)
            adopted = {enc: self._adopt(key, outputs[enc], content_type, enc, sha)
                       for enc, key in keys.items()}
            if fast and "gzip" in keys:
                adopted["gzip"] = keys["gzip"]  # the entry names it (a loose store's key)
            self._record(path, self._new_entry(sha, total, content_type, encodings, git, adopted),
                         True, stored=sum(sizes[e] for e in ("", *encodings)), gzip_later=later)
        finally:
            self._drop_stream(sha, outputs)

    def _drop_stream(self, sha: str, outputs: dict[str, tuple[BinaryIO, Path | None]]) -> None:
        """Settle a large blob's claim (a no-op once settled with what was stored; else
        copies ask the store) and remove its spool files (those adopted are gone already)."""
        if sha:
            self._settle_claim(sha, None)
        for handle, tmp in outputs.values():
            handle.close()
            _discard(tmp)

    def _compress_file(self, variants: dict[str, tuple[BinaryIO, Path | None]],
                       content_type: str, fast: bool) -> None:
        """Write the gzip and brotli variants of the spooled identity, chunk by chunk."""
        identity = variants[""][0]
        brotli_out = variants["br"][0] if "br" in variants else None
        compressor = encode.StreamCompressor(content_type, brotli_too=brotli_out is not None,
                                             fast=fast)
        identity.seek(0)
        while chunk := identity.read(CHUNK):  # on a pool thread: the reader checks the deadline
            gz, br = compressor.feed(chunk)
            variants["gzip"][0].write(gz)
            if brotli_out is not None:
                brotli_out.write(br)
        gz, br = compressor.finish()
        variants["gzip"][0].write(gz)
        if brotli_out is not None:
            brotli_out.write(br)

    def add_existing(self, path: str, entry: FileEntry) -> None:
        """A file whose blob is known to be stored already (an unchanged git blob)."""
        self._open()  # whether the table may spill (a pack's refs are renamed in place)
        self._want(entry, False, False)
        with self._lock:
            self.entries[path] = entry
            self.counters.files += 1
            self.counters.blobs_reused += 1
            self.counters.carried += 1

    def add_link(self, path: str, target: str | None, kind: str) -> None:
        """A link: published as its target's entry when that is a regular file, after the end."""
        self._links.append(_Link(path, target, kind))

    def add_dir(self, path: str) -> None:
        self.dirs.add(path)

    # the pool ------------------------------------------------------------------------------
    def _submit(self) -> None:
        if not self._batch:
            return
        batch, size = self._batch, self._batch_bytes + FILE_OVERHEAD * len(self._batch)
        self._batch, self._batch_bytes = [], 0
        self._budget.acquire(size)
        future = self._pool.submit(self._store_batch, batch)
        future.add_done_callback(lambda _: self._budget.release(size))
        self._futures.append(future)
        while self._futures and self._futures[0].done():
            self._futures.popleft().result()

    def _store_batch(self, batch: list[_Pending]) -> None:
        hashes = [hashlib.sha256(item.data).hexdigest() for item in batch]
        target = self._open()
        known, packer = target.known, target.packer
        unknown = [h for h in hashes if h not in known]
        present = set()
        if unknown and packer is None:
            present = target.store.has(blob_key(h) for h in unknown)
        present.update(blob_key(h) for h in hashes if h in known)
        for item, sha in zip(batch, hashes, strict=True):
            content_type = encode.media_type(item.path)
            key = blob_key(sha)
            new = key not in present and self._claim(sha)
            if not new:
                encodings, refs = self._known_variants(sha, content_type, len(item.data))
                self._record(item.path, FileEntry(sha, len(item.data), content_type, encodings,
                                                  item.git, refs), False, 0)
                continue
            try:
                deferring = self._deferring(target)
                size = len(item.data)
                later = (deferring and size >= encode.MIN_COMPRESS_SIZE
                         and encode.is_compressible(content_type) and not self._gzip_now(size))
                variants = {"": item.data, **({} if later else encode.variants(
                    item.data, content_type, later=deferring))}
                meta = {"content-type": content_type, "sha256": sha}
                added: dict[str, str | None] = {}
                for enc, blob in variants.items():
                    if packer is not None:
                        added[enc] = packer.add(blob_key(sha, enc), blob)
                    elif enc == "gzip" and encode.is_fast(content_type, deferring):
                        key = added[enc] = fast_gzip_key(sha)  # the entry names it
                        target.store.put(key, blob, meta | {"content-encoding": enc})
                    else:
                        target.store.put(blob_key(sha, enc), blob,
                                         meta | {"content-encoding": enc} if enc else meta)
                encodings = {enc: len(blob) for enc, blob in variants.items() if enc}
                entry = self._new_entry(sha, len(item.data), content_type, encodings, item.git,
                                        added)
                if self._early is not None and packer is None:
                    if later:  # its gzip and brotli, when a core is idle (early.py)
                        self._early.offer(sha, item.data, content_type, fresh=True)
                    elif "br" not in encodings and "gzip" in encodings:
                        self._early.offer(sha, item.data, content_type)
            finally:
                self._settle_claim(sha, None)  # no-op once _new_entry settled it
            self._record(item.path, entry, True, sum(map(len, variants.values())), later)

    def _open(self) -> Target:
        """The target, waiting while it is still opening; raises what opening it raised."""
        opened = self._opened
        if opened is None:
            opened = self._opened = self.target.get()
            self.entries.spill = opened.packer is None
        return opened

    def _gzip_now(self, size: int) -> bool:
        """Whether a new compressible blob of `size` bytes gets its gzip in the pool: while
        the deploy's new compressible bytes, this one's with them, are at most
        GZIP_NOW_BYTES; else it is stored identity only, its gzip left for after (a small
        deploy never gets there: its variants are all made before live, as before)."""
        with self._lock:
            self._text_new += size
            return self._text_new <= GZIP_NOW_BYTES

    def _deferring(self, target: Target) -> bool:
        """Whether the later variants wait until after the alias moved (see `later`)."""
        return self.later and target.packer is None

    def _mark_pool_thread(self) -> None:
        self._pool_mark.inside = True

    def _new_entry(self, sha: str, size: int, content_type: str, encodings: dict[str, int],
                   git: str, refs: dict[str, str | None]) -> FileEntry:
        """The entry of a blob this deploy stored; remembered when it went into the pack, and
        handed to the copies of it that wait for this first one (_Claim)."""
        packed = {enc: ref for enc, ref in refs.items() if ref} or None
        if packed is not None and self._open().packer is not None:
            with self._lock:
                self._packed[sha] = (encodings, packed)
        self._settle_claim(sha, (encodings, packed))  # copied by whoever takes it
        return FileEntry(sha, size, content_type, encodings, git, packed)

    def _known_variants(self, sha: str, content_type: str, size: int) -> Known:
        """The variants an already stored blob has (looked up, since a manifest needs sizes),
        and where they are when packed."""
        target = self._open()
        if sha in target.known:
            encodings, refs = target.known[sha]
            return dict(encodings), refs
        with self._lock:
            claim = self._claimed.get(bytes.fromhex(sha))
        if claim is not None:  # a first copy in this deploy: what it stored, once stored
            if isinstance(claim, _Claim):
                claim.wait()
            if claim.known is not None:
                encodings, refs = claim.known
                return dict(encodings), refs
        if target.packer is not None:  # stored by this deploy; finish() fills in what is late
            with self._lock:
                return self._packed.get(sha, ({}, None))
        if size < encode.MIN_COMPRESS_SIZE or not encode.is_compressible(content_type):
            return {}, None
        keys = {enc: blob_key(sha, enc) for enc in ("gzip", "br")}
        fast = fast_gzip_key(sha) if encode.is_asset(content_type) else None
        present = target.store.has([*keys.values(), *([fast] if fast else [])])
        refs = None
        if fast in present and keys["gzip"] not in present:  # its final gzip is not made yet
            keys["gzip"] = fast
            refs = {"gzip": fast}
        sized = target.sized
        out = {}
        for enc, key in keys.items():
            if key in present:
                out[enc] = sized.size(key) if sized else len(target.store.get(key))
        return out, refs if "gzip" in out else None

    def _claim(self, sha: str) -> bool:
        """True for the first copy of a blob in this deploy: it stores the blob, then settles
        the claim (always, even when storing fails) so later copies stop waiting. Nothing
        waits while holding an unsettled claim, so waiting never deadlocks."""
        digest = bytes.fromhex(sha)
        with self._lock:
            if digest in self._claimed:
                return False
            maybe = _key(digest) in self._asked
        # a key of a settled claim: stored by its first copy (the store says so exactly), or
        # once in 2**64 / n another blob's key
        if maybe and self._open().store.has([blob_key(sha)]):
            return False
        with self._lock:
            if digest in self._claimed:
                return False
            self._claimed[digest] = _Claim()
            return True

    def _settle_claim(self, sha: str, known: Known | None) -> None:
        digest = bytes.fromhex(sha) if sha else b""
        with self._lock:
            claim = self._claimed.get(digest)
            if isinstance(claim, _Claim):  # the first settle wins, as Claim.settle's
                # a loose store answers for what it holds (has() sees buffered puts): later
                # copies ask it, and the deploy keeps no variants per blob to the end
                if self._opened is not None and self._opened.packer is None:
                    del self._claimed[digest]
                    self._asked.add(_key(digest))
                else:
                    self._claimed[digest] = _ASK_STORE if known is None else _Settled(known)
        if isinstance(claim, _Claim):
            claim.settle(known)

    def _want(self, entry: FileEntry, new: bool, gzip_later: bool) -> None:
        """Put a blob on the list of those wanting a later variant (handover.py) when it
        does: one whose gzip was left for after (`gzip_later`), one met again without gzip
        that may never have been tried (encode.gzip_undecided: a base still pending, a
        deployment rolled back before its after pass), one lacking brotli or served a quick
        gzip (encode.wants_later)."""
        if not self.later:
            return
        if gzip_later or (not new and encode.gzip_undecided(entry.encodings, entry.size,
                                                            entry.type)):
            self.wanting.add(entry.hash, entry.size, entry.type, gzip=True)
        elif encode.wants_later(entry.encodings, entry.refs):  # (reused: rare)
            self.wanting.add(entry.hash, entry.size, entry.type)

    def _record(self, path: str, entry: FileEntry, new: bool, stored: int,
                gzip_later: bool = False) -> None:
        self._want(entry, new, gzip_later)
        with self._lock:
            self.entries[path] = entry
            self.counters.files += 1
            self.counters.bytes_in += entry.size
            self.counters.bytes_stored += stored
            if new:
                self.counters.blobs_new += 1
            else:
                self.counters.blobs_reused += 1
        if self.progress is not None:
            self.progress(self.counters)

    def _temp(self) -> tuple[BinaryIO, Path | None]:
        """A spool file: in the store's own folder when it has one (renamed into place, no
        copy), else anonymous, as while the store is still opening (never wait for it)."""
        if not self.target.done():
            return tempfile.TemporaryFile(), None
        spooling = self._open().spooling
        if spooling is not None:
            handle, path = spooling.temp_file()
            return handle, path
        return tempfile.TemporaryFile(), None

    def _adopt(self, key: str, output: tuple[BinaryIO, Path | None], content_type: str, enc: str,
               sha: str) -> str | None:
        """Store a spooled variant; its ref when it went into the pack."""
        handle, tmp = output
        handle.flush()
        size = handle.tell()
        handle.seek(0)
        target = self._open()
        if target.packer is not None:
            return target.packer.add_stream(key, handle, size)
        if tmp is not None and target.spooling is not None:
            target.spooling.adopt_file(key, tmp)
            return None
        meta = {"content-type": content_type, "sha256": sha}
        if enc:
            meta["content-encoding"] = enc
        target.store.put_stream(key, handle, size, meta)
        return None

    # finishing -----------------------------------------------------------------------------
    def drain(self) -> None:
        """Wait for every batch; raises the first error a worker met."""
        self._submit()
        try:
            while self._futures:
                self._futures.popleft().result()
                self.deadline.check(self.counters)
        except BaseException:
            self.abort()
            raise
        self._open().store.flush()

    def abort(self) -> None:
        """Stop the pool; a pack is sealed for the retry when time ran out, else dropped."""
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._early is not None:
            self._early.stop()  # what it stored is unreferenced, reused by a retry
        try:
            packer = self._open().packer
        except Exception:  # a store that failed to open has no pack; its error is reported
            return
        if packer is None:
            return
        if self.deadline.expired:
            with contextlib.suppress(Exception):  # the timeout is what gets reported
                packer.close(None)
        else:
            packer.abort()

    def finish(self, deployment_id: str, site: str, commit: str, created: float,
               publish: str | None = None, exclude: tuple[str, ...] = (),
               strip_top: bool = True) -> Manifest:
        """Resolve links, strip the top folder, apply publish/exclude, parse the rules.

        `strip_top` is for bundles, which wrap the site in one folder; a git tree is the
        site itself.
        """
        self.drain()
        self._pool.shutdown()
        target = self._open()
        made_now = self._later_now(target)
        self._fill_late_refs()
        self._resolve_links()
        config = dict(self.config_files)
        top = None
        if strip_top:
            top = common_top_folder(
                itertools.chain(self.entries.paths(), (ln.path for ln in self._links)),
                self.dirs)
        if top is not None:
            config = {p[len(top) + 1:]: d for p, d in config.items() if p.startswith(top + "/")}
        settings = None
        if "pushsite.toml" in config:  # siteconfig (tomllib, rules) only for a site that has one
            from pushsite.deploy.siteconfig import parse_pushsite_toml

            settings = parse_pushsite_toml(config["pushsite.toml"])
        publish = publish or (settings.publish if settings else None)
        exclude = tuple(exclude) + (settings.exclude if settings else ())
        prefix = (top + "/" if top else "") + (publish.strip("/") + "/" if publish else "")
        if publish:
            cut = len(publish.strip("/")) + 1
            config = {p[cut:]: d for p, d in config.items()
                      if p.startswith(publish.strip("/") + "/")}

        def published_path(full: str) -> str | None:
            """The path a file is published at, or None (stripping a common prefix keeps
            the sorted order)."""
            if not full.startswith(prefix):
                return None
            path = full[len(prefix):]
            if (is_published(path) and path not in CONFIG_FILES
                    and not (exclude and any(fnmatch.fnmatchcase(path, p) for p in exclude))):
                return path
            return None

        def published() -> Iterator[tuple[str, FileEntry]]:
            """(path, entry) of every published file, sorted by path."""
            for full, entry in self.entries.sorted_items():
                path = published_path(full)
                if path is not None:
                    if made_now and entry.hash in made_now:
                        entry = _with_variants(entry, made_now[entry.hash])
                    yield path, entry

        def published_rows() -> Iterator[tuple[str, str]]:
            """(path, entry row as JSON) of every published file, sorted by path: a spilled
            table's text as it is (a third of streaming a 35,000-file manifest was parsing
            each row and encoding it again)."""
            for full, row in self.entries.sorted_rows():
                path = published_path(full)
                if path is not None:
                    if made_now and row[2:66] in made_now:  # ["<hash>",...
                        entry = FileEntry.from_json(json.loads(row))
                        row = _json_text(_with_variants(entry, made_now[entry.hash]).to_json())
                    yield path, row

        manifest = Manifest(deployment_id, site, created, {}, commit=commit)
        manifest.headers, manifest.redirects = _parse_rules(config)
        if self.entries.spilled:  # a big site: streamed to the store, never held whole
            manifest = self._stream_manifest(target, manifest, published_rows())
        else:
            self._store_manifest(target, manifest, dict(published()))
        if not manifest.files:
            if publish:
                raise SiteConfigError(
                    f"pushsite.toml: the publish folder {publish!r} holds no file")
            raise BundleRejected("the bundle has no publishable file (after leaving out "
                                 "dotfiles, excludes and the publish folder's rules)")
        self.entries.close()
        self.settings = settings
        if manifest.pending:  # a JS or CSS file given br before live may still want its gzip
            done = {sha for sha, _, content_type, fresh in self.wanting
                    if fresh and not self._gzip_left or sha in made_now
                    and (not encode.is_asset(content_type) or "gzip" in made_now[sha])}
            rest = self.wanting.without(done)
            rest.early = self._early_after
            handover.leave(deployment_id, rest)
        return manifest

    def _later_now(self, target: Target) -> dict[str, dict[str, int]]:
        """The later variants made before live: what the early thread made meanwhile
        (early.py), and the rest here (brotli, and a JS or CSS file's final gzip in place
        of its quick one) when it is little (at most LATER_NOW_BYTES: a
        one-file change, the tail of a small site), a few ms of brotli where making them
        after costs a pending marker, a queue message and a rewrite of the manifest (and
        of a big site's index: ~0.5 s on 35,000 files). Returns hash -> the blob's
        variants with them; every one is stored and flushed. When the rest is left for
        after, none: the early thread goes on with its queue (early.close_offers) and is
        handed to the after pass with the whole list (handover.py), which stops it and
        lists what it made with the rest (listing them at live cost a flush of the store
        before live, ~8 ms on small, for variants the after pass lists moments later)."""
        thread = self._early
        made_early = thread.close_offers() if thread is not None else {}
        if not self._deferring(target) or not self.wanting:
            if thread is not None:
                thread.stop()
            return {}
        todo, finals, fresh, total = self._later_todo(made_early)
        if total > LATER_NOW_BYTES:  # left for after, the thread still going
            self._early_after = thread
            self._gzip_left = bool(fresh)
            if made_early:
                self.log.info("optimise", f"{len(made_early)} brotli variants made while "
                              "reading; listed after live with the rest",
                              early=len(made_early))
            return {}
        held: dict[str, bytes] = {}
        if thread is not None:  # made here, with the bytes it still holds
            made_early, held = thread.stop()
            todo, finals, fresh, _ = self._later_todo(made_early)
        made = {sha: {"br": size} for sha, size in made_early.items()}
        for sha, content_type in (todo | finals | fresh).items():
            data = held.get(sha)
            if data is None:
                data = target.store.get(blob_key(sha))
            if sha in fresh:  # its final gzip, and brotli when that was worth keeping
                variants = encode.variants(data, content_type)
            else:
                variants = encode.later_variants(data) if sha in todo else {}
            if sha in finals:
                final = encode.gzip_bytes(data, content_type)
                if encode.worth_keeping(len(final), len(data)):
                    variants["gzip"] = final
            for enc, blob in variants.items():
                target.store.put(blob_key(sha, enc), blob, {
                    "content-type": content_type, "sha256": sha, "content-encoding": enc})
                made.setdefault(sha, {})[enc] = len(blob)
        if made:
            target.store.flush()
        left = sum(1 for sha in todo if "br" not in made.get(sha, ()))
        left += sum(1 for sha in finals if "gzip" not in made.get(sha, ()))
        early_note = f"{len(made_early)} while reading, {len(made) - len(made_early)} at the end"
        if not left:  # the after pass logs the same word when it ends
            self.log.info("optimise", f"optimised: {len(made)} brotli variants made before "
                          f"live ({early_note})", early=len(made_early), blobs=len(made))
        elif made:
            self.log.info("optimise", f"{len(made)} brotli variants made before live "
                          f"({early_note}), {left} left for after", early=len(made_early),
                          blobs=len(made), left=left)
        return made

    def _later_todo(self, made: Container[str]
                    ) -> tuple[dict[str, str], dict[str, str], dict[str, str], int]:
        """(hash -> media type) of the blobs still wanting brotli (not in `made`), of the
        JS and CSS files wanting their final gzip, of those stored identity only (their
        gzip to try: GZIP_NOW_BYTES, encode.gzip_undecided), and the bytes of all three."""
        todo: dict[str, str] = {}  # wanting brotli
        finals: dict[str, str] = {}  # JS and CSS: wanting their final gzip (encode.is_fast)
        fresh: dict[str, str] = {}  # wanting gzip, then brotli
        total = 0
        for sha, size, content_type, gzip in self.wanting:
            if gzip or sha in fresh:
                if sha not in fresh:
                    fresh[sha] = content_type
                    total += size
                continue
            if encode.is_asset(content_type) and sha not in finals:
                finals[sha] = content_type
                total += size
            if sha not in made and sha not in todo:
                todo[sha] = content_type
                total += size
        for sha in fresh:  # another copy met with a gzip (rare): made whole, as a fresh one
            todo.pop(sha, None)
            finals.pop(sha, None)
        return todo, finals, fresh, total

    def _store_manifest(self, target: Target, manifest: Manifest,
                        files: dict[str, FileEntry]) -> None:
        """A manifest held whole (every site on a store that packs; small sites)."""
        if not files:
            return
        manifest.files = files
        if target.packer is not None:
            _rename_refs(files.values(), target.packer.pending, target.packer.key)
        deployment_id = manifest.deployment_id
        wanted = self._left_fresh()
        if self._deferring(target):
            for entry in files.values():
                wanted |= encode.wanted_later(entry.encodings, entry.refs)
                if len(wanted) == len(encode.PENDING):
                    break
        if wanted:
            manifest.pending = encode.pending_of(wanted)
            target.store.put(pending_key(deployment_id), deployment_id.encode())
        manifest.not_found = "404.html" if "404.html" in files else None
        body = manifest.to_bytes()
        store_index(target.store, manifest)  # before the manifest: it is what makes it ready
        if target.packer is not None:
            target.packer.close(body)
        else:
            target.store.put(manifest_key(deployment_id), body,
                             {"content-type": "application/json"})
            target.store.flush()

    def _stream_manifest(self, target: Target, manifest: Manifest,
                         files: Iterator[tuple[str, str]]) -> Manifest:
        """A big site's manifest, streamed (see stream_manifest)."""
        return stream_manifest(target.store, manifest, files, self._deferring(target),
                               self._left_fresh())

    def _left_fresh(self) -> set[str]:
        """What a manifest's `pending` lists for the blobs whose gzip is left for after (see
        encode.gzip_undecided): its rows cannot say it, the list can."""
        return {"gzip", *encode.LATER} if self._gzip_left else set()

    def _fill_late_refs(self) -> None:
        """A duplicate met while its first copy was still going into the pack got no ref:
        every batch is done now, so it can have its first copy's."""
        if not self._packed:
            return
        entries = self.entries.in_memory()  # a deploy into a pack never spills
        for path, entry in entries.items():
            if entry.refs is None and entry.hash in self._packed:
                encodings, refs = self._packed[entry.hash]
                entries[path] = FileEntry(entry.hash, entry.size, entry.type,
                                               dict(encodings), entry.git, refs)

    def _resolve_links(self) -> None:
        for link in self._links:
            entry = self.entries.get(link.target) if link.target else None
            if entry is None:
                self.log.warning("read", f"skipped {link.kind} {link.path}: its target is not "
                                 "a regular file inside the bundle", target=link.target or "")
                continue
            self.entries[link.path] = entry


_BODY_CHUNK = 256  # rows of a streamed manifest written at once
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps(..., separators=) makes one
# encoder a call: a third of streaming a 35,000-file manifest went there


def _json(value: object) -> bytes:
    return _ENCODER.encode(value).encode()


def _json_text(value: object) -> str:
    return _ENCODER.encode(value)


def _row_wanted_later(row: str, wanted: set[str]) -> None:
    """Add encode.wanted_later of an entry's row as JSON to `wanted`, without parsing it:
    its encodings are the row's first object (hash, size and git are hex or digits, a media
    type has no brace), and a loose store's only refs are quick gzips (fast_gzip_key)."""
    start = row.index("{")
    encodings = row[start:row.index("}", start) + 1]
    if '"gzip"' not in encodings:
        return
    for enc, quoted in _LATER_QUOTED:  # a loop: a generator per row was a third of this
        if quoted not in encodings:
            wanted.add(enc)
    if _FAST_END in row:
        wanted.add("gzip")


_FAST_END = FAST_GZIP + '"'
_LATER_QUOTED = tuple((enc, f'"{enc}"') for enc in encode.LATER)


def stream_manifest(store: ObjectStore, manifest: Manifest,
                    files: Iterator[tuple[str, str]], deferring: bool,
                    pending: Iterable[str] = ()) -> Manifest:
    """Write the manifest and its index by path from sorted rows (path, the entry's row as
    compact JSON: FileEntry.to_json), a row at a time, into
    temporary files streamed to the store; the Manifest returned reads its files from
    that index (pathindex.PathIndex), so memory stays flat in the number of files.

    `deferring`: a row wanting a later variant (encode.LATER) sets `pending` and stores the
    marker; the optimiser passes False when it rewrites the manifest with them. `pending`:
    listed whatever the rows (gzip left for after: encode.gzip_undecided)."""
    deployment_id = manifest.deployment_id
    head = pathindex.head_of(manifest)  # pathindex.write writes it after the rows
    wanted: set[str] = set(pending)
    head["pending"] = encode.pending_of(wanted)
    everything = set(encode.PENDING)
    count = 0
    index = tempfile.TemporaryFile()  # noqa: SIM115 - the returned manifest reads it
    try:
        with tempfile.TemporaryFile() as body, tempfile.TemporaryFile() as spool:
            opening = {k: head[k] for k in ("deployment", "site", "created", "commit")}
            body.write(b'{"version":1,' + _json(opening)[1:-1] + b',"files":{')

            chunk: list[str] = []

            def write_chunk() -> None:
                text = ",".join(chunk)
                body.write((b"," if count > len(chunk) else b"") + text.encode())
                chunk.clear()

            def rows() -> Iterator[tuple[str, str]]:
                nonlocal count
                for path, row in files:
                    chunk.append(pathindex.encode_string(path) + ":" + row)
                    count += 1
                    if len(chunk) >= _BODY_CHUNK:
                        write_chunk()
                    if path == "404.html":
                        head["not_found"] = path
                    if deferring and len(wanted) < len(everything):
                        before = len(wanted)
                        _row_wanted_later(row, wanted)
                        if len(wanted) != before:
                            head["pending"] = encode.pending_of(wanted)
                    yield path, row
                if chunk:
                    write_chunk()

            pathindex.write_encoded(index, head, rows(), spool)
            if not count:
                index.close()
                return manifest
            tail = {k: head[k] for k in ("headers", "redirects", "not_found")}
            if head["pending"]:
                tail["pending"] = head["pending"]
            body.write(b"}," + _json(tail)[1:])
            if head["pending"]:
                store.put(pending_key(deployment_id), deployment_id.encode())
            size = index.tell()
            index.seek(0)
            store.put_stream(pathindex.index_key(deployment_id), index, size,
                             {"content-type": "application/octet-stream"})
            size = body.tell()
            body.seek(0)
            store.put_stream(manifest_key(deployment_id), body, size,
                             {"content-type": "application/json"})
            store.flush()
    except BaseException:
        index.close()
        raise

    def read(start: int, end: int) -> bytes:
        return os.pread(index.fileno(), end - start, start)  # no shared file position

    return pathindex.PathIndex(read).manifest()


def store_index(store: ObjectStore, manifest: Manifest) -> None:
    """Store a big manifest's index by path beside it (pathindex.py), so the edge answers a
    path with one ranged read; none for a small one."""
    if not pathindex.wanted(manifest):
        return
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as spool:
        files = manifest.files
        pathindex.write(out, pathindex.head_of(manifest),
                        ((path, files[path].to_json()) for path in sorted(files)), spool)
        size = out.tell()
        out.seek(0)
        store.put_stream(pathindex.index_key(manifest.deployment_id), out, size,
                         {"content-type": "application/octet-stream"})


def _rename_refs(entries: Iterable[FileEntry], old: str, new: str) -> None:
    """Point refs into the pack's open segment at the name close() stores it under.

    In place: entries of duplicates and links share one refs dict."""
    prefix = old + "@"
    for entry in entries:
        refs = entry.refs or {}
        for encoding, ref in refs.items():
            if ref.startswith(prefix):
                refs[encoding] = new + ref[len(old):]


def _parse_rules(config: dict[str, bytes]) -> tuple[list[dict], list[dict]]:
    if "_headers" not in config and "_redirects" not in config:
        return [], []  # most sites: no need to import their parsers (issue 20)
    from pushsite.deploy.siteconfig import parse_headers, parse_redirects

    headers: list[dict] = []
    redirects: list[dict] = []
    for name, parse, out in (("_headers", parse_headers, headers),
                             ("_redirects", parse_redirects, redirects)):
        if name in config:
            try:
                text = config[name].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SiteConfigError(f"{name} is not valid UTF-8 text ({exc})") from None
            out.extend(parse(text, name))
    return headers, redirects


def _with_variants(entry: FileEntry, variants: dict[str, int]) -> FileEntry:
    """The entry with variants made before live; a final gzip (at its own key) replaces a
    quick one."""
    refs = entry.refs
    if "gzip" in variants and encode.has_fast_gzip(refs):
        refs = {enc: ref for enc, ref in (refs or {}).items() if enc != "gzip"} or None
    return FileEntry(entry.hash, entry.size, entry.type, {**entry.encodings, **variants},
                     entry.git, refs)


def _key(digest: bytes) -> int:
    """A settled claim's key: the digest's first 8 bytes (sha256's are evenly spread)."""
    return int.from_bytes(digest[:8], "big")


def _discard(tmp: Path | None) -> None:
    if tmp is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@dataclass
class BundleOutcome:
    manifest: Manifest
    commit: str
    compressed_bytes: int
    settings: object
