"""An open upload's lease is renewed on the process's one timer thread (service/flushing.py,
which the logs' delayed flushes use too), not on a thread of its own; an upload that ended is
renewed no more and is not kept alive by the renewal still armed for it (the timer has no
cancel). The end-to-end pauses against a real server are tests/test_upload_pause.py's.

Real SQLite state; the renewals are seen in the deployment's record.
"""

from __future__ import annotations

import gc
import io
import os
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushsite.model import Deployment, Status
from pushsite.service.flushing import FLUSHER
from pushsite.service.receiving import Received
from pushsite.state.sqlite import SqliteState
from support.service import wait_for

LEASE = 0.3  # seconds: a renewal every 0.1 s


@pytest.fixture
def state(tmp_path: Path) -> SqliteState:
    return SqliteState(tmp_path / "state.db")


def _receiving(state: SqliteState, deployment_id: str) -> Deployment:
    deployment = Deployment(id=deployment_id, site="blog", branch="main",
                            status=Status.RECEIVING, lease_until=time.time() + LEASE)
    state.create_deployment(deployment)
    return deployment


@pytest.fixture
def silent() -> Iterator[io.FileIO]:
    """A request body that is open and sends nothing (a pipe nobody writes to)."""
    read_end, write_end = os.pipe()
    with io.FileIO(read_end, "rb") as body:
        yield body
    os.close(write_end)


def test_an_open_silent_upload_is_renewed_with_no_thread_of_its_own(
        state: SqliteState, silent: io.FileIO) -> None:
    FLUSHER.arm(0, lambda: None)  # the process's one timer thread exists before counting
    before = threading.active_count()
    deployment = _receiving(state, "01jd5m7k8q0000000000000200")
    first = deployment.lease_until
    counted = Received(silent, state, deployment, LEASE, idle=60.0)
    try:
        assert threading.active_count() == before
        wait_for("two renewals", lambda: state.get_deployment(deployment.id).lease_until
                 > first + LEASE / 3)
    finally:
        counted.close()


def test_an_ended_upload_is_renewed_no_more_and_not_kept_alive(state: SqliteState) -> None:
    deployment = _receiving(state, "01jd5m7k8q0000000000000201")
    counted = Received(io.BytesIO(b"a whole body"), state, deployment, LEASE, idle=60.0)
    assert counted.read() == b"a whole body"  # the body ended: read whole
    ended = state.get_deployment(deployment.id).lease_until
    ref = weakref.ref(counted)
    del counted
    gc.collect()
    assert ref() is None  # the renewal armed for it holds it weakly
    # the timer runs its callbacks one at a time in the order they are due: once a marker due
    # after the renewal (armed for LEASE / 3 from the upload's start) ran, the renewal ran
    # too. (Not `pending() == 0`: in a whole suite other tests' log flushes and uploads
    # keep the process's one timer busy.)
    marker = threading.Event()
    FLUSHER.arm(LEASE, marker.set)
    wait_for("the armed renewal due", marker.is_set)
    assert state.get_deployment(deployment.id).lease_until == ended
