"""An upload that is still arriving: a deployment recorded `receiving` from its first byte.

Why: a 240 MB `pushsite deploy --server` takes a while to send, and until now the deployment
did not exist anywhere until the last byte was in. The API records it `receiving` when the
upload starts; while the bytes come, `Received` writes how many arrived (at most every
PROGRESS_EVERY seconds) and moves the record's `lease_until` forward, the way a runner's
heartbeat does. When the whole bundle is staged it becomes `queued`; when the upload breaks
it becomes `failed`. When the process receiving it dies, nobody renews the lease: recovery
(`expire`) fails a receiving record whose lease ran out, and removes its partial file.

While the request is open but nothing comes (a slow CI runner, a paused client), a timer
renews the lease every third of it, so another actor's recovery leaves the live upload alone.
A connection that closes ends the read, and with it the timer (the upload fails at once). A
connection that stays open and silent (its client's machine vanished, and nothing tells the
server) is renewed for `upload_idle` seconds after its last byte, then no more: its lease runs
out and recovery fails it.
"""

from __future__ import annotations

import copy
import io
import logging
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from pushsite.limits import human_size
from pushsite.model import Deployment, Status
from pushsite.service.flushing import FLUSHER
from pushsite.service.progress import PROGRESS_EVERY
from pushsite.state import StateStore

_logger = logging.getLogger("pushsite.receiving")


class Received(io.RawIOBase):
    """The upload as the staging copy reads it, counting bytes into the record and renewing
    its lease while the request is open (see the module): for `idle` seconds after the last
    bytes came (config's upload_idle), until the body ends or the record is not ours."""

    def __init__(self, source: BinaryIO, state: StateStore, deployment: Deployment,
                 lease: float, *, idle: float, already: int = 0) -> None:
        super().__init__()
        self._source = source
        self._state = state
        self._deployment = deployment  # its lease_until follows the reader's renewals
        # what the writes start from: a copy, so a write on the timer never carries what the
        # caller sets for the outcome (queued, failed) while it writes that
        self._record = copy.copy(deployment)
        self.lease = lease
        self._idle = idle
        self._next_write = time.monotonic() + PROGRESS_EVERY
        self._arrived = time.monotonic()  # when the last bytes came
        self._writing = threading.Lock()  # the reader's writes and the timer's
        self._ended = False  # the request's body ended: read whole, broken, or closed
        self.received = already  # an incremental upload's earlier batches (uploads.py)
        self.lost = False  # set when the record stopped being ours (failed by a recovery)
        _keep_renewing(self)

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        try:
            data = self._source.read(len(target))
        except BaseException:
            self._end()  # the connection broke: the upload fails, nothing to renew
            raise
        if not data:
            self._end()  # the whole body is in; the caller writes the outcome
            return 0
        target[:len(data)] = data
        self.received += len(data)
        self._arrived = time.monotonic()
        if time.monotonic() >= self._next_write:
            self._next_write = time.monotonic() + PROGRESS_EVERY
            self._write()
        return len(data)

    def renew(self) -> bool:
        """Write the count and move the lease now; False once the record is not ours."""
        self._next_write = time.monotonic() + PROGRESS_EVERY
        self._write()
        return not self.lost

    def close(self) -> None:
        self._end()
        super().close()

    def _end(self) -> None:
        self._ended = True  # the renewal armed next finds it so, and arms no other

    def keep(self) -> bool:
        """The timer's renewal (every third of the lease); False when no more are due: the
        body ended, the record is not ours, or nothing came for `idle` seconds."""
        if self._ended or self.lost:
            return False
        silent = time.monotonic() - self._arrived
        if silent > self._idle:
            _logger.warning("deployment %s: nothing arrived for %.0f s (upload_idle is %g s); "
                            "its lease is no longer renewed", self._deployment.id, silent,
                            self._idle)
            return False
        self._write(timer=True)
        return not self.lost

    def _write(self, *, timer: bool = False) -> None:
        with self._writing:
            record = replace(self._record, bytes_in=self.received,
                             progress=f"{human_size(self.received)} received",
                             lease_until=time.time() + self.lease)
            try:
                if self._state.update_deployment(record, expect_status=Status.RECEIVING):
                    self._record.lease_until = record.lease_until
                    if not timer:  # the caller's thread: its own next write carries it
                        self._deployment.lease_until = record.lease_until
                else:
                    self.lost = True
            except Exception as exc:  # noqa: BLE001 - best effort; the copy goes on
                _logger.warning("deployment %s: recording the upload's progress failed (%s)",
                                record.id, exc)


def staged_part(staging: Path, deployment_id: str) -> Path:
    """The partial file an upload is copied into (verbs.py `_stage`)."""
    return (staging / f"{deployment_id}.tar.gz").with_suffix(".part")


def expire(state: StateStore, staging: Path, deployment: Deployment, now: float) -> bool:
    """Fail a receiving deployment whose upload stopped renewing its lease; True if so."""
    if deployment.status != Status.RECEIVING or deployment.lease_until > now:
        return False
    deployment.status = Status.FAILED
    deployment.error = ("its upload stopped arriving (the process receiving it ended, or "
                        "its client sent nothing for too long); nothing went live: deploy it "
                        "again")
    deployment.error_kind = "DeploymentFailed"
    deployment.finished = now
    if not state.update_deployment(deployment, expect_status=Status.RECEIVING):
        return False
    from pushsite.service import uploads  # it builds on this module

    staged_part(staging, deployment.id).unlink(missing_ok=True)
    uploads.discard(staging, deployment.id)  # an incremental upload's folder
    return True


def _keep_renewing(upload: Received) -> None:
    """Arm the upload's next renewal (`keep`), a third of its lease from now, on the process's
    one timer thread (service/flushing.py, which the logs' flushes share: each is one state
    write). That thread has no cancel: a renewal due after the upload ended finds `keep`
    False and arms no other, and it holds the upload weakly, so a finished request is not
    kept alive until then."""
    ref = weakref.ref(upload)

    def due() -> None:
        upload = ref()
        if upload is not None and upload.keep():
            _keep_renewing(upload)

    FLUSHER.arm(upload.lease / 3, due)
