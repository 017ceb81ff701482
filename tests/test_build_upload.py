"""A staged bundle of source (an API upload; a webhook's archive takes the same path) is built
in the sandbox before it is deployed; a bundle with nothing to build is streamed as always."""

from __future__ import annotations

from pathlib import Path

from support.api import Api
from support.servers import Server
from support.service import bundle

HUGO = {
    "hugo.toml": b'baseURL = "http://example.org/"\ntitle = "Uploaded"\n'
                 b"disableKinds = ['taxonomy', 'term', 'RSS', 'sitemap']\n",
    "content/_index.md": b"---\ntitle: Home\n---\nBuilt from an upload\n",
    "layouts/index.html": b"<h1>{{ site.Title }}</h1>{{ .Content }}",
}


def test_uploaded_source_is_built(server: Server, tmp_path: Path) -> None:
    api = Api(server, server.new_token("--name", "admin", "--admin"))
    plain = api.finished(api.upload(bundle({"index.html": b"<p>v1</p>"}), "upsite")["id"])
    assert plain["status"] == "live"
    built = api.finished(api.upload(bundle(HUGO), "upsite")["id"])
    assert built["status"] == "live", built
    page = server.get("upsite.localhost", "/").text
    assert "<h1>Uploaded</h1>" in page and "Built from an upload" in page
    log = server.cli("log", built["id"]).stdout.decode()
    assert "detected hugo.toml (Hugo): running `hugo`" in log


def test_uploaded_source_whose_build_fails_keeps_the_live_site(server: Server) -> None:
    api = Api(server, server.new_token("--name", "admin", "--admin"))
    assert api.finished(api.upload(bundle({"index.html": b"<p>v1</p>"}), "upfail")["id"])[
        "status"] == "live"
    toml = b'[build]\ncommand = "echo compiling; echo broken >&2; exit 7"\npublish = "out"\n'
    failed = api.finished(api.upload(bundle({"pushsite.toml": toml}), "upfail")["id"])
    assert failed["status"] == "failed"
    assert failed["error"] == "build failed (exit 7): broken"
    assert server.get("upfail.localhost", "/").text == "<p>v1</p>"
