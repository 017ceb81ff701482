"""Queue delivery: one message -> one run; takeover of a runner that stopped; recovery."""


from __future__ import annotations

import contextlib
import time

from pushsite.errors import (
    DeploymentNotFound,
)
from pushsite.model import (
    Deployment,
    Status,
)
from pushsite.queues import QueueItem
from pushsite.service.base import DEFAULT_TIMEOUT, in_bucket
from pushsite.service.running import Running


class Queueing(Running):
    """Handling queue messages, taking over stopped runs, and recovering after a restart."""

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

    def recover(self) -> list[str]:
        """After a restart: deployments left running were interrupted; queue them again.

        Bundles in a staging bucket are left to their queue: other machines may run them.
        """
        requeued = []
        for deployment in self.state.list_deployments(status=Status.RUNNING, limit=1000):
            if in_bucket(deployment.bundle_key):
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
            if not in_bucket(deployment.bundle_key) and self._resumable(deployment.bundle_key):
                self.queue.send({"deployment": deployment.id})
                requeued.append(deployment.id)
        return requeued
