"""A staged bundle of source (an API upload, a webhook's archive) is built
in the sandbox before it is deployed; a bundle with nothing to build is streamed as always."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.api import Api
from support.servers import Server
from support.service import bundle
from support.sites import git


def finished(api: Api, deployment_id: str) -> dict[str, Any]:
    """The deployment once it has ended (a build takes longer than a plain deploy)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        data: dict[str, Any] = api.ok("GET", f"/deployments/{deployment_id}")
        if data["exit_code"] is not None:
            return data
        time.sleep(0.1)
    raise AssertionError(f"deployment {deployment_id} did not end in 180 s")


HUGO = {
    "hugo.toml": b'baseURL = "http://example.org/"\ntitle = "Uploaded"\n'
                 b"disableKinds = ['taxonomy', 'term', 'RSS', 'sitemap']\n",
    "content/_index.md": b"---\ntitle: Home\n---\nBuilt from an upload\n",
    "layouts/index.html": b"<h1>{{ site.Title }}</h1>{{ .Content }}",
}


def test_uploaded_source_is_built(server: Server, tmp_path: Path) -> None:
    api = Api(server, server.new_token("--name", "admin", "--admin"))
    plain = finished(api, api.upload(bundle({"index.html": b"<p>v1</p>"}), "upsite")["id"])
    assert plain["status"] == "live"
    built = finished(api, api.upload(bundle(HUGO), "upsite")["id"])
    assert built["status"] == "live", built
    page = server.get("upsite.localhost", "/").text
    assert "<h1>Uploaded</h1>" in page and "Built from an upload" in page
    log = server.cli("log", built["id"]).stdout.decode()
    assert "detected hugo.toml (Hugo): running `hugo`" in log


def test_uploaded_source_whose_build_fails_keeps_the_live_site(server: Server) -> None:
    api = Api(server, server.new_token("--name", "admin", "--admin"))
    assert finished(api, api.upload(bundle({"index.html": b"<p>v1</p>"}), "upfail")["id"])[
        "status"] == "live"
    toml = b'[build]\ncommand = "echo compiling; echo broken >&2; exit 7"\npublish = "out"\n'
    failed = finished(api, api.upload(bundle({"pushsite.toml": toml}), "upfail")["id"])
    assert failed["status"] == "failed"
    assert failed["error"] == "build failed (exit 7): broken"
    assert server.get("upfail.localhost", "/").text == "<p>v1</p>"


def test_webhook_push_of_source_is_built(server: Server,
                                         make_repo: Callable[..., Path]) -> None:
    from test_webhook_deploy import ArchiveHost, configure, github_push, send_hook, wait_for

    host = ArchiveHost(make_repo({k: v.decode() for k, v in HUGO.items()}))
    try:
        secret = configure(server, "hooked", host.url)
        commit = git(host.repo, "rev-parse", "HEAD")
        answer = send_hook(server, "hooked", secret, github_push(commit), "b-1")
        assert answer.status_code == 200
        wait_for(lambda: "Built from an upload" in server.get("hooked.localhost").text, 180)
    finally:
        host.close()


def test_an_uploaded_source_bundle_over_32_mib_is_built(server: Server) -> None:
    """Bundles of any size are looked into for a build (once, the cap was 32 MiB
    compressed: a source tree with big media was deployed unbuilt). The 34 MiB file comes
    first in the archive, before hugo.toml: the whole stream is read for the top-level
    files."""
    import random

    media = random.Random(15).randbytes(34 << 20)  # incompressible: the bundle is > 32 MiB
    files = {"assets/a.bin": media, **HUGO, "static/media/z.bin": b"small"}
    data = bundle(files)
    assert len(data) > 32 << 20
    api = Api(server, server.new_token("--name", "admin", "--admin"))
    built = finished(api, api.upload(data, "bigsrc")["id"])
    assert built["status"] == "live", built
    assert "<h1>Uploaded</h1>" in server.get("bigsrc.localhost", "/").text
    assert server.get("bigsrc.localhost", "/media/z.bin").content == b"small"
    assert server.get("bigsrc.localhost", "/assets/a.bin").status_code == 404  # source only
    log = server.cli("log", built["id"]).stdout.decode()
    assert "detected hugo.toml (Hugo): running `hugo`" in log
