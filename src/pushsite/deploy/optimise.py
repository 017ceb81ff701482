"""Optimise after: the variants a live deployment still lacks (brotli, encode.LATER), the
final gzip of a JS or CSS file served a quick one meanwhile (encode.has_fast_gzip), and on
a big deploy the gzip (then brotli) of the text stored identity only past
builder.GZIP_NOW_BYTES (encode.gzip_undecided: while `pending` lists "gzip", a text row
with no gzip is tried; one not worth keeping stays identity, as before live).

A deployment goes live with identity and gzip (builder.py with `later`; a big one with
identity only for most of its text); its manifest then lists `pending` variants and a
marker (`pending_key`) is stored beside it. This makes them:

1. the blobs that want a later variant, each once: handed over by the deploy when it ran in
   this process (handover.py), else found in the manifest, those another deployment already
   made only looked up (their sizes go in the manifest);
2. brotli (and zlib's gzip for JS and CSS, isal's for other text without one) for the
   rest, from one read of each blob, on worker threads (all release the GIL) that each
   take the next blob, largest first, with no barrier between blobs,
   while the calling thread asks `wanted()` every CHECK_EVERY s: a deployment rolled
   back, superseded or pruned stops here, and its manifest stays as it was (served as it
   is, resumable later);
3. every new variant is stored and flushed, then the manifest is rewritten with them and
   without `pending` (a big one a row at a time, from its index), then the marker is
   deleted. A final gzip goes to its usual key, never over the quick one's
   (model.fast_gzip_key): a key's bytes never change, so an edge holding the old manifest
   serves the quick one whole, and one reading the new manifest the final one.

The edge offers only variants its manifest lists, and looks for the marker to know when to
read the manifest again, so it never serves a variant before it exists; a crash anywhere
leaves the old manifest or the new one, both true, and the marker for a resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import brotli

from pushsite.deploy import encode
from pushsite.deploy.builder import store_index, stream_manifest
from pushsite.deploy.handover import Wanting
from pushsite.errors import DeploymentCancelled, DeploymentFailed, NotFound
from pushsite.limits import human_size
from pushsite.model import FileEntry, Manifest, blob_key, manifest_key, pending_key
from pushsite.pathindex import PathIndex
from pushsite.stores import ObjectStore, SizedStore

CHECK_EVERY = 0.25  # seconds between two calls of `wanted()` while compressing
LARGE = 1 << 20  # above this a blob is streamed through the compressor, never held whole
CHUNK = 1 << 20
HAS_BATCH = 1000
# small blobs a worker takes at once, read with one store call (ManyReader): a lookup per
# blob was ~20% of the after pass's small-blob time on large; bounded by bytes, not count
# (16 a call with no byte bound took large's peak RSS from 88 to 94-100 MB)
READ_BYTES = 1 << 20
READ_COUNT = 64


@dataclass
class Optimised:
    blobs: int = 0  # brotli variants made here
    gzips: int = 0  # final gzips made here (JS and CSS)
    reused: int = 0  # variants another deployment had made already
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        gzips = f", {self.gzips} final gzip variants" if self.gzips else ""
        return (f"{self.blobs} brotli variants made ({human_size(self.bytes_in)} -> "
                f"{human_size(self.bytes_out)}){gzips}, {self.reused} already stored, in "
                f"{self.seconds:.2f}s")


@dataclass
class _Made:
    """What making one blob's variants gave: bytes read, and each stored size (0: none)."""

    sha: str
    read: int = 0
    br: int = 0
    gzip: int = 0


# hash, size, media type, make br, make gzip, fresh (no gzip served yet: brotli is kept
# only with a gzip worth keeping, as encode.variants decides)
_Work = tuple[str, int, str, bool, bool, bool]


@runtime_checkable
class ManyReader(Protocol):
    """A store that reads many small objects in one call (stores/local.py)."""

    def get_many(self, keys: list[str]) -> dict[str, bytes]: ...


def is_pending(store: ObjectStore, deployment_id: str) -> bool:
    """Whether a deployment still waits for its later variants (its marker is stored)."""
    return bool(store.has([pending_key(deployment_id)]))


