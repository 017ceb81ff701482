"""A walked folder packed as a tar.gz stream, for a first `deploy DIR --server`.

Why: a site that holds nothing yet would take every blob raw through the incremental upload
(68 MB for the bench's medium site, hashed once by the client, again by the server's check and
again by the deployer); packed, it is one streamed bundle the server reads as any other (isal
level 0: cheap to make, cheap to inflate). The files go under one top folder, as `git archive
--prefix` makes them, so the server strips it whatever the site's own layout.

The files the hash cache did not know are hashed as they are packed and remembered, so the
next deploy of the folder, an incremental one, reads only what changed since.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
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


def packed_folder(scan: Scan, cache: HashCache | None = None) -> Iterator[bytes]:
    """The scan's files and links as tar.gz chunks, made as they are asked for."""
    gz = isal_zlib.compressobj(0, isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)
    pending = {full for _, full in scan.pending}
    for piece in _tar(scan, cache, pending):
        if out := gz.compress(piece):
            yield out
    yield gz.flush()
    if cache is not None:
        cache.save()


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
