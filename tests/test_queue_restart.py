"""The queue is durable: `pushsite serve` killed with SIGKILL mid-deploy and started again on the
same PUSHSITE_HOME resumes the deployment (reusing the blobs the first attempt stored) or fails
it cleanly; it is never left `running`, never run twice, and queued work survives.

A deployment is held `running` by serving its staged bundle through a named pipe that the test
fills (FifoFeeder): the worker stores the first part's blobs and then waits for the rest, so the
kill lands mid-deploy on any machine, however fast or loaded.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pushsite.deploy.gitcommit import SiteRepos
from pushsite.model import Deployment, Status
from pushsite.queues.local import LocalQueue
from pushsite.service import Service
from support.servers import Server, start_server
from support.service import (
    FifoFeeder,
    alias_of,
    big_files,
    bundle,
    deploy,
    log_text,
    open_service,
    site_files,
    split_bundle,
    status,
    stores_blobs,
    wait_for,
)
from support.sites import git

INTERRUPTED = "taken over: queued again"
STOPPED = "stopped renewing its lease"


@pytest.fixture(autouse=True)
def _short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process here (serve, the CLI, this test's Service) holds 2 s leases, so a killed
    runner's deployment is taken over within seconds (the default lease is 30 s)."""
    monkeypatch.setenv("PUSHSITE_LEASE", "2")


def home() -> Path:
    return Path(os.environ["PUSHSITE_HOME"])


def serve() -> Server:
    """`pushsite serve` whose queue hands a message out again 2 s after a consumer took it, so
    the killed server's message does come back during the test (the default is 300 s)."""
    queue = f"local://{home() / 'queue.db'}?visibility=2"
    return start_server(home(), extra_env={"PUSHSITE_QUEUE": queue})


def kill(server: Server) -> None:
    server.process.kill()
    server.process.wait()


def pending(service: Service) -> int:
    queue = service.queue
    assert isinstance(queue, LocalQueue)
    return queue.pending()


def finished(service: Service, deployment_id: str) -> Callable[[], bool]:
    """Done and settled: `ready` is only a step on the way to `live` for these deployments."""
    return lambda: status(service, deployment_id) in (Status.LIVE, Status.FAILED,
                                                      Status.CANCELLED, Status.TIMED_OUT)


def all_but_last(files: dict[str, bytes]) -> dict[str, bytes]:
    """The files a reader has surely handed on: a buffered read of a pipe waits for a whole
    chunk, so the last file of what was written may still sit in the reader's buffer."""
    return dict(list(files.items())[:-1])


def hold_running(service: Service, parts: tuple[bytes, bytes],
                 ) -> tuple[Deployment, FifoFeeder]:
    """Accept a bundle whose staged file is a pipe, and queue it: the server's worker reads
    the first part, stores its blobs and then waits for the rest (`feeder.go`)."""
    first, rest = parts
    deployment = service.accept("blog", io.BytesIO(first + rest), enqueue=False)
    staged = service.config.staging / deployment.bundle_key
    staged.unlink()
    feeder = FifoFeeder(staged, first, rest)
    service.queue.send({"deployment": deployment.id})
    return deployment, feeder


def test_a_deploy_killed_mid_way_resumes_after_restart_and_reuses_its_blobs() -> None:
    stored_first = big_files("k")
    parts = split_bundle(stored_first, site_files("resumed"))
    server = serve()
    try:
        with open_service() as service:
            before = deploy(service, "blog", site_files("before"))
            deployment, feeder = hold_running(service, parts)
            try:
                wait_for("the first part's blobs",
                         stores_blobs(service, all_but_last(stored_first)))
                assert status(service, deployment.id) == Status.RUNNING
                kill(server)
            finally:
                feeder.stop()
            staged = service.config.staging / deployment.bundle_key
            staged.unlink()
            staged.write_bytes(parts[0] + parts[1])
            assert status(service, deployment.id) == Status.RUNNING  # the dead server's
            assert alias_of(service, "blog") == before.id
        server = serve()
        with open_service() as service:
            wait_for("the resumed deployment and the old message",
                     lambda: finished(service, deployment.id)() and pending(service) == 0)
            record = service.state.get_deployment(deployment.id)
            assert record.status == Status.LIVE, log_text(service, deployment.id)
            # the killed server's big files were durable with their rows before the kill
            assert record.blobs_reused >= len(stored_first) - 1
            assert record.blobs_reused + record.blobs_new == len(stored_first) + 2
            log = log_text(service, deployment.id)
            assert log.count(INTERRUPTED) == 1
            resumed = log[log.index(INTERRUPTED):]
            assert resumed.count("reading the bundle") == 1  # run once, for both messages
            assert resumed.count("live in") == 1
        assert server.get("blog.localhost").text == "<h1>resumed</h1>"
        big = next(iter(stored_first))
        assert server.get("blog.localhost", f"/{big}").content == stored_first[big]
    finally:
        server.stop()


