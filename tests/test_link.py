"""Linked folders: `pushsite link SITE` writes `site = "SITE"` into the folder's pushsite.toml
(keeping the rest), then `deploy`, `status` and `open` there need no site name. Real CLI
subprocesses run from the site's own folder, never the checkout."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from support.cli import create_site, ok, ok_json, pushsite
from support.servers import Server
from support.sites import write_files

NO_DISPLAY = ("DISPLAY", "WAYLAND_DISPLAY")


def test_link_then_deploy_status_and_open_without_a_site_name(tmp_path: Path) -> None:
    folder = write_files(tmp_path / "mysite", {
        "pushsite.toml": '# my site\npublish = "dist"\n\n[build]\ncommand = "true"\n',
        "dist/index.html": "<h1>linked</h1>", "src/notes.txt": "not published"})
    missing = pushsite("link", "blog", cwd=folder)
    assert missing.returncode == 4 and "pushsite sites create blog" in missing.stderr
    assert "site" not in tomllib.loads((folder / "pushsite.toml").read_text())
    create_site("blog")
    ok("link", "blog", cwd=folder)
    text = (folder / "pushsite.toml").read_text()
    assert text.startswith('# my site\npublish = "dist"\nsite = "blog"\n')
    assert tomllib.loads(text) == {"publish": "dist", "site": "blog",
                                   "build": {"command": "true"}}
    deployed = ok_json("deploy", cwd=folder / "src")  # below the linked folder too
    assert deployed["site"] == "blog" and deployed["status"] == "live"
    assert deployed["files"] == 1  # dist/ only: the publish folder applies
    status = ok_json("status", cwd=folder)
    site = status["site"]
    assert site["name"] == "blog" and site["file"] == str(folder.resolve() / "pushsite.toml")
    assert site["production_url"] == "http://blog.localhost:8000/"
    assert site["production_deployment"] == deployed["id"] == site["newest"]["id"]
    shown = ok("status", cwd=folder).stdout
    assert "blog (linked in" in shown and "http://blog.localhost:8000/" in shown
    assert deployed["id"] in shown
    assert ok("open", cwd=folder, drop=NO_DISPLAY).stdout == "http://blog.localhost:8000/\n"
    own = ok("open", "--deployment", deployed["id"], cwd=folder, drop=NO_DISPLAY).stdout
    assert own == f"http://{deployed['id']}--blog.localhost:8000/\n"
    # linking again replaces the line, keeps everything else
    create_site("docs")
    ok("link", "docs", cwd=folder)
    assert tomllib.loads((folder / "pushsite.toml").read_text())["site"] == "docs"
    assert (folder / "pushsite.toml").read_text().count("site =") == 1


def test_an_unlinked_folder_asks_which_site(tmp_path: Path) -> None:
    done = pushsite("deploy", cwd=tmp_path)
    assert done.returncode == 2
    assert "pass --site NAME, or link this folder once with `pushsite link NAME`" in done.stderr
    assert ok_json("status", cwd=tmp_path)["site"] is None
    assert "no site linked here" in ok("status", cwd=tmp_path).stdout
    linked = write_files(tmp_path / "gone", {"pushsite.toml": 'site = "gone"\n'})
    shown = ok("status", cwd=linked).stdout
    assert "create it with: pushsite sites create gone" in shown


def test_link_creates_the_file_and_open_follows_the_server(server: Server,
                                                           tmp_path: Path) -> None:
    folder = write_files(tmp_path / "fresh", {"index.html": "<p>fresh</p>"})
    ok("link", "fresh", "--create", cwd=folder)
    assert (folder / "pushsite.toml").read_text() == 'site = "fresh"\n'
    deployed = json.loads(ok("deploy", "--json", cwd=folder).stdout)
    assert deployed["urls"]["production"] == f"http://fresh.localhost:{server.port}/"
    assert server.get(f"fresh.localhost:{server.port}").text == "<p>fresh</p>"
    board = ok("open", "--dashboard", cwd=folder, drop=NO_DISPLAY).stdout.strip()
    assert board == f"{server.url}/sites/fresh"
    status = ok_json("status", cwd=folder)
    assert status["server"]["port"] == server.port and status["site"]["name"] == "fresh"
