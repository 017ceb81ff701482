"""A full disk is an outage with one clear line, never a traceback or a stuck deployment.

Each test puts PUSHSITE_HOME on a real small tmpfs (we run as root in CI and here) and fills
it for real: a deploy that fills it exits 7 with one line and ends failed while the live site
serves on; cancel and prune still work on it (the reserve, diskspace.py); the API answers 507;
a deployment whose failure cannot even be recorded is taken over once its lease runs out; and
the temporary files of a kill -9'd deploy go at the next store open.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pushsite.config import load_config
from pushsite.diskspace import free_bytes
from pushsite.errors import DiskFull
from pushsite.model import Status
from pushsite.service import Service
from pushsite.stores import tempfiles
from pushsite.stores.local import LocalStore
from support.disk import fill, open_under, tmpfs
from support.servers import serving
from support.service import bundle, log_text, split_bundle, wait_for
from support.sites import git

DISK = "8m"
ONE_LINE = "error: no space left on the device holding "


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """PUSHSITE_HOME on a tmpfs of its own, unmounted after the test."""
    with tmpfs(tmp_path / "disk", DISK) as mount:
        home = mount / "home"
        monkeypatch.setenv("PUSHSITE_HOME", str(home))
        yield home


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pushsite", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def write_site(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def noise(count: int, size: int, seed: str) -> dict[str, bytes]:
    """Incompressible files: they take their whole size on the disk."""
    return {f"f/{seed}{n}.bin": random.Random(f"{seed}{n}").randbytes(size) for n in range(count)}


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(ONE_LINE), stderr
    return lines[0]


def test_a_deploy_that_fills_the_disk_exits_7_with_one_line(disk: Path, tmp_path: Path) -> None:
    v1 = write_site(tmp_path / "v1", {"index.html": b"<h1>v1</h1>"})
    done = cli("deploy", "--create", str(v1), "--site", "blog")
    assert done.returncode == 0, done.stderr
    # small files (packed in data files) and large ones (spooled, renamed): 12 MB on 8 MB
    big = write_site(tmp_path / "big", {"index.html": b"<h1>v2</h1>", **noise(20, 300_000, "s"),
                                        **noise(3, 2_000_000, "L")})
    done = cli("deploy", str(big), "--site", "blog")
    assert done.returncode == 7, done.stderr
    one_line(done.stderr)
    service = Service(load_config())
    try:
        latest = service.state.list_deployments("blog", limit=1)[0]
        assert latest.status == Status.FAILED
        assert latest.error.startswith("no space left on the device holding ")
        assert latest.error_kind == "DiskFull"
        assert "no space left" in log_text(service, latest.id)
    finally:
        service.close()
    with serving(disk) as server:
        page = server.get("blog.localhost")
        assert page.status_code == 200
        assert page.text == "<h1>v1</h1>"


def test_cancel_and_prune_work_on_the_full_disk(disk: Path, tmp_path: Path) -> None:
    for n in (1, 2):
        site = write_site(tmp_path / f"v{n}", {"index.html": f"<h1>v{n}</h1>".encode(),
                                               **noise(3, 100_000, f"v{n}")})
        assert cli("deploy", "--create", str(site), "--site", "blog").returncode == 0
    service = Service(load_config())
    queued = service.accept("blog", io.BytesIO(bundle({"index.html": b"v3"})), enqueue=False)
    service.close()
    filler = fill(disk)

    # a write that settles nothing is refused with the one line; nothing uses the reserve
    done = cli("tokens", "create", "--name", "refused")
    assert done.returncode == 7
    one_line(done.stderr)

    # measured (diskspace.py): without a reserve a fresh process cannot even open the
    # state (the -shm and -wal need room) ...
    reserve = disk / "state.db-reserve"
    store_reserve = disk / "store" / "objects.db-reserve"
    reserve.rename(disk / "aside")
    store_reserve.rename(disk / "store-aside")
    done = cli("cancel", queued.id)
    assert done.returncode == 7
    one_line(done.stderr)
    # ... with the store's beside it, when the state's holds nothing (an earlier settling
    # write used it while the disk stayed full), the cancel borrows the store's and commits
    (disk / "store-aside").rename(store_reserve)
    reserve.touch()
    done = cli("cancel", queued.id)
    assert done.returncode == 0, done.stderr
    assert store_reserve.stat().st_size < 2 << 20
    reserve.unlink()
    (disk / "aside").rename(reserve)
    done = cli("prune", "blog", "--keep", "1", env={"PUSHSITE_PRUNE_GRACE": "0"})
    assert done.returncode == 0, done.stderr
    assert "pruned 1 deployment and " in done.stderr

    service = Service(load_config())
    try:
        assert service.state.get_deployment(queued.id).status == Status.CANCELLED
        statuses = [d.status for d in service.state.list_deployments("blog")]
        assert statuses == [Status.CANCELLED, Status.LIVE, Status.CANCELLED]
        assert service.verify() == []
    finally:
        service.close()
    # the prune freed the first deployment's blobs: the reserves grew back first
    filler.unlink()
    assert cli("deploy", "--create", str(tmp_path / "v1"), "--site", "blog").returncode == 0
    assert reserve.stat().st_size == 1 << 20
    assert (disk / "store" / "objects.db-reserve").stat().st_size == 2 << 20


def test_prune_works_on_the_full_disk_after_a_failure_used_the_state_reserve(
        disk: Path, tmp_path: Path) -> None:
    """A failed deploy's blobs stay until a prune, so the state's reserve that recorded its
    failure may not grow back; the prune that frees the disk borrows the store's."""
    for n in (1, 2):
        site = write_site(tmp_path / f"v{n}", {"index.html": f"<h1>v{n}</h1>".encode(),
                                               **noise(3, 100_000, f"v{n}")})
        assert cli("deploy", "--create", str(site), "--site", "blog").returncode == 0
    os.truncate(disk / "state.db-reserve", 0)
    filler = fill(disk)
    done = cli("prune", "blog", "--keep", "1", env={"PUSHSITE_PRUNE_GRACE": "0"})
    assert done.returncode == 0, done.stderr
    assert "pruned 1 deployment and " in done.stderr
    filler.unlink()
    assert cli("verify").returncode == 0
    assert (disk / "state.db-reserve").stat().st_size == 1 << 20


