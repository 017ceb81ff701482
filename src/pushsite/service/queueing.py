"""Queue delivery: one message -> one run; takeover of a runner that stopped; recovery."""


from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from pushsite.errors import (
    BackendUnavailable,
    DeploymentNotFound,
)
from pushsite.model import (
    Deployment,
    Status,
)
from pushsite.queues import QueueItem
from pushsite.service import receiving
from pushsite.service.base import DEFAULT_TIMEOUT
from pushsite.service.lease import Runner, lease_end, who_stopped
from pushsite.service.optimisemessage import is_optimise_message, to_optimise
from pushsite.service.running import Running

RESEND_EVERY = 10  # leases between two re-sends of a queued deployment's message
FETCH_WAITS = 86_400.0  # seconds a webhook's queued deployment may wait for its message
_log = logging.getLogger("pushsite.queue")


class Queueing(Running):
    """Handling queue messages, taking over stopped runs, and recovering after a restart."""

    def process(self, item: QueueItem, timeout: float | None = DEFAULT_TIMEOUT,
                optimise: bool = True) -> None:
        """Handle one queue message: run its deployment unless a newer one superseded it
        (without its brotli pass unless `optimise`: then the queued message makes it).

        A timed-out deployment runs again from where its blobs got to; a running one is taken
        over only when its message comes back and its lease ran out (see _take_over). Raises
        when the message must stay on the queue: a backend outage, or a failure that could
        not be recorded; returns when the outcome is on the deployment's record.
        """
        if is_optimise_message(item.body):  # live first: its brotli variants (raises: retried)
            from pushsite.service.optimising import optimise_deployment

            optimise_deployment(self, to_optimise(item.body))
            return
        deployment_id = str(item.body.get("deployment") or "")
        if not deployment_id:
            _log.warning("a queue message names no deployment (%.200s): acked, not retried",
                         item.body)
            return
        try:
            deployment = self.state.get_deployment(deployment_id)
        except DeploymentNotFound:
            # nothing can ever run it (its site was deleted, or the message was made by hand):
            # a retry would only reach the dead-letter queue with no trace here
            _log.warning("a queue message names deployment %s, which does not exist: acked, "
                         "not retried", deployment_id)
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
                self._count_outcome(deployment)
                self._announce(deployment)
            return
        try:
            if "fetch" in item.body and not deployment.bundle_key:
                self._fetch(deployment, item.body["fetch"])
            if self.config.build_queue and self._handed_over(deployment_id):
                return  # a builder runs it (`pushsite worker --builds`)
            self.run(deployment_id, timeout=timeout, optimise=optimise)
        except Exception as exc:
            if not self._settled(deployment_id, exc):
                raise  # an outage: the message stays on the queue and is retried
            # recorded on the deployment (failed, timed out, cancelled) and in its log: the
            # message is done; the error was the deployment's, not the worker's

    def _handed_over(self, deployment_id: str) -> bool:
        """Whether a build queue's builders run this deployment (service/building.py, imported
        only where a build queue is set: it is ~15 ms of every other process's start).

        Recovery re-sends a handed-over deployment that is still queued, so it comes back
        here; one that no builder took within config.build_wait fails, naming the queue, and
        does not wait forever."""
        from pushsite.service import building

        deployment = self.state.get_deployment(deployment_id)
        waited = time.time() - deployment.created
        if waited >= self.config.build_wait and building.needs_handing_over(self, deployment):
            self._fail_queued(deployment, (
                f"no builder took its build in {waited / 3600:.1f} h: is `pushsite worker "
                f"--builds` running on {building.queue_name(self.config.build_queue)}? "
                "Deploy again once one is"), time.time())
            return True
        return building.hand_over(self, deployment)

    def _settled(self, deployment_id: str, exc: Exception) -> bool:
        """Whether a failed run's outcome is on record for good. Not when the deployment was
        handed back to the queue for an outage, nor when nothing could be recorded (still
        `running`: its lease runs out and a recovery settles it). Reading the record needs
        the state: when that is down too, this raises and the message stays."""
        current = self.state.get_deployment(deployment_id)
        if current.status == Status.RUNNING:
            return False
        return not (current.status == Status.QUEUED and isinstance(exc, BackendUnavailable))

    def _take_over(self, deployment: Deployment) -> Deployment:
        """A running deployment whose message the queue delivered again: if its lease ran
        out (its runner stopped), take it over here; a live runner's is left alone."""
        if lease_end(deployment, self.lease) > time.time():
            return deployment
        self._take_over_expired(deployment, send=False)
        return self.state.get_deployment(deployment.id)

    def _take_over_expired(self, deployment: Deployment, *, send: bool) -> bool:
        """Take over a running deployment whose lease ran out: queue it again (with a new
        message when `send`) if its bundle can be read again, else fail it. The lease is
        claimed first, with a compare on the expired one, so one taker wins and a runner
        that renewed meanwhile keeps its deployment. True when this call took it over."""
        who = who_stopped(deployment, self.lease)
        me = str(Runner.here(self.runner_kind))
        if not self.state.claim_lease(deployment.id, me, time.time() + self.lease,
                                      holder=deployment.runner,
                                      held_until=deployment.lease_until):
            return False
        deployment.runner = me
        if self._resumable(deployment.bundle_key):
            deployment.status = Status.QUEUED
            note = f"{who}; taken over: queued again (stored blobs are reused)"
            level = "warning"
        else:
            deployment.status = Status.FAILED
            deployment.error = (f"{who}; taken over, but its bundle cannot be read again (a "
                                "streamed deploy cannot resume): deploy it again")
            deployment.error_kind = "DeploymentFailed"
            deployment.finished = time.time()
            note, level = deployment.error, "error"
        if not self.state.update_deployment(deployment, expect_status=Status.RUNNING,
                                            expect_runner=me):
            return False  # cancelled meanwhile
        self._note(deployment, level, "accept", note)
        if deployment.status == Status.FAILED:
            self._discard_staged(deployment)
        elif send:
            self.queue.send({"deployment": deployment.id})
        return True

    def recover(self, page: int = 1000) -> list[str]:
        """Settle what no live runner will finish; safe to run anywhere, at any time.

        - running deployments whose lease ran out: taken over (queued again, or failed when
          their bundle cannot be read again); a live runner's lease keeps its deployment;
        - queued ones older than a lease: re-sent when their bundle can be read again (their
          message may be lost; a duplicate is harmless, one runner wins queued -> running),
          at most once a RESEND_EVERY leases; failed when nothing can ever run them (a
          `pushsite deploy` stopped between accepting and starting; a webhook's after a day);
        - receiving ones (an upload arriving) whose lease ran out: failed (service/receiving.py).

        Every deployment is looked at, `page` at a time. Returns the ids taken over,
        re-sent or failed.
        """
        now = time.time()
        settled = []
        window = int(now // (self.lease * RESEND_EVERY))
        for deployment in self._every(Status.RUNNING, page):
            if lease_end(deployment, self.lease) <= now and self._take_over_expired(
                    deployment, send=True):
                self.state.remember(f"resend:{deployment.id}:{window}")  # just sent
                settled.append(deployment.id)
        for deployment in self._every(Status.QUEUED, page):
            if deployment.id in settled or now - deployment.created < self.lease:
                continue
            if self._resumable(deployment.bundle_key):
                if self.state.remember(f"resend:{deployment.id}:{window}"):
                    self.queue.send({"deployment": deployment.id})
                    settled.append(deployment.id)
            elif self._never_runs(deployment, now):
                settled.append(deployment.id)
        for deployment in self._every(Status.RECEIVING, page):  # an upload that died
            if receiving.expire(self.state, self.config.staging, deployment, now):
                self._note(deployment, "error", "failed", deployment.error)
                self._count_outcome(deployment)
                settled.append(deployment.id)
        return settled

    def _never_runs(self, deployment: Deployment, now: float) -> bool:
        """Fail a queued deployment that no message or runner can start any more."""
        fetching = deployment.source.startswith("webhook:")  # its message holds the fetch
        if fetching and now - deployment.created < FETCH_WAITS:
            return False
        return self._fail_queued(deployment, (
            "its webhook's message never came in a day; push again" if fetching
            else "its runner stopped before starting it, and its bundle cannot be read again "
            "(a streamed deploy cannot resume): deploy it again"), now)

    def _fail_queued(self, deployment: Deployment, error: str, now: float) -> bool:
        """Fail a queued deployment for good, if it is still queued (another process may
        have started it meanwhile): recorded, logged, counted and announced."""
        deployment.status = Status.FAILED
        deployment.error = error
        deployment.error_kind = "DeploymentFailed"
        deployment.finished = now
        if not self.state.update_deployment(deployment, expect_status=Status.QUEUED):
            return False
        self._note(deployment, "error", "failed", deployment.error)
        self._count_outcome(deployment)
        self._announce(deployment)
        return True

    def _every(self, status: Status, page: int) -> Iterator[Deployment]:
        """Every deployment with a status, newest first, `page` at a time (cursor: the id)."""
        before = None
        while True:
            batch = self.state.list_deployments(status=status, limit=page, before=before)
            yield from batch
            if len(batch) < page:
                return
            before = batch[-1].id
