"""The uploaded-list driver: a client's file list, its uploaded blobs and the blobs the
server already held, fed to the deployer like any other source.

A blob the server answered it had is carried over with its stored variants (no read, no
hash); an uploaded one is read from staging and goes through the builder as a folder's file
would, so the site's config files, limits, links and publish folder follow the same rules.
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Callable, Mapping
from typing import BinaryIO

from pushsite.deploy import encode
from pushsite.deploy.builder import CONFIG_FILES, SMALL_FILE, BundleOutcome, ManifestBuilder
from pushsite.deploy.filelist import DIR, LINK, Row
from pushsite.errors import DeploymentFailed
from pushsite.model import FileEntry

# hash -> (media type it was stored as, stored variants, pack refs)
Held = tuple[str, dict[str, int], dict[str, str] | None]


def reusable(held: Held | None, path: str, kind: str | None = None) -> bool:
    """A held blob serves `path` unread unless the path's config must be parsed or its media
    type (`kind`, when the caller has it) wants other variants than the blob was stored with."""
    return (held is not None and posixpath.basename(path) not in CONFIG_FILES
            and _compressible(held[0]) == _compressible(kind or encode.media_type(path)))


@functools.lru_cache(maxsize=256)
def _compressible(media_type: str) -> bool:
    """Asked twice a file of a 1,000-file list (the upload's start and its run), of a few
    media types: cached, it is a dict look-up."""
    return encode.is_compressible(media_type)


def deploy_listed(builder: ManifestBuilder, rows: list[Row], held: Mapping[str, Held],
                  open_blob: Callable[[str], BinaryIO], deployment_id: str, site: str,
                  created: float, strip_top: bool) -> BundleOutcome:
    """Build the manifest the list describes (rows already checked by filelist.check_rows);
    `open_blob(sha256)` reads an uploaded blob (its bytes only; FileNotFoundError if gone)."""
    try:
        for row in rows:
            if row.mode == DIR:
                builder.add_dir(row.path)
                continue
            if row.mode == LINK:
                builder.add_link(row.path, row.target, "symlink")
                continue
            found, kind = held.get(row.sha256), encode.media_type(row.path)
            if found is not None and reusable(found, row.path, kind):
                _, encodings, refs = found
                builder.add_existing(row.path, FileEntry(row.sha256, row.size, kind,
                                                         dict(encodings), "", refs))
            else:
                _feed(builder, row, open_blob)
        manifest = builder.finish(deployment_id, site, "", created, strip_top=strip_top)
    except BaseException:
        builder.abort()
        raise
    return BundleOutcome(manifest, "", 0, getattr(builder, "settings", None))


def _feed(builder: ManifestBuilder, row: Row, open_blob: Callable[[str], BinaryIO]) -> None:
    try:
        handle = open_blob(row.sha256)
    except FileNotFoundError:
        raise DeploymentFailed(f"the uploaded blob of {row.path} ({row.sha256[:12]}) is no "
                               "longer in staging; deploy again") from None
    with handle:
        if row.size <= SMALL_FILE:
            builder.add_small(row.path, handle.read())
        else:
            builder.add_stream(row.path, handle, row.size)