def optimise(store: ObjectStore, manifest: Manifest, *, wanted: Callable[[], bool],
             workers: int = 2, wanting: Wanting | None = None) -> Optimised:
    """Make the manifest's pending variants, then store it without `pending`.

    `wanting`: the blobs the deploy in this process met still wanting them (handover.py):
    then the manifest is not searched, the store not asked which have brotli already (a
    variant made meanwhile by another deploy is made again, the same bytes), and the
    identities it just stored are not hashed again. A manifest with an index by path
    (`manifest.files` a PathIndex) is rewritten a row at a time, never held whole.

    Raises DeploymentCancelled when `wanted()` turns false (checked between blobs, at most
    every CHECK_EVERY s); what was stored by then is kept and reused by a resume."""
    started = time.monotonic()
    done = Optimised()
    if not manifest.pending:
        store.delete([pending_key(manifest.deployment_id)])
        return done
    # (hash, size, media type, fresh) of each blob once; the hash strs are shared by `sizes`
    seen: set[str] = set()
    work: list[tuple[str, int, str, bool]] = []
    found = wanting if wanting is not None else _found(manifest)
    assets: list[str] = []  # JS and CSS (encode.is_asset, asked once per media type)
    fresh: list[str] = []  # stored identity only: gzip to try (encode.gzip_undecided)
    is_asset: dict[str, bool] = {}
    for item in found:
        if item[0] not in seen:
            seen.add(item[0])
            work.append(item)
            kind = item[2]
            if is_asset.get(kind) is None:
                is_asset[kind] = encode.is_asset(kind)
            if item[3]:
                fresh.append(item[0])
            elif is_asset[kind]:
                assets.append(item[0])
    del seen
    # the deploy's early thread, which went on after live: what it made is stored (it is
    # joined here, before the look-ups below: a fresh blob's gzip and brotli it made are
    # found stored, and before the flush), what it still held is compressed from memory
    made_early: dict[str, int] = {}
    held: dict[str, bytes] = {}
    if wanting is not None and wanting.early is not None:
        made_early, held = wanting.early.stop()
        wanting.early = None
    # brotli stored already: looked up unless the deploy here just handed the list over
    # (then only a JS or CSS file's, which may have had it made before live); a final gzip
    # stored already (another deployment's optimiser made it): looked up for JS and CSS;
    # both for a blob stored identity only (another deployment's after pass made them)
    sizes = _stored_sizes(store, [*(assets if wanting is not None else (
        w[0] for w in work if not w[3])), *fresh], "br")
    gzips = _stored_sizes(store, [*assets, *fresh], "gzip")
    done.reused = len(sizes) + len(gzips)
    todo: list[_Work] = []
    for sha, size, kind, is_fresh in work:
        if is_fresh:  # gzip, then brotli, unless another deployment made them
            make_gzip, make_br = sha not in gzips, sha not in sizes
            if make_gzip or make_br:
                todo.append((sha, size, kind, make_br, make_gzip, True))
            continue
        if sha in made_early and sha not in sizes:
            sizes[sha] = made_early[sha]
            done.blobs += 1
            done.bytes_in += size
            done.bytes_out += made_early[sha]
        make_br = sha not in sizes
        make_gzip = is_asset[kind] and sha not in gzips
        if make_br or make_gzip:
            todo.append((sha, size, kind, make_br, make_gzip, False))
    del work, assets, fresh, made_early
    todo.sort(key=lambda item: -item[1])
    _compress_all(store, todo, sizes, gzips, done, wanted, workers, wanting is not None,
                  manifest.deployment_id, held)
    del todo, held
    store.flush()
    if not wanted():
        raise DeploymentCancelled(f"optimising {manifest.deployment_id} stopped: it is no "
                                  "longer served")
    _rewrite(store, manifest, sizes, gzips)
    store.flush()
    store.delete([pending_key(manifest.deployment_id)])
    store.flush()
    done.seconds = time.monotonic() - started
    return done


def _found(manifest: Manifest) -> Iterator[tuple[str, int, str, bool]]:
    """(hash, size, media type, fresh) of the entries wanting a later variant, when no
    deploy in this process handed them over: those lacking brotli or served a quick gzip,
    and, while `pending` lists "gzip", those with none that may never have been tried
    (encode.gzip_undecided: a deploy past builder.GZIP_NOW_BYTES, resumed after a crash)."""
    undecided = "gzip" in manifest.pending
    for e in manifest.files.values():
        if encode.wants_later(e.encodings, e.refs):
            yield e.hash, e.size, e.type, False
        elif undecided and encode.gzip_undecided(e.encodings, e.size, e.type):
            yield e.hash, e.size, e.type, True


