"""The service: accept a bundle, queue it, run it, activate, roll back, prune, verify.

Every entry point (the CLI, the git remote, webhooks, the API, a Lambda handler) goes through
here, so a push and `pushsite deploy` take the same path: staging, a queued deployment, the
deployer, then one compare-and-set alias move.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from pushsite import housekeeping, ids, names, tokens
from pushsite.config import Config
from pushsite.deployer import Counters, Deadline, Known, ManifestBuilder, deploy_bundle
from pushsite.errors import (
    AliasConflict,
    ConfigError,
    DeploymentCancelled,
    DeploymentFailed,
    DeploymentNotFound,
    DeploymentTimedOut,
    DomainConflict,
    NotFound,
    PushsiteError,
    SiteNotFound,
)
from pushsite.logs import DeployLog, sinks_from_env
from pushsite.memory import trimmed_heap
from pushsite.model import (
    PRODUCTION,
    Deployment,
    Manifest,
    Site,
    Status,
    Token,
    branch_alias,
    manifest_key,
)
from pushsite.queues import Queue, QueueItem, open_queue
from pushsite.state import StateStore, open_state_store
from pushsite.stores import ObjectStore, Packer, open_object_store

DEFAULT_TIMEOUT = 900.0
_COPY_CHUNK = 1 << 20


def deadline_margin(timeout: float) -> float:
    """How long before a hard limit the pipeline stops, to record how far it got."""
    return min(5.0, timeout * 0.05)


class Service:
    """The product's verbs, over whichever backends the Config names."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._store: ObjectStore | None = None
        self._opening = threading.Lock()
        self._state: StateStore | None = None
        self._queue: Queue | None = None
        self._sinks = sinks_from_env()
        # called with each manifest built here before its alias moves (the edge caches it)
        self.manifest_listeners: list[Callable[[Manifest], None]] = []

    # backends, opened on first use ------------------------------------------------------
    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            with self._opening:  # a deploy may open it from a thread (see run)
                if self._store is None:
                    self._store = open_object_store(self.config.store)
        return self._store

    @property
    def state(self) -> StateStore:
        if self._state is None:
            self._state = open_state_store(self.config.state)
        return self._state

    @property
    def queue(self) -> Queue:
        if self._queue is None:
            self._queue = open_queue(self.config.queue)
        return self._queue

    def close(self, exiting: bool = False) -> None:
        """Close the backends. `exiting`: the process ends right after without teardown, so a
        store that can (the local one) is only flushed and left to the exit: closing its last
        connection would checkpoint the WAL into the database, ~50 ms of a one-shot deploy that
        the next process or the edge does anyway."""
        for sink in self._sinks:
            sink.close()
        for backend in (self._store, self._state, self._queue):
            if backend is None:
                continue
            detach = getattr(backend, "detach", None) if exiting else None
            if detach is not None:
                detach()
            else:
                backend.close()

    # sites ---------------------------------------------------------------------------------
    def site(self, name: str, create: bool = False) -> Site:
        names.check_site_name(name)
        try:
            return self.state.get_site(name)
        except SiteNotFound:
            if not create:
                raise
        site = Site(name, webhook_secret=secrets.token_hex(20))
        self.state.put_site(site)
        return site

    def add_domain(self, site_name: str, host: str) -> Site:
        site = self.site(site_name)
        host = names.check_host(host)
        self.state.claim_domain(host, site.name)
        return self.state.get_site(site.name)

    def remove_domain(self, site_name: str, host: str) -> Site:
        site = self.site(site_name)
        self.state.release_domain(names.check_host(host), site.name)
        return self.state.get_site(site.name)

    # accepting -------------------------------------------------------------------------------
    def accept(
        self,
        site_name: str,
        bundle: BinaryIO | None,
        *,
        branch: str | None = None,
        message: str = "",
        commit: str = "",
        source: str = "cli",
        enqueue: bool = True,
        deployment_id: str | None = None,
        bundle_key: str = "",
    ) -> Deployment:
        """Stage a bundle and record a queued deployment; the bundle is copied as a stream.

        With bundle None the caller streams it into `run` itself (`pushsite deploy` reads
        its source once, straight through the deployer, instead of copying it first), or
        names where it already waits (`bundle_key` s3://..., with an id derived from it).
        """
        site = self.site(site_name, create=True)
        branch = names.check_branch_name(branch or site.production_branch)
        self._check_branch_label(site.name, branch)
        deployment = Deployment(deployment_id or ids.new_id(), site.name, branch, Status.QUEUED,
                                commit=commit, message=message, source=source,
                                bundle_key=bundle_key)
        if bundle is not None:
            deployment.bundle_key = self._stage(deployment.id, bundle)
        self.state.create_deployment(deployment)
        self._note(deployment, "info", "accept",
                   f"accepted a bundle for {site.name} ({branch}) from {source}",
                   bytes=self._staged_size(deployment.bundle_key))
        if enqueue:
            self.queue.send({"deployment": deployment.id})
        return deployment

    def _stage(self, deployment_id: str, bundle: BinaryIO) -> str:
        self.config.staging.mkdir(parents=True, exist_ok=True)
        target = self.config.staging / f"{deployment_id}.tar.gz"
        partial = target.with_suffix(".part")
        try:
            with open(partial, "wb") as out:
                shutil.copyfileobj(bundle, out, _COPY_CHUNK)
        except BaseException:
            partial.unlink(missing_ok=True)  # a cut-off upload leaves nothing behind
            raise
        partial.rename(target)
        return target.name

    def _staged_size(self, key: str) -> int:
        if _in_bucket(key):
            return 0
        try:
            return (self.config.staging / key).stat().st_size
        except FileNotFoundError:
            return 0

    @contextmanager
    def _open_staged(self, deployment: Deployment) -> Iterator[BinaryIO]:
        if _in_bucket(deployment.bundle_key):
            from pushsite.s3staging import open_bundle

            with open_bundle(deployment.bundle_key) as remote:
                yield remote
            return
        path = self.config.staging / deployment.bundle_key
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise DeploymentFailed(
                f"the bundle of deployment {deployment.id} is no longer in staging"
            ) from None
        with handle:
            yield handle

    def _check_branch_label(self, site: str, branch: str) -> None:
        label = names.branch_label(branch)
        for alias in self.state.list_aliases(site):
            if not alias.name.startswith("branch/"):
                continue
            other = alias.name.removeprefix("branch/")
            if other != branch and names.branch_label(other) == label:
                raise ConfigError(
                    f"branch {branch!r} would share the preview host {label}--{site} with "
                    f"branch {other!r}; rename one of them (or delete {other!r})"
                )

    # running -----------------------------------------------------------------------------------
    def log_for(self, deployment: Deployment) -> DeployLog:
        return DeployLog(self.state, deployment.id, deployment.site, sinks=self._sinks)

    def _note(self, deployment: Deployment, level: str, stage: str, message: str,
              **fields: object) -> None:
        """One line in a deployment's log, written now (outside a running pipeline)."""
        log = self.log_for(deployment)
        getattr(log, level)(stage, message, **fields)
        log.flush()

    def run(
        self,
        deployment_id: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        progress: Callable[[Counters], None] | None = None,
        bundle: BinaryIO | None = None,
        folder: Path | None = None,
    ) -> Deployment:
        """Run a queued deployment to its end; raises DeploymentFailed (or a subclass).

        The files come from `bundle` (a tar.gz stream), `folder` (read in place, no tar), a
        git commit, or the staged bundle, in that order.

        Only one runner wins the queued -> running step, so a deployment delivered twice
        runs once. With `timeout`, the pipeline stops `deadline_margin` before it.
        """
        deployment = self.state.get_deployment(deployment_id)
        if deployment.status not in (Status.QUEUED, Status.TIMED_OUT):
            return deployment
        previous = deployment.status
        ran_before = previous == Status.TIMED_OUT or bool(deployment.started)
        deployment.status = Status.RUNNING
        deployment.started = time.time()
        deployment.error = ""
        if not self.state.update_deployment(deployment, expect_status=previous):
            return self.state.get_deployment(deployment_id)
        log = self.log_for(deployment)
        limit = None if timeout is None else max(timeout - deadline_margin(timeout), 0.0)
        deadline = Deadline.after(limit, cancelled=lambda: self._is_cancelled(deployment_id))
        # a push needs the previous table whole (paths and git ids); a bundle only which
        # blobs are stored with which variants, read without building 100,000 entries
        from_git = deployment.bundle_key.startswith("git:")
        if from_git:
            previous = self._previous_manifest(deployment)
            known, packer = self._deploy_setup(deployment, ran_before, from_git)
            builder = ManifestBuilder(self.store, log, deadline, workers=self.config.workers,
                                      progress=progress, known=known, packer=packer)
            builder.previous = previous
        else:  # the store opens, and the previous manifest is read, while files are read
            opener = ThreadPoolExecutor(1, thread_name_prefix="store-open")
            later = opener.submit(self._deploy_setup, deployment, ran_before, from_git)
            opener.shutdown(wait=False)
            builder = ManifestBuilder(_Opening(self, later), log, deadline,  # type: ignore[arg-type]
                                      workers=self.config.workers, progress=progress,
                                      later=later)
        try:
            with trimmed_heap():
                return self._run_pipeline(deployment, builder, log, bundle, folder)
        except BaseException as exc:
            self._apply_counters(deployment, builder.counters)
            self._fail(deployment, exc, log)
            raise
        finally:
            log.flush()

    def _run_pipeline(self, deployment: Deployment, builder: ManifestBuilder, log: DeployLog,
                      bundle: BinaryIO | None, folder: Path | None = None) -> Deployment:
        log.info("read", "reading the bundle", workers=self.config.workers)
        if deployment.bundle_key.startswith("git:"):
            outcome = self._deploy_commit(deployment, builder)
        elif folder is not None:
            from pushsite.sources.folder import deploy_folder

            outcome = deploy_folder(folder, builder, self.config.limits(), deployment.id,
                                    deployment.site, deployment.created)
        elif bundle is not None:
            outcome = deploy_bundle(bundle, builder, self.config.limits(), deployment.id,
                                    deployment.site, deployment.created)
        else:
            with self._open_staged(deployment) as staged:
                outcome = deploy_bundle(staged, builder, self.config.limits(),
                                        deployment.id, deployment.site, deployment.created)
        deployment.commit = deployment.commit or outcome.commit
        self._apply_counters(deployment, builder.counters)
        deployment.files = len(outcome.manifest.files)
        log.info("manifest", f"wrote the manifest: {builder.counters.describe()}",
                 files=deployment.files, bytes_stored=deployment.bytes_stored)
        self._apply_settings(deployment, outcome.settings, log)
        for listener in self.manifest_listeners:
            listener(outcome.manifest)
        return self._complete(deployment, log)

    def accept_commit(self, site_name: str, branch: str, commit: str, message: str = "",
                      source: str = "git") -> Deployment:
        """Queue a deployment of a commit already in the site's repository (a push)."""
        site = self.site(site_name, create=True)
        names.check_branch_name(branch)
        self._check_branch_label(site.name, branch)
        deployment = Deployment(ids.new_id(), site.name, branch, Status.QUEUED, commit=commit,
                                message=message, source=source, bundle_key=f"git:{commit}")
        self.state.create_deployment(deployment)
        self._note(deployment, "info", "accept", f"push of {commit[:12]} to {branch} queued")
        self.queue.send({"deployment": deployment.id})
        return deployment

    def accept_fetch(self, site_name: str, branch: str, provider: str, repo: str, commit: str,
                     message: str = "", project_id: str = "") -> Deployment:
        """Queue a deployment whose bundle a worker fetches from a git host (a webhook)."""
        site = self.site(site_name)
        names.check_branch_name(branch)
        self._check_branch_label(site.name, branch)
        deployment = Deployment(ids.new_id(), site.name, branch, Status.QUEUED, commit=commit,
                                message=message, source=f"webhook:{provider}")
        self.state.create_deployment(deployment)
        self._note(deployment, "info", "accept",
                   f"{provider} push of {commit[:12]} to {branch} queued")
        self.queue.send({"deployment": deployment.id, "fetch": {
            "provider": provider, "repo": repo, "commit": commit, "project_id": project_id}})
        return deployment

    def _fetch(self, deployment: Deployment, fetch: dict[str, str]) -> None:
        """Download a webhook's archive into staging (streamed, with retries)."""
        from pushsite.sources.archive import ArchiveSource, fetch_archive

        settings = self.state.get_site(deployment.site).settings.get("webhook", {})
        source = ArchiveSource(fetch["provider"], settings.get("base_url", ""), fetch["repo"],
                               fetch["commit"], settings.get("access_token", ""),
                               fetch.get("project_id", ""))
        log = self.log_for(deployment)
        self.config.staging.mkdir(parents=True, exist_ok=True)
        target = self.config.staging / f"{deployment.id}.tar.gz"
        try:
            with open(target, "wb") as out:
                size = fetch_archive(source, out, max_bytes=self.config.max_total_mb << 20)
        except BaseException as exc:
            target.unlink(missing_ok=True)
            self._fail(deployment, exc, log)
            log.flush()
            raise
        log.info("accept", f"fetched the archive of {fetch['commit'][:12]} ({size} bytes)")
        log.flush()
        deployment.bundle_key = target.name
        self.state.update_deployment(deployment)

    def _deploy_commit(self, deployment: Deployment, builder: ManifestBuilder) -> Any:
        from pushsite.deployer import BundleOutcome
        from pushsite.sources.gitrepo import SiteRepos, deploy_commit

        commit = deployment.bundle_key.removeprefix("git:")
        previous = builder.previous
        manifest = deploy_commit(builder, SiteRepos(self.config.repos), deployment.site, commit,
                                 deployment.id, deployment.created, previous)
        return BundleOutcome(manifest, commit, 0, getattr(builder, "settings", None))

    def _deploy_setup(self, deployment: Deployment, ran_before: bool,
                      from_git: bool) -> tuple[dict[str, Known], Packer | None]:
        """What a deploy knows is stored, and the pack it writes to (None: loose objects)."""
        known = {} if from_git else self._previous_blobs(deployment)
        packer = None
        if (make_packer := getattr(self.store, "packer", None)) is not None:
            packer = make_packer(deployment.id)
            if ran_before and packer is not None:  # reuse what the earlier run packed
                known.update(_sealed_blobs(self.store.packed_blobs(deployment.id)))  # type: ignore[attr-defined]
        return known, packer

    def _previous_blobs(self, deployment: Deployment) -> dict[str, Known]:
        """hash -> stored variants of the blobs the previous manifest names (see below)."""
        import json

        for alias in (branch_alias(deployment.branch), PRODUCTION):
            current = self.state.get_alias(deployment.site, alias)
            if current is not None:
                try:
                    rows = json.loads(self.store.get(manifest_key(current.deployment_id)))
                except NotFound:
                    continue
                return {row[0]: (row[3], row[5] if len(row) > 5 else None)
                        for row in rows["files"].values()}
        return {}

    def _previous_manifest(self, deployment: Deployment) -> Manifest | None:
        """The manifest a push is most likely to share files with: its branch's, else live."""
        for alias in (branch_alias(deployment.branch), PRODUCTION):
            current = self.state.get_alias(deployment.site, alias)
            if current is not None:
                try:
                    return self.manifest(current.deployment_id)
                except DeploymentNotFound:
                    continue
        return None

    def run_manifest(self, deployment: Deployment, manifest: Manifest) -> Deployment:
        """Finish a deployment whose manifest was built elsewhere (a git push, a redeploy)."""
        log = self.log_for(deployment)
        try:
            self.store.put(manifest_key(deployment.id), manifest.to_bytes(),
                           {"content-type": "application/json"})
            self.store.flush()
            return self._complete(deployment, log)
        except BaseException as exc:
            self._fail(deployment, exc, log)
            raise
        finally:
            log.flush()

    def _apply_counters(self, deployment: Deployment, counters: Counters) -> None:
        deployment.files = counters.files
        deployment.bytes_in = counters.bytes_in
        deployment.bytes_stored = counters.bytes_stored
        deployment.blobs_new = counters.blobs_new
        deployment.blobs_reused = counters.blobs_reused
        deployment.progress = counters.describe()

    def _apply_settings(self, deployment: Deployment, settings: object, log: DeployLog) -> None:
        """pushsite.toml may name the production branch and claim domains.

        Only a deployment of the production branch speaks for the site: a feature branch's
        pushsite.toml never changes production's branch or domains.
        """
        if settings is None:
            return
        site = self.state.get_site(deployment.site)
        if deployment.branch != site.production_branch:
            return
        for host in getattr(settings, "domains", ()):  # all or nothing: check before writing
            owner = self.state.domain_site(host)
            if owner is not None and owner != site.name:
                raise DomainConflict(f"pushsite.toml claims the domain {host}, which site "
                                     f"{owner!r} holds; remove it there first with "
                                     f"`pushsite domains remove {owner} {host}`")
        tags = bool(getattr(settings, "tags", False))
        if tags != bool(site.settings.get("tags", False)):
            site.settings["tags"] = tags
            self.state.put_site(site)
            log.info("settings", f"tag pushes {'deploy' if tags else 'are ignored'} "
                     "(pushsite.toml)")
        branch = getattr(settings, "production_branch", None)
        if branch and branch != site.production_branch:
            site.production_branch = names.check_branch_name(branch)
            self.state.put_site(site)
            log.info("settings", f"production branch is now {branch!r} (pushsite.toml)")
        for host in getattr(settings, "domains", ()):
            self.state.claim_domain(host, site.name)

    def _complete(self, deployment: Deployment, log: DeployLog) -> Deployment:
        deployment.status = Status.READY
        deployment.finished = time.time()
        if not self.state.update_deployment(deployment, expect_status=Status.RUNNING):
            # another delivery of it finished first (the same manifest: that result stands),
            # or a cancel (or a restart's recovery) got in after the last stop check
            current = self.state.get_deployment(deployment.id).status
            if current.servable:
                return self.state.get_deployment(deployment.id)
            stopped = DeploymentCancelled if current == Status.CANCELLED else DeploymentFailed
            raise stopped(f"deployment {deployment.id} became {current} before it could go "
                          "live; the live site is unchanged")
        self._discard_staged(deployment)
        moved = self.activate(deployment, log)
        if moved:
            deployment.status = Status.LIVE
            self.state.update_deployment(deployment)
            self._refresh_status(deployment.id)  # a newer one may have moved past it meanwhile
            deployment.status = self.state.get_deployment(deployment.id).status
        log.info("done", f"{deployment.status} in {deployment.seconds:.2f}s: "
                 f"{deployment.files} files, {deployment.blobs_new} new blobs, "
                 f"{deployment.blobs_reused} reused", seconds=deployment.seconds)
        return deployment

    def _fail(self, deployment: Deployment, exc: BaseException, log: DeployLog) -> None:
        if isinstance(exc, DeploymentTimedOut):
            status = Status.TIMED_OUT
        elif isinstance(exc, DeploymentCancelled):
            status = Status.CANCELLED
        else:
            status = Status.FAILED
        message = str(exc) if isinstance(exc, PushsiteError) else f"internal error: {exc!r}"
        was = deployment.status
        deployment.status = status
        deployment.error = message
        deployment.finished = time.time()
        if not self.state.update_deployment(deployment, expect_status=was):
            # someone else settled it meanwhile (a cancel, a worker that took it over and
            # finished): their outcome stands
            current = self.state.get_deployment(deployment.id)
            log.error(str(status), f"stopped ({message}); the deployment is already "
                      f"{current.status}, which stands", error=type(exc).__name__)
            if current.status in (Status.FAILED, Status.CANCELLED):
                self._discard_staged(deployment)
            return
        log.error("failed" if status == Status.FAILED else str(status), message,
                  error=type(exc).__name__)
        if status in (Status.FAILED, Status.CANCELLED):  # a timed-out one may be resumed
            self._discard_staged(deployment)

    def _discard_staged(self, deployment: Deployment) -> None:
        if deployment.bundle_key and not _in_bucket(deployment.bundle_key):
            (self.config.staging / deployment.bundle_key).unlink(missing_ok=True)

    def _is_cancelled(self, deployment_id: str) -> bool:
        return self.state.get_deployment(deployment_id).status == Status.CANCELLED

    # aliases -----------------------------------------------------------------------------------
    def activate(self, deployment: Deployment, log: DeployLog | None = None) -> bool:
        """Move the branch's aliases to a ready deployment; a newer acceptance always wins."""
        site = self.state.get_site(deployment.site)
        targets = [branch_alias(deployment.branch)]
        if deployment.branch == site.production_branch:
            targets.insert(0, PRODUCTION)
        moved_any = False
        for alias in targets:
            before = self.state.get_alias(site.name, alias)
            if self.state.move_alias(site.name, alias, deployment.id, deployment.id):
                moved_any = True
                if log:
                    log.info("activate", f"{alias} now serves {deployment.id}")
                if before and before.deployment_id != deployment.id:
                    self._refresh_status(before.deployment_id)
            elif log:
                log.warning("activate", f"{alias} was not moved: a newer deployment holds it")
        return moved_any

    def rollback(self, site_name: str, deployment_id: str | None = None) -> Deployment:
        """Point production at an earlier ready deployment: an alias move, no copying."""
        site = self.site(site_name)
        current = self.state.get_alias(site.name, PRODUCTION)
        if deployment_id is None:
            target = self._previous_production(site, current.deployment_id if current else None)
        else:
            target = self.state.get_deployment(deployment_id)
            if target.site != site.name:
                raise DeploymentNotFound(
                    f"deployment {deployment_id} belongs to site {target.site!r}, "
                    f"not {site.name!r}")
        if not target.status.servable:
            raise ConfigError(f"deployment {target.id} is {target.status}, not ready: only a "
                              "ready deployment can go live")
        if not self.state.move_alias(site.name, PRODUCTION, target.id, ids.new_id()):
            raise AliasConflict(f"production of {site.name} moved while rolling back; retry")
        self._mark_live(target)
        if current and current.deployment_id != target.id:
            self._refresh_status(current.deployment_id)
        self._note(target, "info", "activate", f"rolled back: production now serves {target.id}")
        return self.state.get_deployment(target.id)

    def _previous_production(self, site: Site, current: str | None) -> Deployment:
        for candidate in self.state.list_deployments(site.name, branch=site.production_branch,
                                                     limit=500):
            if candidate.id != current and candidate.status.servable and (
                current is None or candidate.id < current
            ):
                return candidate
        raise NotFound(f"site {site.name} has no earlier ready deployment to roll back to")

    def _mark_live(self, deployment: Deployment) -> None:
        if deployment.status != Status.LIVE:
            deployment.status = Status.LIVE
            self.state.update_deployment(deployment)

    def _refresh_status(self, deployment_id: str) -> None:
        """A deployment no alias points at any more is ready, not live."""
        try:
            old = self.state.get_deployment(deployment_id)
        except DeploymentNotFound:
            return
        pointed = any(a.deployment_id == deployment_id for a in self.state.list_aliases(old.site))
        if old.status == Status.LIVE and not pointed:
            old.status = Status.READY
            self.state.update_deployment(old)

    def delete_branch(self, site_name: str, branch: str) -> None:
        """A deleted branch loses its preview (production is never removed this way)."""
        alias = self.state.get_alias(site_name, branch_alias(branch))
        self.state.delete_alias(site_name, branch_alias(branch))
        if alias:
            self._refresh_status(alias.deployment_id)

    def cancel(self, deployment_id: str) -> Deployment:
        deployment = self.state.get_deployment(deployment_id)
        for status in (Status.QUEUED, Status.RUNNING):
            deployment.status = Status.CANCELLED
            deployment.error = "cancelled"
            deployment.finished = time.time()
            if self.state.update_deployment(deployment, expect_status=status):
                if status == Status.QUEUED:
                    self._discard_staged(deployment)
                self._note(deployment, "info", "cancelled", f"cancelled while {status}")
                return deployment
        current = self.state.get_deployment(deployment_id)
        raise ConfigError(f"deployment {deployment_id} is {current.status}; only a queued or "
                          "running deployment can be cancelled")

    # the queue ----------------------------------------------------------------------------------
    def process(self, item: QueueItem, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Handle one queue message: run its deployment unless a newer one superseded it.

        A timed-out deployment runs again from where its blobs got to; a running one is taken
        over only when its message comes back (see _take_over).
        """
        deployment_id = item.body.get("deployment")
        if not deployment_id:
            return
        try:
            deployment = self.state.get_deployment(deployment_id)
        except DeploymentNotFound:
            return
        if deployment.status == Status.RUNNING and item.attempts > 1:
            deployment = self._take_over(deployment)
        if deployment.status not in (Status.QUEUED, Status.TIMED_OUT):
            return
        runnable = deployment.status
        newer = [d for d in self.state.list_deployments(deployment.site, branch=deployment.branch,
                                                        status=Status.QUEUED, limit=5)
                 if d.id > deployment.id]
        if newer:
            deployment.status = Status.CANCELLED
            deployment.error = f"superseded by {newer[0].id}, a newer push to {deployment.branch}"
            deployment.finished = time.time()
            if self.state.update_deployment(deployment, expect_status=runnable):
                self._discard_staged(deployment)
                self._note(deployment, "info", "skipped", deployment.error)
            return
        # run and _fetch record any error on the deployment and its log; one that is no
        # PushsiteError (a bug, an OS error) must not end the worker that called us either
        with contextlib.suppress(Exception):
            if "fetch" in item.body and not deployment.bundle_key:
                self._fetch(deployment, item.body["fetch"])
            self.run(deployment_id, timeout=timeout)

    def _take_over(self, deployment: Deployment) -> Deployment:
        """Queue again a running deployment whose message the queue delivered again.

        A worker keeps its message hidden while it runs (worker.py's heartbeat), so a message
        that comes back means that worker stopped: this one resumes the deployment (stored
        blobs are reused). `remember` on the interrupted run's start lets one taker win.
        """
        if not self.state.remember(f"takeover:{deployment.id}:{deployment.started}"):
            return deployment
        deployment.status = Status.QUEUED
        if self.state.update_deployment(deployment, expect_status=Status.RUNNING):
            self._note(deployment, "warning", "accept", "its worker stopped (the queue "
                       "delivered it again); taken over, stored blobs are reused")
        return self.state.get_deployment(deployment.id)

    def _resumable(self, bundle_key: str) -> bool:
        """Its bundle can be read again: a pushed commit, or a file still in staging ("" is a
        stream `pushsite deploy` read once and never staged)."""
        return bundle_key.startswith("git:") or bool(
            bundle_key and (self.config.staging / bundle_key).exists())

    def recover(self) -> list[str]:
        """After a restart: deployments left running were interrupted; queue them again.

        Bundles in a staging bucket are left to their queue: other machines may run them.
        """
        requeued = []
        for deployment in self.state.list_deployments(status=Status.RUNNING, limit=1000):
            if _in_bucket(deployment.bundle_key):
                continue
            if not self._resumable(deployment.bundle_key):
                deployment.status = Status.FAILED
                deployment.error = ("interrupted by a restart, and its bundle is gone (a "
                                    "streamed deploy cannot resume); deploy it again")
                deployment.finished = time.time()
                if self.state.update_deployment(deployment, expect_status=Status.RUNNING):
                    self._note(deployment, "error", "failed", deployment.error)
                continue
            deployment.status = Status.QUEUED
            if self.state.update_deployment(deployment, expect_status=Status.RUNNING):
                self._note(deployment, "warning", "accept", "interrupted by a restart; queued "
                           "again (stored blobs are reused)")
                self.queue.send({"deployment": deployment.id})
                requeued.append(deployment.id)
        # queued ones whose message may have been lost between recording and sending (a
        # duplicate message is harmless: only one runner wins queued -> running)
        for deployment in self.state.list_deployments(status=Status.QUEUED, limit=1000):
            if not _in_bucket(deployment.bundle_key) and self._resumable(deployment.bundle_key):
                self.queue.send({"deployment": deployment.id})
                requeued.append(deployment.id)
        return requeued

    # housekeeping -------------------------------------------------------------------------------
    def manifest(self, deployment_id: str) -> Manifest:
        try:
            return Manifest.from_bytes(self.store.get(manifest_key(deployment_id)))
        except NotFound:
            raise DeploymentNotFound(
                f"deployment {deployment_id} has no manifest (it never became ready)"
            ) from None

    def prune(self, site_name: str, keep: int) -> dict[str, int]:
        """Delete old deployments and the blobs no kept deployment uses (housekeeping.py)."""
        return housekeeping.prune(self, site_name, keep)

    def verify(self) -> list[str]:
        """The problems found in every ready manifest's blobs (housekeeping.py)."""
        return housekeeping.verify(self)

    # tokens -------------------------------------------------------------------------------------
    def create_token(self, name: str, site: str | None = None,
                     scopes: list[str] | None = None) -> str:
        return tokens.create_token(self.state, name, site, scopes)

    def check_token(self, secret: str, site: str | None = None,
                    scope: str = "deploy") -> Token:
        return tokens.check_token(self.state, secret, site, scope)


def _in_bucket(bundle_key: str) -> bool:
    """A bundle staged in an S3 bucket (s3staging.py), not in the local staging folder."""
    return bundle_key.startswith("s3://")


def _sealed_blobs(refs: dict[str, str]) -> dict[str, Known]:
    """hash -> variants and refs, from the blob index of packs sealed by timed-out runs."""
    suffixes = {".gz": "gzip", ".br": "br"}
    found: dict[str, tuple[dict[str, int], dict[str, str]]] = {}
    for key, ref in refs.items():
        name = key.rpartition("/")[2]
        digest, dot, suffix = name.partition(".")
        encoding = suffixes.get(dot + suffix, "") if dot else ""
        encodings, where = found.setdefault(digest, ({}, {}))
        where[encoding] = ref
        if encoding:
            encodings[encoding] = int(ref.rpartition("+")[2])
    return {digest: variants for digest, variants in found.items() if "" in variants[1]}


class _Opening:
    """The service's store while a thread opens it: the first use waits for that thread."""

    def __init__(self, service: Service, ready: Future[Any]) -> None:
        self._service = service
        self._ready = ready

    def __getattr__(self, name: str) -> Any:
        self._ready.result()
        return getattr(self._service.store, name)
