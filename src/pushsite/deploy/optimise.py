"""Optimise after: the variants a live deployment still lacks (brotli, encode.LATER).

A deployment goes live with identity and gzip (builder.py with `later`); its manifest then
lists `pending` variants and a marker (`pending_key`) is stored beside it. This makes them:

1. the blobs that want a later variant, each once: handed over by the deploy when it ran in
   this process (handover.py), else found in the manifest, those another deployment already
   made only looked up (their sizes go in the manifest);
2. brotli for the rest in a pool of threads (brotli releases the GIL), largest first and
   with no barrier between blobs, asking `wanted()` every CHECK_EVERY s: a deployment
   rolled back, superseded or pruned stops here, and its manifest stays as it was (served
   as it is, resumable later);
3. every new variant is stored and flushed, then the manifest is rewritten with them and
   without `pending` (a big one a row at a time, from its index), then the marker is
   deleted.

The edge offers only variants its manifest lists, and looks for the marker to know when to
read the manifest again, so it never serves a variant before it exists; a crash anywhere
leaves the old manifest or the new one, both true, and the marker for a resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import brotli

from pushsite.deploy import encode
from pushsite.deploy.builder import store_index, stream_manifest
from pushsite.deploy.handover import Wanting
from pushsite.errors import DeploymentCancelled, DeploymentFailed, NotFound
from pushsite.model import FileEntry, Manifest, blob_key, manifest_key, pending_key
from pushsite.pathindex import PathIndex
from pushsite.stores import ObjectStore, SizedStore

IN_FLIGHT = 4  # blobs handed to each worker ahead of time
CHECK_EVERY = 0.25  # seconds between two calls of `wanted()` while compressing
LARGE = 1 << 20  # above this a blob is streamed through the compressor, never held whole
CHUNK = 1 << 20
HAS_BATCH = 1000


@dataclass
class Optimised:
    blobs: int = 0  # variants made here
    reused: int = 0  # variants another deployment had made already
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        return (f"{self.blobs} brotli variants made ({self.bytes_in / 1e6:.1f} MB -> "
                f"{self.bytes_out / 1e6:.1f} MB), {self.reused} already stored, in "
                f"{self.seconds:.2f}s")


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
    # (hash, size, media type) of each blob once; the hash strs are shared by `sizes`
    seen: set[str] = set()
    work: list[tuple[str, int, str]] = []
    found = wanting if wanting is not None else (
        (e.hash, e.size, e.type) for e in manifest.files.values()
        if encode.wants_later(e.encodings))
    for item in found:
        if item[0] not in seen:
            seen.add(item[0])
            work.append(item)
    del seen
    sizes: dict[str, int] = {}
    if wanting is None:
        sizes = _stored_sizes(store, [sha for sha, _, _ in work])
        done.reused = len(sizes)
        work = [item for item in work if item[0] not in sizes]
    work.sort(key=lambda item: -item[1])
    _compress_all(store, work, sizes, done, wanted, workers, wanting is not None,
                  manifest.deployment_id)
    del work
    store.flush()
    if not wanted():
        raise DeploymentCancelled(f"optimising {manifest.deployment_id} stopped: it is no "
                                  "longer served")
    _rewrite(store, manifest, sizes)
    store.flush()
    store.delete([pending_key(manifest.deployment_id)])
    store.flush()
    done.seconds = time.monotonic() - started
    return done


def _compress_all(store: ObjectStore, work: list[tuple[str, int, str]], sizes: dict[str, int],
                  done: Optimised, wanted: Callable[[], bool], workers: int, trusted: bool,
                  deployment_id: str) -> None:
    """Brotli for every blob of `work` (largest first, so the long ones start early and small
    ones fill the gaps), `IN_FLIGHT` blobs at a time per worker, with no barrier between
    batches: each worker takes the next blob as soon as it is free. One blob above LARGE
    at a time: a streaming compressor holds ~12.6 MB (quality 4, a 4 MiB window), and two
    at once were the large corpus's peak (110 MB); small ones fill the other workers."""
    # brotli is all CPU: more threads than cores only hold more buffers (8 workers on 2
    # cores peaked at 181 MB on large, against 111 with 2)
    workers = max(min(workers, os.cpu_count() or 1), 1)
    big = deque(item for item in work if item[1] > LARGE)
    small = deque(item for item in work if item[1] <= LARGE)
    with ThreadPoolExecutor(workers, thread_name_prefix="optimise") as pool:
        running: set[Future[tuple[str, int, int]]] = set()
        streaming: Future[tuple[str, int, int]] | None = None
        checked = time.monotonic()
        try:
            while True:
                while len(running) < IN_FLIGHT * workers:
                    if big and (streaming is None or streaming.done()):
                        streaming = pool.submit(_brotli, store, *big.popleft(), trusted)
                        running.add(streaming)
                    elif small:
                        running.add(pool.submit(_brotli, store, *small.popleft(), trusted))
                    else:
                        break
                if not running:
                    return
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    sha, size_in, size_out = future.result()
                    done.bytes_in += size_in
                    if size_out:
                        sizes[sha] = size_out
                        done.blobs += 1
                        done.bytes_out += size_out
                if time.monotonic() - checked >= CHECK_EVERY:
                    checked = time.monotonic()
                    if not wanted():
                        raise DeploymentCancelled(f"optimising {deployment_id} stopped: it "
                                                  "is no longer served")
        finally:
            for future in running:
                future.cancel()


