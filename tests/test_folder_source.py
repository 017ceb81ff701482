"""`pushsite deploy FOLDER` reads the folder in place: the manifest is the one a `tar czf` of
the same folder gives, links and special files follow the bundle's rules, limits and unsafe
names are refused with one line, and a file that changes while it is read stops the deploy
with the live site untouched."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from pushsite.cli import cli
from pushsite.config import load_config
from pushsite.deploy.builder import SMALL_FILE, Counters
from pushsite.errors import BundleRejected, ConfigError
from pushsite.service import Service
from support.servers import Server
from support.sites import deploy, live_manifest, write_files

HEADERS = "/*\n  X-Frame-Options: DENY\n/assets/*\n  Cache-Control: public, max-age=31536000\n"
REDIRECTS = "/old /new.html 301\n/blog/* /posts/:splat 302\n"


def deploy_log(deployment_id: str) -> str:
    return CliRunner().invoke(cli, ["log", deployment_id], obj={}).stdout


def rich_site(root: Path) -> Path:
    """A site with every shape the reader treats specially."""
    write_files(root, {
        "index.html": "<h1>home</h1>" * 20,
        "404.html": "<h1>not here</h1>",
        "_headers": HEADERS,
        "_redirects": REDIRECTS,
        "assets/app.css": "body{color:red}" * 100,
        "assets/big.bin": os.urandom(SMALL_FILE + 12345),  # streamed, not read whole
        "docs/deep/er/page.html": "<p>deep</p>",
        "caf\u00e9/men\u00fc.html": "<p>UTF-8 names</p>",
        ".well-known/security.txt": "Contact: mailto:x@example.com",
        ".env": "SECRET=1",
        ".hidden.html": "hidden",
        "docs/.DS_Store": "junk",
        "node_modules/.cache/x.js": "cached",
        ".git/config": "[core]",
    })
    (root / "alias.html").symlink_to("index.html")
    (root / "docs" / "home.html").symlink_to("../index.html")
    os.link(root / "assets" / "app.css", root / "assets" / "same.css")
    return root


def test_folder_gives_the_manifest_tar_czf_gives(tmp_path: Path) -> None:
    site = rich_site(tmp_path / "site")
    bundle = tmp_path / "site.tar.gz"
    subprocess.run(["tar", "czf", str(bundle), "-C", str(tmp_path), "site"], check=True)
    assert deploy(str(site), "--site", "folder")[0] == 0
    assert deploy(str(bundle), "--site", "tarball")[0] == 0
    folder, tarball = live_manifest("folder"), live_manifest("tarball")
    assert folder.files == tarball.files
    assert set(folder.files) == {
        "index.html", "404.html", "assets/app.css", "assets/big.bin", "assets/same.css",
        "docs/deep/er/page.html", "caf\u00e9/men\u00fc.html", ".well-known/security.txt",
        "alias.html", "docs/home.html"}
    assert folder.files["alias.html"] == folder.files["index.html"]
    assert folder.files["docs/home.html"] == folder.files["index.html"]
    assert folder.files["assets/same.css"] == folder.files["assets/app.css"]
    assert folder.files["assets/big.bin"].size == SMALL_FILE + 12345
    assert folder.not_found == tarball.not_found == "404.html"
    assert folder.headers == tarball.headers and len(folder.headers) == 2
    assert folder.redirects == tarball.redirects and len(folder.redirects) == 2
    assert folder.commit == ""


def test_redeploy_of_a_folder_reuses_every_blob(tmp_path: Path) -> None:
    site = rich_site(tmp_path / "site")
    assert deploy(str(site), "--site", "blog")[0] == 0
    code, out, err = deploy(str(site), "--site", "blog", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["status"] == "live" and data["blobs_new"] == 0 and data["files"] == 10


def test_links_leaving_the_folder_and_fifos_are_skipped_with_warnings(tmp_path: Path) -> None:
    (tmp_path / "secret.html").write_text("<p>outside the site</p>")
    site = write_files(tmp_path / "site", {"index.html": "<h1>home</h1>", "sub/a.html": "a"})
    (site / "escape.html").symlink_to("../secret.html")
    (site / "sub" / "up.html").symlink_to("../../secret.html")
    (site / "passwd").symlink_to("/etc/passwd")
    (site / "folder-link").symlink_to("sub")
    (site / "dangling.html").symlink_to("missing.html")
    os.mkfifo(site / "pipe")
    code, out, err = deploy(str(site), "--site", "links", "--json")
    assert code == 0, err
    assert set(live_manifest("links").files) == {"index.html", "sub/a.html"}
    log = deploy_log(json.loads(out)["id"])
    for name in ("escape.html", "sub/up.html", "passwd", "folder-link", "dangling.html"):
        assert f"skipped symlink {name}:" in log, log
    assert "skipped pipe: devices, FIFOs" in log


@pytest.mark.parametrize("limit, value, word", [
    ("PUSHSITE_MAX_FILES", "3", "max_files=3"),
    ("PUSHSITE_MAX_FILE_MB", "1", "'big/very/long/path/name.bin' is 2097152 bytes"),
    ("PUSHSITE_MAX_TOTAL_MB", "1", "max_total_bytes=1048576"),
    ("PUSHSITE_MAX_PATH", "20", "'big/very/long/path/name.bin'"),
])
def test_over_a_limit_is_refused_and_the_live_site_stays(
        limit: str, value: str, word: str, make_site: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    good = make_site({"index.html": "<h1>v1</h1>"})
    assert deploy(str(good), "--site", "blog")[0] == 0
    before = live_manifest("blog").deployment_id
    monkeypatch.setenv(limit, value)
    bad = make_site({"index.html": "x" * 100, "a.html": "a",
                     "big/very/long/path/name.bin": b"\0" * (2 << 20)})
    code, _, err = deploy(str(bad), "--site", "blog")
    assert code == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert word in err
    assert live_manifest("blog").deployment_id == before


def test_a_name_that_is_not_utf8_is_refused_as_in_a_bundle(tmp_path: Path) -> None:
    site = write_files(tmp_path / "site", {"index.html": "<h1>home</h1>"})
    with open(os.path.join(os.fsencode(site), b"caf\xe9.html"), "wb") as file:
        file.write(b"latin-1 name")
    code, _, err = deploy(str(site), "--site", "blog")
    assert code == 3
    assert "error: the folder holds a path that is not valid UTF-8 (b'caf\\xe9.html')" in err


@pytest.mark.parametrize("name, word", [("a\\b.html", "backslash"),
                                        ("tab\there.html", "control character")])
def test_unsafe_names_are_refused(name: str, word: str, tmp_path: Path) -> None:
    site = write_files(tmp_path / "site", {"index.html": "<h1>home</h1>", name: "x"})
    code, _, err = deploy(str(site), "--site", "blog")
    assert code == 3 and word in err, err


def test_git_folder_is_not_walked_so_it_counts_towards_no_limit(
        make_site: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHSITE_MAX_FILES", "3")
    site = make_site({"index.html": "<h1>home</h1>",
                      **{f".git/objects/{n}": "x" for n in range(10)}})
    code, _, err = deploy(str(site), "--site", "blog")
    assert code == 0, err
    assert set(live_manifest("blog").files) == {"index.html"}


def test_only_dotfiles_is_refused(make_site: Callable[..., Path]) -> None:
    code, _, err = deploy(str(make_site({".env": "x", ".git/HEAD": "ref"})), "--site", "blog")
    assert code == 3 and "no publishable file" in err


def run_with(service: Service, site: Path, progress: Callable[[Counters], None]) -> str:
    """Deploy `site` through the service, calling `progress` after each file is recorded;
    the deploy must fail, and its error message is returned."""
    deployment = service.accept("blog", None, enqueue=False)
    with pytest.raises(BundleRejected) as caught:
        service.run(deployment.id, progress=progress, folder=site)
    assert service.state.get_deployment(deployment.id).status == "failed"
    return caught.value.message


def big_then_small(root: Path) -> Path:
    # a.bin is streamed and recorded on the reading thread, before z.html is opened
    return write_files(root, {"a.bin": os.urandom(SMALL_FILE + 1), "z.html": "<p>z</p>"})


def test_a_file_growing_while_read_stops_the_deploy(tmp_path: Path) -> None:
    service = Service(load_config())
    site = big_then_small(tmp_path / "site")

    def grow(counters: Counters) -> None:
        with open(site / "a.bin", "ab") as file:  # after add_stream read it, before the check
            file.write(b"more")

    message = run_with(service, site, grow)
    assert message.startswith("the file 'a.bin' was modified while the folder was being read")


def test_a_file_vanishing_before_it_is_read_stops_the_deploy(tmp_path: Path) -> None:
    service = Service(load_config())
    site = big_then_small(tmp_path / "site")
    message = run_with(service, site, lambda _: (site / "z.html").unlink(missing_ok=True))
    assert message.startswith("the file 'z.html' disappeared while the folder was being read")


def test_a_file_replaced_by_a_link_is_not_followed(tmp_path: Path) -> None:
    service = Service(load_config())
    site = big_then_small(tmp_path / "site")
    (tmp_path / "secret").write_text("outside")

    def swap(counters: Counters) -> None:
        if (site / "z.html").is_file() and not (site / "z.html").is_symlink():
            (site / "z.html").unlink()
            (site / "z.html").symlink_to(tmp_path / "secret")

    message = run_with(service, site, swap)
    assert message.startswith("the file 'z.html' became a link while the folder was being read")


def test_a_refused_folder_leaves_the_previous_site_served(
        server: Server, make_site: Callable[..., Path], tmp_path: Path) -> None:
    assert deploy(str(make_site({"index.html": "<h1>v1</h1>"})), "--site", "blog")[0] == 0
    assert server.get("blog.localhost").text == "<h1>v1</h1>"
    bad = make_site({"index.html": "<h1>v2</h1>"})
    with open(os.path.join(os.fsencode(bad), b"\xff.html"), "wb") as file:
        file.write(b"x")
    code, _, err = deploy(str(bad), "--site", "blog")
    assert code == 3 and "not valid UTF-8" in err
    assert server.get("blog.localhost").text == "<h1>v1</h1>"


def test_a_folder_vanishing_before_it_is_listed_stops_the_deploy(tmp_path: Path) -> None:
    service = Service(load_config())
    site = big_then_small(tmp_path / "site")
    write_files(site, {"sub/page.html": "<p>page</p>"})

    def remove_sub(counters: Counters) -> None:
        if (site / "sub").exists():
            (site / "sub" / "page.html").unlink()
            (site / "sub").rmdir()

    message = run_with(service, site, remove_sub)
    assert message.startswith("the folder 'sub' disappeared while the folder was being read")


def test_a_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    service = Service(load_config())
    deployment = service.accept("blog", None, enqueue=False)
    with pytest.raises(ConfigError, match="cannot read the folder .*nowhere"):
        service.run(deployment.id, folder=tmp_path / "nowhere")
