"""Without bubblewrap there is no build: a push or `deploy --build` that needs one fails with
one line naming the package, the live site stays, and nothing runs unsandboxed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from support.cli import ok, pushsite
from support.servers import serving
from support.sites import git, write_files

BUILD = {"pushsite.toml": '[build]\ncommand = "mkdir -p out; touch ../../ran-unsandboxed; '
                          'echo built > out/index.html"\npublish = "out"\n'}


def bin_without_bwrap(tmp_path: Path) -> str:
    """A PATH holding git and nothing else (bwrap is found on PATH only)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    git_path = shutil.which("git")
    assert git_path
    (folder / "git").symlink_to(git_path)
    return str(folder)


def test_deploy_build_without_bwrap_refuses(tmp_path: Path) -> None:
    site = write_files(tmp_path / "site", {"index.html": "<p>v1</p>"})
    ok("deploy", str(site), "--site", "nobwrap", "--create")
    write_files(site, BUILD)
    done = pushsite("deploy", str(site), "--site", "nobwrap", "--build",
                    env={"PATH": bin_without_bwrap(tmp_path)})
    assert done.returncode == 6, done.stderr
    assert "apt-get install bubblewrap" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ran-unsandboxed").exists()
    listed = ok("deploys", "nobwrap", "--json").stdout.splitlines()
    assert '"status": "live"' in listed[-1] and '"status": "failed"' in listed[0]


def test_push_needing_a_build_without_bwrap_fails(tmp_path: Path) -> None:
    env = {"PATH": bin_without_bwrap(tmp_path)}
    with serving(tmp_path / "home", extra_env=env) as server:
        assert server.cli("sites", "create", "nobwrap").returncode == 0
        token = server.new_token("--name", "t")
        repo = tmp_path / "repo"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        write_files(repo, {"index.html": "<p>v1</p>"})
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "v1")
        url = f"http://x:{token}@127.0.0.1:{server.port}/nobwrap.git"
        first = subprocess.run(["git", "push", url, "main"], cwd=repo, capture_output=True,
                               text=True, timeout=120, env={**os.environ})
        assert "pushsite: production:" in first.stderr, first.stderr
        write_files(repo, BUILD)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "build")
        second = subprocess.run(["git", "push", url, "main"], cwd=repo, capture_output=True,
                                text=True, timeout=120)
        assert "bwrap` is not installed" in second.stderr, second.stderr
        assert "apt-get install bubblewrap" in second.stderr
        assert server.get("nobwrap.localhost", "/").text == "<p>v1</p>"
