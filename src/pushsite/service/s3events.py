"""S3 event notifications: a bundle that lands in a staging bucket becomes a deployment.

The key names the site and branch: `<site>/<branch...>/<name>.tar.gz` (a branch may hold
slashes; the last segment is the file name, e.g. `blog/feature/login/bundle.tar.gz`); a key
with no folder, `<site>.tar.gz`, deploys the site's production branch. Keys arrive URL-encoded
with '+' for spaces, so they are decoded with unquote_plus. `s3:TestEvent` (sent once when
notifications are configured) and records other than ObjectCreated are skipped. The object's
`x-amz-meta-commit` and `x-amz-meta-message`, when set, become the deployment's commit and
message (the bundle's pax header fills a missing commit).

S3 delivers events at least once and sends two for a multipart upload: every event about one
object (bucket, key, ETag) maps to one deployment id (sources/s3bundle.py), so duplicates find the
deployment the first one made instead of making another, and a redelivery after a worker died
takes it over. A key that can never deploy (an invalid site or branch name, a site that does
not exist while the s3_create_sites setting is off) is rejected, not retried: a failed
deployment records it when the site exists, a warning naming the key otherwise. Uploading one
key per branch (overwriting it) is the simplest convention: an
older event that arrives late finds its object replaced and is skipped.

The service's own worker reads these events off the queue, so the adapter lives here, beside
it, and not in aws/ (the Lambda's package): the layers stay one-way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any
from urllib.parse import unquote_plus

from pushsite.errors import BackendUnavailable, ConfigError, DeploymentNotFound, SiteNotFound
from pushsite.model import Deployment, Status
from pushsite.queues import QueueItem
from pushsite.service.verbs import DEFAULT_TIMEOUT, Service

BUNDLE_SUFFIXES = (".tar.gz", ".tgz")
_log = logging.getLogger("pushsite.s3events")


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


def stage_from_bucket(service: Service, bucket: str, key: str, site: str, branch: str | None,
                      etag: str = "", attempts: int = 1) -> Deployment | None:
    """The deployment of one staged object, created on its first event; None when the object
    is gone or was replaced since the event (its successor's own event deploys that)."""
    # botocore loads on the first S3 event, not in every process that runs a worker
    from pushsite.sources.s3bundle import bundle_key, head_bundle, id_after, object_deployment_id

    head = head_bundle(bucket, key, etag)
    if head is None:
        if etag:
            _abandon(service, site, bundle_key(bucket, key, etag), attempts)
        return None
    etag = str(head["ETag"]).strip('"')
    deployment_id = object_deployment_id(head["LastModified"].timestamp(),
                                         f"{bucket}/{key}@{etag}")
    try:
        return service.state.get_deployment(deployment_id)
    except DeploymentNotFound:
        pass
    meta = head.get("Metadata", {})
    rejected = _rejected(service, site, branch)
    if rejected:
        return _reject(service, key, site, branch, deployment_id, rejected,
                       bundle_key(bucket, key, etag))
    replaced = _same_key(service, site, bucket, key)
    for earlier in replaced:  # made by an earlier event, its id moved past an older object's
        if earlier.bundle_key == bundle_key(bucket, key, etag):
            return earlier
    # The key holds this object, so each earlier deployment of the key is of an older one;
    # within one Last-Modified second the hash would order them at random (the older could
    # keep the alias: `move_alias` lets only a larger id replace it).
    later = [earlier.id for earlier in replaced if earlier.id > deployment_id]
    if later:
        deployment_id = id_after(max(later), deployment_id)
    try:
        return service.accept(site, None, branch=branch, message=meta.get("message", ""),
                              commit=meta.get("commit", ""), source="s3", enqueue=False,
                              deployment_id=deployment_id,
                              bundle_key=bundle_key(bucket, key, etag))
    except (ConfigError, BackendUnavailable):
        with contextlib.suppress(DeploymentNotFound):  # another event created it first
            return service.state.get_deployment(deployment_id)
        raise


def _same_key(service: Service, site: str, bucket: str, key: str) -> list[Deployment]:
    """The site's recent deployments staged at this bucket and key (any ETag)."""
    from pushsite.sources.s3bundle import parse_bundle_key

    found = []
    for deployment in service.state.list_deployments(site, limit=50):
        if deployment.bundle_key.startswith("s3://"):
            with contextlib.suppress(ConfigError):
                if parse_bundle_key(deployment.bundle_key)[:2] == (bucket, key):
                    found.append(deployment)
    return found


def _rejected(service: Service, site: str, branch: str | None) -> str:
    """Why a staged key can never deploy (retrying cannot change it), or ""."""
    from pushsite import names

    try:
        names.check_site_name(site)
        if branch is not None:
            names.check_branch_name(branch)
    except ConfigError as exc:
        return str(exc)
    try:
        service.state.get_site(site)
    except SiteNotFound:
        if not service.config.s3_create_sites:
            return (f"there is no site {site!r}: create it (`pushsite sites create {site}`), "
                    "or set PUSHSITE_S3_CREATE_SITES=1 to let staged keys create sites")
    return ""


def _reject(service: Service, key: str, site: str, branch: str | None, deployment_id: str,
            reason: str, staged: str) -> Deployment | None:
    """Record a bundle that can never deploy where a user looks, and let its event go:
    a failed deployment when the site exists, else a log line naming the key."""
    _log.warning("rejected the staged bundle %s: %s", key, reason)
    try:
        known = service.state.get_site(site)
    except (SiteNotFound, ConfigError):
        return None
    deployment = Deployment(deployment_id, site, branch or known.production_branch,
                            Status.FAILED, source="s3",
                            bundle_key=staged, error=f"rejected {key}: {reason}",
                            finished=time.time())
    with contextlib.suppress(Exception):  # a redelivered event finds it made
        service.state.create_deployment(deployment)
        log = service.log_for(deployment)
        log.error("accept", deployment.error)
        log.flush()
    return None


def _abandon(service: Service, site: str, staged: str, attempts: int) -> None:
    """Fail the unfinished deployment of a bundle that is gone: nothing can ever finish it.

    A running one is left alone on a first delivery (its worker may be alive and reading a
    stream it opened before the object changed), as in Service.process.
    """
    for deployment in service.state.list_deployments(site, limit=50):
        previous = deployment.status
        if deployment.bundle_key != staged or (previous.finished and previous != Status.TIMED_OUT):
            continue
        if previous == Status.RUNNING and attempts <= 1:
            continue
        deployment.status = Status.FAILED
        deployment.error = ("its bundle was replaced or removed from the staging bucket before "
                            "the deployment finished; the newer upload deploys on its own event")
        deployment.finished = time.time()
        if service.state.update_deployment(deployment, expect_status=previous):
            log = service.log_for(deployment)
            log.error("failed", deployment.error)
            log.flush()


def deploy_from_bucket(service: Service, bucket: str, key: str, site: str,
                       branch: str | None, *, etag: str = "", attempts: int = 1,
                       timeout: float | None = DEFAULT_TIMEOUT) -> str | None:
    """Create (or find) the deployment of a staged object and run it; its id, or None when
    the object is gone. `attempts` above 1 lets a run whose worker died be taken over."""
    deployment = stage_from_bucket(service, bucket, key, site, branch, etag, attempts)
    if deployment is None:
        return None
    item = QueueItem({"deployment": deployment.id}, receipt="", attempts=attempts)
    service.process(item, timeout=timeout)
    return deployment.id
