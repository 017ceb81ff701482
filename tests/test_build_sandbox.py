"""Hostile build commands, pushed with `git push` to a real `pushsite serve`: each one gets a
clear outcome, the live site stays as it was, nothing of the server leaks into what is
published, and no process of the build is left running (checked in /proc)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.servers import Server, serving
from support.sites import git, write_files

MARK = f"psbuild{uuid.uuid4().hex[:10]}"  # in every command, to find leftovers in /proc


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("build-home")
    env = {"PUSHSITE_SERVER_SECRET_FOR_TEST": "s3rv3r-env-" + MARK}
    with serving(home, extra_env=env) as server:
        yield server


@pytest.fixture(scope="module")
def token(srv: Server) -> str:
    return srv.new_token("--name", "builds")


def push(srv: Server, token: str, site: str, repo: Path) -> subprocess.CompletedProcess[str]:
    url = f"http://x:{token}@127.0.0.1:{srv.port}/{site}.git"
    return subprocess.run(["git", "push", "-q", url, "main"], cwd=repo, capture_output=True,
                          text=True, timeout=180)


def site_with_v1(srv: Server, token: str, tmp_path: Path, site: str) -> Path:
    """A repository whose first push (no build) is live: <p>v1</p>."""
    created = srv.cli("sites", "create", site)
    assert created.returncode == 0, created.stderr
    repo = tmp_path / site
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write_files(repo, {"index.html": "<p>v1</p>"})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v1")
    done = push(srv, token, site, repo)
    assert went_live(done.stderr), done.stderr
    return repo


def push_build(srv: Server, token: str, repo: Path, site: str, command: str,
               extra: str = "") -> str:
    """Commit a pushsite.toml whose build runs `command` (publishing out/), push; stderr."""
    toml = f'[build]\ncommand = """{command}"""\npublish = "out"\n{extra}'
    os.remove(repo / "index.html")
    write_files(repo, {"pushsite.toml": toml})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "build")
    return push(srv, token, site, repo).stderr


def went_live(err: str) -> bool:
    """The push's last line says the site serves the new deployment."""
    return "pushsite: production: http" in err


