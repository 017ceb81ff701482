"""Builder workers (`pushsite worker --builds`): a deployer that must not build (the Lambda
function, serve, a plain worker) hands a staged bundle that asks for a build to the build
queue; two builders share that queue, one is killed mid-build, and the deployment still ends
live, built by the other. Both shapes: SQS, DynamoDB and an S3 staging bucket on moto (blobs
on SeaweedFS), and the local queue on one machine behind `pushsite serve`."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pushsite.config import load_config
from pushsite.model import Status
from pushsite.service import Service
from pushsite.service.lease import Runner
from pushsite.service.worker import run_worker
from support.api import Api
from support.aws_staging import (
    deployments,
    live,
    make_bundle,
    make_staging,
    use_aws_backends,
    wait_for,
)
from support.servers import serving
from support.sites import git


class Gate:
    """An HTTP server the build asks before it writes its output: the first build is held
    there (the test kills its worker meanwhile), later ones pass at once."""

    def __init__(self) -> None:
        self.asked = 0
        self.first_arrived = threading.Event()
        self._release = threading.Event()
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                gate.asked += 1
                if gate.asked == 1:
                    gate.first_arrived.set()
                    gate._release.wait(300)
                body = b"open"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/{uuid.uuid4().hex}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


def source_bundle(repo_parent: Path, gate: Gate) -> bytes:
    """A source tree committed with real git and archived as a bundle (`git archive`): its
    build asks the gate, then writes out/index.html."""
    repo = repo_parent / f"src-{uuid.uuid4().hex[:6]}"
    repo.mkdir()
    command = (f"python3 -c \"import urllib.request as u; u.urlopen('{gate.url}').read()\" "
               "&& mkdir -p out && echo '<h1>built by a builder</h1>' > out/index.html")
    (repo / "pushsite.toml").write_text(
        f'[build]\ncommand = "{command.replace(chr(34), chr(92) + chr(34))}"\n'
        'publish = "out"\nnetwork = true\n')
    (repo / "README.md").write_text("the source, not the output\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "source")
    return subprocess.run(["git", "-C", str(repo), "archive", "--format=tar.gz",
                           "--prefix=site/", "HEAD"], check=True, capture_output=True).stdout


@contextmanager
def builders(count: int, env: dict[str, str],
             logs: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`pushsite worker --builds` processes; stopped (and reaped) when the block ends."""
    procs = []
    for n in range(count):
        with open(logs / f"builder{n}.log", "wb") as err:
            procs.append(subprocess.Popen([sys.executable, "-m", "pushsite", "worker",
                                           "--builds"], env=env, stdout=subprocess.DEVNULL,
                                          stderr=err))
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def kill_the_one_building(procs: list[subprocess.Popen[bytes]], runner: str) -> int:
    """SIGKILL the builder whose lease the deployment holds; its pid."""
    holder = Runner.parse(runner)
    assert holder is not None and holder.kind == "builder", runner
    (proc,) = [p for p in procs if p.pid == holder.pid]
    proc.kill()
    proc.wait()
    return proc.pid


