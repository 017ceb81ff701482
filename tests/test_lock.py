"""Production lock (Netlify's "stop auto publishing"): `pushsite lock`/`unlock`, the API, and
the rollback that offers it; real CLI runs and a real `pushsite serve`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from support.api import Api
from support.servers import Server


def _deploy(server: Server, folder: Path) -> str:
    done = server.cli("deploy", str(folder), "--site", "locked", "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["id"])


def test_a_locked_production_keeps_serving_while_deploys_become_ready(
        server: Server, make_site: Callable[..., Path]) -> None:
    server.create_site("locked")
    _deploy(server, make_site({"index.html": "<p>one</p>"}))
    _deploy(server, make_site({"index.html": "<p>two</p>"}))
    done = server.cli("rollback", "locked")
    assert done.returncode == 0, done.stderr
    assert b"hint: the next push to main replaces it; keep it with `pushsite lock locked`" in \
        b" ".join(done.stderr.split())
    assert server.cli("lock", "locked").returncode == 0
    third = _deploy(server, make_site({"index.html": "<p>three</p>"}))
    assert server.get("locked.localhost", "/").text == "<p>one</p>"  # the rollback stays
    log = server.cli("log", third).stdout.decode()
    assert "production of locked is locked: not published" in log
    token = server.new_token("--name", "t")
    api = Api(server, token)
    record = api.ok("GET", f"/deployments/{third}")
    assert record["status"] == "ready"
    assert api.ok("GET", "/sites/locked")["settings"]["locked"] is True
    assert server.get(f"{third}--locked.localhost", "/").text == "<p>three</p>"
    # a promote still moves production; unlocking lets the next deploy go live
    api.ok("POST", f"/deployments/{third}/activate")
    assert server.get("locked.localhost", "/").text == "<p>three</p>"
    assert api.ok("DELETE", "/sites/locked/lock")["settings"]["locked"] is False
    _deploy(server, make_site({"index.html": "<p>four</p>"}))
    assert server.get("locked.localhost", "/").text == "<p>four</p>"
    # rollback --lock (and the API's ?lock=true) locks in the same step
    done = server.cli("rollback", "locked", "--lock")
    assert done.returncode == 0 and b"is locked" in done.stderr
    assert api.ok("GET", "/sites/locked")["settings"]["locked"] is True
    assert server.cli("unlock", "locked").returncode == 0
    api.ok("POST", "/sites/locked/rollback", params={"lock": "true"})
    assert api.ok("GET", "/sites/locked")["settings"]["locked"] is True


def test_a_locked_production_is_not_reported_as_published(
        server: Server, make_site: Callable[..., Path], make_repo: Callable[..., Path]) -> None:
    """`deploy`, `deploy --json`, the API and `git push` to a locked production say it was not
    published and give the deployment's own URL; none claims the production URL."""
    import subprocess

    server.create_site("locked")
    _deploy(server, make_site({"index.html": "<p>one</p>"}))
    assert server.cli("lock", "locked").returncode == 0
    done = server.cli("deploy", str(make_site({"index.html": "<p>two</p>"})), "--site", "locked")
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.decode().split())
    assert "production:" not in said
    assert "production of locked is locked: not published; promote it with `pushsite promote" \
        in said
    assert "--locked.localhost" in said  # its own URL
    data = json.loads(server.cli("deploy", str(make_site({"index.html": "<p>3</p>"})),
                                 "--site", "locked", "--json").stdout)
    assert data["status"] == "ready" and data["context"] == "production"
    assert "production" not in data["urls"] and data["urls"]["deployment"]
    api = Api(server, server.new_token("--name", "t"))
    urls = api.ok("GET", f"/deployments/{data['id']}")["urls"]
    assert urls["production"] is None and urls["deployment"] == data["urls"]["deployment"]
    token = server.new_token("--name", "git")
    repo = make_repo({"index.html": "<p>pushed</p>"})
    pushed = subprocess.run(["git", "push", f"http://x:{token}@127.0.0.1:{server.port}/locked.git",
                             "main"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    assert "pushsite: production:" not in pushed.stderr
    assert "remote: pushsite: production of locked is locked: not published; ready at " \
        "http://" in pushed.stderr
    assert "`pushsite unlock locked`" in pushed.stderr
    assert server.get("locked.localhost", "/").text == "<p>one</p>"
    # unlocked, a deploy reports production again (and the JSON has its URL)
    assert server.cli("unlock", "locked").returncode == 0
    data = json.loads(server.cli("deploy", str(make_site({"index.html": "<p>5</p>"})),
                                 "--site", "locked", "--json").stdout)
    assert data["status"] == "live" and data["urls"]["production"]
