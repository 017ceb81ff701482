"""The JSON API over real HTTP against a `pushsite serve` subprocess, with real git bundles."""

from __future__ import annotations

import base64
import gzip
import io
import itertools
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount

from pushsite import errors
from pushsite.config import load_config
from pushsite.service import Service
from pushsite.web.errors import install_error_handlers, with_debug_flag
from support.api import Api
from support.servers import Server, free_port, serving
from support.sites import git, git_bundle, write_files

SITE_FILES = {"index.html": "<h1>one</h1>", "about/index.html": "<p>about</p>",
              "css/site.css": "body{color:red}" * 50}



@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `pushsite serve` for the module (each test uses its own sites), to keep it quick."""
    with serving(tmp_path_factory.mktemp("api") / "home") as srv:
        yield srv


@pytest.fixture(scope="module")
def admin_token(shared_server: Server) -> str:
    return shared_server.new_token("--admin", "--name", "admin")


@pytest.fixture
def api(shared_server: Server, admin_token: str) -> Api:
    return Api(shared_server, admin_token)


_names = itertools.count(1)


@pytest.fixture
def site() -> str:
    """A site name no other test of the module uses."""
    return f"s{next(_names)}"


@pytest.fixture
def bundles(tmp_path: Path, make_repo: Callable[..., Path]) -> Callable[..., Path]:
    """git archive bundles of a repo, one per call; files given replace the previous ones."""
    repo = make_repo(SITE_FILES)
    count = [0]

    def make(files: dict[str, str | bytes] | None = None, remove: tuple[str, ...] = ()) -> Path:
        count[0] += 1
        if files or remove:
            write_files(repo, files or {})
            for rel in remove:
                (repo / rel).unlink()
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", f"change {count[0]}")
        return git_bundle(repo, tmp_path / f"bundle{count[0]}.tar.gz")

    return make


def _tar_gz(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"site/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# --- uploading and following ------------------------------------------------------------------
def test_upload_queues_a_deployment_that_goes_live(api: Api, site: str,
                                                   bundles: Callable[..., Path]) -> None:
    server = api.server
    response = api.call("POST", f"/sites/{site}/deploys", content=bundles().read_bytes(),
                        params={"message": "first", "create": "true"})
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["status"] in ("queued", "running", "ready", "live")
    assert queued["source"] == "api" and queued["message"] == "first"
    assert response.headers["location"] == f"{server.url}/api/deployments/{queued['id']}"

    done = api.finished(queued["id"])
    assert (done["status"], done["exit_code"], done["error_kind"]) == ("live", 0, None)
    assert done["files"] == 3 and len(done["commit"]) == 40
    assert done["urls"]["production"] == f"http://{site}.localhost:{server.port}/"
    assert done["urls"]["deployment"].startswith(f"http://{done['id']}--{site}.localhost")
    page = server.get(f"{site}.localhost", "/about/")
    assert page.status_code == 200 and "about" in page.text


def test_upload_streams_a_chunked_body(api: Api, site: str,
                                       bundles: Callable[..., Path]) -> None:
    data = bundles().read_bytes()

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(data), 7):
            yield data[start:start + 7]

    response = api.call("POST", f"/sites/{site}/deploys", content=pieces(),
                        params={"branch": "feature/x", "create": "true"})
    assert response.status_code == 202, response.text
    done = api.finished(response.json()["id"])
    assert done["status"] == "live" and done["branch"] == "feature/x"
    assert done["urls"]["production"] is None
    assert done["urls"]["branch"].startswith(f"http://feature-x--{site}.localhost")


def test_log_pages_with_after_and_reports_status(api: Api, site: str,
                                                 bundles: Callable[..., Path]) -> None:
    done = api.deploy(bundles(), site)
    log = api.ok("GET", f"/deployments/{done['id']}/log")
    seqs = [line["seq"] for line in log["lines"]]
    assert seqs == sorted(seqs) and seqs[0] == 1 and log["last_seq"] == seqs[-1]
    assert log["status"] == "live" and log["finished"] is True
    assert {"accept", "manifest", "activate", "done"} <= {x["stage"] for x in log["lines"]}
    rest = api.ok("GET", f"/deployments/{done['id']}/log", params={"after": seqs[1]})
    assert [line["seq"] for line in rest["lines"]] == seqs[2:]
    assert api.ok("GET", f"/deployments/{done['id']}/log",
                  params={"after": log["last_seq"]})["lines"] == []


def test_a_bundle_that_is_not_gzip_is_refused_at_once(api: Api, site: str) -> None:
    response = api.call("POST", f"/sites/{site}/deploys?create=true",
                        content=b"<html>not a bundle</html>")
    assert response.status_code == 422
    assert "not gzip" in response.json()["error"]
    empty = api.call("POST", f"/sites/{site}/deploys?create=true", content=b"")
    assert empty.status_code == 422 and "empty" in empty.json()["error"]
    assert api.call("GET", f"/sites/{site}").status_code == 404  # nothing was recorded


@pytest.mark.parametrize(("body", "kind", "words"), [
    (gzip.compress(b"this is no tar archive at all" * 40), "BundleRejected", "tar"),
    (_tar_gz({"index.html": b"x", "pushsite.toml": b"publish = [unclosed"}), "SiteConfigError",
     "pushsite.toml"),
])
def test_a_failed_deployment_names_its_error_class_and_exit_code(
        api: Api, site: str, body: bytes, kind: str, words: str) -> None:
    done = api.deploy(body, site)
    assert done["status"] == "failed"
    assert (done["error_kind"], done["exit_code"]) == (kind, 3)
    assert words in done["error"]


# --- listing, files, diff ----------------------------------------------------------------------
def test_deployments_list_filters_and_pages(api: Api, site: str,
                                            bundles: Callable[..., Path]) -> None:
    first = api.deploy(bundles(), site)
    second = api.deploy(bundles({"index.html": "<h1>two</h1>"}), site)
    preview = api.deploy(bundles(), site, branch="preview")
    failed = api.deploy(gzip.compress(b"no tar"), site)

    every = api.ok("GET", f"/sites/{site}/deploys")
    assert [d["id"] for d in every["deployments"]] == [failed["id"], preview["id"],
                                                       second["id"], first["id"]]
    assert every["next_before"] is None
    main = api.ok("GET", f"/sites/{site}/deploys", params={"branch": "main", "status": "ready"})
    assert [d["id"] for d in main["deployments"]] == [first["id"]]
    page1 = api.ok("GET", f"/sites/{site}/deploys", params={"limit": 2})
    assert [d["id"] for d in page1["deployments"]] == [failed["id"], preview["id"]]
    page2 = api.ok("GET", f"/sites/{site}/deploys",
                   params={"limit": 2, "before": page1["next_before"]})
    assert [d["id"] for d in page2["deployments"]] == [second["id"], first["id"]]
    failures = api.ok("GET", f"/sites/{site}/deploys", params={"status": "failed"})
    assert [(d["id"], d["exit_code"]) for d in failures["deployments"]] == [(failed["id"], 3)]


def test_files_lists_the_manifest_with_prefix_and_paging(api: Api, site: str,
                                                         bundles: Callable[..., Path]) -> None:
    done = api.deploy(bundles(), site)
    url = f"/deployments/{done['id']}/files"
    files = api.ok("GET", url)
    assert [f["path"] for f in files["files"]] == ["about/index.html", "css/site.css",
                                                   "index.html"]
    css = files["files"][1]
    assert css["size"] == len(SITE_FILES["css/site.css"]) and css["type"].startswith("text/css")
    assert len(css["hash"]) == 64 and files["total"] == 3 and files["next_after"] is None
    first = api.ok("GET", url, params={"limit": 1})
    assert first["next_after"] == "about/index.html"
    rest = api.ok("GET", url, params={"after": first["next_after"]})
    assert [f["path"] for f in rest["files"]] == ["css/site.css", "index.html"]
    only = api.ok("GET", url, params={"prefix": "css/"})
    assert [f["path"] for f in only["files"]] == ["css/site.css"] and only["total"] == 1


def test_diff_reports_added_changed_removed_with_sizes(api: Api, site: str,
                                                       bundles: Callable[..., Path]) -> None:
    old = api.deploy(bundles(), site)
    new = api.deploy(bundles({"index.html": "<h1>changed!</h1>", "new.txt": "fresh"},
                             remove=("about/index.html",)), site)
    diff = api.ok("GET", f"/deployments/{new['id']}/diff", params={"against": old["id"]})
    assert diff["deployment"] == new["id"] and diff["against"] == old["id"]
    assert diff["added"] == [{"path": "new.txt", "size": 5, "old_size": None}]
    assert diff["changed"] == [{"path": "index.html", "size": 17, "old_size": 12}]
    assert diff["removed"] == [{"path": "about/index.html", "size": 12, "old_size": None}]
    assert diff["unchanged"] == 1
    missing = api.call("GET", f"/deployments/{new['id']}/diff")
    assert missing.status_code == 400 and "against" in missing.json()["error"]


# --- actions -------------------------------------------------------------------------------------
def test_activate_and_rollback_move_production(api: Api, site: str,
                                               bundles: Callable[..., Path]) -> None:
    host = f"{site}.localhost"
    one = api.deploy(bundles(), site)
    two = api.deploy(bundles({"index.html": "<h1>two</h1>"}), site)
    assert "two" in api.server.get(host, "/").text

    back = api.ok("POST", f"/sites/{site}/rollback")
    assert back["id"] == one["id"] and back["status"] == "live"
    assert "one" in api.server.get(host, "/").text

    forward = api.ok("POST", f"/deployments/{two['id']}/activate")
    assert forward["status"] == "live"
    assert "two" in api.server.get(host, "/").text
    assert api.ok("GET", f"/deployments/{one['id']}")["status"] == "ready"

    failed = api.deploy(gzip.compress(b"no tar"), site)
    refused = api.call("POST", f"/deployments/{failed['id']}/activate")
    assert refused.status_code == 400 and "only a ready deployment" in refused.json()["error"]


def test_redeploy_makes_a_new_live_deployment_with_the_same_files(
        api: Api, site: str, bundles: Callable[..., Path]) -> None:
    one = api.deploy(bundles(), site)
    api.deploy(bundles({"index.html": "<h1>two</h1>"}), site)
    response = api.call("POST", f"/deployments/{one['id']}/redeploy")
    assert response.status_code == 201, response.text
    again = response.json()
    assert again["id"] > one["id"] and again["source"] == "redeploy"
    assert again["status"] == "live" and again["exit_code"] == 0
    assert again["commit"] == one["commit"] and again["files"] == one["files"]
    assert response.headers["location"].endswith(f"/api/deployments/{again['id']}")
    assert "one" in api.server.get(f"{site}.localhost", "/").text
    diff = api.ok("GET", f"/deployments/{again['id']}/diff", params={"against": one["id"]})
    assert diff["added"] == diff["changed"] == diff["removed"] == []


def test_cancel_stops_a_queued_deployment_and_refuses_a_finished_one(
        api: Api, site: str, bundles: Callable[..., Path]) -> None:
    live = api.deploy(bundles(), site)
    # a deployment recorded but never sent to the queue stays queued until cancelled
    service = Service(load_config(home=str(api.server.home)))
    try:
        queued = service.accept(site, None, branch="main", enqueue=False)
    finally:
        service.close()
    assert api.ok("GET", f"/deployments/{queued.id}")["exit_code"] is None
    cancelled = api.ok("POST", f"/deployments/{queued.id}/cancel")
    assert cancelled["status"] == "cancelled" and cancelled["exit_code"] == 6
    assert cancelled["error_kind"] == "DeploymentCancelled"
    refused = api.call("POST", f"/deployments/{live['id']}/cancel")
    assert refused.status_code == 400
    assert "only a queued or running deployment" in refused.json()["error"]


def test_prune_keeps_the_newest(api: Api, site: str, bundles: Callable[..., Path]) -> None:
    first = api.deploy(bundles(), site)
    api.deploy(bundles({"index.html": "<h1>two</h1>"}), site)
    assert api.ok("POST", f"/sites/{site}/prune", params={"keep": 1})["deployments"] == 1
    assert api.ok("GET", f"/deployments/{first['id']}")["status"] == "cancelled"


# --- sites, domains, tokens ----------------------------------------------------------------------
def test_sites_are_created_configured_and_deleted(api: Api, site: str,
                                                  bundles: Callable[..., Path]) -> None:
    created = api.ok("POST", "/sites", 201, json={"name": site, "production_branch": "trunk"})
    assert created["name"] == site and created["production_branch"] == "trunk"
    assert created["url"] == f"http://{site}.localhost:{api.server.port}/"
    again = api.call("POST", "/sites", json={"name": site})
    assert again.status_code == 400 and "already exists" in again.json()["error"]
    assert site in [s["name"] for s in api.ok("GET", "/sites")["sites"]]

    changed = api.ok("PATCH", f"/sites/{site}", json={
        "production_branch": "main", "deploy_tags": True,
        "webhook_base_url": "https://git.example.com", "webhook_access_token": "hushhush"})
    assert changed["production_branch"] == "main"
    assert changed["settings"] == {"deploy_tags": True,
                                   "webhook_base_url": "https://git.example.com",
                                   "webhook_access_token_set": True, "webhook_repo": "",
                                   "webhook_last_ignored_repo": "", "locked": False,
                                   "reject_failed_pushes": True}
    assert "hushhush" not in api.call("GET", f"/sites/{site}").text
    unknown = api.call("PATCH", f"/sites/{site}", json={"colour": "red"})
    assert unknown.status_code == 400 and "colour" in unknown.json()["error"]

    live = api.deploy(bundles(), site)
    record = api.ok("GET", f"/sites/{site}")
    assert {a["name"]: a["deployment_id"] for a in record["aliases"]} == {
        "production": live["id"], "branch/main": live["id"]}

    assert api.ok("DELETE", f"/sites/{site}") == {"ok": True, "deleted": site}
    gone = api.call("GET", f"/sites/{site}")
    assert gone.status_code == 404 and f"no site named '{site}'" in gone.json()["error"]
    assert api.call("GET", f"/deployments/{live['id']}").status_code == 404


def test_domains_are_claimed_listed_and_released(api: Api, site: str) -> None:
    other = f"{site}-b"
    api.ok("POST", "/sites", 201, json={"name": site})
    api.ok("POST", "/sites", 201, json={"name": other})
    host = f"www.{site}.example.com"
    added = api.ok("PUT", f"/sites/{site}/domains/{host.upper()}")
    assert (added["site"], added["domains"]) == (site, [host])
    # an admin token for every site approves at once
    assert [(c["host"], c["status"], c["scope"]) for c in added["claims"]] == [
        (host, "approved", "admin")]
    assert api.ok("GET", f"/sites/{site}/domains")["domains"] == [host]
    taken = api.call("PUT", f"/sites/{other}/domains/{host}")
    assert taken.status_code == 409
    assert f"already claimed by site '{site}'" in taken.json()["error"]
    bad = api.call("PUT", f"/sites/{site}/domains/localhost")
    assert bad.status_code == 409 and "loopback name" in bad.json()["error"]
    bad = api.call("PUT", f"/sites/{site}/domains/no_such_host")
    assert bad.status_code == 400 and "invalid domain" in bad.json()["error"]
    assert api.ok("DELETE", f"/sites/{site}/domains/{host}")["domains"] == []


def test_tokens_are_created_listed_used_and_revoked(api: Api, site: str) -> None:
    made = api.ok("POST", "/tokens", 201, json={"name": f"ci-{site}", "site": site})
    assert made["token"]["site"] == site and made["token"]["scopes"] == ["deploy"]
    assert made["secret"].startswith("psk_")
    listed = api.ok("GET", "/tokens")["tokens"]
    assert {"admin", f"ci-{site}"} <= {t["name"] for t in listed}
    assert all("secret" not in t and "hash" not in t for t in listed)
    me = api.ok("GET", "/whoami", token=made["secret"])
    assert me["name"] == f"ci-{site}" and me["site"] == site

    assert api.ok("DELETE", f"/tokens/{made['token']['id']}")["deleted"] == made["token"]["id"]
    assert api.call("GET", "/whoami", token=made["secret"]).status_code == 401
    assert api.call("DELETE", f"/tokens/{made['token']['id']}").status_code == 404


def test_log_search_finds_lines_of_a_sites_deployments(api: Api, site: str,
                                                       bundles: Callable[..., Path]) -> None:
    done = api.deploy(bundles(), site)
    api.deploy(gzip.compress(b"no tar"), site)
    found = api.ok("GET", f"/sites/{site}/logs", params={"q": "manifest"})
    assert found["lines"] and all(line["deployment_id"] == done["id"] for line in found["lines"])
    assert any("wrote the manifest" in line["message"] for line in found["lines"])
    failures = api.ok("GET", f"/sites/{site}/logs", params={"q": "tar"})
    assert any(line["level"] == "error" for line in failures["lines"])
    assert api.ok("GET", f"/sites/{site}/logs", params={"q": "zebra"})["lines"] == []
    odd = api.call("GET", f"/sites/{site}/logs", params={"q": "a\x00b"})
    assert odd.status_code == 400 and "control character" in odd.json()["error"]


# --- auth ----------------------------------------------------------------------------------------
def test_without_a_token_every_endpoint_answers_401(api: Api) -> None:
    spec = api.ok("GET", "/openapi.json", token="")
    operations = [(method.upper(), path) for path, item in spec["paths"].items()
                  for method in item]
    assert len(operations) >= 20
    for method, path in operations:
        concrete = (path.replace("{site}", "blog").replace("{deployment_id}", "0" * 26)
                    .replace("{host}", "a.example.com").replace("{token_id}", "x"))
        response = api.call(method, concrete, token="")
        assert response.status_code == 401, (method, path, response.text)
        assert response.json() == {"ok": False, "status": 401, "error": (
            "this needs a deploy token: send `Authorization: Bearer <token>` (create one with "
            "`pushsite tokens create`)")}
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_wrong_token_is_401_and_basic_auth_works(api: Api) -> None:
    wrong = api.call("GET", "/sites", token="psk_wrong")
    assert wrong.status_code == 401 and "valid deploy token" in wrong.json()["error"]
    basic = base64.b64encode(f"git:{api.token}".encode()).decode()
    response = api.call("GET", "/whoami", token="", headers={"Authorization": f"Basic {basic}"})
    assert response.status_code == 200 and response.json()["name"] == "admin"


def test_a_token_for_another_site_is_403(api: Api, site: str,
                                         bundles: Callable[..., Path]) -> None:
    live = api.deploy(bundles(), site)
    mine = f"{site}-mine"
    other = api.server.new_token("--site", mine, "--name", "other-ci")
    for method, path in (("GET", f"/sites/{site}"), ("GET", f"/sites/{site}/deploys"),
                         ("GET", f"/deployments/{live['id']}"),
                         ("POST", f"/deployments/{live['id']}/redeploy"),
                         ("GET", f"/deployments/{live['id']}/log"),
                         ("GET", f"/deployments/{live['id']}/diff?against={live['id']}")):
        response = api.call(method, path, token=other)
        assert response.status_code == 403, (path, response.text)
        assert f"does not cover site '{site}'" in response.json()["error"]
    upload = api.call("POST", f"/sites/{site}/deploys", token=other,
                      content=bundles().read_bytes())
    assert upload.status_code == 403
    own = api.call("POST", f"/sites/{mine}/deploys?create=true", token=other,
                   content=bundles().read_bytes())
    assert own.status_code == 403  # a token for one site creates none
    assert "may not create sites" in own.json()["error"]
    api.ok("POST", "/sites", 201, json={"name": mine})
    own = api.call("POST", f"/sites/{mine}/deploys", token=other, content=bundles().read_bytes())
    assert own.status_code == 202
    assert [s["name"] for s in api.ok("GET", "/sites", token=other)["sites"]] == [mine]


def test_a_deploy_token_lacks_the_admin_scope(api: Api, site: str) -> None:
    deploy_only = api.ok("POST", "/tokens", 201, json={"name": "ci"})["secret"]
    api.ok("POST", "/sites", 201, json={"name": site})
    for method, path, kwargs in (
            ("POST", "/sites", {"json": {"name": f"{site}-new"}}),
            ("PATCH", f"/sites/{site}", {"json": {"deploy_tags": True}}),
            ("DELETE", f"/sites/{site}", {}),
            ("PUT", f"/sites/{site}/domains/www.example.com", {}),
            ("POST", f"/sites/{site}/prune?keep=1", {}),
            ("GET", "/tokens", {}),
            ("POST", "/tokens", {"json": {"name": "x"}})):
        response = api.call(method, path, token=deploy_only, **kwargs)
        assert response.status_code == 403, (path, response.text)
        assert "lacks the 'admin' scope" in response.json()["error"]
    assert api.call("GET", f"/sites/{site}", token=deploy_only).status_code == 200


def test_a_site_admin_token_manages_only_its_sites_tokens(api: Api, site: str) -> None:
    site_admin = api.ok("POST", "/tokens", 201, json={
        "name": f"{site}-admin", "site": site, "scopes": ["admin"]})["secret"]
    made = api.ok("POST", "/tokens", 201, token=site_admin, json={"name": "c", "site": site})
    assert made["token"]["site"] == site
    wider = api.call("POST", "/tokens", token=site_admin, json={"name": "all"})
    assert wider.status_code == 403 and f"limited to site '{site}'" in wider.json()["error"]
    elsewhere = api.call("POST", "/tokens", token=site_admin, json={"name": "d", "site": "zz"})
    assert elsewhere.status_code == 403
    assert {t["name"] for t in api.ok("GET", "/tokens", token=site_admin)["tokens"]} == {
        f"{site}-admin", "c"}


# --- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path", "status", "words"), [
    ("GET", "/sites/Not_A_Name", 400, "invalid site name 'Not_A_Name'"),
    ("GET", "/sites/nothing", 404, "no site named 'nothing'"),
    ("GET", "/deployments/xyz", 404, "no deployment with id 'xyz'"),
    ("GET", "/sites/blog/deploys?limit=0", 400, "query parameter 'limit'"),
    ("GET", "/no/such/endpoint", 404, "no API endpoint at GET /api/no/such/endpoint"),
    ("DELETE", "/whoami", 405, "/api/whoami does not answer DELETE"),
    ("POST", "/sites", 400, "the request body is missing; send a JSON object"),
])
def test_errors_answer_in_one_json_shape(api: Api, method: str, path: str, status: int,
                                         words: str) -> None:
    response = api.call(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"ok", "error", "status"} and body["ok"] is False
    assert body["status"] == status and words in body["error"]


@pytest.mark.parametrize(("body", "words"), [
    (b"{not json", "bad request: the request body is not valid JSON"),
    (b'{"name": 5}', "bad request: body field 'name': Input should be a valid string"),
    (b'{"name": "x", "extra": 1}',
     "bad request: body field 'extra': Extra inputs are not permitted"),
])
def test_a_malformed_body_is_a_400_that_says_what_is_wrong(api: Api, body: bytes,
                                                           words: str) -> None:
    response = api.call("POST", "/sites", content=body,
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"].startswith(words)


def test_openapi_is_published_with_token_security(api: Api) -> None:
    spec = api.ok("GET", "/openapi.json", token="")
    assert spec["servers"] == [{"url": "/api"}]
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "basic"}
    upload = spec["paths"]["/sites/{site}/deploys"]["post"]
    assert "application/gzip" in upload["requestBody"]["content"]
    assert {"202", "401", "403", "413", "422"} <= set(upload["responses"])
    assert "HTTPValidationError" not in str(spec)


def test_git_archive_piped_straight_into_the_api(api: Api, site: str,
                                                 make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<h1>piped</h1>"})
    archive = subprocess.run(["git", "archive", "--format=tar.gz", "--prefix=x/", "HEAD"],
                             cwd=repo, capture_output=True, check=True).stdout
    done = api.deploy(archive, site)
    assert done["status"] == "live" and done["commit"] == git(repo, "rev-parse", "HEAD")


def _error_classes(base: type[errors.PushsiteError] = errors.PushsiteError
                   ) -> list[type[errors.PushsiteError]]:
    """The product's error tree: every subclass pushsite defines (one outside errors.py fails
    the test, as it must), not those of tools such as the bench that build on it."""
    found = [base]
    for sub in base.__subclasses__():
        if sub.__module__.split(".")[0] == "pushsite":
            found.extend(_error_classes(sub))
    return found


@pytest.fixture(scope="module")
def raising_server() -> Iterator[str]:
    """A real HTTP server whose app raises the error class a path names, behind our handler."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/raise/{name}")
    def raise_it(name: str) -> None:
        if name == "bug":
            raise KeyError("a bug")
        raise getattr(errors, name)(f"a {name} happened; do something else")

    plain = with_debug_flag(app)
    debug = Starlette(debug=True, routes=[Mount("/debug", app=with_debug_flag(app))])

    async def served(scope: Any, receive: Any, send: Any) -> None:
        chosen = debug if scope.get("path", "").startswith("/debug/") else plain
        await chosen(scope, receive, send)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(served, host="127.0.0.1", port=port,
                                           log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_answers_its_status_in_the_json_shape(
        raising_server: str, cls: type[errors.PushsiteError]) -> None:
    response = httpx.get(f"{raising_server}/raise/{cls.__name__}", timeout=10)
    assert response.status_code == cls.http_status
    assert response.json() == {"ok": False, "status": cls.http_status,
                               "error": f"a {cls.__name__} happened; do something else"}
    assert ("www-authenticate" in response.headers) == (cls.http_status == 401)


def test_an_unexpected_error_is_a_plain_500_without_a_traceback(raising_server: str) -> None:
    response = httpx.get(f"{raising_server}/raise/bug", timeout=10)
    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"ok", "error", "status"} and "bug in pushsite" in body["error"]
    assert "KeyError" not in response.text


