"""The service's site verbs through the real wiring (SQLite state, local store, a real
`pushsite serve`): redeploy is one path for the API and the dashboard, deleting a site takes
everything it owns, deploy_ref decides what a pushed ref does for the git remote and the
webhooks alike, a failure's error class is stored, and a state outage is a 503 for webhooks.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from pushsite.config import load_config
from pushsite.deploy.gitcommit import SiteRepos
from pushsite.errors import ConfigError, PushsiteError, SiteNotFound
from pushsite.model import HostedRepo, Status, branch_alias, manifest_key
from pushsite.service import Service
from pushsite.state.sqlite import SqliteState
from pushsite.web import hooks
from support.api import Api
from support.servers import Server
from support.service import bundle, open_service, site_files
from support.sites import git

ZERO = "0" * 40
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def service() -> Iterator[Service]:
    with open_service() as svc:
        yield svc


def _deploy(service: Service, site: str, text: str, branch: str | None = None) -> str:
    accepted = service.accept(site, io.BytesIO(bundle(site_files(text))), branch=branch,
                              enqueue=False)
    return service.run(accepted.id).id


# redeploy ------------------------------------------------------------------------------------
def _signed_in(server: Server, token: str) -> httpx.Client:
    browser = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
    form = browser.get("/login")
    csrf = _CSRF.search(form.text)
    assert csrf, form.text
    done = browser.post("/login", data={"csrf": csrf.group(1), "token": token, "next": "/"})
    assert done.status_code == 303, done.text
    return browser


def test_redeploy_from_the_api_and_the_dashboard_is_one_path(server: Server) -> None:
    token = server.new_token("--admin")
    api = Api(server, token)
    first = api.deploy(bundle(site_files("one")), "twice")
    api.deploy(bundle(site_files("two")), "twice")

    by_api = api.ok("POST", f"/deployments/{first['id']}/redeploy", 201)
    browser = _signed_in(server, token)
    page = browser.get(f"/deployments/{first['id']}")
    csrf = _CSRF.search(page.text)
    assert csrf, page.text
    done = browser.post(f"/deployments/{first['id']}/redeploy", data={"csrf": csrf.group(1)})
    assert done.status_code == 303, done.text
    by_board = api.ok("GET", f"/deployments/{done.headers['location'].rsplit('/', 1)[1]}")

    assert by_board["id"] > by_api["id"] > first["id"]
    assert by_api["status"] == "live" and by_board["status"] == "live"
    assert api.ok("GET", f"/deployments/{by_api['id']}")["status"] == "ready"  # newer one won
    same = ("source", "message", "files", "bytes_in", "blobs_new", "blobs_reused", "commit")
    assert {k: by_api[k] for k in same} == {k: by_board[k] for k in same}
    assert by_api["message"] == f"redeploy of {first['id']}"
    lines = [api.ok("GET", f"/deployments/{d['id']}/log")["lines"] for d in (by_api, by_board)]
    assert [x["stage"] for x in lines[0]] == [x["stage"] for x in lines[1]]
    assert lines[0][0]["message"] == lines[1][0]["message"]
    assert f"redeploying the 2 files of {first['id']} to main" in lines[0][0]["message"]
    assert server.get("twice.localhost").text == "<h1>one</h1>"


def test_a_redeploy_that_fails_is_recorded_failed_never_left_running(service: Service) -> None:
    original = _deploy(service, "blog", "v1")
    # the store turns read-only (as a disk remounted read-only would): the manifest still
    # reads, the copy cannot be written
    writer = service.store._wdb  # type: ignore[attr-defined]
    writer.execute("PRAGMA query_only = ON")
    try:
        with pytest.raises(Exception) as raised:
            service.redeploy(original)
    finally:
        writer.execute("PRAGMA query_only = OFF")
    failed = service.state.list_deployments("blog", limit=1)[0]
    assert failed.id != original and failed.source == "redeploy"
    assert failed.status == Status.FAILED and failed.finished is not None
    expected = (type(raised.value).__name__ if isinstance(raised.value, PushsiteError)
                else "internal")
    assert failed.error_kind == expected
    assert service.state.get_alias("blog", "production").deployment_id == original  # type: ignore[union-attr]


def test_only_a_ready_deployment_can_be_redeployed(service: Service) -> None:
    queued = service.accept("blog", io.BytesIO(bundle(site_files("v1"))), enqueue=False)
    with pytest.raises(ConfigError, match="no manifest to redeploy"):
        service.redeploy(queued.id)


# sites -----------------------------------------------------------------------------------------
def test_delete_site_removes_its_repository_aliases_deployments_and_settings(
        service: Service, make_repo: Callable[..., Path]) -> None:
    kept = _deploy(service, "other", "theirs")
    service.update_site("other", tags=True)
    repos = SiteRepos(service.config.repos)
    service.create_site("blog")
    repos.create("blog")
    repo = make_repo({"index.html": "<p>pushed</p>"})
    git(repo, "push", "-q", str(repos.path("blog")), "main")
    service.update_site("blog", tags=True, webhook_base_url="https://git.example",
                        webhook_access_token="t0k")
    live = _deploy(service, "blog", "v1")
    preview = _deploy(service, "blog", "v2", branch="feature")
    assert {a.name for a in service.state.list_aliases("blog")} == {
        "production", branch_alias("main"), branch_alias("feature")}

    service.delete_site("blog")

    assert not repos.path("blog").exists()
    with pytest.raises(SiteNotFound):
        service.site("blog")
    assert service.state.list_aliases("blog") == []
    assert service.state.list_deployments("blog") == []
    assert service.store.has([manifest_key(live), manifest_key(preview)]) == set()
    # a new site of that name starts empty: no settings carried over
    assert service.create_site("blog").settings.webhook.access_token == ""
    # the other site is untouched
    assert service.state.get_alias("other", "production").deployment_id == kept  # type: ignore[union-attr]
    assert service.site("other").settings.tags is True


def test_a_site_with_a_queued_deployment_is_not_deleted(service: Service) -> None:
    queued = service.accept("blog", io.BytesIO(bundle(site_files("v1"))), enqueue=False)
    with pytest.raises(ConfigError, match=f"{queued.id} of site blog is queued"):
        service.delete_site("blog")
    assert service.site("blog").name == "blog"


def test_cli_hooks_and_api_patch_change_the_same_settings(server: Server) -> None:
    api = Api(server, server.new_token("--admin"))
    api.ok("POST", "/sites", 201, json={"name": "hooked"})
    done = server.cli("hooks", "hooked", "--tags", "--base-url", "https://git.example/api/v3",
                      "--access-token", "ghp_x", "--repo", "acme/www")
    assert done.returncode == 0, done.stderr
    settings = api.ok("GET", "/sites/hooked")["settings"]
    assert settings == {"deploy_tags": True, "webhook_base_url": "https://git.example/api/v3",
                        "webhook_access_token_set": True, "webhook_repo": "acme/www",
                        "webhook_last_ignored_repo": "", "locked": False,
                        "reject_failed_pushes": True}
    api.ok("PATCH", "/sites/hooked", json={"deploy_tags": False, "webhook_access_token": "",
                                           "webhook_repo": "acme/site"})
    done = server.cli("hooks", "hooked")
    assert "base url   https://git.example/api/v3" in done.stdout.decode()
    assert "repository acme/site" in done.stdout.decode()
    assert api.ok("GET", "/sites/hooked")["settings"] == {
        "deploy_tags": False, "webhook_base_url": "https://git.example/api/v3",
        "webhook_access_token_set": False, "webhook_repo": "acme/site",
        "webhook_last_ignored_repo": "", "locked": False, "reject_failed_pushes": True}
    assert api.ok("DELETE", "/sites/hooked") == {"ok": True, "deleted": "hooked"}
    assert api.call("GET", "/sites/hooked").status_code == 404



def test_tokens_are_revoked_through_the_service_from_cli_and_api(server: Server) -> None:
    admin = Api(server, server.new_token("--admin"))
    doomed = admin.ok("POST", "/tokens", 201, json={"name": "doomed"})["token"]["id"]
    assert admin.ok("DELETE", f"/tokens/{doomed}") == {"ok": True, "deleted": doomed}
    assert admin.call("DELETE", f"/tokens/{doomed}").status_code == 404
    gone = server.cli("tokens", "delete", doomed)
    assert gone.returncode == 4 and f"no token with id {doomed!r}" in gone.stderr.decode()


# deploy_ref --------------------------------------------------------------------------------------
@pytest.fixture
def pushed(service: Service, make_repo: Callable[..., Path]) -> tuple[Path, Path]:
    """A site's repository holding main, a branch and an annotated tag, as after a push."""
    repos = SiteRepos(service.config.repos)
    bare = repos.create("blog")
    repo = make_repo({"index.html": "<p>v1</p>"})
    git(repo, "branch", "feature")
    git(repo, "tag", "-a", "v1", "-m", "release one")
    git(repo, "push", "-q", str(bare), "main", "feature", "v1")
    return repo, bare


