"""The worker's after-live brotli pass runs at nice +10 (deploy/early.py's NICE), so it takes
only what CPU the next deploy leaves; the deployment still ends optimised.

Real SQLite state, the real local store and queue; the nice is read back from the kernel
(/proc/self/task/<tid>/stat and os.getpriority) on the threads that do the work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushsite.deploy.early import NICE, nice_this_thread
from pushsite.deploy.optimise import is_pending
from pushsite.service import Service, optimising
from pushsite.service.worker import niced, run_worker
from support.prose import words
from support.service import accept, open_service


def _nice_of(tid: int) -> int:
    """The thread's nice as the kernel has it: field 19 of its stat line."""
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


@pytest.fixture
def service() -> Iterator[Service]:
    with open_service() as svc:
        svc.create_site("blog")
        yield svc


@pytest.fixture(autouse=True)
def below_the_worker_s_nice() -> Iterator[None]:
    """The test's thread at nice 0 while it runs, put back after: a suite started under
    `nice` still sees the worker raise it (the tests run as root, here and in CI, and root
    may lower a nice)."""
    thread = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, thread)
    os.setpriority(os.PRIO_PROCESS, thread, 0)
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, thread, before)


def test_niced_work_and_the_threads_it_starts_run_at_nice_10() -> None:
    start = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert start == 0
    seen: dict[str, int] = {}

    def work() -> str:
        seen["own"] = _nice_of(threading.get_native_id())
        child = threading.Thread(
            target=lambda: seen.__setitem__("child", _nice_of(threading.get_native_id())))
        child.start()
        child.join()
        return "done"

    assert niced(work) == "done"
    assert seen == {"own": NICE, "child": NICE}
    # the caller's own thread keeps its nice
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == start


def test_a_thread_already_nicer_keeps_its_nice() -> None:
    """A process run under `nice -n 19` (a CI job, a suite run politely): its after pass and
    early brotli stay at 19, never raised above the deploy's other threads."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE + 5)  # undone by the fixture
    seen: list[int] = []

    def work() -> None:
        seen.append(_nice_of(threading.get_native_id()))

    niced(work)
    seen_directly: list[int] = []

    def direct() -> None:
        nice_this_thread()
        seen_directly.append(_nice_of(threading.get_native_id()))

    thread = threading.Thread(target=direct)
    thread.start()
    thread.join()
    assert seen == seen_directly == [NICE + 5]


def test_niced_raises_the_works_exception() -> None:
    def fails() -> None:
        raise LookupError("from the niced thread")

    with pytest.raises(LookupError, match="from the niced thread"):
        niced(fails)


def test_the_workers_optimise_message_runs_niced_and_ends_optimised(
        service: Service, monkeypatch: pytest.MonkeyPatch, after_only: None) -> None:
    nices: list[int] = []
    real = optimising.optimise

    def watched(*args: object, **kwargs: object) -> object:  # the real optimiser, watched
        nices.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(optimising, "optimise", watched)
    files = {f"p{i}.html": b"<p>" + words(i, 8000) for i in range(4)}
    deployment = accept(service, "blog", files)
    deployment_id = service.run(deployment.id, optimise=False).id
    assert is_pending(service.store, deployment_id)

    assert run_worker(service, once=True, wait=0.1) >= 1
    assert nices == [NICE]
    assert service.manifest(deployment_id).pending == []
    assert not is_pending(service.store, deployment_id)
