"""A walked folder packed as a tar.gz stream, for a first `deploy DIR --server`.

Why: a site that holds nothing yet would take every blob raw through the incremental upload
(hashed once by the client, again by the server's check and again by the deployer); packed,
it is one streamed bundle the server reads as any other. The files go under one top folder,
as `git archive --prefix` makes them, so the server strips it whatever the site's own layout.

Compressed or not is measured, not guessed. Compressing (isal level 0, ~4.7:1 on the bench's
medium site) costs ~3 ms of CPU per MiB on the one thread that also reads and sends; it pays
only when sending the bytes it saves would take longer. So each ~MiB of the tar goes as a gzip
member of its own (several members make one valid gzip stream; deploy/bundle.py reads them),
stored (deflate's uncompressed blocks: a copy and a CRC) or compressed, as `_Choice` finds
faster from what this upload measured: how long sends took, and what compressing the probes
(one chunk in 16, always compressed) cost and saved. On loopback or a fast LAN it goes stored
(the bench's medium site: 69 MB sent, the client's pack ~0.2 s where isal's 15 MB took ~0.3 s,
and the server inflates at memcpy speed); on a slow link it turns compressed once the socket's
buffer is full and sends start to wait, a few MiB in (through a proxy throttled to 5, 20 and
100 MB/s: 17.5, 18.2 and 21.8 MB sent, where compressing throughout sent 15.3 MB).

The files the hash cache did not know are hashed as they are packed and remembered, so the
next deploy of the folder, an incremental one, reads only what changed since.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from isal import isal_zlib

from pushsite.deploy.filelist import EXECUTABLE, FILE
from pushsite.errors import BundleRejected

if TYPE_CHECKING:
    from pushsite.deploy.filelist import Scan
    from pushsite.deploy.hashcache import HashCache

TOP = "site"
_CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE


def packed_folder(scan: Scan, cache: HashCache | None = None, *,
                  clock: Callable[[], float] = time.monotonic) -> Iterator[bytes]:
    """The scan's files and links as tar.gz chunks, made as they are asked for: each about
    a MiB of the tar as a gzip member of its own, stored or compressed as `_Choice` finds
    faster to send (`clock` times the sends). The files hashed are remembered in `cache`;
    saving it is the caller's (while the server deploys, not before the body ends)."""
    pending = {full for _, full in scan.pending}
    choice = _Choice(clock)
    for number, piece in enumerate(_gathered(_tar(scan, cache, pending))):
        squeeze = number % _Choice.PROBE_EVERY == 0 or choice.compressing_pays()
        chunk = choice.compressed(piece) if squeeze else _stored(piece)
        began = clock()
        yield chunk
        choice.sent(len(chunk), clock() - began)


class _Choice:
    """Whether a chunk goes sooner compressed than stored, from what this upload measured:
    seconds per byte sending took, seconds per byte compressing took and the share of the
    bytes it saved (the chunks compressed as probes, one in PROBE_EVERY, tell the last two)."""

    PROBE_EVERY = 16

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.wire = self.send_seconds = 0.0
        self.raw = self.squeezed = self.squeeze_seconds = 0.0

    def compressed(self, piece: bytes) -> bytes:
        began = self._clock()
        out = isal_zlib.compress(piece, 0, 16 + isal_zlib.MAX_WBITS)
        self.squeeze_seconds += self._clock() - began
        self.raw += len(piece)
        self.squeezed += len(out)
        return out

    def sent(self, size: int, seconds: float) -> None:
        self.wire += size
        self.send_seconds += seconds

    def compressing_pays(self) -> bool:
        """Sending the bytes compressing saves takes longer than compressing them."""
        if not self.raw or not self.wire:
            return False
        per_byte_sent = self.send_seconds / self.wire
        saved = 1 - self.squeezed / self.raw
        return per_byte_sent * saved > self.squeeze_seconds / self.raw


_GZIP_HEAD = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no time, unknown OS
_STORED_MOST = 0xFFFF  # bytes in one stored deflate block


def _stored(data: bytes) -> bytes:
    """DATA as a gzip member of stored deflate blocks: a copy and a CRC, no compressing."""
    view = memoryview(data)
    parts: list[bytes | memoryview] = [_GZIP_HEAD]
    for start in range(0, len(data), _STORED_MOST):
        block = view[start:start + _STORED_MOST]
        final = start + _STORED_MOST >= len(data)
        parts += (struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF), block)
    if not data:
        parts.append(b"\x01\x00\x00\xff\xff")
    parts.append(struct.pack("<II", isal_zlib.crc32(data), len(data)))
    return b"".join(parts)


def _gathered(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """The tar's pieces joined into about _CHUNK each (a 512-byte header alone would be a
    stored block, an HTTP chunk and a send of its own); at least one, maybe empty."""
    buffer: list[bytes] = []
    size = 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        if size >= _CHUNK:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


def _tar(scan: Scan, cache: HashCache | None, pending: set[str]) -> Iterator[bytes]:
    for row in scan.rows:
        if row.mode not in (FILE, EXECUTABLE):  # a link: stored as one, the server resolves it
            full = os.path.join(scan.folder, row.path)
            info = tarfile.TarInfo(f"{TOP}/{row.path}")
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(full)
            yield _header(info)
    for path, full in scan.files:
        yield from _member(path, full, cache if full in pending else None)
    yield b"\0" * (2 * _BLOCK)


def _member(path: str, full: str, cache: HashCache | None) -> Iterator[bytes]:
    """One file's header, bytes and padding; hashed into `cache` when one is given."""
    try:
        handle = open(full, "rb", buffering=0)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise _changed(path, "disappeared") from None
    with handle:
        opened = os.fstat(handle.fileno())
        info = tarfile.TarInfo(f"{TOP}/{path}")
        info.size, info.mtime = opened.st_size, int(opened.st_mtime)
        info.mode = stat.S_IMODE(opened.st_mode)
        yield _header(info)
        digest = hashlib.sha256() if cache is not None else None
        left = opened.st_size
        while left:
            chunk = handle.read(min(_CHUNK, left))
            if not chunk:
                raise _changed(path, "got shorter")
            if digest is not None:
                digest.update(chunk)
            left -= len(chunk)
            yield chunk
        if (os.fstat(handle.fileno()).st_mtime_ns, handle.read(1)) != (opened.st_mtime_ns, b""):
            raise _changed(path, "was modified")
    if opened.st_size % _BLOCK:
        yield b"\0" * (_BLOCK - opened.st_size % _BLOCK)
    if cache is not None and digest is not None:
        mode = EXECUTABLE if opened.st_mode & stat.S_IXUSR else FILE
        cache.remember(full, opened, (digest.hexdigest(), mode))


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _changed(path: str, what: str) -> BundleRejected:
    return BundleRejected(f"the file {path!r} {what} while the folder was being sent; deploy "
                          "again once nothing is writing to the folder")