def test_queued_work_survives_a_kill_and_a_lost_bundle_fails_cleanly() -> None:
    server = serve()
    try:
        with open_service() as service:
            deploy(service, "blog", site_files("before"))
            held, feeder = hold_running(service, split_bundle(big_files("g"), site_files("x")))
            try:
                wait_for("the held deployment to run",
                         lambda: status(service, held.id) == Status.RUNNING)
                waiting = service.accept("blog", io.BytesIO(bundle(site_files("queued"))))
                kill(server)
            finally:
                feeder.stop()
            (service.config.staging / held.bundle_key).unlink()  # its bundle is gone
            assert status(service, waiting.id) == Status.QUEUED, log_text(service, waiting.id)
        server = serve()
        with open_service() as service:
            wait_for("both to finish", lambda: finished(service, held.id)()
                     and finished(service, waiting.id)())
            lost = service.state.get_deployment(held.id)
            assert lost.status == Status.FAILED and lost.finished is not None, lost
            assert STOPPED in lost.error and "cannot be read again" in lost.error
            assert STOPPED in log_text(service, held.id)
            assert status(service, waiting.id) == Status.LIVE, log_text(service, waiting.id)
        assert server.get("blog.localhost").text == "<h1>queued</h1>"
    finally:
        server.stop()


def test_a_killed_pushsite_deploy_is_failed_at_the_next_start_and_the_worker_goes_on() -> None:
    """`pushsite deploy -` streams its bundle: nothing is staged, so a restart cannot resume
    it; it must end failed with a clear reason, and the server's worker must keep working."""
    stored_first = big_files("s")
    first, _ = split_bundle(stored_first, site_files("never"))
    with open_service() as service:
        deploy(service, "blog", site_files("before"))
        service.config.staging.mkdir(parents=True, exist_ok=True)
        cli = subprocess.Popen([sys.executable, "-m", "pushsite", "deploy", "--create", "-",
                                "--site", "blog"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            assert cli.stdin is not None
            cli.stdin.write(first)
            cli.stdin.flush()
            wait_for("the CLI's blobs", stores_blobs(service, all_but_last(stored_first)))
            running = service.state.list_deployments("blog", status=Status.RUNNING)
            assert len(running) == 1
        finally:
            cli.kill()
            cli.wait()
            with contextlib.suppress(BrokenPipeError):
                cli.stdin.close()  # type: ignore[union-attr]
    server = serve()
    try:
        with open_service() as service:
            wait_for("the interrupted deploy to be failed", finished(service, running[0].id))
            record = service.state.get_deployment(running[0].id)
            assert record.status == Status.FAILED
            assert STOPPED in record.error and "runner cli" in record.error
            after = service.accept("blog", io.BytesIO(bundle(site_files("after"))))
            wait_for("the next deployment", finished(service, after.id))
            assert status(service, after.id) == Status.LIVE
        assert server.get("blog.localhost").text == "<h1>after</h1>"
    finally:
        server.stop()


def test_an_interrupted_git_push_deployment_is_resumed_not_failed(
        make_repo: Callable[..., Path]) -> None:
    """A push's deployment reads its commit from the site's repository, not from staging: after
    a restart it runs again. (The dead server's state: running, its message taken.)"""
    work = make_repo({"index.html": "<p>pushed</p>"})
    with open_service() as service:
        bare = SiteRepos(service.config.repos).create("blog")
        git(bare, "fetch", "-q", str(work), "main:main")
        commit = git(bare, "rev-parse", "main")
        deployment = service.accept_commit("blog", "main", commit, "first")
        taken = service.queue.receive()  # the worker that died had taken its message
        assert taken is not None and taken.body == {"deployment": deployment.id}
        deployment.status = Status.RUNNING
        assert service.state.update_deployment(deployment, expect_status=Status.QUEUED)
    server = serve()
    try:
        with open_service() as service:
            wait_for("the push's deployment", finished(service, deployment.id))
            record = service.state.get_deployment(deployment.id)
            assert record.status == Status.LIVE, record.error
            assert record.commit == commit
            assert INTERRUPTED in log_text(service, deployment.id)
        assert server.get("blog.localhost").text == "<p>pushed</p>"
    finally:
        server.stop()

