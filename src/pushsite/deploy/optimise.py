"""Optimise after: the variants a live deployment still lacks (brotli, encode.LATER).

A deployment goes live with identity and gzip (builder.py with `later`); its manifest then
lists `pending` variants and a marker (`pending_key`) is stored beside it. This makes them:

1. the blobs that want a later variant, each once; those another deployment already made are
   only looked up (their sizes go in the manifest);
2. brotli for the rest in a pool of threads (brotli releases the GIL), a batch at a time,
   asking `wanted()` between batches: a deployment rolled back, superseded or pruned stops
   here, and its manifest stays as it was (served as it is, resumable later);
3. every new variant is stored and flushed, then the manifest is rewritten with them and
   without `pending`, then the marker is deleted.

The edge offers only variants its manifest lists, and looks for the marker to know when to
read the manifest again, so it never serves a variant before it exists; a crash anywhere
leaves the old manifest or the new one, both true, and the marker for a resume.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import brotli

from pushsite.deploy import encode
from pushsite.deploy.builder import store_index
from pushsite.errors import DeploymentCancelled, DeploymentFailed, NotFound
from pushsite.model import FileEntry, Manifest, blob_key, manifest_key, pending_key
from pushsite.stores import ObjectStore, SizedStore

BATCH_BYTES = 4 << 20
BATCH_FILES = 256
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
             workers: int = 2) -> Optimised:
    """Make the manifest's pending variants, then store it without `pending`.

    Raises DeploymentCancelled when `wanted()` turns false (checked between batches); what
    was stored by then is kept and reused by a resume."""
    started = time.monotonic()
    done = Optimised()
    if not manifest.pending:
        store.delete([pending_key(manifest.deployment_id)])
        return done
    todo: dict[str, FileEntry] = {}
    for entry in manifest.files.values():
        if encode.wants_later(entry.encodings):
            todo.setdefault(entry.hash, entry)
    sizes = _stored_sizes(store, list(todo))
    done.reused = len(sizes)
    with ThreadPoolExecutor(max(workers, 1), thread_name_prefix="optimise") as pool:
        for batch in _batches([todo[h] for h in todo if h not in sizes]):
            if not wanted():
                raise DeploymentCancelled(f"optimising {manifest.deployment_id} stopped: it "
                                          "is no longer served")
            for made in pool.map(lambda entry: _brotli(store, entry), batch):
                sha, size_in, size_out = made
                done.bytes_in += size_in
                if size_out:
                    sizes[sha] = size_out
                    done.blobs += 1
                    done.bytes_out += size_out
    store.flush()
    if not wanted():
        raise DeploymentCancelled(f"optimising {manifest.deployment_id} stopped: it is no "
                                  "longer served")
    shared: dict[str, dict[str, int]] = {}  # duplicates share one encodings dict
    for path, entry in manifest.files.items():
        size = sizes.get(entry.hash)
        if size is None or "br" in entry.encodings:
            continue
        encodings = shared.get(entry.hash)
        if encodings is None:
            encodings = shared[entry.hash] = {**entry.encodings, "br": size}
        manifest.files[path] = FileEntry(entry.hash, entry.size, entry.type, encodings,
                                         entry.git, entry.refs)
    manifest.pending = []
    store_index(store, manifest)
    store.put(manifest_key(manifest.deployment_id), manifest.to_bytes(),
              {"content-type": "application/json"})
    store.flush()
    store.delete([pending_key(manifest.deployment_id)])
    store.flush()
    done.seconds = time.monotonic() - started
    return done


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


def _batches(entries: list[FileEntry]) -> Iterator[list[FileEntry]]:
    batch: list[FileEntry] = []
    size = 0
    for entry in entries:
        batch.append(entry)
        size += entry.size
        if size >= BATCH_BYTES or len(batch) >= BATCH_FILES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _brotli(store: ObjectStore, entry: FileEntry) -> tuple[str, int, int]:
    """Make and store one blob's brotli variant: (hash, bytes read, bytes stored or 0 when
    it was not worth keeping)."""
    meta = {"content-type": entry.type, "sha256": entry.hash, "content-encoding": "br"}
    key = blob_key(entry.hash, "br")
    if entry.size <= LARGE:
        try:
            data = store.get(entry.key(""))
        except NotFound:
            return entry.hash, 0, 0  # pruned meanwhile: the next `wanted()` stops the rest
        _check(entry, data)
        compressed = encode.brotli_bytes(data)
        if not encode.worth_keeping(len(compressed), len(data)):
            return entry.hash, len(data), 0
        store.put(key, compressed, meta)
        return entry.hash, len(data), len(compressed)
    compressor = brotli.Compressor(quality=encode.BROTLI_QUALITY)
    with tempfile.TemporaryFile() as spool:
        try:
            source = store.open(entry.key(""))
        except NotFound:
            return entry.hash, 0, 0
        digest = hashlib.sha256()
        with source:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                spool.write(compressor.process(chunk))
        spool.write(compressor.finish())
        if digest.hexdigest() != entry.hash:
            raise DeploymentFailed(f"blob {entry.hash} does not hash to its name; not compressed")
        size = spool.tell()
        if not encode.worth_keeping(size, entry.size):
            return entry.hash, entry.size, 0
        spool.seek(0)
        store.put_stream(key, spool, size, meta)
        return entry.hash, entry.size, size


def _check(entry: FileEntry, data: bytes) -> None:
    """A variant is made only from the identity its name promises (a damaged blob is for
    `pushsite verify` to report, not to be compressed into a second wrong copy)."""
    if hashlib.sha256(data).hexdigest() != entry.hash:
        raise DeploymentFailed(f"blob {entry.hash} does not hash to its name; not compressed")
