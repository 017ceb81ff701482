"""The serverless shape end to end, on real servers the tests start: a bundle put in a moto
staging bucket -> S3 notification -> SQS -> `pushsite worker` subprocesses (or the Lambda
handler) -> blobs in SeaweedFS -> alias in DynamoDB -> `pushsite serve` answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pushsite.model import Status
from pushsite.service import Service
from support.aws_staging import (
    Proxy,
    big_bundle,
    deployments,
    live,
    make_bundle,
    make_staging,
    opened_services,
    port_of,
    staging_through,
    use_aws_backends,
    wait_for,
)
from support.servers import start_server


@pytest.fixture
def aws_env(moto: str, seaweed_url: str, dynamodb_url: str,
            monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return use_aws_backends(monkeypatch, moto, seaweed_url, dynamodb_url)


@pytest.fixture
def service_for(aws_env: dict[str, str]) -> Iterator[Callable[[str], Service]]:
    with opened_services() as make:
        yield make


def start_worker(env: dict[str, str], queue: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pushsite", "worker", "--queue", queue],
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# the tests --------------------------------------------------------------------------------


def test_bundle_in_staging_is_served_after_worker_deploys_it(
        moto: str, aws_env: dict[str, str], service_for: Callable[[str], Service],
        tmp_path: Path) -> None:
    staging = make_staging(moto)
    service = service_for(staging.pushsite_queue)
    worker = start_worker(aws_env, staging.pushsite_queue, tmp_path / "worker.log")
    server = None
    try:
        staging.put("blog/main/bundle.tar.gz", make_bundle({
            "index.html": b"<h1>first version</h1>", "about/index.html": b"about us"}))
        first = wait_for(lambda: live(service, "blog"), "the first bundle to go live")
        server = start_server(tmp_path / "serve-home", extra_env=aws_env)
        page = server.get(f"blog.localhost:{server.port}")
        assert page.status_code == 200 and page.text == "<h1>first version</h1>"
        assert server.get(f"blog.localhost:{server.port}", "/about/").text == "about us"

        staging.put("blog/main/bundle.tar.gz", make_bundle({"index.html": b"<h1>second</h1>"}))
        second = wait_for(lambda: (d := live(service, "blog")) and d.id != first.id and d,
                          "the second bundle to go live")
        assert second.id > first.id
        # another process's deploy: serve shows it within its 1 s bound (edge/hosts.py)
        wait_for(lambda: server.get(f"blog.localhost:{server.port}").text == "<h1>second</h1>",
                 "serve to show the second bundle")
        assert server.get(f"{first.id}--blog.localhost:{server.port}").text == \
            "<h1>first version</h1>"
        # what follows a deploy (its brotli variants' message) is the worker's too: let it
        # finish before it is stopped, or a message it holds stays in flight
        wait_for(lambda: staging.count(staging.queue_url) == 0, "the worker to empty the queue")
    finally:
        stop(worker)
        if server is not None:
            server.stop()
    assert staging.count(staging.queue_url) == 0
    assert staging.count(staging.dead_url) == 0


def test_worker_killed_mid_deploy_is_finished_by_another(
        moto: str, aws_env: dict[str, str], service_for: Callable[[str], Service],
        tmp_path: Path) -> None:
    staging = make_staging(moto, visibility=3)
    service = service_for(staging.pushsite_queue)
    # 1 MB pack segments: the first is stored long before the 48 MB deploy ends
    env = {**aws_env, "PUSHSITE_WORKERS": "1",
           "PUSHSITE_STORE": aws_env["PUSHSITE_STORE"] + "&segment_mb=1"}
    first = start_worker(env, staging.pushsite_queue, tmp_path / "first.log")
    second = None
    try:
        staging.put("docs/main/site.tar.gz", big_bundle(48, 12))
        running = wait_for(lambda: [d for d in deployments(service, "docs")
                                    if d.status == Status.RUNNING], "the deploy to start")[0]
        wait_for(lambda: any(True for _ in service.store.keys("packs/")), "a first stored pack")
        second = start_worker(env, staging.pushsite_queue, tmp_path / "second.log")
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert service.state.get_deployment(running.id).status == Status.RUNNING

        done = wait_for(lambda: live(service, "docs"), "the second worker to finish it", 90)
        assert done.id == running.id
        assert done.blobs_reused >= 1  # what the killed worker stored was not stored again
        assert [d.id for d in deployments(service, "docs")] == [running.id]
        lines = [line.message for line in service.state.get_logs(running.id)]
        assert any("taken over" in line for line in lines)
    finally:
        stop(first)
        if second is not None:
            stop(second)


def test_a_staging_download_that_breaks_mid_bundle_resumes_where_it_stopped(
        moto: str, aws_env: dict[str, str], service_for: Callable[[str], Service],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pushsite.service.worker import run_worker

    staging = make_staging(moto)
    service = service_for(staging.pushsite_queue)
    with staging_through(Proxy(port_of(moto), cut_after=3 << 20), monkeypatch) as proxy:
        staging.put("blog/main/bundle.tar.gz", big_bundle(8, 4, page=b"whole"))
        run_worker(service, once=True, wait=5)

    assert proxy.cuts == 1
    deployment = live(service, "blog")
    assert deployment is not None and deployment.files == 5
