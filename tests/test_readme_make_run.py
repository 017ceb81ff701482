"""`make run` (the README's first command) is idempotent: started twice on one home it deploys
the example once, reuses its one `make-run` token, and checks the port before it deploys or
prints anything. Runs `python -m pushsite.devrun`, what `make run` runs, as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.servers import free_port


def _start(home: Path, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PUSHSITE_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "pushsite.devrun", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _run_once(home: Path, port: int) -> str:
    """Start, wait for the example site to answer, stop; what it printed."""
    process = _start(home, port)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1]
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/",
                                   headers={"Host": f"hello.localhost:{port}"}, timeout=1)
                if answer.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("make run never served the example site")
    finally:
        process.send_signal(signal.SIGINT)
        _, printed = process.communicate(timeout=30)
    return printed


def _token_line(printed: str) -> str:
    return next(line for line in printed.splitlines() if line.startswith("token:"))


def test_make_run_twice_deploys_once_and_keeps_one_token(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    first = _run_once(home, port)
    assert "deployed " in first and " from hello (" in first, first
    second = _run_once(home, port)
    assert "site hello exists" in second and "not deployed again" in second, second
    assert _token_line(first) == _token_line(second)
    listed = subprocess.run([sys.executable, "-m", "pushsite", "tokens", "list"],
                            env={**os.environ, "PUSHSITE_HOME": str(home)},
                            capture_output=True, text=True, timeout=60)
    assert listed.stdout.count("make-run") == 1, listed.stdout
    deploys = subprocess.run([sys.executable, "-m", "pushsite", "deploys", "hello", "--json"],
                             env={**os.environ, "PUSHSITE_HOME": str(home)},
                             capture_output=True, text=True, timeout=60)
    assert len(deploys.stdout.splitlines()) == 1


def test_a_taken_port_stops_it_before_anything(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        process = _start(home, port)
        _, printed = process.communicate(timeout=60)
    assert process.returncode != 0
    assert printed.strip() == (f"error: port {port} on 127.0.0.1 is in use; choose another "
                               "with `make run PORT=8001`")
    assert not (home / "state.db").exists()  # nothing deployed, no token made
