"""Media types and the compression policy: which files get gzip and brotli variants, and how.

Levels were chosen by measurement on the medium corpus's 69 MB of text, one core:

    codec          MB/s   output/input        codec         MB/s   output/input
    brotli q2       195   0.181               isal gzip 1    663   0.210
    brotli q3       169   0.176               isal gzip 2    636   0.208
    brotli q4        97   0.166               zlib gzip 6     55   0.176
    brotli q5        58   0.154               sha256        1744

Brotli dominates a cold deploy's CPU; quality 4 is 1.7 times as fast as 5 for 8% larger
files, and still 6% smaller than gzip -6. isal level 2 is the gzip for clients without br.
JavaScript and CSS get zlib's gzip level 6 instead: they are a small share of a site's bytes
(3.7 of 71 MB on medium, 31 of 629 MB on large) but are what every visitor downloads, and on
the benchmark's 200 KB script isal 2 gives 55.7 KB against zlib 6's 41.6 (nginx serves a
`gzip -9` file of 39.0 KB): with the edge serving from memory, bytes on the wire are its cost.
Live first, that harder gzip is made after the alias moved too (searchindex.js alone took
129 ms of medium's time to live): before live every text file gets isal 2, a JS or CSS file's
stored at model.fast_gzip_key and named by its entry's refs; the optimiser then stores zlib 6
at the usual key and rewrites the entry (deploy/optimise.py), so what is served after that is
byte for byte what was served before live-first.
A variant is kept only when it saves at least `MIN_SAVING` of the identity size: serving a
variant that is not smaller only costs a cache entry.
"""

from __future__ import annotations

import functools
import mimetypes
import zlib
from typing import Protocol

import brotli
from isal import isal_zlib

from pushsite.model import FAST_GZIP

GZIP_LEVEL = 2
ASSET_GZIP_LEVEL = 6  # zlib's, for JavaScript and CSS (see above)
_ASSET_TYPES = ("text/javascript", "application/javascript", "text/css")
BROTLI_QUALITY = 4
MIN_COMPRESS_SIZE = 256  # below this the headers of a response outweigh any saving
MIN_SAVING = 0.05

_EXTRA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".htm": "text/html",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".xml": "application/xml",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
    ".ico": "image/vnd.microsoft.icon",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".gz": "application/gzip",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".rss": "application/rss+xml",
    ".atom": "application/atom+xml",
    ".ics": "text/calendar",
    ".csv": "text/csv",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".toml": "application/toml",
    ".py": "text/x-python",
    ".rst": "text/x-rst",
    ".inv": "application/octet-stream",
}

_COMPRESSIBLE_APPLICATION = {
    "application/json",
    "application/manifest+json",
    "application/xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/wasm",
    "application/yaml",
    "application/toml",
    "application/vnd.ms-fontobject",
    "application/x-javascript",
    "application/javascript",
    "image/svg+xml",
    "image/vnd.microsoft.icon",
    "image/x-icon",
    "image/bmp",
    "font/ttf",
    "font/otf",
}


def media_type(path: str) -> str:
    """The Content-Type for a path: with `charset=utf-8` for text, octet-stream if unknown."""
    return _media_type_of_extension(extension(path).lower())


def extension(path: str) -> str:
    """posixpath.splitext(path)[1] in string methods (asked once a file, by the pool):
    from the basename's last dot, unless only dots come before it (".env", "..x")."""
    dot = path.rfind(".")
    start = path.rfind("/") + 1
    if dot <= start or not path[start:dot].strip("."):
        return ""
    return path[dot:]


@functools.lru_cache(maxsize=1024)
def _media_type_of_extension(ext: str) -> str:
    """Cached, so 40,000 manifest entries share a handful of type strings."""
    base = _EXTRA_TYPES.get(ext) or mimetypes.types_map.get(ext) or "application/octet-stream"
    if base.startswith("text/") or base in ("application/json", "application/xml",
                                            "application/manifest+json", "image/svg+xml"):
        return f"{base}; charset=utf-8"
    return base


def is_compressible(content_type: str) -> bool:
    """Text and a few structured binary types compress well; images, video, archives do not."""
    base = content_type.split(";", 1)[0]
    return base.startswith("text/") or base in _COMPRESSIBLE_APPLICATION


def worth_keeping(compressed: int, size: int) -> bool:
    return compressed <= size * (1 - MIN_SAVING)


def is_asset(content_type: str) -> bool:
    """JavaScript and CSS: compressed harder, since every visitor downloads them."""
    return content_type.startswith(_ASSET_TYPES)


def gzip_bytes(data: bytes, content_type: str = "", *, fast: bool = False) -> bytes:
    """A gzip member (with header and CRC) of the data, as browsers expect for gzip;
    `fast`: isal's for every type (a JS or CSS file's final one is made after live)."""
    if is_asset(content_type) and not fast:
        return zlib.compress(data, ASSET_GZIP_LEVEL, wbits=31)
    return isal_zlib.compress(data, GZIP_LEVEL, wbits=31)


def is_fast(content_type: str, later: bool) -> bool:
    """Whether a file's gzip made now is a quick one replaced after live (see above)."""
    return later and is_asset(content_type)


class GzipStream(Protocol):
    """A streaming gzip compressor (zlib's or isal's compressobj)."""

    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self, mode: int = ..., /) -> bytes: ...


def final_gzip_stream() -> GzipStream:
    """The streaming form of a JS or CSS file's final gzip (gzip_bytes' zlib level)."""
    return zlib.compressobj(ASSET_GZIP_LEVEL, zlib.DEFLATED, 31)


def gzip_stream(content_type: str) -> GzipStream:
    """The streaming form of gzip_bytes (zlib's for JS and CSS, isal's for other text)."""
    if is_asset(content_type):
        return final_gzip_stream()
    return isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)