def _compress_all(store: ObjectStore, work: list[_Work], sizes: dict[str, int],
                  gzips: dict[str, int], done: Optimised, wanted: Callable[[], bool],
                  workers: int, trusted: bool, deployment_id: str,
                  held: dict[str, bytes] | None = None) -> None:
    """Brotli (and a final gzip) for every blob of `work`, largest first (the long ones
    start early, small ones fill the gaps), on `workers` threads that each take the next
    blob themselves as soon as they are free: no future, no hand-off through this thread
    per blob (on large's 30,000 blobs that dispatching was 1.9 s of this thread's CPU and
    a context switch each way). One blob above LARGE at a time: a streaming compressor
    holds ~12.6 MB (quality 4, a 4 MiB window), and two at once were the large corpus's
    peak (110 MB); the other workers take small ones meanwhile. This thread asks
    `wanted()` every CHECK_EVERY s; when it turns false the workers finish the blob in
    hand and stop. `held`: hash -> bytes of blobs already in memory (not read again),
    each dropped once taken."""
    # brotli is all CPU: more threads than cores only hold more buffers (8 workers on 2
    # cores peaked at 181 MB on large, against 111 with 2)
    workers = max(min(workers, os.cpu_count() or 1, len(work)), 1)
    todo = _Todo(work)
    results = _Results(sizes, gzips, done)
    threads = [threading.Thread(target=todo.run, args=(store, trusted, results, held or {}),
                                name=f"optimise_{n}", daemon=True) for n in range(workers)]
    for thread in threads:
        thread.start()
    try:
        while not todo.finished.wait(CHECK_EVERY):
            if not wanted():
                raise DeploymentCancelled(f"optimising {deployment_id} stopped: it is no "
                                          "longer served")
    finally:
        todo.stop()
        for thread in threads:
            thread.join()
    if todo.error is not None:
        raise todo.error


class _Results:
    """What the workers made, gathered under one lock."""

    def __init__(self, sizes: dict[str, int], gzips: dict[str, int], done: Optimised) -> None:
        self._sizes, self._gzips, self._done = sizes, gzips, done
        self._lock = threading.Lock()

    def add(self, made: _Made) -> None:
        with self._lock:
            self._done.bytes_in += made.read
            if made.br:
                self._sizes[made.sha] = made.br
                self._done.blobs += 1
                self._done.bytes_out += made.br
            if made.gzip:
                self._gzips[made.sha] = made.gzip
                self._done.gzips += 1


class _Todo:
    """The blobs still to compress, taken by the workers (largest first; one above LARGE
    at a time), and how the work ended: `finished` is set once every worker has left."""

    def __init__(self, work: list[_Work]) -> None:
        self._big = deque(item for item in work if item[1] > LARGE)
        self._small = deque(item for item in work if item[1] <= LARGE)
        self._streaming = False  # a worker holds a big one
        self._stopped = False
        self._cond = threading.Condition()
        self._running = 0
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def run(self, store: ObjectStore, trusted: bool, results: _Results,
            held: dict[str, bytes]) -> None:
        with self._cond:
            self._running += 1
        try:
            while items := self._take():
                if len(items) > 1 or items[0][1] <= LARGE:
                    _small_variants(store, items, trusted, results, held)
                    continue
                try:
                    results.add(_variants(store, *items[0], trusted))
                finally:
                    with self._cond:
                        self._streaming = False
                        self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - raised again by _compress_all
            with self._cond:
                if self.error is None:
                    self.error = exc
                self._stopped = True
                self._cond.notify_all()
        finally:
            with self._cond:
                self._running -= 1
                if not self._running:
                    self.finished.set()

    def _take(self) -> list[_Work]:
        """The next blobs for a free worker: one big one, or small ones up to READ_BYTES
        and READ_COUNT (at least one); none when none is left for it (or the work stopped).
        A worker finding only big ones while one streams waits for it."""
        with self._cond:
            while not self._stopped:
                if self._big and not self._streaming:
                    self._streaming = True
                    return [self._big.popleft()]
                if self._small:
                    taken = [self._small.popleft()]
                    total = taken[0][1]
                    while (self._small and len(taken) < READ_COUNT
                           and total + self._small[0][1] <= READ_BYTES):
                        total += self._small[0][1]
                        taken.append(self._small.popleft())
                    return taken
                if not self._big:
                    return []
                self._cond.wait()
            return []


