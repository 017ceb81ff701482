"""A manifest's index by path: one path answered with one ranged read, never a whole parse.

A manifest of 200,000 files is ~30 MB of JSON and takes seconds to parse; the edge keeps
none that large in memory, so without this every new path meant parsing it again (on the
event loop, every other site waiting). Beside such a manifest the deployer stores this form
(`index_key`), read with ranged reads:

    MAGIC | head length (8 bytes, big-endian) | head (JSON) | block | block | ...

The head holds the manifest's fields other than its files (site, created, headers,
redirects, not_found, pending), the number of files, and for each block its first path,
offset (from the end of the head) and length. A block is a JSON array of [path, entry row]
pairs (FileEntry.to_json), BLOCK_FILES of them, sorted by path (Python's str order). So a
look-up is a bisect over the head's first paths and one ranged read of a ~20 KB block,
parsed and kept in a small LRU.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import json.encoder as _json_encoder
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, BinaryIO, TypeVar

from pushsite.errors import NotFound
from pushsite.model import FileEntry, Manifest

MAGIC = b"PSIX1\n"
_LENGTH = struct.Struct(">Q")
PREFIX = len(MAGIC) + _LENGTH.size
BLOCK_FILES = 128
HEAD_GUESS = 64 << 10  # the first read: the head of a site of up to ~80,000 files
INDEX_MIN_FILES = 2000  # below this the JSON manifest parses in a few ms: no index
BLOCKS_KEPT = 64
_Row = TypeVar("_Row")
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps(separators=) makes one a call
encode_string = _json_encoder.encode_basestring_ascii  # a str as _ENCODER writes it, in C


def index_key(deployment_id: str) -> str:
    return f"indexes/{deployment_id}"


def wanted(manifest: Manifest) -> bool:
    """Whether a manifest is big enough to get an index beside it."""
    return len(manifest.files) >= INDEX_MIN_FILES


def head_of(manifest: Manifest) -> dict[str, Any]:
    return {"deployment": manifest.deployment_id, "site": manifest.site,
            "created": manifest.created, "commit": manifest.commit,
            "headers": manifest.headers, "redirects": manifest.redirects,
            "not_found": manifest.not_found, "pending": manifest.pending}


def write(out: BinaryIO, head: dict[str, Any], rows: Iterable[tuple[str, list[Any]]],
          spool: BinaryIO) -> None:
    """Write the index of `rows` (sorted by path) to `out`; `spool` (an empty temporary file)
    holds the blocks meanwhile, so memory holds one block, not the site."""
    def blocks() -> Iterator[tuple[str, bytes, int]]:
        for batch in _batches(rows):
            yield batch[0][0], _ENCODER.encode(batch).encode(), len(batch)

    _write(out, head, blocks(), spool)


def write_encoded(out: BinaryIO, head: dict[str, Any], rows: Iterable[tuple[str, str]],
                  spool: BinaryIO) -> None:
    """`write`, for rows already encoded as compact JSON (a spilled table keeps them so):
    each block is put together from the text, nothing parsed or encoded again."""
    def blocks() -> Iterator[tuple[str, bytes, int]]:
        for batch in _batches(rows):
            text = ",".join("[" + encode_string(path) + "," + row + "]" for path, row in batch)
            yield batch[0][0], ("[" + text + "]").encode(), len(batch)

    _write(out, head, blocks(), spool)


def _batches(rows: Iterable[tuple[str, _Row]]) -> Iterator[list[tuple[str, _Row]]]:
    """BLOCK_FILES rows at a time, checked to be in order."""
    batch: list[tuple[str, _Row]] = []
    previous = None
    for path, row in rows:
        if previous is not None and path <= previous:
            raise ValueError(f"index rows out of order: {path!r} after {previous!r}")
        previous = path
        batch.append((path, row))
        if len(batch) >= BLOCK_FILES:
            yield batch
            batch = []
    if batch:
        yield batch


def _write(out: BinaryIO, head: dict[str, Any], blocks: Iterable[tuple[str, bytes, int]],
           spool: BinaryIO) -> None:
    table: list[list[Any]] = []
    offset = 0
    count = 0
    for first, data, files in blocks:
        table.append([first, offset, len(data)])
        spool.write(data)
        offset += len(data)
        count += files
    doc = json.dumps({**head, "files": count, "blocks": table}, separators=(",", ":")).encode()
    out.write(MAGIC + _LENGTH.pack(len(doc)) + doc)
    spool.seek(0)
    while chunk := spool.read(1 << 20):
        out.write(chunk)


def encode(manifest: Manifest) -> bytes:
    """The index of a manifest held whole (tests, a redeploy)."""
    import io

    out, spool = io.BytesIO(), io.BytesIO()
    write(out, head_of(manifest), ((p, manifest.files[p].to_json())
                                   for p in sorted(manifest.files)), spool)
    return out.getvalue()


Read = Callable[[int, int], bytes]  # bytes [start, end) of the stored index


class WouldRead(Exception):
    """A look-up under `cached_only` needed a block not in memory (read it on a thread)."""


class PathIndex(Mapping[str, FileEntry]):
    """The files of an indexed manifest, as a read-only mapping: `in` and `[]` read the one
    block a path can be in (blocking I/O: call from a thread, never the event loop)."""

    def __init__(self, read: Read, first: bytes | None = None) -> None:
        self._read = read
        data = first if first is not None else read(0, HEAD_GUESS)
        if data[:len(MAGIC)] != MAGIC or len(data) < PREFIX:
            raise NotFound("not a path index")
        (length,) = _LENGTH.unpack(data[len(MAGIC):PREFIX])
        if len(data) < PREFIX + length:
            data += read(len(data), PREFIX + length)
        self.head: dict[str, Any] = json.loads(data[PREFIX:PREFIX + length])
        blocks = self.head.pop("blocks")
        self._firsts = [b[0] for b in blocks]
        base = PREFIX + length  # block offsets count from the end of the head
        self._ranges = [(base + b[1], base + b[1] + b[2]) for b in blocks]
        self._count = int(self.head.pop("files"))
        self._kept: OrderedDict[int, dict[str, FileEntry]] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()
        self.head_bytes = PREFIX + length

    @contextlib.contextmanager
    def cached_only(self) -> Iterator[None]:
        """Look-ups in this thread raise WouldRead instead of reading the store: the edge
        routes on the event loop when every block it needs is in memory."""
        self._local.cached_only = True
        try:
            yield
        finally:
            self._local.cached_only = False

    def manifest(self) -> Manifest:
        """A Manifest whose `files` is this index (read lazily)."""
        head = self.head
        return Manifest(head["deployment"], head["site"], head["created"],
                        self,  # type: ignore[arg-type]  # a read-only Mapping of the files
                        headers=head.get("headers") or [],
                        redirects=head.get("redirects") or [],
                        not_found=head.get("not_found"), commit=head.get("commit", ""),
                        pending=list(head.get("pending") or ()))

    def _block(self, path: str) -> dict[str, FileEntry] | None:
        i = bisect.bisect_right(self._firsts, path) - 1
        if i < 0:
            return None
        with self._lock:
            block = self._kept.get(i)
            if block is not None:
                self._kept.move_to_end(i)
                return block
        if getattr(self._local, "cached_only", False):
            raise WouldRead(path)
        start, end = self._ranges[i]
        rows = json.loads(self._read(start, end))
        block = {p: FileEntry.from_json(row) for p, row in rows}
        with self._lock:
            self._kept[i] = block
            while len(self._kept) > BLOCKS_KEPT:
                self._kept.popitem(last=False)
        return block

    def __getitem__(self, path: str) -> FileEntry:
        block = self._block(path)
        if block is None or path not in block:
            raise KeyError(path)
        return block[path]

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        block = self._block(path)
        return block is not None and path in block

    def __len__(self) -> int:
        return self._count

    def rows(self) -> Iterator[tuple[str, list[Any]]]:
        """Every (path, entry row), block by block, none kept."""
        for start, end in self._ranges:
            yield from json.loads(self._read(start, end))

    def rows_from(self, path: str) -> Iterator[tuple[str, list[Any]]]:
        """Every (path, entry row) from `path` on (included), starting at the one block it
        can be in: a page of the API's file list reads a block or two, not the whole."""
        first = max(bisect.bisect_right(self._firsts, path) - 1, 0)
        for start, end in self._ranges[first:]:
            for row in json.loads(self._read(start, end)):
                if row[0] >= path:
                    yield row

    def __iter__(self) -> Iterator[str]:
        for start, end in self._ranges:
            for path, _ in json.loads(self._read(start, end)):
                yield path
