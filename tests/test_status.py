"""Where the data lives and where its server listens: one per-user home whatever the current
folder, `pushsite serve` recording its URL in it, and `pushsite status` saying so. Real CLI
subprocesses and a real `pushsite serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.cli import ok, ok_json, pushsite
from support.servers import free_port, start_server


def test_default_home_is_the_users_data_folder_whatever_the_current_folder(
        tmp_path: Path) -> None:
    xdg = Path(os.environ["XDG_DATA_HOME"])
    elsewhere = tmp_path / "my-site"
    elsewhere.mkdir()
    for folder in (tmp_path, elsewhere):
        data = ok_json("status", cwd=folder, drop=("PUSHSITE_HOME",))
        assert data["home"] == str(xdg / "pushsite")
    token = ok("tokens", "create", cwd=elsewhere, drop=("PUSHSITE_HOME",)).stdout.strip()
    assert token
    assert not (elsewhere / ".pushsite").exists() and not (tmp_path / ".pushsite").exists()
    # the token landed in the one home: a second folder lists it
    listed = ok("tokens", "list", cwd=tmp_path, drop=("PUSHSITE_HOME",)).stdout
    assert "deploy" in listed and (xdg / "pushsite" / "state.db").exists()


def test_without_xdg_data_home_the_default_is_dot_local_share(tmp_path: Path) -> None:
    data = ok_json("status", cwd=tmp_path, drop=("PUSHSITE_HOME", "XDG_DATA_HOME"))
    assert data["home"] == str(Path(os.environ["HOME"]) / ".local" / "share" / "pushsite")
    relative = ok_json("status", cwd=tmp_path, drop=("PUSHSITE_HOME",),
                       env={"XDG_DATA_HOME": "relative/dir"})  # invalid by the spec: ignored
    assert relative["home"] == data["home"]


def test_pushsite_home_and_home_option_win(tmp_path: Path) -> None:
    assert ok_json("status")["home"] == os.environ["PUSHSITE_HOME"]
    chosen = tmp_path / "chosen"
    assert ok_json("--home", str(chosen), "status")["home"] == str(chosen)


def test_status_and_urls_follow_the_running_server(tmp_path: Path) -> None:
    home = Path(os.environ["PUSHSITE_HOME"])
    idle = ok_json("status")
    assert idle["server"] is None and idle["public_url"] == "http://localhost:8000"
    assert "not running" in ok("status").stdout
    port = free_port()
    server = start_server(home, port=port)
    try:
        record = json.loads((home / "server.json").read_text())
        assert record["port"] == port and record["pid"] == server.process.pid
        data = ok_json("status", cwd=tmp_path)
        assert data["server"]["url"] == f"http://127.0.0.1:{port}"
        assert data["public_url"] == f"http://localhost:{port}"
        text = ok("status").stdout
        assert f"running at http://127.0.0.1:{port}/" in text
        assert f"http://<site>.localhost:{port}/" in text
        # every command on this home prints the port actually served
        site = tmp_path / "public"
        site.mkdir()
        (site / "index.html").write_text("<h1>hi</h1>")
        ok("sites", "create", "blog")
        done = ok("deploy", str(site), "--site", "blog", "--json")
        assert json.loads(done.stdout)["urls"]["production"] == f"http://blog.localhost:{port}/"
        assert server.get(f"blog.localhost:{port}").text == "<h1>hi</h1>"
    finally:
        server.stop()
    assert not (home / "server.json").exists()  # removed on a clean exit
    assert ok_json("status")["server"] is None


def test_a_stale_record_is_ignored(tmp_path: Path) -> None:
    home = Path(os.environ["PUSHSITE_HOME"])
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    home.mkdir(parents=True)
    (home / "server.json").write_text(json.dumps({
        "url": "http://127.0.0.1:9", "public_url": "http://localhost:9", "host": "127.0.0.1",
        "port": 9, "pid": int(gone.stdout), "started": 0.0}))
    data = ok_json("status")
    assert data["server"] is None and data["public_url"] == "http://localhost:8000"


def test_a_second_server_that_cannot_bind_leaves_the_first_ones_record(tmp_path: Path) -> None:
    home = Path(os.environ["PUSHSITE_HOME"])
    server = start_server(home)
    try:
        second = pushsite("serve", "--port", str(server.port))
        assert second.returncode != 0
        assert ok_json("status")["server"]["pid"] == server.process.pid
    finally:
        server.stop()
