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