def _rewrite(store: ObjectStore, manifest: Manifest, sizes: dict[str, int],
             gzips: dict[str, int]) -> None:
    """Store the manifest (and its index) with the new variants and without `pending`: an
    entry's br added, a quick gzip's ref replaced by the final one's size (at its own key)."""
    manifest.pending = []
    # duplicates held in memory share one encodings dict (streamed rows share nothing: a
    # dict kept per blob was 7 MB on a 35,000-file site)
    shared: dict[str, dict[str, int]] | None = (
        None if isinstance(manifest.files, PathIndex) else {})

    def with_br(entry: FileEntry) -> FileEntry:
        had_gzip = "gzip" in entry.encodings
        gzip = (gzips.get(entry.hash) if not had_gzip or encode.has_fast_gzip(entry.refs)
                else None)
        size = sizes.get(entry.hash)  # brotli only beside a gzip (encode.variants)
        add_br = (size is not None and "br" not in entry.encodings
                  and (had_gzip or gzip is not None))
        if not add_br and gzip is None:
            return entry
        refs = entry.refs
        if gzip is not None:
            refs = {enc: ref for enc, ref in (refs or {}).items() if enc != "gzip"} or None
        encodings = shared.get(entry.hash) if shared is not None else None
        if encodings is None:
            encodings = dict(entry.encodings)
            if add_br and size is not None:
                encodings["br"] = size
            if gzip is not None:
                encodings["gzip"] = gzip
            if shared is not None:
                shared[entry.hash] = encodings
        return FileEntry(entry.hash, entry.size, entry.type, encodings, entry.git, refs)

    if isinstance(manifest.files, PathIndex):  # a big site's: a row at a time
        encoder = json.JSONEncoder(separators=(",", ":"))
        rows = ((path, encoder.encode(with_br(FileEntry.from_json(row)).to_json()))
                for path, row in manifest.files.rows())
        stream_manifest(store, manifest, rows, deferring=False)
        return
    for path, entry in manifest.files.items():
        manifest.files[path] = with_br(entry)
    store_index(store, manifest)
    store.put(manifest_key(manifest.deployment_id), manifest.to_bytes(),
              {"content-type": "application/json"})


def _stored_sizes(store: ObjectStore, hashes: list[str], encoding: str) -> dict[str, int]:
    """hash -> size of the variants already stored (made by another deployment)."""
    sized = store if isinstance(store, SizedStore) else None
    found: dict[str, int] = {}
    for start in range(0, len(hashes), HAS_BATCH):
        chunk = hashes[start:start + HAS_BATCH]
        present = store.has(blob_key(h, encoding) for h in chunk)
        for sha in chunk:
            key = blob_key(sha, encoding)
            if key in present:
                found[sha] = sized.size(key) if sized else len(store.get(key))
    return found


def _variants(store: ObjectStore, sha: str, size: int, content_type: str, make_br: bool,
              make_gzip: bool, fresh: bool, trusted: bool) -> _Made:
    """Make and store one blob's brotli and/or final gzip variant (a size of 0: not worth
    keeping, or the blob was pruned meanwhile and the next `wanted()` stops the rest).
    `fresh`: the blob has no gzip yet, and its brotli is kept only with one worth keeping.
    `trusted`: stored by this process moments ago, not hashed."""
    made = _Made(sha)
    if size <= LARGE:
        try:
            data = store.get(blob_key(sha))
        except NotFound:
            return made
        return _from_bytes(store, made, data, content_type, make_br, make_gzip, fresh,
                           trusted)
    compressors: dict[str, brotli.Compressor | encode.GzipStream] = {}
    if make_br:
        compressors["br"] = brotli.Compressor(quality=encode.BROTLI_QUALITY)
    if make_gzip:
        compressors["gzip"] = encode.gzip_stream(content_type)
    with contextlib.ExitStack() as stack:
        spools = {enc: stack.enter_context(tempfile.TemporaryFile()) for enc in compressors}
        try:
            source = store.open(blob_key(sha))
        except NotFound:
            return made
        digest = hashlib.sha256()
        with source:
            while chunk := source.read(CHUNK):
                if not trusted:
                    digest.update(chunk)
                for enc, compressor in compressors.items():
                    spools[enc].write(_feed(compressor, chunk))
        for enc, compressor in compressors.items():
            spools[enc].write(_finish(compressor))
        if not trusted and digest.hexdigest() != sha:
            raise DeploymentFailed(f"blob {sha} does not hash to its name; not compressed")
        made.read = size
        if fresh and "gzip" in spools and not encode.worth_keeping(spools["gzip"].tell(), size):
            return made  # no gzip, so no brotli either (encode.variants)
        for enc, spool in spools.items():
            stored = spool.tell()
            if encode.worth_keeping(stored, size):
                spool.seek(0)
                store.put_stream(blob_key(sha, enc), spool, stored, _meta(sha, content_type, enc))
                setattr(made, enc, stored)
        return made


