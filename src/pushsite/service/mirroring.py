"""The hosting copy's outcome, kept on the deployment it copied (Deployment.mirror).

The mirror itself (aws/mirror.py) is an entry point's job; what it concluded is state, so
it is written here, where every write to a deployment's record goes. A refusal by the
max-delete guard must be visible where a user looks (the API, `pushsite deploys --json`),
not only in a log line, since the hosting copy silently stays as it was.
"""

from __future__ import annotations

import logging

from pushsite.errors import DeploymentNotFound
from pushsite.service.base import ServiceBase

_log = logging.getLogger("pushsite.service")
OUTCOMES = ("mirrored", "paused", "refused")
_TRIES = 5  # another writer (the optimiser's progress line) may change the status between


def record_mirror(service: ServiceBase, deployment_id: str, outcome: str, detail: str) -> bool:
    """Set the deployment's `mirror` to "<outcome>: <detail>"; False when it is gone or kept
    changing under us. Never raises for the record alone: the mirror's work is done either way
    and its log line says the same."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown mirror outcome {outcome!r}")
    text = f"{outcome}: {detail}"[:2000]
    try:
        for _ in range(_TRIES):
            try:
                current = service.state.get_deployment(deployment_id)
            except DeploymentNotFound:
                return False
            current.mirror = text
            # compare-and-set on the status it had: a concurrent status change is not undone
            if service.state.update_deployment(current, expect_status=current.status):
                return True
    except Exception as exc:  # noqa: BLE001 - the deployment's log has the same line
        _log.warning("could not record the mirror's outcome on %s: %s", deployment_id, exc)
    return False
