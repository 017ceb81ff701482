"""The run state machine: queued -> running -> ready -> live, or failed / timed_out /
cancelled, with every step a compare-and-set on the deployment so two runners never both win.
"""


from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from pushsite import names
from pushsite.deploy import handover
from pushsite.deploy.builder import (
    BundleOutcome,
    Counters,
    Deadline,
    Known,
    ManifestBuilder,
    Target,
    store_index,
)
from pushsite.deploy.later import Later
from pushsite.deploy.memory import cap_arenas, trimmed_heap
from pushsite.deploy.tarball import deploy_bundle
from pushsite.diskspace import as_disk_full, settling
from pushsite.errors import (
    BackendUnavailable,
    DeploymentCancelled,
    DeploymentFailed,
    DeploymentNotFound,
    DeploymentTimedOut,
    DiskFull,
    DomainConflict,
    NotFound,
    PushsiteError,
)
from pushsite.model import (
    PRODUCTION,
    Deployment,
    Manifest,
    Status,
    branch_alias,
    manifest_key,
    pending_key,
    site_scope,
)
from pushsite.service import sweeps
from pushsite.service.base import DEFAULT_TIMEOUT, ServiceBase
from pushsite.service.lease import Heartbeat, Runner
from pushsite.service.logs import DeployLog
from pushsite.service.optimisemessage import optimise_message
from pushsite.service.progress import ProgressWriter, copy_counters
from pushsite.state.counters import CounterFile, histogram
from pushsite.state.counters import key as counter_key
from pushsite.stores import ObjectStore, PackingStore
from pushsite.words import plural

_log = logging.getLogger("pushsite.service")
# seconds: a stage of a small site takes milliseconds, a large one minutes
STAGE_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


def deadline_margin(timeout: float) -> float:
    """How long before a hard limit the pipeline stops, to record how far it got."""
    return min(5.0, timeout * 0.05)


