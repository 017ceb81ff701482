"""The after pass's workers (deploy/optimise.py): each takes the next blob itself, never two
blobs above LARGE at once, a worker's error stops the others and is raised, and a
deployment no longer wanted stops them all with nothing left running.

The real local store (a subclass that counts the big blobs being read at once) and real
brotli; `optimise` called with a manifest as the service would.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import brotli
import pytest

from pushsite.deploy import optimise as optimise_module
from pushsite.deploy.optimise import optimise
from pushsite.errors import DeploymentCancelled, DeploymentFailed
from pushsite.model import FileEntry, Manifest, blob_key, pending_key
from pushsite.stores.local import LocalStore
from support.prose import words


class _Counting(LocalStore):
    """The local store, counting the blobs opened as streams (those above LARGE) at once."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.streams = 0
        self.most_streams = 0
        self.reads: list[tuple[int, int]] = []  # each get_many: keys asked, bytes returned
        self._count_lock = threading.Lock()

    def open(self, key: str) -> BinaryIO:
        source = super().open(key)
        with self._count_lock:
            self.streams += 1
            self.most_streams = max(self.most_streams, self.streams)
        close = source.close

        def closed() -> None:
            with self._count_lock:
                self.streams -= 1
            close()

        source.close = closed  # type: ignore[method-assign]
        return source

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        asked = list(keys)
        got = super().get_many(asked)
        with self._count_lock:
            self.reads.append((len(asked), sum(map(len, got.values()))))
        return got


@pytest.fixture
def store(tmp_path: Path) -> Iterator[_Counting]:
    opened = _Counting(tmp_path)
    try:
        yield opened
    finally:
        opened.close()


def _manifest(store: LocalStore, files: dict[str, bytes]) -> Manifest:
    """A live deployment's manifest with every text file's brotli pending (as the deploy
    leaves it live first); the identities stored."""
    entries = {}
    for path, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        store.put(blob_key(sha), data)
        entries[path] = FileEntry(sha, len(data), "text/html; charset=utf-8",
                                  {"gzip": len(data) // 3}, "", None)
    manifest = Manifest("d1", "blog", 0.0, entries)
    manifest.pending = ["br"]
    store.put(pending_key("d1"), b"d1")
    store.flush()
    return manifest


def _no_workers_left() -> bool:
    return not any(t.name.startswith("optimise") for t in threading.enumerate())


def test_every_blob_once_and_never_two_big_ones_at_once(store: _Counting) -> None:
    big = optimise_module.LARGE + 100_000
    files = {f"big{i}.html": b"<p>" + words(70 + i, big) for i in range(4)}
    files.update({f"p{i}.html": b"<p>" + words(i, 3000) for i in range(30)})
    done = optimise(store, _manifest(store, files), wanted=lambda: True, workers=2)
    assert done.blobs == len(files)
    assert store.most_streams == 1 and store.streams == 0
    for data in files.values():
        stored = store.get(blob_key(hashlib.sha256(data).hexdigest(), "br"))
        assert brotli.decompress(stored) == data
    assert not store.has([pending_key("d1")])
    assert _no_workers_left()


def test_small_blobs_are_read_together_within_the_byte_bound(store: _Counting) -> None:
    """Small blobs go to the workers a batch at a time, one store call each, never more
    than READ_BYTES (or READ_COUNT) a call; one pruned meanwhile is left out, the rest made."""
    files = {f"p{i}.html": b"<p>" + words(i, 200 + 37 * i) for i in range(300)}
    files.update({f"m{i}.html": b"<p>" + words(500 + i, 300_000) for i in range(8)})
    manifest = _manifest(store, files)
    pruned = manifest.files["p5.html"].hash
    store.delete([blob_key(pruned)])
    store.flush()
    done = optimise(store, manifest, wanted=lambda: True, workers=2)
    assert done.blobs == len(files) - 1
    assert store.reads and max(asked for asked, _ in store.reads) > 1
    assert all(got <= optimise_module.READ_BYTES and asked <= optimise_module.READ_COUNT
               for asked, got in store.reads)
    assert sum(asked for asked, _ in store.reads) == len(files)  # each asked once
    assert max(got for _, got in store.reads) > 600_000  # two 300 KB ones together
    for data in files.values():
        sha = hashlib.sha256(data).hexdigest()
        if sha != pruned:
            assert brotli.decompress(store.get(blob_key(sha, "br"))) == data
    assert not store.has([blob_key(pruned, "br")])
    assert _no_workers_left()


def test_a_workers_error_stops_the_rest_and_is_raised(store: _Counting) -> None:
    files = {f"p{i}.html": b"<p>" + words(i, 3000) for i in range(40)}
    manifest = _manifest(store, files)
    damaged = manifest.files["p7.html"]
    store.put(blob_key(damaged.hash), b"<p>not what its name says" * 200)  # damaged
    store.flush()
    with pytest.raises(DeploymentFailed, match="does not hash to its name"):
        optimise(store, manifest, wanted=lambda: True, workers=2)
    assert store.has([pending_key("d1")])  # left to resume
    assert _no_workers_left()


def test_a_deployment_no_longer_wanted_stops_every_worker(
        store: _Counting, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimise_module, "CHECK_EVERY", 0.0)
    files = {f"p{i}.html": b"<p>" + words(i, 20_000) for i in range(60)}
    asked = threading.Event()

    def wanted() -> bool:
        asked.set()
        return False

    with pytest.raises(DeploymentCancelled, match="no longer served"):
        optimise(store, _manifest(store, files), wanted=wanted, workers=2)
    assert asked.is_set()
    assert store.has([pending_key("d1")])
    assert _no_workers_left()


def test_the_optimised_line_counts_bytes_in_the_units_used_everywhere_else() -> None:
    """IEC units, as the dashboard, the CLI and the read counter ("44.3 MiB read") show them:
    "42.8 MB" beside "44.3 MiB" read as two different sizes (issue 17)."""
    line = optimise_module.Optimised(blobs=2, bytes_in=3 << 20, bytes_out=1536 << 10,
                                     seconds=0.5).describe()
    assert "(3.0 MiB -> 1.5 MiB)" in line and " MB" not in line
