"""Optimising a live deployment: the service's side of deploy/optimise.py.

When a deployment goes live with variants pending, `Running._complete` logs "optimising"
and sends `{"optimise": <id>}` to the queue (service/optimisemessage.py): that message is
the record a crash leaves, and whoever takes it (`serve`'s worker, a `pushsite worker`)
finishes the work; the runner that made the deployment usually finishes it first
(`run(optimise=True)`, or the CLI after it printed the URL), and the message then finds
nothing pending.

The work goes on only while the deployment is served by an alias (live, or a draft still
ready at its own URL): a rollback, a newer deployment of the branch, a prune or a deletion
stops it between two batches.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING

from pushsite import pathindex
from pushsite.deploy import handover
from pushsite.deploy.memory import cap_arenas, trimmed_heap
from pushsite.deploy.optimise import is_pending, optimise
from pushsite.errors import DeploymentCancelled, DeploymentNotFound, NotFound
from pushsite.model import (
    PRODUCTION,
    Deployment,
    Manifest,
    Status,
    branch_alias,
    manifest_key,
    pending_key,
)

if TYPE_CHECKING:
    from pushsite.service.base import ServiceBase
    from pushsite.stores import ObjectStore

_log = logging.getLogger("pushsite.service")
CHECK_EVERY = 0.5  # seconds between two looks at whether the deployment is still served


def optimise_deployment(service: ServiceBase, deployment_id: str) -> bool:
    """Make a deployment's pending variants while it is served; True when it ended with
    nothing pending. Every outcome is in the deployment's log."""
    store = service.store
    if not is_pending(store, deployment_id):
        return True
    try:
        deployment = service.state.get_deployment(deployment_id)
    except DeploymentNotFound:  # deleted or pruned: its marker goes too
        store.delete([pending_key(deployment_id)])
        return True
    if not _served(service, deployment):
        service._note(deployment, "info", "optimise", "not optimising: the deployment is no "
                      f"longer served ({deployment.status}); it resumes if it is served again")
        return False
    try:
        manifest = _manifest(store, deployment_id)
    except NotFound:
        store.delete([pending_key(deployment_id)])
        return True
    service._note(deployment, "info", "optimise", "optimising: making brotli variants "
                  "(and JS/CSS's final gzip" + (", the gzip of text stored identity only)"
                                                if "gzip" in manifest.pending else ")"),
                  pending=manifest.pending)
    _progress(service, deployment_id, "optimising")
    checked = [0.0, True]

    def wanted() -> bool:
        now = time.monotonic()
        if now - checked[0] >= CHECK_EVERY:
            checked[0] = now
            try:
                current = service.state.get_deployment(deployment_id)
            except DeploymentNotFound:
                checked[1] = False
            else:
                checked[1] = _served(service, current)
        return bool(checked[1])

    try:
        cap_arenas()
        with trimmed_heap():  # brotli's buffers go back to the kernel as the deploy's do
            done = optimise(store, manifest, wanted=wanted, workers=service.config.workers,
                            wanting=handover.take(deployment_id))
    except DeploymentCancelled as exc:
        service._note(deployment, "info", "optimise", f"{exc}; what was made is kept")
        _progress(service, deployment_id, "optimising stopped")
        return False
    except Exception as exc:
        service._note(deployment, "warning", "optimise", f"optimising failed: {exc}; the "
                      "deployment is served with the variants its manifest lists (identity, "
                      "and gzip where made), and a retry resumes",
                      error=type(exc).__name__)
        raise
    service._note(deployment, "info", "optimise", f"optimised: {done.describe()}",
                  seconds=round(done.seconds, 3), blobs=done.blobs, reused=done.reused)
    # no clock time: the server's would reach the API as is; the log line has the time
    _progress(service, deployment_id, f"optimised in {done.seconds:.2f}s")
    return True


def _manifest(store: ObjectStore, deployment_id: str) -> Manifest:
    """The deployment's manifest; a big one read through its index by path (pathindex.py),
    never parsed whole (35 MB more peak memory on a 35,000-file site)."""
    try:
        index = pathindex.PathIndex(partial(_read_range, store, pathindex.index_key(
            deployment_id)))
    except NotFound:
        return Manifest.from_bytes(store.get(manifest_key(deployment_id)))
    return index.manifest()


def _read_range(store: ObjectStore, key: str, start: int, end: int) -> bytes:
    return store.get(key, start, end)


def _served(service: ServiceBase, deployment: Deployment) -> bool:
    """Whether the deployment is what its branch's visitors get: production's (for the
    production branch) or its preview's; a draft while ready. A rolled-back one, still
    reachable at its branch preview or own URL, is not worth the CPU."""
    if deployment.draft:
        return deployment.status.servable
    if deployment.status != Status.LIVE:
        return False
    try:
        site = service.state.get_site(deployment.site)
    except NotFound:
        return False
    name = (PRODUCTION if deployment.branch == site.production_branch
            else branch_alias(deployment.branch))
    alias = service.state.get_alias(deployment.site, name)
    return alias is not None and alias.deployment_id == deployment.id


def _progress(service: ServiceBase, deployment_id: str, text: str) -> None:
    """Show where optimising is on the deployment's record (the dashboard's progress line);
    never fails the work it reports."""
    try:
        current = service.state.get_deployment(deployment_id)
        counted = current.progress.split("; optimis")[0]  # the counters the run left there
        current.progress = f"{counted}; {text}" if counted else text
        service.state.update_deployment(current, expect_status=current.status)
    except Exception as exc:  # noqa: BLE001 - the log has the same line
        _log.warning("could not note %r on deployment %s: %s", text, deployment_id, exc)
