"""The build cache over real pushes: `.cache` (and [build] cache folders) come back in the next
build of the branch, a new branch starts from production's, `pushsite cache clear` empties
it, and a cache folder the build made a link is never saved (nothing of the server leaks)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.servers import Server
from support.sites import git, write_files

COUNTER = ('mkdir -p .cache out; n=$(cat .cache/n 2>/dev/null || echo 0); n=$((n+1)); '
           'echo $n > .cache/n; echo $n > out/index.html; date +%N > out/stamp.txt')


def push(server: Server, token: str, repo: Path, ref: str = "main") -> str:
    url = f"http://x:{token}@127.0.0.1:{server.port}/cached.git"
    return subprocess.run(["git", "push", url, ref], cwd=repo, capture_output=True, text=True,
                          timeout=180).stderr


def rebuild(server: Server, token: str, repo: Path, ref: str = "main") -> str:
    write_files(repo, {"stamp": str(len(git(repo, "log", "--oneline").splitlines()))})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "again")
    err = push(server, token, repo, ref)
    assert "pushsite: production:" in err or "pushsite: preview:" in err, err
    return err


def test_cache_survives_between_builds_and_clears(server: Server, tmp_path: Path) -> None:
    assert server.cli("sites", "create", "cached").returncode == 0
    token = server.new_token("--name", "t")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write_files(repo, {"pushsite.toml": f"[build]\ncommand = '{COUNTER}'\npublish = 'out'\n"})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "counter")
    first = push(server, token, repo)
    assert "no build cache yet" in first and "saved the build cache of main (.cache" in first
    assert server.get("cached.localhost", "/").text.strip() == "1"
    second = rebuild(server, token, repo)
    assert "restored the build cache of main (.cache" in second
    assert server.get("cached.localhost", "/").text.strip() == "2"
    git(repo, "checkout", "-q", "-b", "feature")
    rebuild(server, token, repo, "feature")  # starts from production's cache
    assert server.get("feature--cached.localhost", "/").text.strip() == "3"
    assert server.get("cached.localhost", "/").text.strip() == "2"
    cleared = server.cli("cache", "clear", "cached")
    assert cleared.returncode == 0 and b"2 branch(es)" in cleared.stderr
    git(repo, "checkout", "-q", "main")
    rebuild(server, token, repo)
    assert server.get("cached.localhost", "/").text.strip() == "1"


def test_a_linked_cache_folder_is_not_saved(server: Server, tmp_path: Path) -> None:
    assert server.cli("sites", "create", "cached").returncode == 0
    token = server.new_token("--name", "t")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    command = (f"ls .cache/ > found.txt 2>&1; mkdir -p out; cp found.txt out/index.html; "
               f"rm -rf .cache; ln -s {server.home} .cache")
    write_files(repo, {"pushsite.toml": f"[build]\ncommand = '{command}'\npublish = 'out'\n"})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "link")
    first = push(server, token, repo)
    assert "not kept (a link): .cache" in first, first
    second = rebuild(server, token, repo)
    assert "no build cache yet" in second
    assert "state.db" not in server.get("cached.localhost", "/").text
    assert not (server.home / "build-cache" / "cached" / "main").exists()
