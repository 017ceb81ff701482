"""HTTP semantics the edge needs (RFC 9110, RFC 9111), as pure functions of header values.

Nothing here does I/O, so every rule is tested on its own: content-coding negotiation with
q-values, entity-tag comparison, HTTP dates, byte ranges, and the default Cache-Control
(immutable for fingerprinted file names).
"""

from __future__ import annotations

import re
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime

# Preference when q-values tie: smallest transfer first.
_CODING_ORDER = ("br", "gzip")

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, max-age=0, must-revalidate"


# --------------------------------------------------------------------------- Accept-Encoding


def parse_accept_encoding(header: str) -> dict[str, float]:
    """Codings named in an Accept-Encoding value with their q-values (lowercase names).

    A malformed q-value counts as 1 (lenient, like common servers); a repeated coding keeps
    its first appearance.
    """
    weights: dict[str, float] = {}
    for item in header.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if not name or name in weights:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 1.0
        weights[name] = q
    return weights


def choose_encoding(header: str | None, available: tuple[str, ...] | list[str]) -> str | None:
    """The content coding to send: "br", "gzip", "" (identity), or None (nothing acceptable).

    `available` lists the stored variants besides identity. The highest q wins; ties go
    br > gzip > identity. `*` covers every coding the header does not name. Identity is
    acceptable unless `identity;q=0`, or `*;q=0` without an `identity` entry, excludes it
    (RFC 9110 section 12.5.3); None then means the caller should answer 406. No header
    means "no preference", and we send identity, as nginx does.
    """
    if header is None:
        return ""
    weights = parse_accept_encoding(header)
    star = weights.get("*")
    best = ""
    best_q = 0.0
    for coding in _CODING_ORDER:
        if coding not in available:
            continue
        q = weights.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    if best_q > 0:
        identity_q = weights.get("identity", star if star is not None else None)
        if identity_q is None or identity_q <= best_q:
            return best
        return ""
    identity_q = weights.get("identity", star)
    if identity_q is not None and identity_q <= 0:
        return None
    return ""


# --------------------------------------------------------------------------- entity tags


def make_etag(digest: str, encoding: str = "") -> str:
    """A strong ETag for one stored variant: the content hash prefix, plus the coding."""
    return f'"{digest[:32]}-{encoding}"' if encoding else f'"{digest[:32]}"'


_ETAG_ITEM = re.compile(r'\s*(?:(W/)?("[^"]*")|([^,\s]+))\s*(?:,|$)')


def parse_etags(header: str) -> list[str] | None:
    """The opaque tags of an If-None-Match / If-Match list, weak prefixes removed.

    Returns None for `*`. Unquoted items (sent by some broken clients) are quoted for them.
    """
    if header.strip() == "*":
        return None
    tags: list[str] = []
    pos = 0
    while pos < len(header):
        match = _ETAG_ITEM.match(header, pos)
        if not match or match.end() == pos:
            break
        if match.group(2):
            tags.append(match.group(2))
        elif match.group(3):
            tags.append(f'"{match.group(3)}"')
        pos = match.end()
    return tags


def none_match(header: str, etag: str) -> bool:
    """True when If-None-Match matches the current ETag by weak comparison (so: send 304)."""
    tags = parse_etags(header)
    if tags is None:
        return True
    opaque = etag[2:] if etag.startswith("W/") else etag
    return opaque in tags


# --------------------------------------------------------------------------- dates


def http_date(timestamp: float) -> str:
    """An IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`."""
    return formatdate(timestamp, usegmt=True)


def parse_http_date(value: str) -> float | None:
    """Seconds since the epoch of an HTTP date (all three RFC 9110 forms), None if invalid."""
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):  # 3.10+: ValueError, not None
        return None
    if parsed.tzinfo is None:  # RFC 850 / asctime dates are GMT by definition
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def not_modified_since(header: str, last_modified: float) -> bool:
    """True when If-Modified-Since shows the client's copy is current (so: send 304).

    Compared at whole seconds, the precision of Last-Modified. An invalid date is ignored.
    """
    since = parse_http_date(header)
    return since is not None and int(last_modified) <= since


# --------------------------------------------------------------------------- ranges


class Unsatisfiable:
    """Marker: the Range cannot be met for this size; answer 416 with `bytes */size`."""


UNSATISFIABLE = Unsatisfiable()

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
_BEYOND_ANY_FILE = 1 << 63


def _position(digits: str) -> int:
    """A range position; one too long for any file counts as past every end (Python's int()
    refuses strings over 4,300 digits, and a Range header must never make a 500)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else _BEYOND_ANY_FILE


def parse_range(header: str, size: int) -> tuple[int, int] | Unsatisfiable | None:
    """The [start, end) byte range a Range value asks for, UNSATISFIABLE, or None (ignore it).

    Forms: `bytes=0-`, `bytes=100-199`, `bytes=-500` (the last 500 bytes). Anything else is
    ignored and the full content sent with 200, as RFC 9110 allows: other units, bad syntax,
    and several ranges (`bytes=0-1,5-6`; we never answer multipart/byteranges, which serves
    no client of a static site well). A last-pos past the end is clamped; a start at or past
    the end, `bytes=-0`, or any range of an empty file is unsatisfiable.
    """
    match = _RANGE.match(header)
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = _position(last)
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return (max(size - suffix, 0), size)
    start = _position(first)
    if last:
        end = _position(last)
        if end < start:
            return None  # invalid range-spec: ignore the header
        end = min(end + 1, size)
    else:
        end = size
    if start >= size:
        return UNSATISFIABLE
    return (start, end)


def if_range_allows(header: str, etag: str, last_modified: float) -> bool:
    """True when If-Range lets the Range apply: a strong ETag match or the exact date."""
    value = header.strip()
    if value.startswith('"'):
        return value == etag and not etag.startswith("W/")
    if value.startswith("W/"):
        return False
    since = parse_http_date(value)
    return since is not None and int(since) == int(last_modified)


# --------------------------------------------------------------------------- caching

# A hash in a file name: hex of 8+ characters after "." or "-" and before a "." (app.3f9a2b7c.js,
# main.3f9a2b7c.chunk.js, index-3f9a2b7c1d2e4f5a.js, style.min.<sha256>.css), or the 8
# characters of base64url that Vite/Rollup put after the last "-" (main-BfK3x9Qa.css).
_HEX_HASH = re.compile(r"[.-]([0-9a-f]{8,64})\.")
_B64_HASH = re.compile(r"-([A-Za-z0-9_-]{8})\.[A-Za-z0-9]+$")


def is_fingerprinted(path: str) -> bool:
    """Whether a file name carries a content hash, so its content can never change.

    Kept strict, because a false positive caches a changing file for a year while a miss
    only costs a revalidation: a hex hash must mix digits and letters (so dates such as
    report-20240115.pdf do not count); a base64url hash must mix digits, upper and lower case.
    """
    name = path.rsplit("/", 1)[-1]
    for match in _HEX_HASH.finditer(name):
        token = match.group(1)
        if not token.isdigit() and any(c.isdigit() for c in token):
            return True
    b64 = _B64_HASH.search(name)
    if b64:
        token = b64.group(1)
        return (
            any(c.isdigit() for c in token)
            and any(c.isupper() for c in token)
            and any(c.islower() for c in token)
        )
    return False


def default_cache_control(path: str, media_type: str) -> str:
    """Cache-Control before `_headers`: a year for fingerprinted assets, revalidate otherwise.

    HTML always revalidates, even with a hash in its name, since it names the assets.
    """
    if not media_type.startswith("text/html") and is_fingerprinted(path):
        return IMMUTABLE
    return REVALIDATE
