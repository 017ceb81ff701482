"""Sites are created on purpose: `pushsite sites create/delete/list`, and a deploy or a push to
a site that does not exist fails (exit 4, the close name suggested) unless `--create` asks for
it. Real CLI subprocesses, a real `pushsite serve` and git for the remote paths."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from support.cli import create_site, ok, ok_json, pushsite
from support.servers import Server
from support.sites import git

TYPO = ("no site named 'sphynx'; did you mean 'sphinx'? create it with: pushsite sites create "
        "sphynx")


def sites_of(server: Server) -> list[str]:
    return [json.loads(x)["name"] for x in server.cli("sites", "--json").stdout.splitlines()]


def test_create_list_and_delete_a_site(make_site: Callable[..., Path]) -> None:
    assert pushsite("sites").stdout == ""  # none yet (a hint on stderr)
    create_site("blog", "--production-branch", "trunk")
    again = pushsite("sites", "create", "blog")
    assert again.returncode == 2 and "already exists" in again.stderr
    listed = [json.loads(line) for line in ok("sites", "list", "--json").stdout.splitlines()]
    assert listed == [{"name": "blog", "production_branch": "trunk",
                       "url": "http://blog.localhost:8000/", "live_deployment": None,
                       "commit": ""}]
    assert [json.loads(x)["name"] for x in ok("sites", "--json").stdout.splitlines()] == ["blog"]
    deployed = ok_json("deploy", str(make_site()), "--site", "blog")
    assert deployed["branch"] == "trunk" and deployed["status"] == "live"
    assert "blog" in ok("sites").stdout
    # deleting asks for the name; a wrong answer (or none) deletes nothing
    wrong = pushsite("sites", "delete", "blog", input=b"blgo\n")
    assert wrong.returncode == 1 and "not deleted" in wrong.stderr
    assert ok("sites", "delete", "blog", input=b"blog\n").returncode == 0
    assert ok("sites", "list", "--json").stdout == ""
    create_site("blog")
    ok("sites", "delete", "blog", "--yes")
    gone = pushsite("sites", "delete", "blog", "--yes")
    assert gone.returncode == 4 and "no site named 'blog'" in gone.stderr


def test_a_deploy_to_a_typo_fails_and_creates_nothing(make_site: Callable[..., Path]) -> None:
    create_site("sphinx")
    done = pushsite("deploy", str(make_site()), "--site", "sphynx")
    assert done.returncode == 4
    assert done.stderr.strip() == f"error: {TYPO}"
    far = pushsite("deploy", str(make_site()), "--site", "zzzz")
    assert far.returncode == 4
    assert far.stderr.strip() == ("error: no site named 'zzzz'; create it with: pushsite sites "
                                  "create zzzz")
    assert [json.loads(x)["name"] for x in ok("sites", "--json").stdout.splitlines()] == [
        "sphinx"]
    made = ok_json("deploy", str(make_site()), "--site", "sphynx", "--create")
    assert made["status"] == "live" and made["site"] == "sphynx"


def test_server_deploys_need_the_site_or_create(server: Server,
                                                make_site: Callable[..., Path],
                                                tmp_path: Path) -> None:
    server.cli("sites", "create", "sphinx")
    token = server.new_token()
    remote = ("--server", server.url, "--token", token)
    elsewhere = {"PUSHSITE_HOME": str(tmp_path / "client")}
    done = pushsite("deploy", str(make_site()), "--site", "sphynx", *remote, env=elsewhere)
    assert done.returncode == 4 and done.stderr.strip() == f"error: {TYPO}"
    made = ok_json("deploy", str(make_site()), "--site", "sphynx", "--create", *remote,
                   env=elsewhere)
    assert made["status"] == "live"
    assert server.get(f"sphynx.localhost:{server.port}").text == "<h1>hello</h1>"
    # the API's own flag; a token for one site may not create others
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"}
    refused = httpx.post(f"{server.url}/api/sites/nope/deploys", content=b"x", headers=headers)
    assert refused.status_code == 404 and "create it with" in refused.json()["error"]
    limited = server.new_token("--site", "other")
    answer = httpx.post(f"{server.url}/api/sites/other/deploys?create=true", content=b"x",
                        headers={**headers, "Authorization": f"Bearer {limited}"})
    assert answer.status_code == 403 and "may not create sites" in answer.json()["error"]
    assert sites_of(server) == ["sphinx", "sphynx"]


def test_a_push_to_a_typo_is_refused(server: Server, make_repo: Callable[..., Path]) -> None:
    server.cli("sites", "create", "sphinx")
    token = server.new_token()
    repo = make_repo({"index.html": "<h1>pushed</h1>"})
    typo = subprocess.run(["git", "push", f"http://x:{token}@127.0.0.1:{server.port}/sphynx.git",
                           "main"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert typo.returncode != 0
    assert TYPO in typo.stderr
    assert sites_of(server) == ["sphinx"]
    assert server.get(f"sphynx.localhost:{server.port}").status_code == 404
    git(repo, "push", "-q", f"http://x:{token}@127.0.0.1:{server.port}/sphinx.git", "main")
    assert server.get(f"sphinx.localhost:{server.port}").text == "<h1>pushed</h1>"
