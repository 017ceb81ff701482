"""Per-site build variables and secrets: `pushsite env` and the API set them, a build sees
them, and a secret's value never comes back: not from the CLI, the API, the site's record, a
push's `remote:` lines or the stored log (build output is redacted line by line)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from support.api import Api
from support.servers import Server
from support.sites import git, write_files

SECRET = "hunter2-very-secret-7f3a"


def test_env_verbs_on_the_cli_never_show_a_secret(server: Server) -> None:
    assert server.cli("sites", "create", "vars").returncode == 0
    assert server.cli("env", "set", "vars", "HUGO_ENV=production").returncode == 0
    done = server.cli("env", "set", "vars", f"API_KEY={SECRET}", "--secret")
    assert done.returncode == 0 and SECRET.encode() not in done.stdout + done.stderr
    listed = server.cli("env", "list", "vars").stdout.decode()
    assert listed.splitlines() == ["HUGO_ENV=production", "API_KEY=••••"]
    rows = [json.loads(line) for line in server.cli("env", "list", "vars", "--json").stdout
            .decode().splitlines()]
    assert rows[1] == {"name": "API_KEY", "value": "••••", "secret": True}
    assert server.cli("env", "set", "vars", "1BAD=x").returncode == 2
    assert server.cli("env", "set", "vars", "NOEQUALS").returncode == 2
    assert server.cli("env", "unset", "vars", "HUGO_ENV").returncode == 0
    assert server.cli("env", "unset", "vars", "HUGO_ENV").returncode == 4
    assert server.cli("env", "list", "vars").stdout.decode().splitlines() == ["API_KEY=••••"]


def test_env_api_never_answers_with_a_secret(server: Server) -> None:
    api = Api(server, server.new_token("--name", "admin", "--admin"))
    assert server.cli("sites", "create", "apivars").returncode == 0
    answer = api.ok("PUT", "/sites/apivars/env/TOKEN", json={"value": SECRET, "secret": True})
    assert answer == {"name": "TOKEN", "value": "••••", "secret": True}
    api.ok("PUT", "/sites/apivars/env/PLAIN", json={"value": "shown"})
    listed = api.ok("GET", "/sites/apivars/env")
    assert listed["variables"] == [{"name": "TOKEN", "value": "••••", "secret": True},
                                   {"name": "PLAIN", "value": "shown", "secret": False}]
    assert SECRET not in api.call("GET", "/sites/apivars").text
    assert SECRET not in api.call("GET", "/sites").text
    deploy_only = server.new_token("--name", "deployer", "--site", "apivars")
    assert api.call("GET", "/sites/apivars/env", token=deploy_only).status_code == 403
    api.ok("DELETE", "/sites/apivars/env/PLAIN")
    assert api.call("DELETE", "/sites/apivars/env/PLAIN").status_code == 404
    assert api.call("PUT", "/sites/apivars/env/PATH", json={"value": "/x"}).status_code == 400


def test_a_build_sees_variables_and_its_output_is_redacted(server: Server,
                                                           tmp_path: Path) -> None:
    assert server.cli("sites", "create", "redact").returncode == 0
    assert server.cli("env", "set", "redact", f"API_KEY={SECRET}", "--secret").returncode == 0
    assert server.cli("env", "set", "redact", "GREETING=hello").returncode == 0
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    command = ('echo "key is $API_KEY"; echo "$API_KEY" >&2; '
               f'test "$API_KEY" = "{SECRET[:7]}$(printf %s -very-secret-7f3a)" && echo match; '
               'mkdir -p out; echo "$GREETING" > out/index.html')
    write_files(repo, {"pushsite.toml": f"[build]\ncommand = '''{command}'''\n"
                                        'publish = "out"\n'})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "build with a secret")
    token = server.new_token("--name", "push")
    done = subprocess.run(["git", "push", f"http://x:{token}@127.0.0.1:{server.port}/redact.git",
                           "main"], cwd=repo, capture_output=True, text=True, timeout=180)
    assert "pushsite: production:" in done.stderr, done.stderr
    assert "key is ••••" in done.stderr and "match" in done.stderr
    assert SECRET not in done.stderr
    assert server.get("redact.localhost", "/").text.strip() == "hello"
    deployment = server.cli("deploys", "redact", "--json").stdout.decode().splitlines()[0]
    log = server.cli("log", json.loads(deployment)["id"]).stdout.decode()
    assert "key is ••••" in log and SECRET not in log
    # the stored log lines themselves, not only what the CLI prints
    with sqlite3.connect(server.home / "state.db") as db:
        stored = "\n".join(str(row) for row in db.execute("SELECT * FROM logs"))
    assert "key is ••••" in stored and SECRET not in stored