def brotli_bytes(data: bytes) -> bytes:
    compressed: bytes = brotli.compress(data, quality=BROTLI_QUALITY,  # brotli has no types
                                        lgwin=brotli_window(len(data)))
    return compressed


def brotli_window(size: int) -> int:
    """The smallest brotli window (lgwin) that spans `size` bytes, at most the default 22:
    a wider one finds nothing more, but its ring buffer is allocated whole (8 MiB at 22 for
    any input over 64 KiB, against ~2 MiB for a 1 MiB file; the output is the same size)."""
    return max(10, min(22, (size + 15).bit_length()))


def variants(data: bytes, content_type: str, *, later: bool = False) -> dict[str, bytes]:
    """The compressed variants worth keeping for a file's content ("br", "gzip").

    `later`: only those made before the deployment goes live (gzip, isal's: is_fast); the
    ones in LATER, and a JS or CSS file's final gzip, are made after the alias moved
    (deploy/optimise.py)."""
    if len(data) < MIN_COMPRESS_SIZE or not is_compressible(content_type):
        return {}
    out = {}
    gz = gzip_bytes(data, content_type, fast=later)
    if worth_keeping(len(gz), len(data)):
        out["gzip"] = gz
        if not later:
            br = brotli_bytes(data)
            if worth_keeping(len(br), len(data)):
                out["br"] = br
    return out


# Live first: brotli costs 4-7 times gzip's CPU (see above) and only saves bytes, so with
# `later` a deployment goes live with identity and gzip, and these are made after the alias
# moved. A file gets them when its gzip was worth keeping (as `variants` decides).
LATER = ("br",)
# what a manifest may list as `pending`: LATER, and "gzip" while a JS or CSS file is served
# a quick one or text is stored without one (a big deploy: gzip_undecided)
PENDING = ("br", "gzip")


def later_variants(data: bytes) -> dict[str, bytes]:
    """The LATER variants worth keeping of a file whose gzip was (see `variants`)."""
    br = brotli_bytes(data)
    return {"br": br} if worth_keeping(len(br), len(data)) else {}


def wants_later(encodings: dict[str, int], refs: dict[str, str] | None = None) -> bool:
    """Whether a manifest entry with these stored variants (and refs) still lacks one of
    LATER, or is served a quick gzip (model.fast_gzip_key) until its final one is made."""
    if "gzip" not in encodings:
        return False
    for enc in LATER:  # a loop: asked for every file the pool records
        if enc not in encodings:
            return True
    return has_fast_gzip(refs)


def pending_of(wanted: set[str]) -> list[str]:
    """A manifest's `pending`, in PENDING's order, from the variants its entries want."""
    return [enc for enc in PENDING if enc in wanted]


def wanted_later(encodings: dict[str, int], refs: dict[str, str] | None) -> set[str]:
    """The variants an entry waits for (see wants_later): LATER's it lacks, and "gzip"
    while its gzip is a quick one."""
    if "gzip" not in encodings:
        return set()
    wanted = {enc for enc in LATER if enc not in encodings}
    if has_fast_gzip(refs):
        wanted.add("gzip")
    return wanted


def gzip_undecided(encodings: dict[str, int], size: int, content_type: str) -> bool:
    """Whether a blob's gzip may not have been tried yet: a compressible one with none.

    A big live-first deploy stores text past builder.GZIP_NOW_BYTES identity only, and its
    manifest lists "gzip" in `pending` until the after pass made every such gzip (and
    brotli: `variants`). A row cannot tell "not tried yet" from "tried, not worth keeping"
    (MIN_SAVING), so: in a manifest whose `pending` lists "gzip" every such row is tried
    (again) by the after pass; one whose `pending` does not has had them all tried; and a
    deploy meeting such a blob again (carried, held, or stored by a deployment that may
    never have been optimised: rolled back, pruned) tries it again too, before live when
    little (builder.LATER_NOW_BYTES), else after. Not worth keeping is rare for text, and
    the same bytes give the same answer: only some CPU is spent again."""
    return "gzip" not in encodings and size >= MIN_COMPRESS_SIZE and is_compressible(
        content_type)


def has_fast_gzip(refs: dict[str, str] | None) -> bool:
    """Whether an entry's gzip is the quick one made before live (see above)."""
    return bool(refs) and (refs or {}).get("gzip", "").endswith(FAST_GZIP)


class StreamCompressor:
    """gzip and brotli over a stream of chunks, for files too large to hold in memory;
    brotli only when `brotli_too` (live first leaves it for later); `fast`: isal's gzip
    for every type (gzip_bytes)."""

    def __init__(self, content_type: str = "", *, brotli_too: bool = True,
                 fast: bool = False) -> None:
        self._gzip = (zlib.compressobj(ASSET_GZIP_LEVEL, zlib.DEFLATED, 31)
                      if is_asset(content_type) and not fast
                      else isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31))
        self._brotli = brotli.Compressor(quality=BROTLI_QUALITY) if brotli_too else None

    def feed(self, chunk: bytes) -> tuple[bytes, bytes]:
        """Compress a chunk; returns (gzip bytes, brotli bytes) ready to write."""
        # a flush ends brotli's meta-block at each chunk: its buffers grow with the
        # meta-block (~32 MB for a 9.5 MB page, ~16 MB with the flush), and the window
        # still reaches back 4 MiB
        br = b""
        if self._brotli is not None:
            br = self._brotli.process(chunk) + self._brotli.flush()
        return self._gzip.compress(chunk), br

    def finish(self) -> tuple[bytes, bytes]:
        br = self._brotli.finish() if self._brotli is not None else b""
        return self._gzip.flush(), br
