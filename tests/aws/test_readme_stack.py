"""README "From nothing to a live site": every line of its code block, in its order, from a
folder that is not the checkout, against moto's CloudFormation, S3, SQS, DynamoDB and Lambda
(the function's zip run by tests/support/lambda_runtime.py). The block is parsed from README.md,
so a change to it changes what runs here.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import boto3
import pytest

from support.lambda_runtime import LambdaEmulator, apply_bucket_notifications, stack_outputs
from support.servers import free_port

pytestmark = pytest.mark.timeout(600)
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[str]:
    """The shell lines of the section's first code block (comments kept: bash drops them)."""
    text = README.read_text()
    section = text[text.index("### From nothing to a live site"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block
    return [line for line in block.group(1).splitlines() if line.strip()]


class Shell:
    """One bash, fed one README line at a time (so `eval` and `&` carry over, as typed)."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["bash"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=cwd, env=env, text=True, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout
        for line in self.process.stdout:
            self.lines.put(line)

    def run(self, command: str, timeout: float = 300) -> tuple[int, str]:
        assert self.process.stdin
        self.process.stdin.write(f"{command}\necho __rc=$?__\n")
        self.process.stdin.flush()
        out = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            match = re.match(r"^(.*)__rc=(\d+)__$", line.rstrip("\n"))
            if match:
                out.append(match.group(1))
                return int(match.group(2)), "".join(out)
            out.append(line)

    def close(self) -> None:
        os.killpg(self.process.pid, 15)
        self.process.wait(10)


def _wait_for_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


def test_readme_stands_the_stack_up_and_serves_the_site(moto: str, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    port = free_port()
    env = {**os.environ, "AWS_ENDPOINT_URL": moto, "HOME": str(tmp_path / "home"),
           "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PATH": f"{Path(os.sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if not k.startswith("PUSHSITE_")}
    lam = LambdaEmulator(moto, "pushsite", tmp_path / "lambda")
    answers = iter(["<h1>Hello</h1>", "<h1>Hello again</h1>", "<h1>Hello</h1>"])
    shell = Shell(work, env)
    ran = []
    try:
        for line in readme_commands():
            command = line.replace("8000", str(port))
            code, out = shell.run(command)
            assert code == 0, f"{line}\n{out}"
            ran.append(line)
            if line.startswith("pushsite aws deploy") and len(ran) == 1:
                apply_bucket_notifications(moto, "pushsite")
                assert "stack pushsite created" in out
            if line.startswith("aws s3 cp"):
                assert lam.drain() >= 1  # the bundle's event, run by the function
            if line.startswith("pushsite deploys"):
                assert "live" in out, out
            if line.startswith("pushsite serve"):
                _wait_for_port(port)
            if line.startswith("curl"):
                want = next(answers)
                deadline = time.monotonic() + 3
                while want not in out and time.monotonic() < deadline:
                    time.sleep(0.2)
                    code, out = shell.run(command)
                assert want in out, (line, out)
            if line.startswith("pushsite aws deploy") and len(ran) > 1:
                # the same sources give the same zip (unchanged); an edit since, a new key
                assert ("stack pushsite unchanged" in out and "already uploaded" in out) or (
                    "stack pushsite updated" in out), out
    finally:
        shell.close()
    assert len(ran) == len(readme_commands())
    # the mirror followed production, rollback included
    hosting = stack_outputs(moto, "pushsite")["HostingBucket"]
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    body = s3.get_object(Bucket=hosting, Key="blog/index.html")
    import gzip

    data = body["Body"].read()
    if body.get("ContentEncoding") == "gzip":
        data = gzip.decompress(data)
    assert data.strip() == b"<h1>Hello</h1>"
