"""Housekeeping over the whole store: prune what no kept deployment uses, verify what is kept.

Both read every manifest they keep, so they run while nothing deploys (prune refuses while
a deployment is queued or running; a blob it deletes could otherwise be reused meanwhile).
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from typing import TYPE_CHECKING

import brotli

from pushsite.errors import ConfigError, DeploymentNotFound, NotFound
from pushsite.model import FileEntry, Status, manifest_key
from pushsite.stores.packs import PACKS, pack_key, parse_ref

if TYPE_CHECKING:
    from pushsite.service import Service


def prune(service: Service, site_name: str, keep: int) -> dict[str, int]:
    """Delete old deployments' manifests and every blob no kept deployment references.

    Kept: the `keep` newest ready deployments of the site, and any deployment an alias of any
    site points at (a rollback target stays servable).
    """
    if keep < 1:
        raise ConfigError(f"--keep must be at least 1, got {keep}")
    site = service.site(site_name)
    every = service.state.list_deployments(limit=100_000)
    if any(d.status in (Status.RUNNING, Status.QUEUED) for d in every):
        raise ConfigError("a deployment is queued or running; prune when it has finished")
    pointed = {a.deployment_id for s in service.state.list_sites()
               for a in service.state.list_aliases(s.name)}
    ours = [d for d in every if d.site == site.name and d.status.servable]
    kept_ids = {d.id for d in ours[:keep]} | (pointed & {d.id for d in ours})
    dropped = [d for d in ours if d.id not in kept_ids]
    dropped_ids = {d.id for d in dropped}
    service.store.delete([manifest_key(d.id) for d in dropped])
    live_keys: set[str] = set()
    live_packs: set[str] = set()
    kept = [d for d in every if d.status.servable and d.id not in dropped_ids]
    for d in kept:
        try:
            manifest = service.manifest(d.id)
        except DeploymentNotFound:
            continue
        for entry in manifest.files.values():
            for key in (entry.key(enc) for enc in ("", *entry.encodings)):
                ref = parse_ref(key)
                if ref is None:
                    live_keys.add(key)
                else:
                    live_packs.add(ref[0])
    doomed = [k for k in service.store.keys("blobs/") if k not in live_keys]
    # a kept deployment's own pack holds its manifest, even when no file of it is new
    owners = {pack_key(d.id) for d in kept}
    doomed += [k for k in service.store.keys(PACKS)
               if k not in live_packs and k.partition(".")[0] not in owners]
    service.store.delete(doomed)
    for deployment in dropped:
        deployment.status = Status.CANCELLED
        deployment.error = deployment.error or "pruned"
        service.state.update_deployment(deployment)
    return {"deployments": len(dropped), "blobs": len(doomed)}


def verify(service: Service) -> list[str]:
    """Every ready manifest's blobs exist and hash right, and so do their gzip and brotli
    variants once decoded (the edge sends them as stored). Each blob is checked once."""
    problems: list[str] = []
    verdicts: dict[str, list[str]] = {}  # hash -> what is wrong with it, checked once
    for d in service.state.list_deployments(limit=100_000):
        if not d.status.servable:
            continue
        try:
            manifest = service.manifest(d.id)
        except DeploymentNotFound as exc:
            problems.append(str(exc))
            continue
        for path, entry in manifest.files.items():
            if entry.hash not in verdicts:
                verdicts[entry.hash] = _check_blob(service, entry)
            problems.extend(f"{d.site} {d.id}: {path}: {what}" for what in verdicts[entry.hash])
    return problems


def _check_blob(service: Service, entry: FileEntry) -> list[str]:
    digest, size = entry.hash, entry.size
    try:
        data = service.store.get(entry.key())
    except NotFound:
        return [f"blob {digest} is missing"]
    found = []
    if hashlib.sha256(data).hexdigest() != digest or len(data) != size:
        found.append(f"blob {digest} is corrupt")
    for enc in entry.encodings:
        try:
            packed = service.store.get(entry.key(enc))
        except NotFound:
            found.append(f"{enc} variant is missing")
            continue
        if _decoded_hash(packed, enc) != digest:
            found.append(f"{enc} variant of blob {digest} is corrupt")
    return found


def _decoded_hash(data: bytes, encoding: str) -> str:
    """The sha256 of a stored variant once decoded; "" when it does not decode."""
    try:
        plain = brotli.decompress(data) if encoding == "br" else gzip.decompress(data)
    except (OSError, EOFError, zlib.error, brotli.error):
        return ""
    return hashlib.sha256(plain).hexdigest()
