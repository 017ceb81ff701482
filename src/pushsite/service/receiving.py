"""An upload that is still arriving: a deployment recorded `receiving` from its first byte.

Why: a 240 MB `pushsite deploy --server` takes a while to send, and until now the deployment
did not exist anywhere until the last byte was in. The API records it `receiving` when the
upload starts; while the bytes come, `Received` writes how many arrived (at most every
PROGRESS_EVERY seconds) and moves the record's `lease_until` forward, the way a runner's
heartbeat does. When the whole bundle is staged it becomes `queued`; when the upload breaks
it becomes `failed`. When the process receiving it dies, nobody renews the lease: recovery
(`expire`) fails a receiving record whose lease ran out, and removes its partial file.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from pushsite.limits import human_size
from pushsite.model import Deployment, Status
from pushsite.service.progress import PROGRESS_EVERY
from pushsite.state import StateStore

_logger = logging.getLogger("pushsite.receiving")


class Received(io.RawIOBase):
    """The upload as the staging copy reads it, counting bytes into the record."""

    def __init__(self, source: BinaryIO, state: StateStore, deployment: Deployment,
                 lease: float, *, already: int = 0) -> None:
        super().__init__()
        self._source = source
        self._state = state
        self._deployment = deployment
        self._lease = lease
        self._next_write = time.monotonic() + PROGRESS_EVERY
        self.received = already  # an incremental upload's earlier batches (uploads.py)
        self.lost = False  # set when the record stopped being ours (failed by a recovery)

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        data = self._source.read(len(target))
        if not data:
            return 0
        target[:len(data)] = data
        self.received += len(data)
        if time.monotonic() >= self._next_write:
            self._next_write = time.monotonic() + PROGRESS_EVERY
            self._write()
        return len(data)

    def renew(self) -> bool:
        """Write the count and move the lease now; False once the record is not ours."""
        self._next_write = time.monotonic() + PROGRESS_EVERY
        self._write()
        return not self.lost

    def _write(self) -> None:
        record = replace(self._deployment, bytes_in=self.received,
                         progress=f"{human_size(self.received)} received",
                         lease_until=time.time() + self._lease)
        try:
            if self._state.update_deployment(record, expect_status=Status.RECEIVING):
                self._deployment.lease_until = record.lease_until
            else:
                self.lost = True
        except Exception as exc:  # noqa: BLE001 - counting is best effort; the copy goes on
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
                        "nothing came for a whole lease); nothing went live: deploy it again")
    deployment.error_kind = "DeploymentFailed"
    deployment.finished = now
    if not state.update_deployment(deployment, expect_status=Status.RECEIVING):
        return False
    from pushsite.service import uploads  # it builds on this module

    staged_part(staging, deployment.id).unlink(missing_ok=True)
    uploads.discard(staging, deployment.id)  # an incremental upload's folder
    return True
