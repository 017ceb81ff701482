"""Issue 20: "a deployment rolled back or pruned meanwhile stops its optimisation". The
rollback half is tests/test_live_first.py's; this is the prune's: a deployment pruned with its
brotli still pending is never optimised after (no variant made for it, its marker gone), and
the store verifies clean. Real SQLite state, the real local store, the real queue worker."""

from __future__ import annotations

import pytest
from test_live_first import _run, _site, service  # noqa: F401 - fixtures

from pushsite.deploy.optimise import is_pending
from pushsite.model import Status, blob_key
from pushsite.service import Service
from pushsite.service.housekeeping import verify
from pushsite.service.worker import run_worker
from support.service import alias_of, log_text


@pytest.mark.usefixtures("after_only")
def test_a_pruned_deployment_is_not_optimised_after(service: Service) -> None:  # noqa: F811
    first = _run(service, _site("v1"), optimise=True)
    second = _run(service, _site("v2"), optimise=False)  # live, its brotli queued for after
    assert is_pending(service.store, second)
    hashes = [e.hash for p, e in service.manifest(second).files.items() if p != "index.html"]
    third = _run(service, _site("v3"), optimise=True)  # the newest, kept by the prune
    service.rollback("blog", first)  # production, kept too
    assert service.prune("blog", keep=1, grace=0)["deployments"] == 1
    assert service.state.get_deployment(second).status == Status.CANCELLED
    assert alias_of(service, "blog") == first and third != second
    assert service.optimise_now(second)  # nothing left to do: it is gone
    run_worker(service, once=True, wait=0.1)  # the queued message, as serve's worker runs it
    assert not is_pending(service.store, second)
    assert not service.store.has([blob_key(h, "br") for h in hashes])
    assert "optimised:" not in log_text(service, second)
    assert verify(service) == []
