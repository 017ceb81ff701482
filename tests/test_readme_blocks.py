"""Every shell block of the README runs in a test, as a newcomer types it: from a folder that is
not the checkout, against a real `pushsite serve` on a temporary home.

Most blocks run here, line by line, with only the README's placeholders filled in (`psk_...`
becomes the printed token, port 8000 the test server's port, `[--opt X]` both with and without
the option). Three run in tests of their own (OTHER_TESTS). A line that cannot run on a test
machine is listed in NOT_RUN with the reason. A new block that none of these claims fails
`test_every_shell_block_is_claimed`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from support.api import Api
from support.readme import block, shell_blocks
from support.servers import Server
from support.sites import git, write_files

ROOT = Path(__file__).resolve().parents[1]

# heading -> the test file that runs that block (and names the heading)
OTHER_TESTS = {
    "pushsite": "tests/test_readme_make_run.py",
    "A short tour": "tests/test_readme_tour.py",
    "From nothing to a live site": "tests/aws/test_readme_stack.py",
}
# (heading, first words of the block) -> the test here that runs every line of it
RUN_HERE = {
    ("git push", "pushsite tokens"): "test_git_push_block",
    ("git push", "pushsite lock"): "test_lock_and_failed_pushes_block",
    ("Webhooks (code on GitHub, GitLab, Bitbucket, Gitea or Forgejo)", "pushsite hooks"):
        "test_webhooks_block",
    ("Notifications, commit statuses and metrics", "pushsite notify"): "test_notify_block",
    ("Deploys from CI", "PUSHSITE_SERVER"): "test_ci_block",
    ("Builds", "pushsite env"): "test_env_block",
    ("Custom domains", "pushsite domains"): "test_domains_block",
    ("Running it for real", "pushsite systemd-unit"): "test_systemd_block",
    ("Running it for real", "cd /var/lib/pushsite"): "test_backup_block",
}
# lines no test runs, and why
NOT_RUN = {
    "make test": "it is this suite",
    "sudo useradd --system --home /var/lib/pushsite pushsite":
        "it would add a system user to the machine running the tests",
    "sudo systemctl daemon-reload && sudo systemctl enable --now pushsite":
        "needs systemd as PID 1; the unit itself is checked by `systemd-analyze verify`",
}


def test_every_shell_block_is_claimed() -> None:
    """Fails for a README block (or line) that no test runs."""
    here = {name for name, value in globals().items() if name.startswith("test_")
            and callable(value)}
    unclaimed = []
    for found in shell_blocks():
        other = OTHER_TESTS.get(found.heading)
        if other:
            assert found.heading in (ROOT / other).read_text(), \
                f"{other} does not name the README heading {found.heading!r}"
            continue
        claim = next((test for (heading, starts), test in RUN_HERE.items()
                      if heading == found.heading and found.commands[0].startswith(starts)), None)
        if claim is None:
            unclaimed.append(f"{found.heading}: {found.commands[0]}")
        else:
            assert claim in here, f"RUN_HERE names {claim}, which is not a test here"
    assert not unclaimed, f"README shell blocks no test runs: {unclaimed}"
    every_line = {command for found in shell_blocks() for command in found.commands}
    assert set(NOT_RUN) <= every_line, "NOT_RUN lists lines the README no longer has"


# the runner -------------------------------------------------------------------------------------
class Newcomer:
    """A shell user in their own folder, with the server's home and its commands on PATH."""

    def __init__(self, folder: Path, server: Server) -> None:
        self.folder = folder
        self.server = server
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        self.env.pop("DISPLAY", None)  # `pushsite open` prints the URL instead of a browser

    def run(self, command: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(["bash", "-c", command], cwd=self.folder,
                              env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, f"{command!r} exited {done.returncode}: {done.stderr}"
        return done.stdout + done.stderr

    def run_block(self, commands: Iterable[str], fill: dict[str, str],
                  env: dict[str, str] | None = None, one_shell: bool = False) -> list[str]:
        """Each README line with its placeholders filled; a `[--opt X]` line runs twice, with
        and without the options. Returns what each printed. `one_shell`: the lines run in
        one bash (a `cd` carries over), stopping at the first that fails."""
        fill = {"127.0.0.1:8000": f"127.0.0.1:{self.server.port}", **fill}
        lines = []
        for command in commands:
            if command in NOT_RUN:
                continue
            for old, new in fill.items():
                command = command.replace(old, new)
            lines.extend(_optional_variants(command))
        if one_shell:
            return [self.run("set -e\n" + "\n".join(lines), env)]
        return [self.run(line, env) for line in lines]


def _optional_variants(command: str) -> list[str]:
    """`a [--b X] [--c Y]` -> `a` and `a --b X --c Y` (the values filled by the caller)."""
    if "[" not in command:
        return [command]
    bare = re.sub(r"\s*\[[^\]]*\]", "", command)
    full = re.sub(r"\[([^\]]*)\]", r"\1", command)
    return [bare, full]


@pytest.fixture
def newcomer(tmp_path: Path, server: Server) -> Newcomer:
    server.create_site("blog")
    folder = write_files(tmp_path / "my-blog", {"public/index.html": "<h1>blog</h1>"})
    return Newcomer(folder, server)


# the blocks -------------------------------------------------------------------------------------
def test_git_push_block(newcomer: Newcomer, server: Server) -> None:
    repo = newcomer.folder
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    git(repo, "branch", "feature-x")
    commands = block("git push", "pushsite tokens").commands
    token = newcomer.run(commands[0]).strip().splitlines()[-1].strip()
    assert token.startswith("psk_"), token
    newcomer.run_block(commands[1:3], {"psk_...": token})
    assert server.get(f"blog.localhost:{server.port}", "/public/").text == "<h1>blog</h1>"
    git(repo, "checkout", "-q", "feature-x")
    write_files(repo, {"public/index.html": "<h1>feature</h1>"})
    git(repo, "commit", "-q", "-am", "feature")
    newcomer.run_block(commands[3:4], {})
    preview = f"feature-x--blog.localhost:{server.port}"
    assert server.get(preview, "/public/").text == "<h1>feature</h1>"
    newcomer.run_block(commands[4:], {})
    assert server.get(preview, "/public/").status_code == 404
    assert server.get(f"blog.localhost:{server.port}", "/public/").text == "<h1>blog</h1>"


def test_lock_and_failed_pushes_block(newcomer: Newcomer, server: Server) -> None:
    commands = block("git push", "pushsite lock").commands
    reader = Api(server, server.new_token("--name", "reader"))

    def settings() -> dict[str, object]:
        return dict(reader.ok("GET", "/sites/blog")["settings"])

    assert settings()["locked"] is False and settings()["reject_failed_pushes"] is True
    newcomer.run_block(commands[:1], {})
    assert settings()["locked"] is True
    newcomer.run_block(commands[1:2], {})
    assert settings()["locked"] is False
    token = newcomer.run(commands[2]).strip().splitlines()[-1].strip()
    assert token.startswith("psk_"), token
    [answer] = newcomer.run_block(commands[3:], {"psk_...": token})
    assert json.loads(answer)["settings"]["reject_failed_pushes"] is False
    assert settings()["reject_failed_pushes"] is False


def test_webhooks_block(newcomer: Newcomer) -> None:
    bare, full = newcomer.run_block(
        block("Webhooks (code on GitHub, GitLab, Bitbucket, Gitea or Forgejo)").commands,
        {"--access-token T": "--access-token tok_123",
         "--base-url URL": "--base-url https://git.example.org"})
    assert "https://deploy.example.com/hooks/github/blog" in bare
    assert "https://git.example.org" in full


def test_notify_block(newcomer: Newcomer) -> None:
    commands = block("Notifications, commit statuses and metrics").commands
    added = newcomer.run_block(commands[:2], {})
    assert all("whsec_" in out for out in added)
    listed, as_json = newcomer.run_block(commands[2:3], {})
    endpoints = [json.loads(line) for line in as_json.splitlines()]
    urls = {e["url"] for e in endpoints}
    assert urls == {"https://ci.example.com/hook", "https://hooks.slack.com/services/..."}
    assert all(e["id"] in listed for e in endpoints)
    first = next(e["id"] for e in endpoints if e["url"].startswith("https://ci."))
    newcomer.run_block(commands[3:], {"ep_...": first})
    left = newcomer.run("pushsite notify list blog --json").splitlines()
    assert [json.loads(line)["url"] for line in left] == ["https://hooks.slack.com/services/..."]


def test_ci_block(newcomer: Newcomer, server: Server) -> None:
    token = server.new_token()
    newcomer.run_block(block("Deploys from CI").commands,
                       {"https://deploy.example.com": server.url, "psk_...": token},
                       env={"GITHUB_REF_NAME": "feature-ci"})
    preview = server.get(f"feature-ci--blog.localhost:{server.port}")
    assert preview.text == "<h1>blog</h1>"


def test_env_block(newcomer: Newcomer) -> None:
    outputs = newcomer.run_block(block("Builds", "pushsite env").commands,
                                 {"API_KEY=...": "API_KEY=s3cret-value"})
    listed = outputs[2]
    assert "HUGO_ENV=production" in listed and "API_KEY=••••" in listed
    assert "s3cret-value" not in "".join(outputs)
    after = newcomer.run("pushsite env list blog")
    assert "API_KEY" not in after and "HUGO_ENV=production" in after


def test_domains_block(newcomer: Newcomer, server: Server) -> None:
    write_files(newcomer.folder, {"public/pushsite.toml": 'domains = ["www.example.org"]\n'})
    newcomer.run("pushsite deploy ./public --site blog")
    assert server.get("www.example.org").status_code != 200  # pending: not served yet
    outputs = newcomer.run_block(block("Custom domains").commands, {})
    assert "www.example.org" in outputs[1] and "approved" in outputs[1]
    assert server.get("www.example.org").text == "<h1>blog</h1>"


def test_systemd_block(newcomer: Newcomer, tmp_path: Path) -> None:
    unit = tmp_path / "pushsite.service"
    newcomer.run_block(block("Running it for real", "pushsite systemd-unit").commands,
                       {"sudo tee /etc/systemd/system/pushsite.service": f"tee {unit}"})
    text = unit.read_text()
    assert "--base-domain example.com" in text and "--public-url https://example.com" in text
    assert "User=pushsite" in text and "/var/lib/pushsite" in text
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True)
    assert verify.returncode == 0, verify.stderr


def test_backup_block(newcomer: Newcomer, server: Server, tmp_path: Path) -> None:
    newcomer.run("pushsite deploy ./public --site blog")
    backup = tmp_path / "backup"
    newcomer.run_block(block("Running it for real", "cd /var/lib/pushsite").commands,
                       {"/var/lib/pushsite": str(server.home), "/backup": str(backup)},
                       one_shell=True)
    restored = backup / "home"
    databases = {p.relative_to(server.home) for p in server.home.rglob("*.db")}
    assert {"state.db", "queue.db", "metrics.db"} <= {str(p) for p in databases}
    assert databases <= {p.relative_to(restored) for p in restored.rglob("*.db")}
    env = {"PUSHSITE_HOME": str(restored)}
    assert "blog" in newcomer.run("pushsite deploys blog", env)
    verified = newcomer.run("pushsite verify", env)
    assert "present and intact" in verified, verified
