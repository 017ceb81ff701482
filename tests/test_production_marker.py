"""One production per site in the API: `production: true` on exactly the deployment the
production alias points at (also after a promote), its context, and the branch filter."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.api import Api
from support.servers import Server, serving


def bundle(text: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo("site/index.html")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with serving(tmp_path_factory.mktemp("marker") / "home") as server:
        yield Api(server, server.new_token("--name", "marker"))


def productions(api: Api, site: str, query: str = "") -> list[str]:
    rows = api.ok("GET", f"/sites/{site}/deploys{query}")["deployments"]
    return [d["id"] for d in rows if d["production"]]


def test_exactly_one_production_after_a_promote(api: Api) -> None:
    server: Server = api.server
    server.create_site("one")
    first = api.deploy(bundle("<p>one</p>"), "one")
    second = api.deploy(bundle("<p>two</p>"), "one")
    assert productions(api, "one") == [second["id"]]
    api.ok("POST", f"/deployments/{first['id']}/activate")
    assert productions(api, "one") == [first["id"]]  # one, never two "live" ones
    assert api.ok("GET", f"/deployments/{first['id']}")["production"] is True
    assert api.ok("GET", f"/deployments/{second['id']}")["production"] is False
    assert {d["context"] for d in api.ok("GET", "/sites/one/deploys")["deployments"]} == {
        "production"}
    assert server.get("one.localhost", "/").text == "<p>one</p>"


def test_the_deploy_list_filters_by_branch(api: Api) -> None:
    api.server.create_site("two")
    main = api.deploy(bundle("<p>main</p>"), "two")
    feature = api.deploy(bundle("<p>feature</p>"), "two", branch="feature/x")
    assert feature["context"] == "preview" and feature["production"] is False
    rows = api.ok("GET", "/sites/two/deploys", params={"branch": "feature/x"})["deployments"]
    assert [d["id"] for d in rows] == [feature["id"]]
    assert rows[0]["urls"]["deployment"].startswith(f"http://{feature['id']}--two.localhost")
    rows = api.ok("GET", "/sites/two/deploys", params={"branch": "main"})["deployments"]
    assert [d["id"] for d in rows] == [main["id"]] and rows[0]["production"] is True
    assert api.ok("GET", "/sites/two/deploys", params={"branch": "nope"})["deployments"] == []
    bad = api.call("GET", "/sites/two/deploys", params={"branch": "a..b"})
    assert bad.status_code == 400


def test_cli_deploys_marks_production_and_filters_by_branch(api: Api, tmp_path: Path) -> None:
    api.server.create_site("three")
    api.deploy(bundle("<p>main</p>"), "three")
    preview = api.deploy(bundle("<p>p</p>"), "three", branch="preview")
    done = api.server.cli("deploys", "three", "--branch", "preview", "--json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1 and preview["id"] in lines[0] and '"production": false' in lines[0]
    done = api.server.cli("deploys", "three")
    assert done.returncode == 0 and b"* production" in done.stderr
    assert sum(line.startswith(b"*") for line in done.stdout.splitlines()) == 1
