"""Where a site's mirror goes: `s3://bucket/prefix?query` + site -> `s3://bucket/prefix/<site>`."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def site_target(mirror: str, site: str) -> str:
    """`s3://bucket/prefix?query` -> `s3://bucket/prefix/<site>?query`."""
    parts = urlsplit(mirror)
    path = f"{parts.path.rstrip('/')}/{site}"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))