def test_the_traceback_shows_only_when_the_outer_app_runs_with_debug(raising_server: str
                                                                      ) -> None:
    response = httpx.get(f"{raising_server}/debug/raise/bug", timeout=10)
    assert response.status_code == 500
    assert "KeyError: 'a bug'" in response.json()["traceback"]
    handled = httpx.get(f"{raising_server}/debug/raise/ConfigError", timeout=10)
    assert handled.status_code == 400 and "traceback" not in handled.json()


def test_an_upload_over_the_servers_limit_is_refused_while_streaming(
        tmp_path: Path) -> None:
    with serving(tmp_path / "small", extra_env={"PUSHSITE_MAX_TOTAL_MB": "1",
                                                 "PUSHSITE_MAX_FILES": "10"}) as small:
        api = Api(small, small.new_token("--name", "ci"))

        def body() -> Iterator[bytes]:
            yield b"\x1f\x8b"  # looks like gzip, so only the size stops it
            for _ in range(40):
                yield b"\0" * (100 << 10)

        small.create_site("big")
        response = api.call("POST", "/sites/big/deploys", content=body())
        assert response.status_code == 413
        assert response.json()["error"].startswith("the upload is over 2112512 bytes")
        # recorded `receiving` from its first bytes, then failed, with nothing left staged
        [failed] = api.ok("GET", "/sites/big/deploys")["deployments"]
        assert failed["status"] == "failed" and failed["error_kind"] == "BundleTooLarge"
        assert "the upload is over 2112512 bytes" in failed["error"]
        assert not list((small.home / "staging").glob(f"{failed['id']}*"))


def test_an_upload_reaches_staging_while_it_is_still_being_sent(api: Api, site: str) -> None:
    """The body is streamed to disk as it comes: half-sent, half is already staged."""
    paused, release = threading.Event(), threading.Event()

    def body() -> Iterator[bytes]:
        yield b"\x1f\x8b" + b"\0" * ((1 << 20) - 2)
        paused.set()
        release.wait(30)
        yield b"\0" * (1 << 20)

    staging = api.server.home / "staging"
    before = set(staging.glob("*"))
    answers: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answers.append(
        api.call("POST", f"/sites/{site}/deploys?create=true", content=body())))
    sender.start()
    try:
        assert paused.wait(30)
        staged = 0
        for _ in range(400):
            staged = max([p.stat().st_size for p in set(staging.glob("*")) - before] or [0])
            if staged >= 1 << 20:
                break
            time.sleep(0.02)
        assert staged >= 1 << 20
    finally:
        release.set()
        sender.join(30)
    assert answers and answers[0].status_code == 202
    assert api.finished(answers[0].json()["id"])["error_kind"] == "BundleRejected"
