"""Housekeeping over the whole store: prune what no kept deployment uses, verify what is kept.

Prune is a mark and sweep that runs beside deploys (DESIGN.md "Several actors"); see `prune`
for why nothing a deployment started before or during it references is ever deleted, and
why a kill at any moment leaves every `ready` or `live` deployment whole.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import brotli

from pushsite.errors import ConfigError, DeploymentFailed, DeploymentNotFound, NotFound
from pushsite.model import (
    Deployment,
    FileEntry,
    Manifest,
    Status,
    blob_key,
    manifest_key,
    pending_key,
)
from pushsite.pathindex import index_key
from pushsite.service.lease import lease_end
from pushsite.service.sweeps import SweepRecord
from pushsite.state import DELIVERIES_KEPT, DELIVERY_RETENTION, StateStore, every_site
from pushsite.stores.packs import PACKS, pack_key, parse_ref

if TYPE_CHECKING:
    from pushsite.service import Service

PAGE = 1000  # deployments per listing request; every loop pages through to the end
SWEEP_BATCH = 1000  # blobs deleted between two looks for deployments that started meanwhile
_POLL = 0.2  # seconds between two looks at a deployment prune waits for
PRUNED = "pruned"  # the error of a deployment prune cancelled
MANIFESTS = manifest_key("").removesuffix(".json")  # "manifests/"
BY_DEPLOYMENT = (MANIFESTS, index_key(""), pending_key(""))  # objects named by its id
_logger = logging.getLogger("pushsite.prune")


def every_deployment(state: StateStore, page: int = PAGE, *, site: str | None = None,
                     status: Status | None = None) -> Iterator[Deployment]:
    """All deployments (newest first) matching the filters, page after page: never a cap."""
    before: str | None = None
    while True:
        found = state.list_deployments(site, status=status, limit=page, before=before)
        yield from found
        if len(found) < page:
            return
        before = found[-1].id


def prune(service: Service, site_name: str, keep: int, *, grace: float | None = None,
          page: int = PAGE,
          before_delete: Callable[[list[str]], None] | None = None) -> dict[str, int]:
    """Drop all but the `keep` newest ready deployments of a site, then every blob, pack and
    manifest no kept deployment references.

    Kept: the `keep` newest ready deployments of the site, any deployment an alias of any site
    points at (a rollback target stays servable), every live one (an alias is moving onto
    it: `_mark_pruned`), and every queued or running one.

    Order, so that a kill at any point stays consistent: the dropped deployments are first
    marked pruned in the state (cancelled, error "pruned"), then their manifests go, then the
    blobs are swept. A kill after the first step leaves cancelled deployments whose manifests
    (indexes, markers) the next prune removes (orphans); never a `ready` deployment without
    its manifest.

    Why a deployment running beside prune keeps everything it references:
    - what it writes is younger than the prune's start minus `grace` (and younger than the
      listing, or not listed at all): the sweep only considers objects listed with a write
      time before that cutoff. The grace (setting `prune_grace`, 1 hour) also absorbs clock
      skew between this machine and an S3 server's LastModified;
    - what it reuses (found in the store by a lookup, never written) may be old. Deployments
      record themselves before their first lookup, so the sweep watches the state: one
      running when prune starts is waited for before anything is swept, and before every batch
      of deletions prune looks for deployments that started meanwhile (newly running, newer
      than any it has seen, or no longer queued), waits for each to finish and keeps what its
      manifest references. A deployment that starts between that look and the batch's
      deletion re-checks what it reused before it goes live (service/sweeps.py: the sweep
      record); the look after the last batch still logs any deployment that lost something.
      `before_delete` is called with each batch just before it is deleted (tests pause there).
    A running deployment whose lease ran out (its runner died) is neither waited for nor a
    reason to refuse: its record is stale, and a takeover makes it a new start, seen above.

    Last, the site's git repository is compacted (`compact_repository`): what refused
    pushes left there goes once older than the grace.

    A live deployment's optimiser (deploy/optimise.py) runs after its deployment finished, so
    it is not waited for: it may find a pending variant stored by another deployment and list
    it in the manifest it rewrites after prune read the old one. So every variant a kept
    manifest still has pending is kept as if listed (`_Marks.add`).
    """
    if keep < 1:
        raise ConfigError(f"--keep must be at least 1, got {keep}")
    site = service.site(site_name)
    started = time.time()
    grace = service.config.prune_grace if grace is None else grace
    state = service.state
    dropped = _mark_pruned(service, site.name, keep, page)
    service.store.delete([key for d in dropped
                          for key in (manifest_key(d.id), index_key(d.id), pending_key(d.id))])
    watch = _Watch(service, page)
    cutoff = started - max(grace, 0.0)
    listed = {prefix: list(service.store.stamps(prefix))
              for prefix in ("blobs/", PACKS, *BY_DEPLOYMENT)}
    candidates = {prefix: {k for k, t in stamps if t < cutoff} for prefix, stamps in listed.items()}
    recent = sum(len(stamps) - len(candidates[p]) for p, stamps in listed.items())
    watch.wait_for(watch.running_at_start)
    marks = _Marks()
    kept_ids: set[str] = set()
    for d in every_deployment(state, page):
        if d.status.servable:
            marks.add(service, d)
        if d.status.servable or not d.status.finished:
            kept_ids.add(d.id)
    doomed = sorted(candidates["blobs/"] - marks.keys)
    # a kept deployment's own pack holds its manifest, even when no file of it is new
    doomed += sorted(k for k in candidates[PACKS]
                     if k not in marks.packs and k.partition(".")[0] not in marks.owners)
    # a deployment's manifest, index and marker once it is not kept: what a killed prune
    # left, or an optimiser's rewrite stored after the deployment was dropped
    orphans = [k for prefix in BY_DEPLOYMENT for k in candidates[prefix]
               if k[len(prefix):].removesuffix(".json") not in kept_ids]
    service.store.delete(orphans)
    batches = deque(doomed[n:n + SWEEP_BATCH] for n in range(0, len(doomed), SWEEP_BATCH))
    with SweepRecord(state, service.lease) as record:
        deleted = _sweep(service, watch, marks, batches, record, before_delete)
    manifests = sum(k.startswith(MANIFESTS) for k in orphans)
    result = {"deployments": len(dropped), "blobs": len(deleted), "manifests": manifests,
              "recent": recent, "deliveries": prune_deliveries(service, site.name)}
    freed = compact_repository(service, site.name, cutoff)
    if freed is not None:
        result["repo_freed"] = freed
    return result


def compact_repository(service: Service, site_name: str, cutoff: float) -> int | None:
    """Compact the site's git repository, if it has one (a site pushed to with `git push`),
    dropping the unreachable objects written before `cutoff`: a refused push's objects stay
    in it (githook.py), and gc never runs there on its own (gc.auto=0). The bytes freed;
    None without a repository.

    It runs after the sweep, so every deployment running at the start, or started during
    the sweep, has finished: its push's ref moved or was refused. A push arriving now has
    its objects younger than the cutoff (deploy/gitcommit.py `SiteRepos.compact`). Another
    prune compacting the same repository (or an admin's `git gc`) makes this one skip it
    (0 freed); a failed gc is logged and does not undo or fail the prune done above."""
    from pushsite.deploy.gitcommit import SiteRepos

    repos = SiteRepos(service.config.repos)
    if not repos.exists(site_name):
        return None
    try:
        freed = repos.compact(site_name, cutoff)
    except DeploymentFailed as exc:
        _logger.warning("the git repository of site %s was not compacted: %s", site_name, exc)
        return 0
    if freed is None:
        _logger.info("the git repository of site %s is being compacted by another prune "
                     "or git gc: skipped", site_name)
        return 0
    return freed


def prune_deliveries(service: Service, site_name: str, *, now: float | None = None) -> int:
    """Drop the site's delivery records past their retention (state.DELIVERY_DAYS) or behind
    each endpoint's newest DELIVERIES_KEPT. SQLite trims an endpoint only when it is sent
    something and DynamoDB's TTL skips records written before it, so a quiet endpoint's old
    log goes here."""
    before = (time.time() if now is None else now) - DELIVERY_RETENTION
    return sum(service.state.prune_deliveries(endpoint.id, before, DELIVERIES_KEPT)
               for endpoint in service.state.list_endpoints(site_name))


def _sweep(service: Service, watch: _Watch, marks: _Marks, batches: deque[list[str]],
           record: SweepRecord, before_delete: Callable[[list[str]], None] | None) -> list[str]:
    """Delete the batches, looking for deployments that started meanwhile before each one
    and once more after the last; the keys deleted. A batch is counted in the sweep record
    (service/sweeps.py): begun, then a second look without waiting, and a deployment found
    there puts the batch back (ended, nothing deleted) for the next look to wait for it."""
    deleted: list[str] = []
    late: list[str] = []
    while True:
        late += watch.newcomers()
        if late:  # started during the sweep: keep what they reference, check what is gone
            watch.wait_for(late)
            for deployment_id in late:
                marks.add(service, service.state.get_deployment(deployment_id))
            _warn_if_broken(marks, deleted, late)
            late = []
        if not batches:  # the last look came after the last deletion
            return deleted
        batch = [k for k in batches[0]
                 if k not in marks.keys and k not in marks.packs
                 and k.partition(".")[0] not in marks.owners]
        record.begin_batch()
        try:
            late = watch.newcomers()
            if late:
                continue
            if before_delete is not None:
                before_delete(batch)
            service.store.delete(batch)
        finally:
            record.end_batch()
        batches.popleft()
        deleted += batch


def _mark_pruned(service: Service, site: str, keep: int, page: int) -> list[Deployment]:
    """Mark the deployments to drop as pruned in the state (compare-and-set on their status),
    so none is `ready` once its manifest goes; the ones marked.

    Only `ready` ones are dropped: a `live` one is served, or an alias is about to move onto
    it (service/running.py's claim_live marks it live first, with a compare-and-set from
    `ready` that fails once this one won). Every writer of a status compares and sets it,
    so none brings a dropped deployment back as servable with no manifest. A live one no
    alias points at whose claim's lease ran out (its claimer died before moving an alias)
    counts as ready."""
    state = service.state
    pointed = _pointed(state)
    ours = [d for d in every_deployment(state, page, site=site) if d.status.servable]
    now = time.time()
    claimed = {d.id for d in ours if d.status == Status.LIVE
               and (d.id in pointed or lease_end(d, service.lease) >= now)}
    kept_ids = {d.id for d in ours[:keep]} | (pointed & {d.id for d in ours}) | claimed
    marked = []
    for deployment in ours:
        if deployment.id in kept_ids:
            continue
        before = Deployment.from_dict(deployment.to_dict())
        deployment.status = Status.CANCELLED
        deployment.error = deployment.error or PRUNED
        if state.update_deployment(deployment, expect_status=before.status):
            marked.append((deployment, before))
    # a rollback may have moved an alias onto one of them meanwhile: that one stays
    pointed = _pointed(state)
    dropped = []
    for deployment, before in marked:
        if deployment.id in pointed:
            state.update_deployment(before, expect_status=Status.CANCELLED)
        else:
            dropped.append(deployment)
    return dropped


def _pointed(state: StateStore) -> set[str]:
    return {a.deployment_id for s in every_site(state) for a in state.list_aliases(s.name)}


@dataclass
class _Marks:
    """What kept deployments reference: blob keys, pack objects, and their own packs."""

    keys: set[str] = field(default_factory=set)
    packs: set[str] = field(default_factory=set)
    owners: set[str] = field(default_factory=set)
    refs: dict[str, set[str]] = field(default_factory=dict)  # deployment -> its keys and packs

    def add(self, service: Service, deployment: Deployment) -> None:
        self.owners.add(pack_key(deployment.id))
        if not deployment.status.servable:
            return
        try:
            manifest = service.manifest(deployment.id)
        except DeploymentNotFound:
            return
        mine = self.refs.setdefault(deployment.id, set())
        for entry in manifest.files.values():
            for key in (entry.key(enc) for enc in ("", *entry.encodings)):
                ref = parse_ref(key)
                if ref is None:
                    self.keys.add(key)
                    mine.add(key)
                else:
                    self.packs.add(ref[0])
                    mine.add(ref[0])
            # variants still pending: the optimiser may find one stored (made by another
            # deployment) and list it in the manifest it rewrites after this read (a JS or
            # CSS file's final gzip too, while a quick one elsewhere is listed)
            for key in (blob_key(entry.hash, enc) for enc in manifest.pending
                        if enc not in entry.encodings
                        or entry.key(enc) != blob_key(entry.hash, enc)):
                self.keys.add(key)
                mine.add(key)


class _Watch:
    """Deployments that may look blobs up while prune runs: running ones (with a live lease),
    and those that start later."""

    def __init__(self, service: Service, page: int) -> None:
        self._service = service
        self._page = page
        now = time.time()
        running = list(every_deployment(service.state, page, status=Status.RUNNING))
        self.running_at_start = [d.id for d in running if not self._stale(d, now)]
        self._seen = {d.id for d in running}
        self._queued = _waiting(service.state, page)
        newest = service.state.list_deployments(limit=1)
        self._newest = newest[0].id if newest else ""

    def _stale(self, deployment: Deployment, now: float) -> bool:
        return lease_end(deployment, self._service.config.lease) < now

    def newcomers(self) -> list[str]:
        """Deployments that started since the last look."""
        state, page = self._service.state, self._page
        found = []
        for d in every_deployment(state, page, status=Status.RUNNING):
            if d.id not in self._seen:
                found.append(d.id)
        queued = _waiting(state, page)
        found += sorted(self._queued - queued - self._seen - set(found))  # ran meanwhile
        self._queued = queued
        newest = self._newest
        for d in every_deployment(state, page):
            if d.id <= self._newest:
                break
            newest = max(newest, d.id)
            if (d.status not in (Status.QUEUED, Status.RECEIVING) and d.id not in self._seen
                    and d.id not in found):
                found.append(d.id)
        self._newest = newest
        self._seen.update(found)
        return found

    def wait_for(self, ids: list[str]) -> None:
        """Until each of these deployments has finished (or its lease ran out)."""
        for deployment_id in ids:
            while True:
                try:
                    d = self._service.state.get_deployment(deployment_id)
                except DeploymentNotFound:
                    break
                if d.status.finished or (d.status == Status.RUNNING
                                         and self._stale(d, time.time())):
                    break
                time.sleep(_POLL)


def _waiting(state: StateStore, page: int) -> set[str]:
    """Deployments that have not looked a blob up yet: queued, or their upload arriving."""
    return {d.id for status in (Status.RECEIVING, Status.QUEUED)
            for d in every_deployment(state, page, status=status)}


def _warn_if_broken(marks: _Marks, deleted: list[str], late: list[str]) -> None:
    gone = set(deleted)
    for deployment_id in late:
        lost = marks.refs.get(deployment_id, set()) & gone
        if lost:
            _logger.warning("deployment %s started while prune deleted %d objects it "
                            "references (e.g. %s): redeploy it; `pushsite verify` lists them",
                            deployment_id, len(lost), min(lost))


def check_servable(service: Service, deployment: Deployment) -> None:
    """Raise NotFound (exit 4) unless the deployment's manifest and every object it references
    are stored: a rollback or promote checks this before any alias moves, so it never puts a
    site on 500s (a prune killed before the fixes in `prune`, a store restored from backup)."""
    try:
        manifest = service.manifest(deployment.id)
    except DeploymentNotFound:
        raise DeploymentNotFound(f"deployment {deployment.id} of site {deployment.site} has no "
                                 "manifest in the store (pruned?): it cannot go live") from None
    wanted = referenced(manifest)
    missing = wanted - service.store.has(wanted)
    if missing:
        raise NotFound(f"deployment {deployment.id} of site {deployment.site} lacks {len(missing)}"
                       f" stored objects (e.g. {min(missing)}; pruned?): it cannot go live")


def referenced(manifest: Manifest) -> set[str]:
    """The stored objects a manifest's files need: blobs and variants, or their packs."""
    wanted: set[str] = set()
    for entry in manifest.files.values():
        for key in (entry.key(enc) for enc in ("", *entry.encodings)):
            ref = parse_ref(key)
            wanted.add(key if ref is None else ref[0])
    return wanted


def verify(service: Service) -> list[str]:
    """Every ready manifest's blobs exist and hash right, and so do their gzip and brotli
    variants once decoded (the edge sends them as stored). Each blob is checked once."""
    problems: list[str] = []
    verdicts: dict[str, list[str]] = {}  # hash -> what is wrong with it, checked once
    for d in every_deployment(service.state):
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
