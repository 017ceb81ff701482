"""What every verb stands on: the backends (opened on first use), logs, and staging.

The verbs themselves live in mixins of this class (running.py, queueing.py, verbs.py), each
module one concern, so that `Service` stays the one gate without one file holding it all.
"""


from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pushsite.backends import Detachable
from pushsite.config import Config
from pushsite.diskspace import as_disk_full
from pushsite.errors import (
    DeploymentFailed,
    DeploymentNotFound,
    NotFound,
)
from pushsite.model import (
    Deployment,
    Manifest,
    Status,
    manifest_key,
)
from pushsite.queues import Queue, open_queue
from pushsite.service.discarding import discard_folder
from pushsite.service.logs import DeployLog, sinks_from_env
from pushsite.state import StateStore, open_state_store
from pushsite.stores import ObjectStore, open_object_store

DEFAULT_TIMEOUT = 900.0


class ServiceBase:
    """The backends the Config names, opened on first use, and a deployment's log."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._store: ObjectStore | None = None
        self._opening = threading.Lock()
        self._state: StateStore | None = None
        self._queue: Queue | None = None
        self._sinks = sinks_from_env()
        # called with each manifest built here before its alias moves (the edge caches it)
        self.manifest_listeners: list[Callable[[Manifest], None]] = []
        # what kind of runner this process is, in the leases of the deployments it runs:
        # cli, serve, worker or lambda (each entry point says; see service/lease.py)
        self.runner_kind = "cli"

    @property
    def lease(self) -> float:
        """Seconds a runner's lease lasts; its heartbeat renews it every third of that."""
        return self.config.lease

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
            if exiting and isinstance(backend, Detachable):
                backend.detach()
            else:
                backend.close()

    def _disk_full(self, exc: BaseException) -> BaseException:
        """`exc`, or a DiskFull when it says the disk is full (a raw ENOSPC from a spool file,
        say): about the file it names, else the data directory."""
        where = getattr(exc, "filename", None)
        return as_disk_full(exc, Path(where) if isinstance(where, str) else self.config.home)

    def log_for(self, deployment: Deployment) -> DeployLog:
        return DeployLog(self.state, deployment.id, deployment.site, sinks=self._sinks)

    def _note(self, deployment: Deployment, level: str, stage: str, message: str,
              **fields: object) -> None:
        """One line in a deployment's log, written now (outside a running pipeline)."""
        log = self.log_for(deployment)
        getattr(log, level)(stage, message, **fields)
        log.flush()

    def _discard_staged(self, deployment: Deployment) -> None:
        if deployment.bundle_key and not in_bucket(deployment.bundle_key):
            staged = self.config.staging / deployment.bundle_key
            if staged.is_dir():  # an incremental upload's list and blobs (uploads.py)
                discard_folder(staged)  # moved aside now, removed on a thread
            else:
                staged.unlink(missing_ok=True)

    def _is_cancelled(self, deployment_id: str) -> bool:
        return self.state.get_deployment(deployment_id).status == Status.CANCELLED

    def _staged_size(self, key: str) -> int:
        if in_bucket(key):
            return 0
        try:
            return (self.config.staging / key).stat().st_size
        except FileNotFoundError:
            return 0

    @contextmanager
    def _open_staged(self, deployment: Deployment) -> Iterator[BinaryIO]:
        if in_bucket(deployment.bundle_key):
            from pushsite.sources.s3bundle import open_bundle

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

    def _resumable(self, bundle_key: str) -> bool:
        """Its bundle can be read again: a pushed commit, an object in a staging bucket (a
        run finds out if it is gone), or a file still in staging ("" is a stream
        `pushsite deploy` read once and never staged)."""
        return bundle_key.startswith("git:") or in_bucket(bundle_key) or bool(
            bundle_key and (self.config.staging / bundle_key).exists())

    def manifest(self, deployment_id: str) -> Manifest:
        try:
            return Manifest.from_bytes(self.store.get(manifest_key(deployment_id)))
        except NotFound:
            raise DeploymentNotFound(
                f"deployment {deployment_id} has no manifest (it never became ready)"
            ) from None


def in_bucket(bundle_key: str) -> bool:
    """A bundle staged in an S3 bucket (sources/s3bundle.py), not in the local staging folder."""
    return bundle_key.startswith("s3://")
