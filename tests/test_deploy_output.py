"""What a deploy prints: the production or preview URL (the words `production`, `preview`,
`draft`; never `live:` for a preview), the deployment's own URL and its log on the dashboard;
`--draft` moves no alias until `pushsite promote ID`, whose log says "promoted". Real CLI
subprocesses on the test's home."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from support.cli import create_site, ok, ok_json, pushsite
from support.servers import Server
from support.sites import write_files


def live_deployment(site: str = "blog") -> str:
    listed = [json.loads(line) for line in ok("sites", "--json").stdout.splitlines()]
    return str(next(x["live_deployment"] for x in listed if x["name"] == site))


def lines_of(stderr: str) -> dict[str, str]:
    return {line.split(":", 1)[0]: line.split(":", 1)[1].strip()
            for line in stderr.splitlines() if ":" in line}


def test_production_preview_and_draft_say_what_they_are(tmp_path: Path) -> None:
    create_site("blog")
    v1 = write_files(tmp_path / "v1", {"index.html": "<h1>v1</h1>"})
    first = ok("deploy", str(v1), "--site", "blog").stderr
    said = lines_of(first)
    assert said["production"] == "http://blog.localhost:8000/"
    deployment_id = said["live"].rsplit(" ", 1)[1]
    assert said["deployment"] == f"http://{deployment_id}--blog.localhost:8000/"
    assert said["log"] == f"http://127.0.0.1:8000/deployments/{deployment_id}"
    assert "live: 1 file, 1 new blob, 0 reused" in first

    preview = ok("deploy", str(v1), "--site", "blog", "--branch", "feature-x").stderr
    said = lines_of(preview)
    assert said["preview"] == "http://feature-x--blog.localhost:8000/"
    assert "production" not in said and not any(
        line.startswith("live:") for line in preview.splitlines()[:3])

    v2 = write_files(tmp_path / "v2", {"index.html": "<h1>v2</h1>"})
    draft = ok_json("deploy", str(v2), "--site", "blog", "--draft")
    assert draft["context"] == "draft" and draft["status"] == "ready"
    assert set(draft["urls"]) == {"deployment", "log"}
    text = ok("deploy", str(v2), "--site", "blog", "--draft").stderr
    assert "draft:" in text and "production:" not in text and "live:" not in text
    assert "promote it to production with: pushsite promote " in text
    assert live_deployment() == deployment_id  # the draft moved nothing

    promoted = ok("promote", draft["id"])
    assert f"promoted {draft['id']}" in promoted.stderr
    assert live_deployment() == draft["id"]
    log = ok("log", draft["id"]).stdout
    assert "promoted: production now serves" in log and "rolled back" not in log
    missing = pushsite("promote", "nothing")
    assert missing.returncode == 4


def test_a_server_deploy_prints_the_same_urls(server: Server,
                                               make_site: Callable[..., Path]) -> None:
    server.create_site("blog")
    token = server.new_token()
    done = ok("deploy", str(make_site()), "--site", "blog", "--server", server.url, "--token",
              token, env={"PUSHSITE_HOME": str(server.home.parent / "client")})
    said = lines_of(done.stderr)
    assert said["production"] == f"http://blog.localhost:{server.port}/"
    assert said["log"].startswith(f"{server.url}/deployments/")
    refused = pushsite("deploy", str(make_site()), "--site", "blog", "--draft", "--server",
                       server.url, "--token", token)
    assert refused.returncode == 2 and "--draft" in refused.stderr


def test_an_empty_branch_from_an_unset_ci_variable_is_refused(tmp_path: Path) -> None:
    """`--branch "$GITHUB_REF_NAME"` with the variable unset must not deploy production."""
    create_site("blog")
    site = write_files(tmp_path / "site", {"index.html": "<h1>v1</h1>"})
    done = pushsite("deploy", str(site), "--site", "blog", "--branch", "")
    assert done.returncode == 2
    assert "--branch is empty" in done.stderr
    listed = [json.loads(line) for line in ok("sites", "--json").stdout.splitlines()]
    assert next(x["live_deployment"] for x in listed if x["name"] == "blog") in (None, "")