def test_an_api_upload_on_a_full_disk_answers_507(disk: Path) -> None:
    assert cli("sites", "create", "blog").returncode == 0
    with serving(disk) as server:
        token = server.new_token("--name", "ci")
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"}
        url = f"{server.url}/api/sites/blog/deploys"
        first = httpx.post(url, content=bundle({"index.html": b"<h1>v1</h1>"}),
                           headers=headers, timeout=30)
        assert first.status_code == 202, first.text
        wait_for("v1 live", lambda: server.get("blog.localhost").text == "<h1>v1</h1>")
        filler = fill(disk)
        answer = httpx.post(url, content=bundle({"index.html": b"<h1>v2</h1>"}),
                            headers=headers, timeout=30)
        assert answer.status_code == 507, answer.text
        body = answer.json()
        assert body["ok"] is False and body["status"] == 507
        assert body["error"].startswith("no space left on the device holding ")
        assert server.get("blog.localhost").text == "<h1>v1</h1>"
        filler.unlink()


class FillingStream(io.RawIOBase):
    """A bundle whose second part comes only after `between` ran."""

    def __init__(self, first: bytes, rest: bytes, between: Callable[[], None]) -> None:
        self._parts = [first, rest]
        self._between = between

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._parts[0]:
            if len(self._parts) == 1:
                return 0
            self._parts.pop(0)
            self._between()
        data, self._parts[0] = self._parts[0][:len(buffer)], self._parts[0][len(buffer):]
        buffer[:len(data)] = data
        return len(data)