class Running(ServiceBase):
    """Running one deployment to its end, and moving the aliases it earns."""

    _counters: CounterFile | None = None

    @property
    def counters(self) -> CounterFile:
        """This home's metrics (state/counters.py): every process adds to the same file."""
        if self._counters is None:
            self._counters = CounterFile(self.config.home / "metrics.db")
        return self._counters

    def close(self, exiting: bool = False) -> None:
        """The backends, and metrics.db unless the process ends right after (the exit
        closes it without the checkpoint a close makes): a service closed and dropped left
        its connection open in the home (a tmpfs could not be unmounted)."""
        if self._counters is not None and not exiting:
            self._counters.close()
        handover.stop_threads()  # a deploy's early brotli left for an after pass not run here
        super().close(exiting)

    def _announce(self, deployment: Deployment, event: str | None = None) -> None:
        """Queue what the site's notification endpoints and its git host are told (sent by a
        worker, service/notify.py and statuses.py); never fails what it reports. A site with
        no endpoints whose deployment no webhook started tells nobody: notify and statuses
        (with their imports) are not loaded for it (issue 20: a one-shot deploy's start)."""
        try:
            if not deployment.source.startswith("webhook:") \
                    and not self.state.list_endpoints(deployment.site):
                return
            from pushsite.service import notify, statuses

            event = event or notify.event_for(deployment.status)
            notify.announce(self, deployment.site, event,
                            notify.deployment_data(self, deployment))
            if event != "deployment.started":
                statuses.announce(self, deployment)
        except Exception as exc:  # noqa: BLE001 - logged; the deployment stands either way
            _log.warning("could not queue the %s notifications of deployment %s: %s",
                         event, deployment.id, exc)

    def _production_changed(self, target: Deployment, previous: str | None,
                            reason: str) -> None:
        """Announce that production serves `target` now (a rollback or a promote)."""
        from pushsite.service import notify

        try:
            data = {"site": target.site, "production": target.id, "previous": previous,
                    "reason": reason, **notify.deployment_data(self, target)}
            notify.announce(self, target.site, "site.production_changed", data)
        except Exception as exc:  # noqa: BLE001 - logged; the alias has moved either way
            _log.warning("could not queue the production change of %s: %s", target.site, exc)

    def _count_outcome(self, deployment: Deployment) -> None:
        """The metrics of a deployment that ended (service/metrics.py renders them)."""
        if not self.config.metrics:
            return
        deltas = {counter_key("pushsite_deployments_total", status=str(deployment.status),
                      source=deployment.source or "unknown"): 1.0}
        if deployment.status.servable:
            d = deployment
            deltas[counter_key("pushsite_deploy_bytes_read_total")] = float(d.bytes_in)
            deltas[counter_key("pushsite_deploy_bytes_stored_total")] = float(d.bytes_stored)
            deltas[counter_key("pushsite_blobs_total", kind="new")] = float(d.blobs_new)
            deltas[counter_key("pushsite_blobs_total", kind="reused")] = float(d.blobs_reused)
            if deployment.seconds is not None:
                deltas |= histogram("pushsite_deploy_stage_seconds", deployment.seconds,
                                    STAGE_BOUNDS, stage="total")
        self.counters.add_quietly(deltas)

    def _time_stage(self, stage: str, seconds: float) -> None:
        if self.config.metrics:
            self.counters.add_quietly(histogram("pushsite_deploy_stage_seconds", seconds,
                                                STAGE_BOUNDS, stage=stage))

    def run(
        self,
        deployment_id: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        progress: Callable[[Counters], None] | None = None,
        bundle: BinaryIO | None = None,
        folder: Path | None = None,
        build: bool = False,
        optimise: bool = True,
        live: Callable[[Deployment], None] | None = None,
    ) -> Deployment:
        """Run a queued deployment to its end; raises DeploymentFailed (or a subclass).

        Live first: it goes live with identity and gzip; brotli is made after the alias
        moved, here before returning when `optimise`, else by whoever takes the queued
        "optimise" message (or `optimise_now`, as the CLI does once it printed the URL).
        `live` is called with the deployment the moment its alias moved and the optimising
        message is queued, before its metrics, its notifications and the run's threads end
        (the CLI prints it there: time to live is what a deploy waits for). It must not
        raise: its error would be recorded on a deployment that is live.

        The files come from `bundle` (a tar.gz stream), `folder` (read in place, no tar), a
        git commit, or the staged bundle, in that order. A commit whose files ask for a build
        (service/building.py) is built in the sandbox first, and so is `folder` with `build`.

        Only one runner wins the queued -> running step, so a deployment delivered twice
        runs once; the winner holds the deployment's lease and a heartbeat renews it while
        it runs (service/lease.py). With `timeout`, the pipeline stops `deadline_margin`
        before it. Every failure after that step is recorded (_stopped): an outage of the
        store or the state puts a resumable deployment back to `queued` and raises
        BackendUnavailable (a queue message is then retried), anything else fails it.
        """
        deployment = self.state.get_deployment(deployment_id)
        if deployment.status not in (Status.QUEUED, Status.TIMED_OUT):
            return deployment
        previous = deployment.status
        ran_before = previous == Status.TIMED_OUT or bool(deployment.started)
        deployment.status = Status.RUNNING
        deployment.started = time.time()
        deployment.error = ""
        deployment.runner = str(Runner.here(self.runner_kind))
        deployment.lease_until = deployment.started + self.lease
        if not self.state.update_deployment(deployment, expect_status=previous):
            return self.state.get_deployment(deployment_id)
        self._announce(deployment, "deployment.started")
        log = self.log_for(deployment)
        builder: ManifestBuilder | None = None
        try:
            seen = sweeps.snapshot(self.state)  # after the record above: see service/sweeps.py
            with Heartbeat(self.state, deployment, self.lease) as beat, \
                    ProgressWriter(self.state, deployment, progress) as writer:
                builder = self._builder(deployment, ran_before, log, beat, timeout,
                                        writer.update)
                with trimmed_heap():
                    done = self._run_pipeline(deployment, builder, log, bundle, folder,
                                              build, seen=seen, live=live)
        except BaseException as caught:
            exc = self._disk_full(caught)
            if builder is not None:
                self._apply_counters(deployment, builder.counters)
            retry = bundle is None and folder is None and self._resumable(deployment.bundle_key)
            with settling():  # on a full disk, the reserve's room records it (diskspace.py)
                self._stopped(deployment, exc, log, retry=retry)
                log.flush()
            if exc is caught:
                raise
            raise exc from caught
        finally:
            log.flush()
        if optimise:
            self.optimise_now(done.id)
        return done

    def optimise_now(self, deployment_id: str) -> bool:
        """Make a live deployment's pending variants here (service/optimising.py); a
        failure is logged and left to the queued message's retry, never raised: the
        deployment is live and correct either way."""
        try:
            if not self._pending(deployment_id):
                return True
            from pushsite.service.optimising import optimise_deployment

            return optimise_deployment(self, deployment_id)
        except Exception as exc:  # noqa: BLE001 - logged on the deployment too
            _log.warning("optimising deployment %s failed: %s", deployment_id, exc)
            return False

    def _builder(self, deployment: Deployment, ran_before: bool, log: DeployLog,
                 beat: Heartbeat, timeout: float | None,
                 progress: Callable[[Counters], None] | None) -> ManifestBuilder:
        """The deployer for one run. Opening the store and reading the previous manifest
        happen here (or on a thread the builder awaits), inside the run's recording `try`."""
        limit = None if timeout is None else max(timeout - deadline_margin(timeout), 0.0)
        deadline = Deadline.after(limit, cancelled=lambda: _lease_lost(deployment, beat)
                                  or self._is_cancelled(deployment.id))
        # a push needs the previous table whole (paths and git ids); a bundle only which
        # blobs are stored with which variants, read without building 100,000 entries
        from_git = deployment.bundle_key.startswith("git:")
        cap_arenas()  # this process deploys: before the deploy's threads start
        if self.config.metrics and self._counters is None:  # the first count of a process:
            Later.start(self.counters.open, name="metrics-open")  # made while files are read
        if from_git:
            target = Later.now(self._deploy_setup(deployment, ran_before, from_git))
        else:  # the store opens, and the previous blobs are read, while files are read
            target = Later.start(partial(self._deploy_setup, deployment, ran_before, from_git),
                                 name="store-open")
        return ManifestBuilder(target, log, deadline, workers=self.config.workers,
                               progress=progress, later=_live_first(),
                               previous=self._previous_manifest(deployment) if from_git
                               else None)

    def _stopped(self, deployment: Deployment, exc: BaseException, log: DeployLog, *,
                 retry: bool) -> None:
        """Record why a run stopped: a backend outage (BackendUnavailable) gives a deployment
        whose bundle can be read again (`retry`) back to the queue, anything else fails it.

        When even that cannot be written (the state is down), `exc` carries a note saying
        so and the deployment stays `running` under a lease nobody renews: a recovery takes
        it over once the lease runs out. Nothing is swallowed: the caller re-raises `exc`.
        """
        try:
            # a full disk fails it: a retry would only fill the disk again
            if retry and isinstance(exc, BackendUnavailable) and not isinstance(exc, DiskFull):
                self._requeue(deployment, exc, log)
            else:
                self._fail(deployment, exc, log)
        except Exception as unrecorded:  # noqa: BLE001 - noted on exc, which is re-raised
            exc.add_note(f"recording this on deployment {deployment.id} failed too "
                         f"({unrecorded}); its lease runs out and a recovery settles it")
            if isinstance(exc, DiskFull):  # the one line the user sees says so too
                exc.message += (f"; deployment {deployment.id} could not be marked failed "
                                f"either: it stays running until its lease runs out "
                                f"({self.lease:g} s), then `pushsite serve` or a worker "
                                "takes it over and fails it")

    def _requeue(self, deployment: Deployment, exc: BaseException, log: DeployLog) -> None:
        deployment.status = Status.QUEUED
        if self.state.update_deployment(deployment, expect_status=Status.RUNNING,
                                        expect_runner=deployment.runner):
            log.warning("accept", f"stopped: {exc}; queued again for a retry (stored blobs "
                        "are reused)", error=type(exc).__name__)
            return
        current = self.state.get_deployment(deployment.id)
        log.warning("accept", f"stopped ({exc}); the deployment is already "
                    f"{current.status}, which stands", error=type(exc).__name__)

    def _deploy_staged(self, deployment: Deployment, builder: ManifestBuilder,
                       log: DeployLog) -> BundleOutcome:
        """A staged deployment: an incremental upload's blobs, a bundle that asks for a build,
        or a bundle deployed as it is."""
        from pushsite.service import building, uploads

        if uploads.is_staged_upload(deployment.bundle_key):
            return uploads.deploy_uploaded(self, deployment, builder)
        built = building.deploy_staged_built(self, deployment, builder, log)
        if built is not None:
            return built
        with self._open_staged(deployment) as staged:
            return deploy_bundle(staged, builder, self.config.limits(), deployment.id,
                                 deployment.site, deployment.created)

    def _run_pipeline(self, deployment: Deployment, builder: ManifestBuilder, log: DeployLog,
                      bundle: BinaryIO | None, folder: Path | None = None,
                      build: bool = False, *, seen: sweeps.Seen | None = None,
                      again: bool = False,
                      live: Callable[[Deployment], None] | None = None) -> Deployment:
        # building and uploads are imported where they are used: a CLI deploy of a bundle or
        # a folder needs neither, and importing them is ~15 ms of its start (issue 12's bench)
        log.info("read", "reading the bundle", workers=self.config.workers)
        deployment.stage = "read"  # the stage the progress writer reports (service/progress.py)
        reading = time.monotonic()
        if deployment.bundle_key.startswith("git:"):
            from pushsite.service import building

            outcome = (building.deploy_commit_built(self, deployment, builder, log)
                       or self._deploy_commit(deployment, builder))
        elif folder is not None and build:
            from pushsite.service import building

            outcome = building.deploy_folder_built(self, deployment, builder, log, folder)
        elif folder is not None:
            from pushsite.deploy.folder import deploy_folder

            outcome = deploy_folder(folder, builder, self.config.limits(), deployment.id,
                                    deployment.site, deployment.created)
        elif bundle is not None:
            outcome = deploy_bundle(bundle, builder, self.config.limits(), deployment.id,
                                    deployment.site, deployment.created)
        else:
            outcome = self._deploy_staged(deployment, builder, log)
        self._time_stage("read", time.monotonic() - reading)  # read, hashed, stored: one pass
        deployment.commit = deployment.commit or outcome.commit
        self._apply_counters(deployment, builder.counters)
        deployment.files = len(outcome.manifest.files)
        deployment.stage = "manifest"
        log.info("manifest", f"wrote the manifest: {builder.counters.describe()}",
                 files=deployment.files, bytes_stored=deployment.bytes_stored)
        self._apply_settings(deployment, outcome.settings, log)
        for listener in self.manifest_listeners:
            listener(outcome.manifest)
        lost = set() if seen is None else self._lost_to_prune(outcome.manifest, seen)
        if lost:
            return self._store_again(deployment, builder, log, bundle, folder, build, lost,
                                     again, live)
        return self._complete(deployment, log, live)

    def _lost_to_prune(self, manifest: Manifest, seen: sweeps.Seen) -> set[str]:
        """The objects the manifest references that a prune's batch deleted while this
        deployment ran (service/sweeps.py; nothing to ask unless a sweep overlapped it)."""
        def missing() -> set[str]:
            from pushsite.service.housekeeping import referenced

            wanted = referenced(manifest)
            return wanted - self.store.has(wanted)

        return sweeps.settle(self.state, seen, missing)

    def _store_again(self, deployment: Deployment, builder: ManifestBuilder, log: DeployLog,
                     bundle: BinaryIO | None, folder: Path | None, build: bool,
                     lost: set[str], again: bool,
                     live: Callable[[Deployment], None] | None = None) -> Deployment:
        """Read the files once more into a builder that asks the store about every blob, so
        what a prune deleted is written again; a bundle read from a stream cannot be."""
        what = (f"a prune running beside it deleted {len(lost)} stored objects it reused "
                f"(e.g. {min(lost)})")
        if bundle is not None or again:
            raise DeploymentFailed(f"deployment {deployment.id}: {what}, and its files cannot "
                                   "be read again here; nothing went live: deploy it again")
        log.warning("manifest", f"{what}: reading the files again to store them",
                    lost=len(lost))
        seen = sweeps.snapshot(self.state)
        from_git = deployment.bundle_key.startswith("git:")
        opened = self._deploy_setup(deployment, True, from_git)
        fresh = ManifestBuilder(Later.now(Target(opened.store, {}, opened.packer)), log,
                                builder.deadline, workers=self.config.workers,
                                progress=builder.progress)
        return self._run_pipeline(deployment, fresh, log, None, folder, build, seen=seen,
                                  again=True, live=live)

    def _staged_file(self, deployment: Deployment) -> Path | None:
        """A bundle waiting in the local staging folder (one that may be built first)."""
        if not deployment.bundle_key or "://" in deployment.bundle_key:
            return None
        path = self.config.staging / deployment.bundle_key
        return path if path.is_file() else None

    def _fetch(self, deployment: Deployment, fetch: dict[str, str]) -> None:
        """Download a webhook's archive into staging (streamed, with retries)."""
        from pushsite.sources.archive import ArchiveSource, fetch_archive

        hook = self.state.get_site(deployment.site).settings.webhook
        source = ArchiveSource(fetch["provider"], hook.base_url, fetch["repo"],
                               fetch["commit"], hook.access_token,
                               fetch.get("project_id", ""))
        log = self.log_for(deployment)
        self.config.staging.mkdir(parents=True, exist_ok=True)
        target = self.config.staging / f"{deployment.id}.tar.gz"
        try:
            with open(target, "wb") as out:
                size = fetch_archive(source, out, max_bytes=self.config.max_total_mb << 20)
        except BaseException as caught:
            target.unlink(missing_ok=True)
            exc = as_disk_full(caught, self.config.staging)
            with settling():
                self._fail(deployment, exc, log)
                log.flush()
            if exc is caught:
                raise
            raise exc from caught
        log.info("accept", f"fetched the archive of {fetch['commit'][:12]} ({size} bytes)")
        log.flush()
        deployment.bundle_key = target.name
        self.state.update_deployment(deployment)

    def _deploy_commit(self, deployment: Deployment, builder: ManifestBuilder) -> Any:
        from pushsite.deploy.builder import BundleOutcome
        from pushsite.deploy.gitcommit import SiteRepos, deploy_commit

        commit = deployment.bundle_key.removeprefix("git:")
        previous = builder.previous
        manifest = deploy_commit(builder, SiteRepos(self.config.repos), deployment.site, commit,
                                 deployment.id, deployment.created, previous)
        return BundleOutcome(manifest, commit, 0, getattr(builder, "settings", None))

    def _deploy_setup(self, deployment: Deployment, ran_before: bool, from_git: bool) -> Target:
        """The store (opened here), what a deploy knows it holds, and the pack it writes to
        (None: loose objects)."""
        known: Mapping[str, Known] = {} if from_git else self._previous_blobs(deployment)
        packer = None
        store = self.store
        if isinstance(store, PackingStore):
            packer = store.packer(deployment.id)
            if ran_before and packer is not None:  # reuse what the earlier run packed
                known = {**known, **_sealed_blobs(store.packed_blobs(deployment.id))}
        return Target(self.store, known, packer)

    def _previous_blobs(self, deployment: Deployment) -> Mapping[str, Known]:
        """hash -> stored variants of the blobs the previous manifest names (see below); a
        big one on a loose store read from its index by path, block by block, into a
        compact table (deploy/entries.py: memory flat in the number of files)."""
        import json

        from pushsite import pathindex
        from pushsite.deploy.entries import StoredBlobs

        for alias in (branch_alias(deployment.branch), PRODUCTION):
            current = self.state.get_alias(deployment.site, alias)
            if current is not None:
                if not isinstance(self.store, PackingStore):
                    key = pathindex.index_key(current.deployment_id)
                    try:
                        index = pathindex.PathIndex(partial(_ranged, self.store, key))
                    except NotFound:
                        pass
                    else:
                        # a row with refs names a quick gzip (a loose store's only refs,
                        # encode.has_fast_gzip): left to the deploy to ask the store about
                        return StoredBlobs((row[0], row[3]) for _, row in index.rows()
                                           if len(row) <= 5 or not row[5])
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
        """Finish a deployment recorded `running` whose manifest was built elsewhere (a
        redeploy): it takes the lease first, and every failure is recorded as in `run`."""
        log = self.log_for(deployment)
        try:
            self._hold(deployment)
            seen = sweeps.snapshot(self.state)
            with Heartbeat(self.state, deployment, self.lease):
                store_index(self.store, manifest)
                self.store.put(manifest_key(deployment.id), manifest.to_bytes(),
                               {"content-type": "application/json"})
                self.store.flush()
                lost = self._lost_to_prune(manifest, seen)
                if lost:
                    raise DeploymentFailed(
                        f"deployment {deployment.id}: a prune running beside it deleted "
                        f"{len(lost)} stored objects it references (e.g. {min(lost)}); "
                        "nothing went live")
                return self._complete(deployment, log)
        except BaseException as exc:
            with settling():
                self._stopped(deployment, exc, log, retry=False)
            raise
        finally:
            log.flush()

    def _hold(self, deployment: Deployment) -> None:
        """Take the lease of a deployment created `running` with none (or its creator's)."""
        runner = str(Runner.here(self.runner_kind))
        until = time.time() + self.lease
        if not self.state.claim_lease(deployment.id, runner, until, holder=deployment.runner,
                                      held_until=deployment.lease_until):
            current = self.state.get_deployment(deployment.id)
            raise DeploymentFailed(f"deployment {deployment.id} is {current.status} under "
                                   "another runner's lease; it was not run here")
        deployment.runner, deployment.lease_until = runner, until

    def _apply_counters(self, deployment: Deployment, counters: Counters) -> None:
        copy_counters(counters, deployment)

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
        from pushsite.service import domains as claims  # only a site whose files say so

        hosts = [claims.claimable(host, self.config)  # all or nothing: check before writing
                 for host in getattr(settings, "domains", ())]
        for host in hosts:
            owner = self.state.domain_site(host)
            if owner is not None and owner != site.name:
                raise DomainConflict(f"pushsite.toml claims the domain {host}, which site "
                                     f"{owner!r} holds; remove it there first with "
                                     f"`pushsite domains remove {owner} {host}`")
        tags = bool(getattr(settings, "tags", False))
        if tags != site.settings.tags:
            site.settings = replace(site.settings, tags=tags)
            self.state.put_site(site)
            log.info("settings", f"tag pushes {'deploy' if tags else 'are ignored'} "
                     "(pushsite.toml)")
        branch = getattr(settings, "production_branch", None)
        if branch and branch != site.production_branch:
            site.production_branch = names.check_branch_name(branch)
            self.state.put_site(site)
            log.info("settings", f"production branch is now {branch!r} (pushsite.toml)")
        # the site's own files speak for this site only: a new claim waits for an admin's
        # approval or DNS proof (service/domains.py)
        for host in hosts:
            claim = self.state.claim_domain(host, site.name, scope=site_scope(site.name))
            if not claim.approved:
                token = claims.domain_token(self.state, site)
                log.warning("settings", f"custom domain {host} is pending, not served: "
                            f"{claims.how_to_approve(site.name, host, token)}",
                            host=host, status=str(claim.status))

    def _complete(self, deployment: Deployment, log: DeployLog,
                  live: Callable[[Deployment], None] | None = None) -> Deployment:
        deployment.status = Status.READY
        deployment.finished = time.time()
        if not self.state.update_deployment(deployment, expect_status=Status.RUNNING,
                                            expect_runner=deployment.runner):
            # another delivery of it finished first (the same manifest: that result stands),
            # or a cancel (or a recovery that took over an expired lease) got in after the
            # last stop check
            current = self.state.get_deployment(deployment.id).status
            if current.servable:
                return self.state.get_deployment(deployment.id)
            stopped = DeploymentCancelled if current == Status.CANCELLED else DeploymentFailed
            raise stopped(f"deployment {deployment.id} became {current} before it could go "
                          "live; the live site is unchanged")
        self._discard_staged(deployment)
        deployment.stage = "activate"
        activating = time.monotonic()
        moved = self.activate(deployment, log)
        self._time_stage("activate", time.monotonic() - activating)
        deployment.stage = "done"
        if moved:  # live since activate claimed it; a newer one may have moved past it
            self.state.update_deployment(deployment, expect_status=Status.LIVE)
            self._refresh_status(deployment.id)
            deployment.status = self.state.get_deployment(deployment.id).status
        log.info("done", f"{deployment.status} in {deployment.seconds:.2f}s: "
                 f"{plural(deployment.files, 'file')}, "
                 f"{plural(deployment.blobs_new, 'new blob')}, "
                 f"{deployment.blobs_reused} reused", seconds=deployment.seconds)
        self._queue_optimising(deployment, log)  # before it is said: the record a crash leaves
        if live is not None:
            live(deployment)
        self._count_outcome(deployment)
        self._announce(deployment)
        return deployment

    def _pending(self, deployment_id: str) -> bool:
        """Whether its brotli variants wait (deploy/optimise.py is_pending), asked without
        loading the optimiser: a small site goes live whole, with nothing left to make."""
        return bool(self.store.has([pending_key(deployment_id)]))

    def _queue_optimising(self, deployment: Deployment, log: DeployLog) -> None:
        """A deployment live with variants still to make: the queued message is the record
        a crash leaves (service/optimising.py); never fails the live deployment."""
        try:
            if not deployment.status.servable or not self._pending(deployment.id):
                return
            self.queue.send(optimise_message(deployment.id))
        except Exception as exc:  # noqa: BLE001 - the marker stays; a later activation resends
            log.warning("optimise", f"could not queue the optimising of brotli variants: {exc}")
            return
        log.info("optimise", "optimising queued: brotli variants are made now that it is live")

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
        deployment.error_kind = (type(exc).__name__ if isinstance(exc, PushsiteError)
                                 else "internal")
        deployment.finished = time.time()
        holder = deployment.runner if was == Status.RUNNING else None
        if not self.state.update_deployment(deployment, expect_status=was,
                                            expect_runner=holder):
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
        self._count_outcome(deployment)
        self._announce(deployment)
        if status in (Status.FAILED, Status.CANCELLED):  # a timed-out one may be resumed
            self._discard_staged(deployment)

    def activate(self, deployment: Deployment, log: DeployLog | None = None) -> bool:
        """Move the branch's aliases to a ready deployment; a newer acceptance always wins.
        A draft moves none: it stays ready at its own URL until promoted.

        The deployment is claimed `live` (`claim_live`) before any alias moves, so a prune
        (which drops only `ready` ones) never deletes the manifest of one it moves onto; it
        goes back to `ready` when a newer deployment holds every alias."""
        if deployment.draft:
            if log:
                log.info("activate", f"a draft: no alias moved; promote it with `pushsite "
                         f"promote {deployment.id}`")
            return False
        site = self.state.get_site(deployment.site)
        targets = [branch_alias(deployment.branch)]
        if deployment.branch == site.production_branch:
            if site.settings.locked:  # stays ready, as a draft does, until promoted
                if log:
                    log.info("activate", f"production of {site.name} is locked: not published"
                             f"; promote it with `pushsite promote {deployment.id}`, or "
                             f"`pushsite unlock {site.name}`")
                return False
            targets.insert(0, PRODUCTION)
        if not self.claim_live(deployment):
            current = self.state.get_deployment(deployment.id)
            raise DeploymentCancelled(f"deployment {deployment.id} became {current.status} "
                                      f"({current.error or 'no reason given'}) before it could"
                                      " go live; the live site is unchanged")
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
        if not moved_any:
            self._refresh_status(deployment.id)
            deployment.status = self.state.get_deployment(deployment.id).status
        return moved_any

    def claim_live(self, deployment: Deployment) -> bool:
        """Mark a servable deployment `live` before an alias moves onto it: a compare-and-set
        on the status last read, so it fails (False, `deployment` left as it was) once a
        prune marked it pruned, and the prune's own compare-and-set fails on a `live` one
        (service/housekeeping.py). A plain write here brought a pruned deployment back as
        servable with no manifest.

        The claim holds for one lease (`lease_until`): a claimer that died before moving an
        alias leaves a live deployment no alias points at, which prune treats as ready once
        that lease ran out."""
        was = deployment.status
        for _ in range(5):  # each retry follows another writer's change of a servable status
            if not was.servable:
                return False
            deployment.status = Status.LIVE
            deployment.lease_until = time.time() + self.lease
            if self.state.update_deployment(deployment, expect_status=was):
                return True
            deployment.status = was  # as the record a failed write settles from (_fail) read it
            was = self.state.get_deployment(deployment.id).status
        return False

    def _mark_live(self, deployment: Deployment) -> None:
        """Live again (a rollback or a promote), claimed by `claim_live` before its alias
        moved: an optimising it stopped resumes."""
        log = self.log_for(deployment)
        self._queue_optimising(deployment, log)
        log.flush()

    def _refresh_status(self, deployment_id: str) -> None:
        """A deployment no alias points at any more is ready, not live."""
        try:
            old = self.state.get_deployment(deployment_id)
        except DeploymentNotFound:
            return
        pointed = any(a.deployment_id == deployment_id for a in self.state.list_aliases(old.site))
        if old.status == Status.LIVE and not pointed:
            old.status = Status.READY
            # compare-and-set: a prune may have dropped it since the read above (it became
            # servable again with no manifest when this was a plain write)
            self.state.update_deployment(old, expect_status=Status.LIVE)


def _ranged(store: ObjectStore, key: str, start: int, end: int) -> bytes:
    return store.get(key, start, end)


def _live_first() -> bool:
    """Brotli after the alias moved (the default); PUSHSITE_LIVE_FIRST=0 makes every variant
    before, as before issue 20 (the benchmark's baseline for "all variants done")."""
    return os.environ.get("PUSHSITE_LIVE_FIRST", "1") != "0"


def _lease_lost(deployment: Deployment, beat: Heartbeat) -> bool:
    """Stop a run whose lease another runner took (this one could not renew it in time)."""
    if beat.lost.is_set():
        raise DeploymentFailed(f"deployment {deployment.id} was taken over by another runner "
                               "(this one could not renew its lease in time); that runner "
                               "finishes it")
    return False


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

