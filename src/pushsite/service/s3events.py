"""S3 event notifications: a bundle that lands in a staging bucket becomes a deployment.

The key names the site and branch: `<site>/<branch...>/<name>.tar.gz` (a branch may hold
slashes; the last segment is the file name, e.g. `blog/feature/login/bundle.tar.gz`); a key
with no folder, `<site>.tar.gz`, deploys the site's production branch. Keys arrive URL-encoded
with '+' for spaces, so they are decoded with unquote_plus. `s3:TestEvent` (sent once when
notifications are configured) and records other than ObjectCreated are skipped. The object's
`x-amz-meta-commit` and `x-amz-meta-message`, when set, become the deployment's commit and
message (the bundle's pax header fills a missing commit).

S3 delivers events at least once and sends two for a multipart upload: every event about one
object (bucket, key, ETag) maps to one deployment id (s3staging.py), so duplicates find the
deployment the first one made instead of making another, and a redelivery after a worker died
takes it over. Uploading one key per branch (overwriting it) is the simplest convention: an
older event that arrives late finds its object replaced and is skipped.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote_plus

from pushsite.service.verbs import DEFAULT_TIMEOUT, Service

BUNDLE_SUFFIXES = (".tar.gz", ".tgz")


def is_s3_event(body: dict[str, Any]) -> bool:
    return "Records" in body or body.get("Event") == "s3:TestEvent"


def bundle_records(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(bucket, key, ETag) of each ObjectCreated record in an S3 event."""
    out = []
    for record in body.get("Records", []):
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3 = record.get("s3", {})
        bucket = s3.get("bucket", {}).get("name", "")
        obj = s3.get("object", {})
        key = unquote_plus(obj.get("key", ""))
        out.append((bucket, key, str(obj.get("eTag", "")).strip('"')))
    return out


def site_and_branch(key: str) -> tuple[str, str | None]:
    """The site and branch a staging key names; None for the site's production branch."""
    parts = key.split("/")
    if len(parts) < 2:
        name = parts[0]
        for suffix in BUNDLE_SUFFIXES:
            name = name.removesuffix(suffix)
        return name, None
    site = parts[0]
    branch = "/".join(parts[1:-1]) or None
    return site, branch


def handle_s3_event(service: Service, body: dict[str, Any], *, attempts: int = 1,
                    timeout: float | None = DEFAULT_TIMEOUT) -> list[str]:
    """Deploy every bundle an S3 event names; returns their deployment ids.

    `attempts` is how often the queue delivered this event (above 1, a deployment left
    running by a worker that died is taken over). `timeout` covers the whole event: a bundle
    reached after it has run out times out at once, and is queued again by the caller.
    """
    from pushsite.aws.staging import deploy_from_bucket

    end = None if timeout is None else time.monotonic() + timeout
    ids = []
    for bucket, key, etag in bundle_records(body):
        if not bucket or not key.endswith(BUNDLE_SUFFIXES):
            continue
        site, branch = site_and_branch(key)
        left = None if end is None else max(end - time.monotonic(), 0.0)
        deployment_id = deploy_from_bucket(service, bucket, key, site, branch, etag=etag,
                                           attempts=attempts, timeout=left)
        if deployment_id is not None:
            ids.append(deployment_id)
    return ids
