"""Mirror a deployment into a plain S3 bucket, so S3 website hosting or a CDN serves it alone.

    mirror_deployment(manifest, store, "s3://hosting-bucket/blog?endpoint=...")

Each file is written at its path with its Content-Type, the stored gzip variant (and
`Content-Encoding: gzip`) where the deployer kept one, and the headers of the site's `_headers`
rules that S3 can hold (Cache-Control, Content-Disposition, Content-Language, Content-Type).
Redirect rules that S3 can express become website redirect objects (see `_redirect_keys`).

What "changed" means: each object carries two metadata values,

    x-amz-meta-sha256          sha256 of the bytes as uploaded (the gzip variant when gzipped)
    x-amz-meta-source-sha256   sha256 of the file itself, as in the manifest

and an object is unchanged when its source-sha256, Content-Encoding, the headers above and its
redirect location all equal what the deployment wants. The mirror compares source-sha256 and
not sha256 because it is known without reading the variant from the store; together with
Content-Encoding it names the uploaded bytes as exactly (a blob's gzip variant is written once).
Never mtime or ETag: mtime says nothing about content, and a multipart ETag is not a hash of it.

Order, so a visitor never meets a page whose assets are missing: new and changed assets first,
then HTML pages and redirect objects, deletions last. Deletions are capped: a mirror that would
delete more than `max_delete_share` of the objects under the prefix fails before it changes
anything (a wrong prefix or an empty manifest must not wipe a site).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from pushsite.errors import BackendUnavailable, ConfigError
from pushsite.model import FileEntry, Manifest
from pushsite.stores import ObjectStore

log = logging.getLogger(__name__)

WORKERS = 16
STREAM_ABOVE = 8 * 1024 * 1024  # identity files larger than this are streamed, not read whole
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# The _headers names S3 keeps as real response headers, and boto3's parameter for each.
_S3_HEADERS = {
    "cache-control": "CacheControl",
    "content-disposition": "ContentDisposition",
    "content-language": "ContentLanguage",
    "content-type": "ContentType",
}
_COMPARED = ("ContentType", "ContentEncoding", *_S3_HEADERS.values(), "WebsiteRedirectLocation")
_LOCATION_SAFE = "/:?#[]@!$&'()*+,;=%~"
_now = time.monotonic  # the deadline's clock


@dataclass
class MirrorReport:
    """What one mirror did: counts of objects, and the rules S3 cannot express."""

    uploaded: int = 0  # objects written (files and redirect objects)
    unchanged: int = 0
    deleted: int = 0
    redirects: int = 0  # redirect rules written as S3 redirect objects
    skipped_rules: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0

    def summary(self) -> str:
        return (
            f"{self.uploaded} uploaded, {self.unchanged} unchanged, {self.deleted} deleted, "
            f"{self.redirects} redirects, {len(self.skipped_rules)} rules skipped, "
            f"{self.bytes_uploaded} bytes"
        )


@dataclass(frozen=True)
class _Wanted:
    """One object the mirror wants at a key: a file variant or a redirect."""

    key: str
    args: dict[str, str]  # put_object arguments compared with HEAD: ContentType, ...
    source_sha256: str
    source_key: str = ""  # the blob to copy; "" for a redirect object
    size: int = 0
    html: bool = False


def _split_target(target_url: str) -> tuple[Any, str]:
    from pushsite.awssdk.client import BackendUrl

    target = BackendUrl.parse(target_url, "s3")
    return target, (target.path + "/" if target.path else "")


def _visitor_paths(path: str) -> list[str]:
    """The URL paths that reach a file: an index.html also answers at its folder."""
    if path == "index.html" or path.endswith("/index.html"):
        return ["/" + path.removesuffix("index.html"), "/" + path]
    return ["/" + path]


def _file_headers(rules: Any, path: str, unsupported: dict[str, str]) -> dict[str, str]:
    """boto3 arguments from the `_headers` rules for a file; names S3 cannot hold are noted."""
    args: dict[str, str] = {}
    for visitor_path in _visitor_paths(path):
        headers, _detached = rules.headers_for(visitor_path)
        for name, value in headers:
            param = _S3_HEADERS.get(name.lower())
            if param is None:
                unsupported.setdefault(name.lower(), name)
            else:
                args.setdefault(param, value)
    return args


def _file_object(key: str, entry: FileEntry, headers: dict[str, str]) -> _Wanted:
    args = {"ContentType": entry.type, **headers}
    if "gzip" in entry.encodings:
        args["ContentEncoding"] = "gzip"
        source, size = entry.key("gzip"), entry.encodings["gzip"]
    else:
        source, size = entry.key(), entry.size
    html = entry.type.startswith(("text/html", "application/xhtml+xml"))
    return _Wanted(key, args, entry.hash, source, size, html)


def _redirect_keys(path: str) -> list[str]:
    """The keys S3 website hosting looks up for a rule's path, with and without a slash.

    S3 maps "/a" to key "a" and "/a/" to "a/index.html"; pushsite's rules match a path with
    or without one trailing slash, so a rule gets a redirect object at both.
    """
    bare = unquote(path).strip("/")
    if not bare:
        return ["index.html"]
    return [bare, bare + "/index.html"]


def _why_not_expressible(rule: dict[str, Any]) -> str:
    """Why an S3 redirect object cannot do what the rule does, or "" when it can."""
    path = rule["path"]
    if rule.get("host"):
        return "it matches a host; S3 redirect objects match a path only"
    if "*" in path:
        return "it has a splat; an S3 redirect object holds one fixed path"
    if any(segment.startswith(":") for segment in path.split("/")):
        return "it has a placeholder; an S3 redirect object holds one fixed path"
    if rule.get("query"):
        return "it has query conditions, which S3 cannot test"
    if rule["status"] != 301:
        return f"its status is {rule['status']}; S3 redirect objects always answer 301"
    return ""


def _loops(target: str, keys: list[str]) -> bool:
    """Whether a path target lands on one of the rule's own keys ("/a/ /a" on S3)."""
    if not target.startswith("/"):
        return False
    path = target.partition("#")[0].partition("?")[0]
    return bool(set(_redirect_keys(path)) & set(keys))


