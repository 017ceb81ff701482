"""Ctrl-C during a deploy cancels the deployment (not `failed: internal error:
KeyboardInterrupt()`) and exits 130; the live site stays. A real `pushsite deploy` subprocess
gets a real SIGINT in the middle of a slow deploy: a local one reading a bundle that is still
arriving on stdin, and a `--server` one whose deployment builds (a slow build command) on a
real `pushsite serve`, which must end cancelled on the server too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from support.cli import create_site, ok, ok_json
from support.servers import Server
from support.service import bundle, split_bundle


def _newest(list_json: Callable[[], str]) -> dict[str, object]:
    return json.loads(list_json().splitlines()[0])


def _wait_running(list_json: Callable[[], str], not_id: str | None = None) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = list_json().splitlines()
        if lines:
            row = json.loads(lines[0])
            if row["id"] != not_id and row["status"] == "running":
                return str(row["id"])
        time.sleep(0.2)
    raise AssertionError("the deployment never started running")


def _deploy(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pushsite", "deploy", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env or dict(os.environ))


def test_ctrl_c_cancels_a_local_deploy(make_site: Callable[..., Path]) -> None:
    create_site("blog")
    live = ok_json("deploy", str(make_site()), "--site", "blog")["id"]
    first, rest = split_bundle({"index.html": b"<p>new</p>"}, {"late.html": b"late"})
    deploy = _deploy("-", "--site", "blog", "--json")
    assert deploy.stdin is not None
    deploy.stdin.write(first)  # the rest never comes: the deploy waits, reading
    deploy.stdin.flush()
    try:
        running = _wait_running(lambda: ok("deploys", "blog", "--json").stdout, not_id=live)
        deploy.send_signal(signal.SIGINT)
        out, err = deploy.communicate(timeout=60)
    finally:
        if deploy.poll() is None:
            deploy.kill()
    text = err.decode()
    assert deploy.returncode == 130, text
    assert text.strip().splitlines()[-1] == (
        f"error: deployment {running} cancelled: interrupted (Ctrl-C); the live site is "
        "unchanged")
    assert "KeyboardInterrupt" not in text and "internal error" not in text
    printed = json.loads(out)
    assert (printed["id"], printed["status"]) == (running, "cancelled")
    stored = _newest(lambda: ok("deploys", "blog", "--json").stdout)
    assert (stored["id"], stored["status"], stored["error_kind"]) == (
        running, "cancelled", "Interrupted")
    assert "cancelled" in ok("log", running).stdout
    assert json.loads(ok("sites", "--json").stdout)["live_deployment"] == live


def test_ctrl_c_cancels_a_server_deploy(server: Server) -> None:
    server.create_site("slow")
    token = server.new_token("--name", "ci")
    toml = b'[build]\ncommand = "sleep 60; mkdir -p out; echo built > out/index.html"\n' \
           b'publish = "out"\n'
    deploy = _deploy("-", "--site", "slow", "--server", server.url, "--token", token,
                     env={**server.env})
    assert deploy.stdin is not None
    deploy.stdin.write(bundle({"pushsite.toml": toml}))
    deploy.stdin.close()
    deploy.stdin = None  # all sent: communicate() only reads
    try:
        running = _wait_running(
            lambda: server.cli("deploys", "slow", "--json").stdout.decode())
        time.sleep(1)  # the client is following the deployment's log by now
        deploy.send_signal(signal.SIGINT)
        _, err = deploy.communicate(timeout=60)
    finally:
        if deploy.poll() is None:
            deploy.kill()
    text = err.decode()
    assert deploy.returncode == 130, text
    assert text.strip().splitlines()[-1] == (
        f"error: deployment {running} cancelled on the server: interrupted (Ctrl-C); the "
        "live site is unchanged")
    assert "KeyboardInterrupt" not in text
    stored = _newest(lambda: server.cli("deploys", "slow", "--json").stdout.decode())
    assert (stored["id"], stored["status"]) == (running, "cancelled")