def _small_variants(store: ObjectStore, items: list[_Work], trusted: bool,
                    results: _Results, held: dict[str, bytes]) -> None:
    """`_variants` for small blobs taken together: from `held` when there (popped: one
    worker takes each), else read with one call where the store can (ManyReader), each
    dropped once its variants are stored."""
    if held:
        unread = []
        for item in items:
            data = held.pop(item[0], None)
            if data is None:
                unread.append(item)
                continue
            sha, _, content_type, make_br, make_gzip, fresh = item
            results.add(_from_bytes(store, _Made(sha), data, content_type, make_br,
                                    make_gzip, fresh, trusted))
            del data
        items = unread
        if not items:
            return
    if len(items) == 1 or not isinstance(store, ManyReader):
        for item in items:
            results.add(_variants(store, *item, trusted))
        return
    held = store.get_many([blob_key(item[0]) for item in items])
    for sha, _, content_type, make_br, make_gzip, fresh in items:
        data = held.pop(blob_key(sha), None)
        if data is None:  # pruned meanwhile: the next `wanted()` stops the rest
            results.add(_Made(sha))
            continue
        results.add(_from_bytes(store, _Made(sha), data, content_type, make_br, make_gzip,
                                fresh, trusted))
        del data


def _from_bytes(store: ObjectStore, made: _Made, data: bytes, content_type: str,
                make_br: bool, make_gzip: bool, fresh: bool, trusted: bool) -> _Made:
    """Make and store a small blob's variants from its bytes (`fresh`: see _variants)."""
    if not trusted:
        _check(made.sha, data)
    made.read = len(data)
    outputs = {}
    if make_gzip:
        outputs["gzip"] = encode.gzip_bytes(data, content_type)
        if fresh and not encode.worth_keeping(len(outputs["gzip"]), len(data)):
            return made  # no gzip, so no brotli either (encode.variants)
    if make_br:
        outputs["br"] = encode.brotli_bytes(data)
    for enc, blob in outputs.items():
        if encode.worth_keeping(len(blob), len(data)):
            store.put(blob_key(made.sha, enc), blob, _meta(made.sha, content_type, enc))
            setattr(made, enc, len(blob))
    return made


def _feed(compressor: brotli.Compressor | encode.GzipStream, chunk: bytes) -> bytes:
    if isinstance(compressor, brotli.Compressor):  # a meta-block per chunk (encode.py)
        out: bytes = compressor.process(chunk) + compressor.flush()
        return out
    return compressor.compress(chunk)


def _finish(compressor: brotli.Compressor | encode.GzipStream) -> bytes:
    if isinstance(compressor, brotli.Compressor):
        out: bytes = compressor.finish()
        return out
    return compressor.flush()


def _meta(sha: str, content_type: str, encoding: str) -> dict[str, str]:
    return {"content-type": content_type, "sha256": sha, "content-encoding": encoding}


def _check(sha: str, data: bytes) -> None:
    """A variant is made only from the identity its name promises (a damaged blob is for
    `pushsite verify` to report, not to be compressed into a second wrong copy)."""
    if hashlib.sha256(data).hexdigest() != sha:
        raise DeploymentFailed(f"blob {sha} does not hash to its name; not compressed")
