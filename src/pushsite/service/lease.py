"""Leases on running deployments: who runs one, and until when (DESIGN.md "Several actors").

Every runner (a CLI deploy, `serve`'s worker, `pushsite worker`, a Lambda invocation) writes
its id and `lease_until` with the queued -> running step, and a heartbeat thread moves
`lease_until` forward every third of the lease with a compare on the runner id. Recovery,
wherever it runs, takes over only a deployment whose lease has run out: a runner that is alive
keeps renewing, so a restart elsewhere never touches its work.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass

from pushsite.model import Deployment
from pushsite.state import StateStore

_logger = logging.getLogger("pushsite.lease")


@dataclass(frozen=True)
class Runner:
    """One run's identity: the kind of runner, where it runs, and a nonce for this run (a
    process may run several deployments; a pid may come back on another host or container)."""

    kind: str  # cli, serve, worker, lambda
    host: str
    pid: int
    nonce: str

    @classmethod
    def here(cls, kind: str) -> Runner:
        return cls(kind, os.uname().nodename, os.getpid(), secrets.token_hex(4))

    @classmethod
    def parse(cls, text: str) -> Runner | None:
        kind, at, rest = text.partition("@")
        host, _, tail = rest.partition(":")
        pid, _, nonce = tail.partition(":")
        if not at or not pid.isdigit():
            return None
        return cls(kind, host, int(pid), nonce)

    def __str__(self) -> str:
        return f"{self.kind}@{self.host}:{self.pid}:{self.nonce}"

    def describe(self) -> str:
        return f"runner {self.kind} (pid {self.pid}) on host {self.host}"


def lease_end(deployment: Deployment, lease: float) -> float:
    """When a running deployment's lease runs out. One recorded without a lease (created
    `running` by a redeploy, or by a version before leases) gets one lease from its start."""
    if deployment.lease_until:
        return deployment.lease_until
    return (deployment.started or deployment.created) + lease


def who_stopped(deployment: Deployment, lease: float) -> str:
    """ "runner X on host Y stopped renewing its lease at T", for the deployment's log."""
    at = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(lease_end(deployment, lease)))
    runner = Runner.parse(deployment.runner)
    if runner is None:
        return f"its runner (unrecorded) held no lease; it ran out at {at}"
    return f"{runner.describe()} stopped renewing its lease at {at}"


class Heartbeat:
    """Renews a running deployment's lease every third of it until the block ends.

    `lost` is set when a renewal finds the lease no longer ours (taken over, cancelled, or
    settled): the pipeline stops at its next check. A renewal the state cannot take (an
    outage) is logged and tried again at the next beat; if the outage outlasts the lease, a
    recovery elsewhere may take the deployment over, and our final compare-and-set fails.
    """

    def __init__(self, state: StateStore, deployment: Deployment, lease: float) -> None:
        self.lost = threading.Event()
        self._state = state
        self._deployment = deployment
        self._lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"lease-{deployment.id}")

    def _beat(self) -> None:
        deployment = self._deployment
        while not self._stop.wait(self._lease / 3):
            until = time.time() + self._lease
            try:
                held = self._state.claim_lease(deployment.id, deployment.runner, until,
                                               holder=deployment.runner)
            except Exception as exc:  # noqa: BLE001 - retried next beat; see the docstring
                _logger.warning("deployment %s: renewing its lease failed (%s); retrying",
                                deployment.id, exc)
                continue
            if not held:
                if not self._stop.is_set():
                    self.lost.set()
                return
            deployment.lease_until = until  # so the run's own writes carry it forward

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
