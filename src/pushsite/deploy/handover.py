"""What a live-first deploy hands the optimiser running after it in the same process.

The deployer meets every blob that still wants a later variant (encode.wants_later), or
its gzip (encode.gzip_undecided), while it stores it; the optimiser used to find them
again by reading the whole manifest, asking the store which already had brotli, and
hashing each identity again as it read it back.
A deploy that goes live in this process (a CLI deploy, `serve`'s worker) leaves that list
here under its deployment's id, in ~40 bytes a blob; the optimiser takes it (`take`).
Another process resuming the work (after a crash, from the queue) finds nothing here and
does it the long way, which gives the same result.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from collections.abc import Container, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pushsite.deploy.early import EarlyBrotli

KEPT = 4  # lists left by deploys nobody optimised here (a server running hands it over)


class Wanting:
    """Distinct blobs wanting a later variant: raw digest, size, media type, and whether its
    gzip is still to be tried (stored identity only: encode.gzip_undecided) (thread-safe)."""

    def __init__(self) -> None:
        self._digests = bytearray()
        self._sizes = array("Q")
        self._types = bytearray()  # an index into _type_names (a site uses a few types)
        self._gzip = bytearray()  # 1: its gzip is still to be tried (then its brotli)
        self._type_names: list[str] = []
        self._type_index: dict[str, int] = {}
        self._lock = threading.Lock()
        self.broken = False  # set when a type did not fit: the optimiser then reads the manifest
        # the deploy's early thread, still making the brotli of the blobs it holds: the
        # optimiser stops it and takes what it made and what it still held (early.py)
        self.early: EarlyBrotli | None = None

    def add(self, sha: str, size: int, content_type: str, gzip: bool = False) -> None:
        """Record a blob (call once per blob: the deployer's first copy of it); `gzip`:
        stored without one, tried after (or at the deploy's end when little)."""
        with self._lock:
            index = self._type_index.get(content_type)
            if index is None:
                if len(self._type_names) >= 255:
                    self.broken = True
                    return
                index = self._type_index[content_type] = len(self._type_names)
                self._type_names.append(content_type)
            self._digests += bytes.fromhex(sha)
            self._sizes.append(size)
            self._types.append(index)
            self._gzip.append(gzip)

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[tuple[str, int, str, bool]]:
        """(hash, size, media type, gzip still to try) of each blob, in the order added."""
        names = self._type_names
        for i, size in enumerate(self._sizes):
            yield (self._digests[32 * i:32 * i + 32].hex(), size, names[self._types[i]],
                   bool(self._gzip[i]))

    def wants_gzip(self) -> bool:
        """Whether some blob's gzip is still to be tried."""
        with self._lock:
            return any(self._gzip)

    def without(self, done: Container[str]) -> Wanting:
        """The blobs of this list not in `done` (made before live: deploy/early.py)."""
        rest = Wanting()
        rest.broken = self.broken
        for sha, size, content_type, gzip in self:
            if sha not in done:
                rest.add(sha, size, content_type, gzip)
        return rest


_left: OrderedDict[str, Wanting] = OrderedDict()
_lock = threading.Lock()


def leave(deployment_id: str, wanting: Wanting) -> None:
    """Leave a deployment's list for the optimiser; the oldest go past KEPT (their early
    thread stopped)."""
    gone = []
    with _lock:
        _left[deployment_id] = wanting
        while len(_left) > KEPT:
            gone.append(_left.popitem(last=False)[1])
    _stop(gone)


def take(deployment_id: str) -> Wanting | None:
    """The list a deploy in this process left for this deployment, once; else None (and a
    broken list's early thread stopped: the optimiser reads the manifest)."""
    with _lock:
        wanting = _left.pop(deployment_id, None)
    if wanting is not None and wanting.broken:
        _stop([wanting])
        return None
    return wanting


def stop_threads() -> None:
    """Stop the early threads of the lists left here (each finishes the blob in hand): a
    store is about to close under them. The optimiser taking a list later still gets what
    its thread made; what it held is read back from the store."""
    with _lock:
        left = list(_left.values())
    _stop(left)


def _stop(lists: list[Wanting]) -> None:
    for wanting in lists:
        if wanting.early is not None:
            wanting.early.stop()