def _rule_text(rule: dict[str, Any]) -> str:
    force = "!" if rule.get("force") else ""
    return f"_redirects line {rule.get('line', '?')}: {rule['path']} {rule['to']} " + (
        f"{rule['status']}{force}"
    )


def _location(target: str, prefix: str) -> str:
    """The redirect location: a URL as it is, a site path under the mirror's prefix.

    S3 website hosting resolves paths from the bucket's root, so "/new" in a site mirrored to
    s3://bucket/blog becomes "/blog/new".
    """
    if not target.startswith("/"):
        return quote(target, safe=_LOCATION_SAFE)
    return quote("/" + prefix + target.lstrip("/"), safe=_LOCATION_SAFE)


def _plan(manifest: Manifest, prefix: str) -> tuple[dict[str, _Wanted], int, list[str]]:
    """Every object the deployment wants under the prefix, the redirect count, skipped rules."""
    from pushsite.rules import CompiledRules

    rules = CompiledRules(manifest.headers, manifest.redirects)
    unsupported: dict[str, str] = {}
    wanted: dict[str, _Wanted] = {}
    for path, entry in manifest.files.items():
        headers = _file_headers(rules, path, unsupported)
        wanted[prefix + path] = _file_object(prefix + path, entry, headers)
    skipped = [
        f"_headers: {name} cannot be stored on S3 objects (only "
        f"{', '.join(sorted(_S3_HEADERS))}); set it in the CDN in front"
        for name in sorted(unsupported.values())
    ]
    claimed: set[str] = set()
    redirects = 0
    for rule in manifest.redirects:
        reason = _why_not_expressible(rule)
        keys = _redirect_keys(rule["path"])
        files = [k for k in keys if k in manifest.files]
        if not reason and files and not rule.get("force"):
            reason = f"the file {files[0]} shadows it (add ! to force it)"
        if not reason and _loops(rule["to"], keys):
            reason = "it points at its own path, and S3 would redirect in a loop"
        if not reason and all(k in claimed for k in keys):
            reason = "an earlier rule already redirects this path"
        if reason:
            skipped.append(f"{_rule_text(rule)} skipped: {reason}")
            continue
        location = _location(rule["to"], prefix)
        for key in keys:
            if key in claimed:
                continue
            claimed.add(key)
            args = {"ContentType": "text/html", "WebsiteRedirectLocation": location}
            wanted[prefix + key] = _Wanted(prefix + key, args, _EMPTY_SHA256, html=True)
        redirects += 1
    for line in skipped:
        log.warning("mirror: %s", line)
    return wanted, redirects, skipped


def _unchanged(head: dict[str, Any], want: _Wanted) -> bool:
    if head.get("Metadata", {}).get("source-sha256") != want.source_sha256:
        return False
    return all(head.get(name) == want.args.get(name) for name in _COMPARED)


def _check_delete_share(doomed: int, existing: int, share: float, target_url: str) -> None:
    if existing and doomed > share * existing:
        raise ConfigError(
            f"mirroring to {target_url} would delete {doomed} of its {existing} objects "
            f"({doomed / existing:.0%}), more than the limit of {share:.0%}: check the target "
            "URL and the deployment, or allow a larger share (max_delete_share)"
        )


