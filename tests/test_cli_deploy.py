"""`pushsite deploy`: good sources go live; every kind of bad input is refused with one clear
line and a non-zero exit, the previous live version stays served, and nothing is written
outside the store."""

from __future__ import annotations

import gzip
import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from pushsite.cli import cli
from pushsite.config import load_config
from pushsite.limits import Limits
from pushsite.model import Status, blob_key, manifest_key
from pushsite.service import Service
from support.sites import deploy, git_bundle, live_manifest


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]], level: int = 9) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(raw.getvalue(), level)


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def good_bundle() -> bytes:
    return tar_gz([file_member("site/index.html", b"<h1>v1</h1>" * 50)])


def test_deploy_folder_goes_live_with_json(make_site: Callable[..., Path]) -> None:
    code, out, _ = deploy(str(make_site()), "--site", "blog", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["status"] == "live"
    assert data["files"] == 2
    assert data["urls"]["production"] == "http://blog.localhost:8000/"
    assert data["urls"]["deployment"].startswith(f"http://{data['id']}--blog.")
    assert set(live_manifest("blog").files) == {"index.html", "css/a.css"}


def test_git_archive_bundle_keeps_commit_and_strips_top_folder(
        make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo({"index.html": "<p>hi</p>", "docs/guide.html": "<p>guide</p>"})
    bundle = git_bundle(repo, tmp_path / "b.tar.gz")
    code, out, _ = deploy(str(bundle), "--site", "docs", "--json", "-m", "first")
    assert code == 0
    data = json.loads(out)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                            text=True).stdout.strip()
    assert data["commit"] == commit and data["message"] == "first"
    assert set(live_manifest("docs").files) == {"index.html", "docs/guide.html"}


def test_deploy_from_stdin_through_the_real_command(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pushsite", "deploy", "--create", "-", "--site",
                           "piped", "--json"], input=good_bundle(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "live"


def test_second_deploy_of_same_content_stores_nothing_new(make_site: Callable[..., Path]) -> None:
    site = make_site()
    deploy(str(site), "--site", "blog")
    code, out, _ = deploy(str(site), "--site", "blog", "--json")
    data = json.loads(out)
    assert code == 0 and data["blobs_new"] == 0 and data["blobs_reused"] == 2


def test_one_changed_file_stores_one_blob(make_site: Callable[..., Path]) -> None:
    files = {f"page{i}.html": f"<p>page {i}</p>" * 30 for i in range(50)}
    site = make_site(files)
    deploy(str(site), "--site", "blog")
    (site / "page7.html").write_text("<p>changed</p>" * 30)
    data = json.loads(deploy(str(site), "--site", "blog", "--json")[1])
    assert data["blobs_new"] == 1 and data["blobs_reused"] == 49


def test_dotfiles_links_and_specials_follow_the_rules(tmp_path: Path) -> None:
    link = tarfile.TarInfo("site/alias.html")
    link.type, link.linkname = tarfile.SYMTYPE, "index.html"
    outside = tarfile.TarInfo("site/passwd")
    outside.type, outside.linkname = tarfile.SYMTYPE, "/etc/passwd"
    fifo = tarfile.TarInfo("site/pipe")
    fifo.type = tarfile.FIFOTYPE
    bundle = tar_gz([
        file_member("site/index.html", b"<h1>home</h1>"),
        (link, None), (outside, None), (fifo, None),
        file_member("site/.env", b"SECRET=1"),
        file_member("site/.git/config", b"[core]"),
        file_member("site/.hidden.html", b"x"),
        file_member("site/.well-known/security.txt", b"Contact: x"),
    ])
    path = tmp_path / "b.tar.gz"
    path.write_bytes(bundle)
    code, out, _ = deploy(str(path), "--site", "rules", "--json")
    assert code == 0
    files = live_manifest("rules").files
    assert set(files) == {"index.html", "alias.html", ".well-known/security.txt"}
    assert files["alias.html"].hash == files["index.html"].hash
    log = CliRunner().invoke(cli, ["log", json.loads(out)["id"]], obj={}).stdout
    assert "skipped symlink site/passwd" in log and "skipped site/pipe" in log


def test_publish_folder_and_excludes_from_pushsite_toml(tmp_path: Path) -> None:
    toml = b'publish = "public"\nexclude = ["*.map"]\n'
    bundle = tar_gz([file_member("r/pushsite.toml", toml),
                     file_member("r/src/app.ts", b"code"),
                     file_member("r/public/index.html", b"<p>built</p>"),
                     file_member("r/public/app.js.map", b"{}")])
    path = tmp_path / "b.tar.gz"
    path.write_bytes(bundle)
    assert deploy(str(path), "--site", "built")[0] == 0
    assert set(live_manifest("built").files) == {"index.html"}


def _corrupt_crc() -> bytes:
    data = bytearray(good_bundle())
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    return bytes(data)


def _corrupt_header() -> bytes:
    raw = bytearray(gzip.decompress(good_bundle()))
    # find the member header and break its checksum field
    at = raw.index(b"site/index.html")
    raw[at + 148: at + 156] = b"0000000\0"
    return gzip.compress(bytes(raw))


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("index.html", "<p>zip</p>")
    return out.getvalue()


def _traversal(name: str) -> bytes:
    return tar_gz([file_member("site/index.html", b"ok"), file_member(name, b"evil")])


def _link_then_write() -> bytes:
    link = tarfile.TarInfo("site/escape")
    link.type, link.linkname = tarfile.SYMTYPE, "/tmp"
    return tar_gz([file_member("site/index.html", b"ok"), (link, None),
                   file_member("site/escape/pwned.html", b"evil")])


def _bomb() -> bytes:
    """Zeros (they inflate ~1030:1), twice ratio_min_bytes: the ratio stops it as it stopped
    300 MiB, which took 2.0 s of CPU to build against 0.9 s."""
    size = 2 * Limits().ratio_min_bytes
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w|") as tar:
        info = tarfile.TarInfo("site/zeros.html")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    return gzip.compress(raw.getvalue(), 9)


BAD_INPUTS: dict[str, tuple[Callable[[], bytes], str]] = {
    "not gzip": (lambda: b"<html>hello</html>" * 10, "gzip"),
    "truncated gzip": (lambda: good_bundle()[:-20], "truncated"),
    "bad crc": (_corrupt_crc, "crc"),
    "corrupt tar header": (_corrupt_header, "checksum"),
    "zip renamed": (_zip, "zip"),
    "empty file": (lambda: b"", "empty"),
    "empty bundle": (lambda: tar_gz([]), "no publishable file"),
    "only dotfiles": (lambda: tar_gz([file_member("site/.env", b"x")]), "no publishable file"),
    "dotdot": (lambda: _traversal("site/../../etc/evil.html"), ".."),
    "absolute": (lambda: _traversal("/etc/evil.html"), "absolute"),
    "drive": (lambda: _traversal("C:/evil.html"), "drive"),
    "backslash": (lambda: _traversal("site\\..\\evil.html"), "backslash"),
    "link then write through link": (_link_then_write, "link"),
    "gzip bomb": (_bomb, "ratio"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_and_live_site_stays(case: str, tmp_path: Path,
                                                   _isolated_env: Path) -> None:
    make, expected = BAD_INPUTS[case]
    good = tmp_path / "good.tar.gz"
    good.write_bytes(good_bundle())
    assert deploy(str(good), "--site", "blog")[0] == 0
    before = live_manifest("blog")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(make())
    code, out, err = deploy(str(bad), "--site", "blog")
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert expected.lower() in err.lower(), err
    assert live_manifest("blog").deployment_id == before.deployment_id
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*")}
    assert written <= {"home", "good.tar.gz", "bad.tar.gz"}


@pytest.mark.parametrize("limit, value, word", [
    ("PUSHSITE_MAX_FILES", "2", "files"),
    ("PUSHSITE_MAX_FILE_MB", "1", "bytes"),
    ("PUSHSITE_MAX_PATH", "20", "path"),
])
def test_over_a_limit_is_refused(limit: str, value: str, word: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(limit, value)
    bundle = tar_gz([file_member("site/index.html", b"x" * 100),
                     file_member("site/a.html", b"a"),
                     file_member("site/big/very/long/path/name.bin", b"\0" * (2 << 20))])
    path = tmp_path / "b.tar.gz"
    path.write_bytes(bundle)
    code, _, err = deploy(str(path), "--site", "blog")
    assert code == 3, err
    assert err.startswith("error:") and word.lower() in err.lower()


@pytest.mark.parametrize("name", ["Blog", "-blog", "a--b", "a_b", "x" * 64, "blog."])
def test_bad_site_name_is_a_usage_error(name: str, make_site: Callable[..., Path]) -> None:
    code, _, err = deploy(str(make_site()), "--site", name)
    assert code == 2 and "invalid site name" in err


def test_timeout_mid_deploy_marks_timed_out_and_keeps_live(tmp_path: Path) -> None:
    good = tmp_path / "good.tar.gz"
    good.write_bytes(good_bundle())
    assert deploy(str(good), "--site", "blog")[0] == 0
    before = live_manifest("blog").deployment_id
    # a big incompressible file takes longer than the deadline to hash and store
    import os

    # gzip level 0: random data does not shrink at any level (67.13 MB at 9, 67.11 at 0), and
    # level 9 took 1.8 s of CPU to find that out (0.25 s at 0)
    big = tar_gz([file_member("site/index.html", b"v2"),
                  file_member("site/video.mp4", os.urandom(64 << 20))], level=0)
    path = tmp_path / "big.tar.gz"
    path.write_bytes(big)
    code, out, err = deploy(str(path), "--site", "blog", "--timeout", "0.05", "--json")
    assert code == 6, err
    assert "ran out of time" in err
    assert json.loads(out)["status"] == "timed_out"
    assert live_manifest("blog").deployment_id == before
    # a second run with time to spare finishes, reusing what the first stored
    code, out, _ = deploy(str(path), "--site", "blog", "--json")
    assert code == 0 and json.loads(out)["status"] == "live"


def test_rollback_prune_and_verify(make_site: Callable[..., Path], _isolated_env: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHSITE_PRUNE_GRACE", "0")  # blobs written a moment ago may go too
    site = make_site({"index.html": "<p>one</p>"})
    first = json.loads(deploy(str(site), "--site", "blog", "--json")[1])
    (site / "index.html").write_text("<p>two</p>")
    second = json.loads(deploy(str(site), "--site", "blog", "--json")[1])
    (site / "index.html").write_text("<p>three</p>")
    third = json.loads(deploy(str(site), "--site", "blog", "--json")[1])
    runner = CliRunner()
    result = runner.invoke(cli, ["rollback", "blog"], obj={})
    assert result.exit_code == 0 and second["id"] in result.stderr
    assert live_manifest("blog").deployment_id == second["id"]
    assert runner.invoke(cli, ["verify"], obj={}).exit_code == 0
    result = runner.invoke(cli, ["prune", "blog", "--keep", "1"], obj={})
    assert result.exit_code == 0, result.stderr
    # kept: the newest (third) and the live one, rolled back to though it is not the newest;
    # dropped: the first, its manifest and the blob only it used
    pruned = re.search(r"pruned (\d+) deployments? and (\d+) blobs?\b", result.stderr)
    assert pruned is not None, result.stderr
    assert int(pruned[1]) == 1 and int(pruned[2]) >= 1
    assert pruned[0].startswith("pruned 1 deployment and")  # the plurals are right
    assert pruned[0].endswith("1 blob" if int(pruned[2]) == 1 else "blobs")
    service = Service(load_config())
    assert service.store.has([manifest_key(second["id"]), manifest_key(third["id"])]) == {
        manifest_key(second["id"]), manifest_key(third["id"])}
    assert not service.store.has([manifest_key(first["id"])])
    dropped = service.state.get_deployment(first["id"])
    assert (dropped.status, dropped.error) == (Status.CANCELLED, "pruned")
    assert live_manifest("blog").deployment_id == second["id"]
    assert runner.invoke(cli, ["verify"], obj={}).exit_code == 0
    # corrupt a blob: verify must notice
    entry = live_manifest("blog").files["index.html"]
    service.store.put(blob_key(entry.hash), b"tampered")
    service.store.flush()
    result = runner.invoke(cli, ["verify"], obj={})
    assert result.exit_code == 1 and "corrupt" in result.stderr


def test_the_console_script_ends_a_deploy_with_its_output_and_exit_code(
        make_site: Callable[..., Path], tmp_path: Path) -> None:
    """`main` ends a deploy without interpreter teardown: nothing may be lost on the way."""
    pushsite = Path(sys.executable).with_name("pushsite")
    done = subprocess.run([str(pushsite), "deploy", "--create", str(make_site()), "--site", "quick",
                           "--json"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "live"
    service = Service(load_config())
    try:  # the deployment's log reached the state store before the process ended
        assert any("live" in line.message or "activate" in line.stage
                   for line in service.state.get_logs(json.loads(done.stdout)["id"]))
    finally:
        service.close()
    refused = subprocess.run([str(pushsite), "deploy", str(tmp_path / "missing"), "--site",
                              "quick"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith("error: no such folder or file")


def test_a_quick_exit_leaves_the_store_whole_for_the_next_process(
        make_site: Callable[..., Path], _isolated_env: Path) -> None:
    """The console script's deploy only flushes the local store (no checkpoint on close): the
    committed WAL stays behind, and the next processes read and add to it unharmed."""
    pushsite = Path(sys.executable).with_name("pushsite")
    site = make_site()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(pushsite), *args], capture_output=True, text=True,
                              check=False)

    first = run("deploy", "--create", str(site), "--site", "wal", "--json")
    assert first.returncode == 0, first.stderr
    wal = next(_isolated_env.rglob("objects.db-wal"))
    assert wal.stat().st_size > 0  # left for the next connection, not checkpointed away
    (site / "index.html").write_text("<h1>second</h1>")
    second = run("deploy", "--create", str(site), "--site", "wal", "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["blobs_new"] == 1
    checked = run("verify")
    assert checked.returncode == 0, checked.stderr
    assert live_manifest("wal").files["index.html"].size == len(b"<h1>second</h1>")


def test_a_json_deploy_does_not_import_rich() -> None:
    """rich is imported when something is printed through it, not for `deploy --json` (its
    import is a tenth of a one-shot deploy's start-up)."""
    code = "import sys, pushsite.cli; sys.exit('rich' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