def leftovers(mark: str = MARK) -> list[str]:
    """Processes (not zombies) whose command line holds `mark`, other than this test's own."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(entry.path, "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if mark.encode() in cmdline and state != "Z" and b"git" not in cmdline \
                and b"pytest" not in cmdline:
            found.append(f"{entry.name}: {cmdline.decode(errors='replace')}")
    return found


def no_leftovers_within(seconds: float, mark: str = MARK) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := leftovers(mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def live(srv: Server, site: str, path: str = "/") -> str:
    return srv.get(f"{site}.localhost", path).text


def test_build_sees_nothing_of_the_server(srv: Server, token: str, tmp_path: Path) -> None:
    secret = Path("/root") / f"{MARK}.secret"
    secret.write_text("root-secret-" + MARK)
    other = site_with_v1(srv, token, tmp_path, "other")  # another site's repository
    try:
        repo = site_with_v1(srv, token, tmp_path, "nosy")
        home = srv.home
        command = (f"mkdir -p out; echo {MARK} > out/index.html; "
                   f"cat {home}/state.db {home}/repos/other.git/HEAD {secret} "
                   f"> out/leak.txt 2>out/errors.txt; ls -a /root /home {home} "
                   f">> out/errors.txt 2>&1; env > out/env.txt; id > out/id.txt; true")
        err = push_build(srv, token, repo, "nosy", command)
        assert went_live(err), err
        assert live(srv, "nosy").strip() == MARK
        assert live(srv, "nosy", "/leak.txt") == ""
        errors = live(srv, "nosy", "/errors.txt")
        assert "state.db: No such file or directory" in errors
        assert "root-secret" not in errors and "other.git" in errors
        env = live(srv, "nosy", "/env.txt")
        assert "s3rv3r-env" not in env and "PUSHSITE_HOME" not in env
        assert "CI=true" in env and "CONTEXT=production" in env and "BRANCH=main" in env
        assert "PUSHSITE_SITE=nosy" in env and "DEPLOY_URL=http" in env
        assert live(srv, "nosy", "/id.txt").startswith("uid=65534")
        assert other.exists()
    finally:
        secret.unlink()


def test_build_cannot_write_outside_its_work_folder(srv: Server, token: str,
                                                   tmp_path: Path) -> None:
    repo = site_with_v1(srv, token, tmp_path, "writer")
    target = srv.home / f"{MARK}-planted"
    command = (f"mkdir -p out; echo ok > out/index.html; "
               f"for t in /usr/{MARK} /etc/{MARK} {target} /tmp/{MARK}; do "
               f"echo x > $t 2>/dev/null && echo wrote $t >> out/wrote.txt; done; true")
    err = push_build(srv, token, repo, "writer", command)
    assert went_live(err), err
    assert not target.exists() and not Path(f"/usr/{MARK}").exists()
    assert not Path(f"/etc/{MARK}").exists() and not Path(f"/tmp/{MARK}").exists()
    assert live(srv, "writer", "/wrote.txt").strip() == f"wrote /tmp/{MARK}"  # its own /tmp


def test_no_network_not_even_the_servers_own_port(srv: Server, token: str,
                                                  tmp_path: Path) -> None:
    repo = site_with_v1(srv, token, tmp_path, "netless")
    probe = ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', "
             f"{srv.port}), 2)\n    print('connected')\n"
             "except OSError as e:\n    print('refused', e)")
    write_files(repo, {"probe.py": probe})
    err = push_build(srv, token, repo, "netless",
                     "mkdir -p out; python3 probe.py > out/index.html")
    assert went_live(err), err
    assert live(srv, "netless").startswith("refused")


def test_fork_bomb_is_contained(srv: Server, token: str, tmp_path: Path) -> None:
    repo = site_with_v1(srv, token, tmp_path, "bomb")
    err = push_build(srv, token, repo, "bomb",
                     f"b() {{ b | b & }}; b; sleep 2; echo {MARK}; exit 3")
    assert "build failed (exit 3)" in err, err
    assert live(srv, "bomb") == "<p>v1</p>"
    assert no_leftovers_within(2.0) == []
    assert srv.get("localhost", "/api/health").status_code == 200


def test_unbounded_allocation_fails_the_build(srv: Server, token: str, tmp_path: Path) -> None:
    repo = site_with_v1(srv, token, tmp_path, "hog")
    err = push_build(srv, token, repo, "hog",
                     "python3 -c \"x = []\nwhile True: x.append(b'x' * (1 << 24))\"")
    assert "build failed (exit 1): MemoryError" in err, err
    assert live(srv, "hog") == "<p>v1</p>"


def test_unbounded_output_is_truncated_and_stopped(srv: Server, token: str,
                                                   tmp_path: Path) -> None:
    repo = site_with_v1(srv, token, tmp_path, "chatty")
    started = time.monotonic()
    err = push_build(srv, token, repo, "chatty", f"yes {MARK}")
    assert "output truncated" in err, err[-2000:]
    assert "bytes of output; it was stopped" in err
    assert time.monotonic() - started < 60
    assert err.count(MARK) <= 5_100  # the kept lines, not the gigabytes
    assert live(srv, "chatty") == "<p>v1</p>"
    assert no_leftovers_within(2.0) == []


def test_sleeping_forever_times_out_and_leaves_nothing(srv: Server, token: str,
                                                       tmp_path: Path) -> None:
    repo = site_with_v1(srv, token, tmp_path, "sleepy")
    started = time.monotonic()
    err = push_build(srv, token, repo, "sleepy",
                     f"(sleep 86401 &); echo started {MARK}; sleep 86400",
                     extra='timeout = "3s"\n')
    assert "build timed out after 3s" in err, err
    assert time.monotonic() - started < 30
    assert live(srv, "sleepy") == "<p>v1</p>"
    assert no_leftovers_within(2.0, "sleep 8640") == []


def test_a_daemon_left_behind_is_killed(srv: Server, token: str, tmp_path: Path) -> None:
    repo = site_with_v1(srv, token, tmp_path, "daemon")
    err = push_build(srv, token, repo, "daemon",
                     f"(setsid sh -c 'sleep 3600; echo {MARK}' > /dev/null 2>&1 &); "
                     f"mkdir -p out; echo built > out/index.html")
    assert went_live(err), err
    assert live(srv, "daemon").strip() == "built"
    assert no_leftovers_within(2.0, "sleep 3600") == []


@pytest.mark.parametrize(("command", "message"), [
    ("true", "the build produced no publish folder (out/"),
    ("mkdir -p out/empty", "the build's publish folder out/ is empty"),
    ("ln -s /etc out", "the publish folder out/ is a symbolic link"),
])
def test_missing_or_empty_publish_folder(srv: Server, token: str, tmp_path: Path,
                                         command: str, message: str) -> None:
    site = f"pub{abs(hash(command)) % 10_000}"
    repo = site_with_v1(srv, token, tmp_path, site)
    err = push_build(srv, token, repo, site, command)
    assert message in err, err
    assert live(srv, site) == "<p>v1</p>"


def test_symlink_to_etc_passwd_is_not_followed(srv: Server, token: str,
                                               tmp_path: Path) -> None:
    repo = site_with_v1(srv, token, tmp_path, "linker")
    err = push_build(srv, token, repo, "linker",
                     "mkdir -p out; echo page > out/index.html; ln -s /etc/passwd out/pw.txt")
    assert went_live(err), err
    assert srv.get("linker.localhost", "/pw.txt").status_code == 404
    assert "root:" not in live(srv, "linker", "/pw.txt")


@pytest.mark.parametrize(("toml", "message"), [
    ('[build]\ncommand = "make"\npublish = "out"\ncomand = "x"\n',
     'unknown [build] setting "comand"'),
    ('[build]\ncommand = "make"\npublish = "out"\ntimeout = "ten minutes"\n',
     "[build] timeout must be a duration"),
    ('[build]\ncommand = "make"\npublish = "../x"\n', 'publish may not leave the bundle'),
])
def test_bad_build_settings_are_refused_in_one_line(srv: Server, token: str, tmp_path: Path,
                                                    toml: str, message: str) -> None:
    site = f"conf{abs(hash(toml)) % 10_000}"
    repo = site_with_v1(srv, token, tmp_path, site)
    write_files(repo, {"pushsite.toml": toml})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "bad settings")
    err = push(srv, token, site, repo).stderr
    assert message in err and "pushsite.toml line" in err, err
    assert live(srv, site) == "<p>v1</p>"
