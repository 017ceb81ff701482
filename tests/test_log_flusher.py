"""Delayed log flushes share one thread per process (service/flushing.py), in a forked child too."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pushsite.model import Deployment
from pushsite.service.flushing import FLUSHER, Flusher
from pushsite.service.logs import DeployLog
from pushsite.state.sqlite import SqliteState
from support.service import wait_for


def _state(tmp_path: Path, ids: list[str]) -> SqliteState:
    state = SqliteState(tmp_path / "state.db")
    for deployment_id in ids:
        state.create_deployment(Deployment(id=deployment_id, site="blog", branch="main"))
    return state


def test_fifty_logs_armed_at_once_start_no_thread_each_and_all_get_written(
        tmp_path: Path) -> None:
    ids = [f"01jd5m7k8q00000000000000{n:02d}" for n in range(50)]
    state = _state(tmp_path, ids)
    FLUSHER.arm(0, lambda: None)  # the process's one thread exists before counting
    before = threading.active_count()
    logs = [DeployLog(state, i, "blog", flush_every=0.05) for i in ids]
    for log in logs:
        log.info("read", "first line of a batch")
    assert threading.active_count() == before  # a Timer each would have made 50 threads
    wait_for("every log written", lambda: all(state.get_logs(i) for i in ids))
    assert all(log.lines_written == 1 for log in logs)


def test_a_flush_before_the_delay_leaves_the_armed_one_nothing_to_do(tmp_path: Path) -> None:
    ids = ["01jd5m7k8q0000000000000100"]
    state = _state(tmp_path, ids)
    log = DeployLog(state, ids[0], "blog", flush_every=0.2)
    log.info("read", "one")
    log.flush()
    log.info("read", "two")  # armed again: its own delay, not the stale one's
    assert [x.message for x in state.get_logs(ids[0])] == ["one"]
    wait_for("both lines written", lambda: len(state.get_logs(ids[0])) == 2)
    assert log.lines_written == 2


def test_callbacks_run_in_time_order_and_a_failing_one_does_not_stop_the_rest() -> None:
    flusher = Flusher()
    ran: list[str] = []

    def boom() -> None:
        ran.append("boom")
        raise RuntimeError("a write failed")

    flusher.arm(0.3, lambda: ran.append("late"))
    flusher.arm(0.0, boom)
    flusher.arm(0.1, lambda: ran.append("soon"))
    wait_for("the three callbacks", lambda: len(ran) == 3)
    assert ran == ["boom", "soon", "late"]
    assert flusher.pending() == 0


def test_a_forked_child_gets_its_own_flusher_thread(tmp_path: Path) -> None:
    ids = ["01jd5m7k8q0000000000000200", "01jd5m7k8q0000000000000201"]
    state = _state(tmp_path, ids)
    parent = DeployLog(state, ids[0], "blog", flush_every=0.05)
    parent.info("read", "in the parent")  # the parent's flusher thread is running now
    wait_for("the parent's line", lambda: bool(state.get_logs(ids[0])))
    pid = os.fork()
    if pid == 0:  # the child: no thread of the parent's survives a fork
        code = 1
        try:
            child_state = SqliteState(tmp_path / "state.db")
            log = DeployLog(child_state, ids[1], "blog", flush_every=0.05)
            log.info("read", "in the child")
            wait_for("the child's line", lambda: bool(child_state.get_logs(ids[1])))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [x.message for x in state.get_logs(ids[1])] == ["in the child"]