class MirrorTimeout(Exception):
    """The mirror stopped at its deadline; what it wrote is recorded, the rest comes next run."""

    def __init__(self, report: MirrorReport) -> None:
        super().__init__(f"the mirror stopped at its deadline: {report.summary()}")
        self.report = report


def _fingerprint(want: _Wanted) -> str:
    """What decides whether an object must be written again: its headers and source bytes."""
    text = json.dumps([want.source_sha256, sorted(want.args.items())], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _record_key(bucket: str, prefix: str) -> str:
    """Where the last mirror's record lives: in the (private) content store, not the target,
    so a CDN in front of the hosting bucket never serves it."""
    name = hashlib.sha256(f"{bucket}/{prefix}".encode()).hexdigest()[:32]
    return f"mirrors/{name}.json"


def _load_record(source: ObjectStore, key: str) -> dict[str, str] | None:
    """{object key: fingerprint} as the last mirror left the target, or None (then the target
    is listed and every present object HEADed instead)."""
    try:
        record = json.loads(source.get(key))
    except Exception:  # noqa: BLE001 - no record, or an unreadable one: compare in full
        return None
    objects = record.get("objects") if isinstance(record, dict) else None
    return objects if isinstance(objects, dict) else None


def _save_record(source: ObjectStore, key: str, objects: dict[str, str]) -> None:
    source.put(key, json.dumps({"objects": objects}, separators=(",", ":")).encode())
    source.flush()


def mirror_deployment(
    manifest: Manifest,
    source: ObjectStore,
    target_url: str,
    *,
    max_delete_share: float = 0.5,
    s3_client: Any = None,
    deadline: float | None = None,
    full: bool = False,
) -> MirrorReport:
    """Make s3://bucket/prefix hold exactly the deployment's files and redirects.

    The outcome is recorded in the source store ({key: fingerprint}); the next mirror to the
    same target diffs the manifests against that record instead of listing and HEADing the
    target, so a mirror with no change makes no request to it. `deadline` (time.monotonic())
    stops it between batches with MirrorTimeout; the record then says what was written.
    `full` ignores the record and compares with the target itself (after changes made to the
    bucket by hand).
    """
    from pushsite.awssdk.client import aws_errors, make_client

    if not 0 <= max_delete_share <= 1:
        raise ConfigError(
            f"max_delete_share must be between 0 and 1, got {max_delete_share}: "
            "e.g. 0.5 allows deleting half of the mirrored objects"
        )
    target, prefix = _split_target(target_url)
    bucket = target.name
    what = f"the mirror bucket {bucket}"
    wanted, redirect_count, skipped = _plan(manifest, prefix)
    report = MirrorReport(redirects=redirect_count, skipped_rules=skipped)
    record_key = _record_key(bucket, prefix)
    record = None if full else _load_record(source, record_key)
    client = s3_client or make_client("s3", target, transfer=True)

    def head(key: str) -> dict[str, Any]:
        """The object's headers; {} when it went away since the listing (so it is uploaded)."""
        from botocore.exceptions import ClientError

        from pushsite.awssdk.client import http_status

        with aws_errors(what):
            try:
                result: dict[str, Any] = client.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if http_status(exc) == 404:
                    return {}
                raise
            return result

    def upload(want: _Wanted) -> int:
        with aws_errors(what):
            return _upload(client, bucket, source, want)

    with ThreadPoolExecutor(WORKERS) as pool:
        if record is None:
            with aws_errors(what):
                existing = _list_keys(client, bucket, prefix)
            present = sorted(existing & wanted.keys())
            heads = dict(zip(present, pool.map(head, present), strict=True))
            state = {k: _fingerprint(wanted[k]) for k, h in heads.items()
                     if _unchanged(h, wanted[k])}
            state |= {k: "" for k in existing - state.keys()}  # present, but not as wanted
        else:
            existing, state = set(record), dict(record)
        doomed = sorted(existing - wanted.keys())
        _check_delete_share(len(doomed), len(existing), max_delete_share, target_url)
        changed = [w for key, w in sorted(wanted.items())
                   if state.get(key) != _fingerprint(w)]
        report.unchanged = len(wanted) - len(changed)
        batches = [w for w in changed if not w.html], [w for w in changed if w.html]
        for batch in batches:
            for start in range(0, len(batch), WORKERS * 4):
                if deadline is not None and _now() >= deadline:
                    _save_record(source, record_key, state)
                    raise MirrorTimeout(report)
                chunk = batch[start:start + WORKERS * 4]
                report.bytes_uploaded += sum(pool.map(upload, chunk))  # waits for the chunk
                report.uploaded += len(chunk)
                state |= {w.key: _fingerprint(w) for w in chunk}
    with aws_errors(what):
        _delete(client, bucket, doomed)
    report.deleted = len(doomed)
    _save_record(source, record_key, {k: state[k] for k in wanted})
    log.info("mirror to %s: %s", target_url, report.summary())
    return report


def _list_keys(client: Any, bucket: str, prefix: str) -> set[str]:
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update(item["Key"] for item in page.get("Contents", ()))
    return keys


def _upload(client: Any, bucket: str, source: ObjectStore, want: _Wanted) -> int:
    """Write one object; returns the bytes sent."""
    args: dict[str, Any] = dict(want.args)
    if not want.source_key:
        meta = {"sha256": _EMPTY_SHA256, "source-sha256": want.source_sha256}
        client.put_object(Bucket=bucket, Key=want.key, Body=b"", Metadata=meta, **args)
        return 0
    if want.size > STREAM_ABOVE and "ContentEncoding" not in args:
        # The identity variant's bytes are the file itself, so its hash is the manifest's.
        meta = {"sha256": want.source_sha256, "source-sha256": want.source_sha256}
        with source.open(want.source_key) as stream:
            client.upload_fileobj(
                stream, bucket, want.key, ExtraArgs={**args, "Metadata": meta}
            )
        return want.size
    data = source.get(want.source_key)
    meta = {"sha256": hashlib.sha256(data).hexdigest(), "source-sha256": want.source_sha256}
    client.put_object(Bucket=bucket, Key=want.key, Body=data, Metadata=meta, **args)
    return len(data)


def _delete(client: Any, bucket: str, keys: Iterable[str]) -> None:
    batch: list[str] = []

    def send() -> None:
        objects = [{"Key": key} for key in batch]
        result = client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        errors = result.get("Errors") or []
        if errors:
            first = errors[0]
            raise BackendUnavailable(
                f"the mirror bucket {bucket} refused to delete {len(errors)} objects "
                f"({first.get('Key')}: {first.get('Code')}): run the mirror again"
            )
        batch.clear()

    for key in keys:
        batch.append(key)
        if len(batch) == 1000:  # DeleteObjects takes at most 1,000 keys
            send()
    if batch:
        send()


def live_sites(service: Any, deployment_ids: list[str]) -> list[str]:
    """The sites whose production these deployments are now: what the mirror follows after
    a run (a preview, a draft or a deployment already replaced is not mirrored). Unknown ids
    are skipped: Service.process has logged them."""
    from pushsite.errors import DeploymentNotFound

    sites: list[str] = []
    for deployment_id in deployment_ids:
        try:
            deployment = service.state.get_deployment(deployment_id)
        except DeploymentNotFound:
            continue
        alias = service.state.get_alias(deployment.site, "production")
        if alias is not None and alias.deployment_id == deployment_id \
                and deployment.site not in sites:
            sites.append(deployment.site)
    return sites


def mirror_production(service: Any, site: str, deployment_id: str = "", *,
                      deadline: float | None = None, full: bool = False) -> MirrorReport:
    """Mirror what production of `site` serves to the configured mirror (config.mirror),
    `<mirror>/<site>/`; the outcome goes to the deployment's log and its `mirror` field.

    A mirror that would delete more than config.mirror_max_delete of the site's objects is
    refused (ConfigError, logged as an error: retrying cannot change the answer).
    """
    from pushsite.aws.targets import site_target
    from pushsite.service.mirroring import record_mirror

    alias = service.state.get_alias(site, "production")
    if alias is None:
        return MirrorReport()
    target = alias.deployment_id
    log = service.log_for(service.state.get_deployment(target))
    try:
        report = mirror_deployment(service.manifest(target), service.store,
                                   site_target(service.config.mirror, site),
                                   max_delete_share=service.config.mirror_max_delete,
                                   deadline=deadline, full=full)
    except ConfigError as exc:
        log.error("mirror", f"not mirrored: {exc}")
        record_mirror(service, target, "refused", str(exc))
        raise
    except MirrorTimeout as exc:
        log.info("mirror", f"mirror paused at the deadline ({exc.report.summary()}); the "
                 "next invocation goes on")
        record_mirror(service, target, "paused", exc.report.summary())
        raise
    finally:
        log.flush()
    log.info("mirror", f"mirrored to {service.config.mirror}: {report.summary()}")
    log.flush()
    record_mirror(service, target, "mirrored", report.summary())
    return report