def test_deploy_ref_decides_for_branches_tags_and_other_refs(
        service: Service, pushed: tuple[Path, Path]) -> None:
    repo, _ = pushed
    commit = git(repo, "rev-parse", "main")
    tag_object = git(repo, "rev-parse", "v1")
    assert tag_object != commit

    branch = service.deploy_ref("blog", "refs/heads/feature", ZERO, commit)
    assert (branch.action, branch.branch) == ("deploy", "feature")
    assert branch.deployment is not None and branch.deployment.commit == commit
    assert branch.deployment.message == "first"  # read from the repository

    ignored = service.deploy_ref("blog", "refs/tags/v1", ZERO, tag_object)
    assert ignored.action == "ignore" and "tag pushes are not deployed" in ignored.reason
    assert service.deploy_ref("blog", "refs/notes/commits", ZERO, commit).action == "ignore"

    service.update_site("blog", tags=True)
    tagged = service.deploy_ref("blog", "refs/tags/v1", ZERO, tag_object)
    assert (tagged.action, tagged.branch) == ("deploy", "tag/v1")
    assert tagged.deployment is not None and tagged.deployment.commit == commit  # peeled


def test_deploy_ref_removes_a_deleted_branch_preview_but_never_production(
        service: Service) -> None:
    _deploy(service, "blog", "v1")
    _deploy(service, "blog", "v2", branch="feature")
    gone = service.deploy_ref("blog", "refs/heads/feature", "1" * 40, ZERO)
    assert (gone.action, gone.branch, gone.deployment) == ("remove", "feature", None)
    assert service.state.get_alias("blog", branch_alias("feature")) is None
    service.deploy_ref("blog", "refs/heads/main", "1" * 40, ZERO)
    assert service.state.get_alias("blog", "production") is not None
    test = service.deploy_ref("blog", "refs/heads/main", ZERO, ZERO)  # a host's test delivery
    assert test.action == "ignore"