def test_a_failure_the_state_cannot_record_is_taken_over_after_the_lease(
        disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHSITE_LEASE", "1")
    service = Service(load_config())
    first, rest = split_bundle({"index.html": b"<h1>v1</h1>"}, noise(12, 200_000, "r"))
    deployment = service.accept("blog", None, enqueue=False)
    reserves = [disk / "state.db-reserve", disk / "store" / "objects.db-reserve"]
    filler: list[Path] = []

    def no_room_left() -> None:
        """Once the deploy is under way: the disk full, and every reserve on it a folder
        now (an empty one borrows a sibling's: diskspace.py). The store opens on a thread
        of its own while the bundle is read (service/running.py, "store-open"), its reserve
        the last thing it makes: it may not be open yet when the first part is read."""
        wait_for("the store open", reserves[1].exists)
        for folder in reserves:
            folder.unlink(missing_ok=True)
            folder.mkdir()
        filler.append(fill(disk))

    stream = FillingStream(first, rest, no_room_left)
    with pytest.raises(DiskFull) as raised:
        service.run(deployment.id, bundle=stream)
    assert "could not be marked failed either" in raised.value.message
    assert "stays running until its lease runs out" in raised.value.message
    filler[0].unlink()
    for folder in reserves:
        folder.rmdir()
    service.close()  # its store writes the failed batch it kept, now that there is room
    assert open_under(disk) == []  # metrics.db too: the tmpfs was busy at its unmount
    time.sleep(1.2)
    later = Service(load_config())
    try:
        assert later.state.get_deployment(deployment.id).status == Status.RUNNING
        assert later.recover() == [deployment.id]
        settled = later.state.get_deployment(deployment.id)
        assert settled.status == Status.FAILED
        assert "stopped renewing its lease" in settled.error
        assert "taken over" in log_text(later, deployment.id)
    finally:
        later.close()


def test_temp_files_of_a_killed_deploy_go_at_the_next_store_open(tmp_path: Path) -> None:
    home = Path(os.environ["PUSHSITE_HOME"])
    first, rest = split_bundle({"index.html": b"x"}, noise(1, 3_000_000, "k"))
    deploy = subprocess.Popen([sys.executable, "-m", "pushsite", "deploy", "--create", "-",
                               "--site", "kill"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert deploy.stdin is not None
    deploy.stdin.write(first)
    deploy.stdin.flush()
    # the large file spools into store/tmp once the store is open (before: an anonymous
    # file); its reserve is made last thing in the opening
    wait_for("the store open", (home / "store" / "objects.db-reserve").exists)
    time.sleep(1.0)  # and the deploy knows it (Later.done) before the large file comes
    deploy.stdin.write(rest[: len(rest) // 2])
    deploy.stdin.flush()
    spool = home / "store" / "tmp"
    wait_for("a spool file", lambda: spool.exists() and any(spool.iterdir()))
    left = list(spool.iterdir())
    assert all(p.name.startswith(f"{deploy.pid}@") for p in left), left
    deploy.send_signal(signal.SIGKILL)
    deploy.wait()
    assert list(spool.iterdir()) == left  # nobody removed them

    # an older version's nameless leftover goes after an hour; a live writer's file stays
    old = spool / "tmpabc123"
    old.write_bytes(b"old")
    os.utime(old, (time.time() - 2 * tempfiles.UNOWNED_AGE,) * 2)
    fresh = spool / "tmpfresh"
    fresh.write_bytes(b"fresh")
    handle, mine = tempfiles.create(spool)
    handle.close()
    LocalStore(home / "store").close()
    assert sorted(spool.iterdir()) == sorted([fresh, mine])


def test_a_push_that_fills_the_disk_says_so_in_a_remote_line(disk: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write_site(repo, {"index.html": b"<h1>v1</h1>"})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v1")
    assert cli("sites", "create", "blog").returncode == 0
    with serving(disk) as server:
        url = f"http://x:{server.new_token('--name', 'push')}@127.0.0.1:{server.port}/blog.git"
        push = ["git", "push", url, "main"]
        done = subprocess.run(push, cwd=repo, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        wait_for("v1 live", lambda: server.get("blog.localhost").text == "<h1>v1</h1>")
        # git keeps the commit's objects (they fit), then the deploy's copy does not
        size = int(free_bytes(disk) * 0.6)
        write_site(repo, noise(4, size // 4, "push"))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "v2")
        done = subprocess.run(push, cwd=repo, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0, done.stderr  # the failed deploy refuses the push
        assert "remote: pushsite: error: no space left on the device holding " in done.stderr
        assert "the push is refused" in done.stderr
        assert "Traceback" not in done.stderr and " 500" not in done.stderr
        assert server.get("blog.localhost").text == "<h1>v1</h1>"