def _rewrite(store: ObjectStore, manifest: Manifest, sizes: dict[str, int]) -> None:
    """Store the manifest (and its index) with the new variants and without `pending`."""
    manifest.pending = []
    # duplicates held in memory share one encodings dict (streamed rows share nothing: a
    # dict kept per blob was 7 MB on a 35,000-file site)
    shared: dict[str, dict[str, int]] | None = (
        None if isinstance(manifest.files, PathIndex) else {})

    def with_br(entry: FileEntry) -> FileEntry:
        size = sizes.get(entry.hash)
        if size is None or "br" in entry.encodings:
            return entry
        encodings = shared.get(entry.hash) if shared is not None else None
        if encodings is None:
            encodings = {**entry.encodings, "br": size}
            if shared is not None:
                shared[entry.hash] = encodings
        return FileEntry(entry.hash, entry.size, entry.type, encodings, entry.git, entry.refs)

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


def _stored_sizes(store: ObjectStore, hashes: list[str]) -> dict[str, int]:
    """hash -> size of the brotli variants already stored (made by another deployment)."""
    sized = store if isinstance(store, SizedStore) else None
    found: dict[str, int] = {}
    for start in range(0, len(hashes), HAS_BATCH):
        chunk = hashes[start:start + HAS_BATCH]
        present = store.has(blob_key(h, "br") for h in chunk)
        for sha in chunk:
            key = blob_key(sha, "br")
            if key in present:
                found[sha] = sized.size(key) if sized else len(store.get(key))
    return found


def _brotli(store: ObjectStore, sha: str, size: int, content_type: str,
            trusted: bool) -> tuple[str, int, int]:
    """Make and store one blob's brotli variant: (hash, bytes read, bytes stored or 0 when
    it was not worth keeping). `trusted`: stored by this process moments ago, not hashed."""
    meta = {"content-type": content_type, "sha256": sha, "content-encoding": "br"}
    key = blob_key(sha, "br")
    if size <= LARGE:
        try:
            data = store.get(blob_key(sha))
        except NotFound:
            return sha, 0, 0  # pruned meanwhile: the next `wanted()` stops the rest
        if not trusted:
            _check(sha, data)
        compressed = encode.brotli_bytes(data)
        if not encode.worth_keeping(len(compressed), len(data)):
            return sha, len(data), 0
        store.put(key, compressed, meta)
        return sha, len(data), len(compressed)
    compressor = brotli.Compressor(quality=encode.BROTLI_QUALITY)
    with tempfile.TemporaryFile() as spool:
        try:
            source = store.open(blob_key(sha))
        except NotFound:
            return sha, 0, 0
        digest = hashlib.sha256()
        with source:
            while chunk := source.read(CHUNK):
                if not trusted:
                    digest.update(chunk)
                spool.write(compressor.process(chunk))
        spool.write(compressor.finish())
        if not trusted and digest.hexdigest() != sha:
            raise DeploymentFailed(f"blob {sha} does not hash to its name; not compressed")
        stored = spool.tell()
        if not encode.worth_keeping(stored, size):
            return sha, size, 0
        spool.seek(0)
        store.put_stream(key, spool, stored, meta)
        return sha, size, stored


def _check(sha: str, data: bytes) -> None:
    """A variant is made only from the identity its name promises (a damaged blob is for
    `pushsite verify` to report, not to be compressed into a second wrong copy)."""
    if hashlib.sha256(data).hexdigest() != sha:
        raise DeploymentFailed(f"blob {sha} does not hash to its name; not compressed")