def test_deploy_ref_for_a_webhook_queues_a_fetch_from_the_git_host(service: Service) -> None:
    service.create_site("blog")
    outcome = service.deploy_ref("blog", "refs/heads/main", "", "a" * 40, message="from host",
                                 hosted=HostedRepo("gitea", "owner/blog"))
    assert outcome.deployment is not None
    stored = service.state.get_deployment(outcome.deployment.id)
    assert (stored.status, stored.source, stored.commit, stored.message) == (
        Status.QUEUED, "webhook:gitea", "a" * 40, "from host")
    with pytest.raises(SiteNotFound):  # a webhook never creates a site
        service.deploy_ref("nosite", "refs/heads/main", "", "a" * 40,
                           hosted=HostedRepo("github", "o/r"))


# error_kind --------------------------------------------------------------------------------------
def test_a_failure_stores_its_error_class_and_the_api_returns_it(server: Server) -> None:
    api = Api(server, server.new_token("--admin"))
    failed = api.deploy(gzip.compress(b"not a tar archive" * 50), "kinds")
    assert (failed["status"], failed["error_kind"], failed["exit_code"]) == (
        "failed", "BundleRejected", 3)
    state = SqliteState(server.home / "state.db")
    try:
        assert state.get_deployment(failed["id"]).error_kind == "BundleRejected"
    finally:
        state.close()


