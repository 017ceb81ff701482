"""S3 event notifications: a bundle that lands in a staging bucket becomes a deployment.

The key names the site and branch: `<site>/<branch...>/<anything>.tar.gz` (a branch may hold
slashes; the last segment is the file name). Keys arrive URL-encoded with '+' for spaces, so
they are decoded with unquote_plus. S3 sends duplicates (and two for a multipart upload), so
each (bucket, key, etag/sequencer) is remembered once; `s3:TestEvent` is skipped.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus


def is_s3_event(body: dict[str, Any]) -> bool:
    return "Records" in body or body.get("Event") == "s3:TestEvent"


def bundle_records(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(bucket, key, dedup id) of each ObjectCreated record in an S3 event."""
    out = []
    for record in body.get("Records", []):
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3 = record.get("s3", {})
        bucket = s3.get("bucket", {}).get("name", "")
        obj = s3.get("object", {})
        key = unquote_plus(obj.get("key", ""))
        marker = obj.get("eTag") or obj.get("sequencer") or ""
        out.append((bucket, key, f"s3:{bucket}/{key}@{marker}"))
    return out


def site_and_branch(key: str) -> tuple[str, str | None]:
    parts = key.split("/")
    if len(parts) < 2:
        return parts[0].removesuffix(".tar.gz"), None
    site = parts[0]
    branch = "/".join(parts[1:-1]) or None
    return site, branch


def handle_s3_event(service: Any, body: dict[str, Any]) -> list[str]:
    """Accept and run every new bundle an S3 event names; returns the deployment ids."""
    from pushsite.s3staging import deploy_from_bucket

    ids = []
    for bucket, key, dedup in bundle_records(body):
        if not key.endswith((".tar.gz", ".tgz")):
            continue
        if not service.state.remember(dedup):
            continue
        site, branch = site_and_branch(key)
        ids.append(deploy_from_bucket(service, bucket, key, site, branch))
    return ids
