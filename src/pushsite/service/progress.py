"""A running deployment's counters, written to its record while it runs.

Why: every source (a push, a webhook, an API upload, a CLI deploy on a shared home) runs in
some process that is not the one showing it (the dashboard, the API, the pusher's terminal),
and the state store is what they share. The builder reports each file to a callback; this
keeps only the latest counters and a thread writes them at most every PROGRESS_EVERY seconds,
and only when they changed, so a 100,000-file deploy costs a handful of writes a second, not
one per file. Each write touches the counters alone (never the lease), and only while the
deployment is running under this run's lease: it never revives one that was cancelled, taken
over or finished meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

from pushsite.deploy.builder import Counters
from pushsite.model import Deployment, Status
from pushsite.state import StateStore

PROGRESS_EVERY = 0.5  # seconds between two writes of one deployment's counters, at most
_logger = logging.getLogger("pushsite.progress")


class ProgressWriter:
    """Writes a running deployment's counters, and the stage the run set on its own record
(`deployment.stage`), while the block runs."""

    def __init__(self, state: StateStore, deployment: Deployment,
                 forward: Callable[[Counters], None] | None = None,
                 every: float = PROGRESS_EVERY) -> None:
        self._state = state
        self._deployment = deployment
        self._forward = forward
        self._every = every
        self._latest: Counters | None = None
        self._written: tuple[object, ...] = ()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"progress-{deployment.id}")

    def update(self, counters: Counters) -> None:
        """The builder's progress callback (called from its threads, once per file)."""
        with self._lock:
            self._latest = counters
        if self._forward is not None:
            self._forward(counters)

    def __enter__(self) -> ProgressWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            if not self._write():
                return

    def _write(self) -> bool:
        """One write if anything changed; False once the record is no longer ours."""
        with self._lock:
            counters = self._latest
        # a copy, as it was when the run started it: the run may be setting its outcome on
        # its own object right now, which only its own compare-and-set may write
        record = replace(self._deployment, status=Status.RUNNING, finished=None, error="",
                         error_kind="")
        if counters is not None:
            copy_counters(counters, record)
        now = (record.files, record.carried, record.bytes_in, record.bytes_stored,
               record.blobs_new, record.blobs_reused, record.stage)
        if now == self._written:
            return True
        try:
            held = self._state.record_progress(record)
        except Exception as exc:  # noqa: BLE001 - progress is best effort; the run goes on
            _logger.warning("deployment %s: writing its progress failed (%s)", record.id, exc)
            return True
        self._written = now
        return held


def copy_counters(counters: Counters, deployment: Deployment) -> None:
    """A run's counters onto its deployment record (live progress and the final tally)."""
    deployment.files = counters.files
    deployment.carried = counters.carried
    deployment.bytes_in = counters.bytes_in
    deployment.bytes_stored = counters.bytes_stored
    deployment.blobs_new = counters.blobs_new
    deployment.blobs_reused = counters.blobs_reused
    deployment.progress = counters.describe()