def test_an_older_state_database_gains_the_error_kind_column(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute(  # the deployments table as versions before error_kind made it
        'CREATE TABLE deployments (id TEXT PRIMARY KEY, site TEXT NOT NULL, branch TEXT NOT '
        'NULL, status TEXT NOT NULL, "commit" TEXT NOT NULL, message TEXT NOT NULL, source '
        'TEXT NOT NULL, bundle_key TEXT NOT NULL, created REAL NOT NULL, started REAL, '
        'finished REAL, files INTEGER NOT NULL, bytes_in INTEGER NOT NULL, bytes_stored '
        'INTEGER NOT NULL, blobs_new INTEGER NOT NULL, blobs_reused INTEGER NOT NULL, error '
        'TEXT NOT NULL, progress TEXT NOT NULL)')
    db.execute("INSERT INTO deployments VALUES ('01old', 'blog', 'main', 'failed', '', '', "
               "'cli', '', 1.0, 1.0, 2.0, 0, 0, 0, 0, 0, 'boom', '')")
    db.commit()
    db.close()
    state = SqliteState(path)
    try:
        old = state.get_deployment("01old")
        assert (old.status, old.error, old.error_kind) == (Status.FAILED, "boom", "")
        old.error_kind = "DeploymentFailed"
        assert state.update_deployment(old)
        assert state.get_deployment("01old").error_kind == "DeploymentFailed"
    finally:
        state.close()


# webhooks and an unavailable state ------------------------------------------------------------
@contextlib.contextmanager
def _hooks_served(service: Service) -> Iterator[str]:
    """web/hooks.py's routes over `service`, on a real uvicorn at a free 127.0.0.1 port."""
    app = Starlette(routes=hooks.routes(service))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_webhooks_answer_503_when_the_state_is_unavailable_and_404_for_no_site(
        tmp_path: Path) -> None:
    with open_service() as up, _hooks_served(up) as url:
        unknown = httpx.post(f"{url}/hooks/github/nosuch", content=b"{}", timeout=10)
        assert unknown.status_code == 404 and "no site named" in unknown.json()["error"]
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state's folder should be")
    config = replace(load_config(), state=f"sqlite://{blocker}/state.db")
    down = Service(config)
    try:
        with _hooks_served(down) as url:
            answer = httpx.post(f"{url}/hooks/github/blog", content=b"{}", timeout=10)
    finally:
        down.close()
    assert answer.status_code == 503, answer.text
    assert answer.json()["ok"] is False and "state database" in answer.json()["error"]


def test_the_git_remote_reports_what_deploy_ref_decided(server: Server,
                                                         make_repo: Callable[..., Path]) -> None:
    token = server.new_token()
    server.create_site("pushy")
    repo = make_repo({"index.html": "<p>v1</p>"})
    git(repo, "tag", "v1")
    url = f"http://x:{token}@127.0.0.1:{server.port}/pushy.git"
    done = subprocess.run(["git", "push", url, "main", "v1"], cwd=repo, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refs/tags/v1 ignored: tag pushes are not deployed for this site" in done.stderr
    assert re.search(r"main [0-9a-f]{12}: deploying as [0-9a-z]{26}", done.stderr)
    with_config = load_config(home=str(server.home))
    svc = Service(with_config)
    try:
        assert svc.state.get_alias("pushy", "production") is not None
    finally:
        svc.close()


def test_hooks_prints_urls_of_the_server_running_on_this_home(server: Server,
                                                              tmp_path: Path) -> None:
    """The default --server-url is the running server's public URL (its port, not 8000);
    with no server on the home, the configured public URL; --server-url still wins."""
    assert server.port != 8000
    server.cli("sites", "create", "hooked")
    shown = server.cli("hooks", "hooked")
    assert shown.returncode == 0, shown.stderr
    assert f"github     http://localhost:{server.port}/hooks/github/hooked" in \
        shown.stdout.decode()
    given = server.cli("hooks", "hooked", "--server-url", "https://deploy.example.com/")
    assert "github     https://deploy.example.com/hooks/github/hooked" in given.stdout.decode()
    alone = {**server.env, "PUSHSITE_HOME": str(tmp_path / "other"),
             "PUSHSITE_PUBLIC_URL": "https://sites.example.org"}
    subprocess.run([sys.executable, "-m", "pushsite", "sites", "create", "own"], env=alone,
                   check=True, capture_output=True, timeout=120)
    done = subprocess.run([sys.executable, "-m", "pushsite", "hooks", "own"], env=alone,
                          capture_output=True, timeout=120, text=True)
    assert done.returncode == 0, done.stderr
    assert "gitlab     https://sites.example.org/hooks/gitlab/own" in done.stdout