def leftovers(marker: str) -> list[int]:
    """Processes whose command line names `marker` (a killed build's sandbox, if any)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


def test_worker_builds_needs_a_build_queue(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pushsite", "worker", "--builds", "--once"],
                          capture_output=True, env=dict(os.environ))
    assert done.returncode == 2
    assert done.stderr.decode().strip() == (
        "error: worker --builds needs the build queue: set PUSHSITE_BUILD_QUEUE (the queue "
        "deployers hand builds to), or give --queue")


@pytest.fixture
def aws_env(moto: str, seaweed_url: str, dynamodb_url: str,
            monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    use_aws_backends(monkeypatch, moto, seaweed_url, dynamodb_url)
    build_queue = f"sqs://builds-{uuid.uuid4().hex[:8]}?endpoint={moto}&create=1&visibility=2"
    for name, value in {"PUSHSITE_BUILD_QUEUE": build_queue, "PUSHSITE_LEASE": "2",
                        "PUSHSITE_BUILDS": "2"}.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


def test_sqs_builders_one_killed_mid_build(moto: str, aws_env: dict[str, str],
                                           tmp_path: Path) -> None:
    """The deployer (what the Lambda runs: an S3 event off the queue) does not build: it
    hands the deployment to the build queue. Of two builders, the one that took it is killed
    while its build waits at the gate; the other takes the deployment over after its lease
    and builds it: live, never stuck, nothing of the killed build left running."""
    staging = make_staging(moto, visibility=2)
    gate = Gate()
    deployer = Service(load_config(queue=staging.pushsite_queue))
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(deployer,),
                              kwargs={"stop": stop, "wait": 1})
    try:
        with builders(2, aws_env, tmp_path) as procs:
            thread.start()
            staging.put("built/main/bundle.tar.gz", source_bundle(tmp_path, gate))
            assert gate.first_arrived.wait(180), "no builder started the build"
            (deployment,) = deployments(deployer, "built")
            assert deployment.status == Status.RUNNING
            killed = kill_the_one_building(procs, deployment.runner)

            done = wait_for(lambda: live(deployer, "built"), "the build to go live", 180)
            assert done.id == deployment.id
            runner = Runner.parse(done.runner)
            assert runner is not None and runner.kind == "builder" and runner.pid != killed
    finally:
        stop.set()
        thread.join(30)
        gate.close()
    entry = deployer.manifest(done.id).files["index.html"]
    assert deployer.store.get(entry.key()) == b"<h1>built by a builder</h1>\n"
    messages = [line.message for line in deployer.state.get_logs(done.id)]
    assert any("handed to the builders" in m for m in messages), messages
    assert any("taken over" in m for m in messages), messages
    assert gate.asked == 2
    assert leftovers(gate.url) == []
    deployer.close()


def test_local_builders_behind_serve(tmp_path: Path, _isolated_env: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """One machine: serve hands an API upload of source to the local build queue; two
    builders share it, the one building is killed, the other finishes it."""
    home = _isolated_env
    monkeypatch.setenv("PUSHSITE_BUILD_QUEUE", f"local://{home}/builds.db?visibility=2")
    monkeypatch.setenv("PUSHSITE_LEASE", "2")
    monkeypatch.setenv("PUSHSITE_BUILDS", "2")
    gate = Gate()
    try:
        with serving(home) as server, builders(2, dict(os.environ), tmp_path) as procs:
            api = Api(server, server.new_token("--name", "admin", "--admin"))
            started = api.upload(source_bundle(tmp_path, gate), "local")
            assert gate.first_arrived.wait(180), "no builder started the build"
            running = api.ok("GET", f"/deployments/{started['id']}")
            state = Service(load_config())
            try:
                runner = state.state.get_deployment(started["id"]).runner
            finally:
                state.close()
            assert running["status"] == "running"
            killed = kill_the_one_building(procs, runner)
            done = api.finished(started["id"])
            assert done["status"] == "live", done
            assert "<h1>built by a builder</h1>" in server.get("local.localhost").text
            log = server.cli("log", started["id"]).stdout.decode()
            assert "handed to the builders" in log and "taken over" in log
            assert str(killed) in log  # the takeover names the runner that stopped
    finally:
        gate.close()
    assert gate.asked == 2
    assert leftovers(gate.url) == []



def test_a_build_no_builder_takes_fails_after_the_build_wait(
        tmp_path: Path, _isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a build queue and no builder running, a handed-over deployment does not stay
    queued for ever: recovery re-sends it, and past PUSHSITE_BUILD_WAIT it fails with an
    error naming the builders' command and queue. Production is untouched."""
    home = _isolated_env
    monkeypatch.setenv("PUSHSITE_BUILD_QUEUE", f"local://{home}/builds.db?visibility=2")
    monkeypatch.setenv("PUSHSITE_LEASE", "2")
    monkeypatch.setenv("PUSHSITE_BUILD_WAIT", "1")
    gate = Gate()
    try:
        with serving(home) as server:
            api = Api(server, server.new_token("--name", "admin", "--admin"))
            first = api.deploy(make_bundle({"index.html": b"<h1>first</h1>"}), "unbuilt")
            assert first["status"] == "live"
            started = api.upload(source_bundle(tmp_path, gate), "unbuilt")
            done = api.finished(started["id"])
            assert done["status"] == "failed", done
            assert "no builder took its build" in done["error"], done
            assert f"`pushsite worker --builds` running on local://{home}/builds.db?" \
                in done["error"], done
            assert "<h1>first</h1>" in server.get("unbuilt.localhost").text
    finally:
        gate.close()
    assert gate.asked == 0


def test_the_lambda_hands_builds_over_and_deploys_the_rest(
        moto: str, aws_env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lambda handler itself, with the SQS batch Lambda sends: a bundle of built output
    goes live in the Lambda; a source bundle is left queued with one message on the build
    queue, which a builder takes and builds."""
    from pushsite.aws.handler import handler

    staging = make_staging(moto, visibility=30)
    monkeypatch.setenv("PUSHSITE_QUEUE", staging.pushsite_queue)
    # a lease longer than the test: with aws_env's 2 s, the builder's recovery re-sent the
    # still-queued deployment whenever the handler and set-up took over 2 s (a duplicate is a
    # no-op, but this test counts the messages the builder takes)
    monkeypatch.setenv("PUSHSITE_LEASE", "60")
    repo = tmp_path / "lambda-src"
    repo.mkdir()
    (repo / "pushsite.toml").write_text(
        '[build]\ncommand = "mkdir -p out && echo built in the sandbox > out/index.html"\n'
        'publish = "out"\n')
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "source")
    source = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar.gz",
                             "--prefix=site/", "HEAD"], check=True, capture_output=True).stdout
    staging.put("source/main/bundle.tar.gz", source)
    staging.put("output/main/bundle.tar.gz", make_bundle({"index.html": b"<p>as it is</p>"}))
    messages: list[dict[str, object]] = []
    while len(messages) < 2:
        messages += staging.receive()
    records = [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"], "attributes": m["Attributes"], "eventSource": "aws:sqs"}
               for m in messages]

    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 120_000

    assert handler({"Records": records}, Context()) == {"batchItemFailures": []}

    service = Service(load_config())
    builder = Service(load_config(queue=aws_env["PUSHSITE_BUILD_QUEUE"]))
    try:
        assert live(service, "output") is not None
        (waiting,) = deployments(service, "source")
        assert waiting.status == Status.QUEUED
        messages_of = [line.message for line in service.state.get_logs(waiting.id)]
        assert any("handed to the builders" in m for m in messages_of), messages_of
        assert run_worker(builder, once=True, kind="builder") == 1
        done = live(service, "source")
        assert done is not None and done.id == waiting.id
        entry = service.manifest(done.id).files["index.html"]
        assert service.store.get(entry.key()) == b"built in the sandbox\n"
    finally:
        service.close()
        builder.close()
