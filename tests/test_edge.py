"""The edge over real HTTP: a uvicorn server on 127.0.0.1 serving sites from in-memory doubles.

MemoryStore and MemoryState below are test doubles of the ObjectStore and StateStore
protocols (dicts, plus counters), so these tests pin the edge's behaviour on its own; the
end-to-end tests in test_edge_e2e.py run the same paths through `pushsite serve`.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import brotli
import httpx
import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st

from pushsite.deploy.siteconfig import parse_headers, parse_redirects
from pushsite.edge import respond as edge_module
from pushsite.edge.repeats import HEAD_BYTES_MAX, Repeats
from pushsite.edge.respond import Edge, decode_path, make_edge_or_control_app
from pushsite.edge.uvicorn_shortcut import EdgeHttpToolsProtocol
from pushsite.errors import BackendUnavailable, DeploymentNotFound, NotFound, SiteNotFound
from pushsite.ids import new_id
from pushsite.model import (
    PRODUCTION,
    Alias,
    Deployment,
    Domain,
    DomainStatus,
    FileEntry,
    Manifest,
    Site,
    Status,
    blob_key,
    branch_alias,
    manifest_key,
)

# --------------------------------------------------------------------------- test doubles


class MemoryStore:
    """A test double of the ObjectStore protocol: a dict, counting reads."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.gets: list[str] = []
        self.opens: list[str] = []

    def has(self, keys: Iterable[str]) -> set[str]:
        return {k for k in keys if k in self.objects}

    def put(self, key: str, data: bytes, meta: dict[str, str] | None = None) -> None:
        self.objects[key] = data

    def put_stream(
        self, key: str, source: BinaryIO, size: int, meta: dict[str, str] | None = None
    ) -> None:
        self.objects[key] = source.read()

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        self.gets.append(key)
        if key not in self.objects:
            raise NotFound(f"object {key} is not in the store")
        return self.objects[key][start:end]

    def open(self, key: str) -> BinaryIO:
        self.opens.append(key)
        if key not in self.objects:
            raise NotFound(f"object {key} is not in the store")
        return io.BytesIO(self.objects[key])

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.objects.pop(key, None)

    def keys(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(k for k in self.objects if k.startswith(prefix)))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryState:
    """A test double of the StateStore protocol: the reads the edge makes, in dicts."""

    def __init__(self) -> None:
        self.sites: dict[str, Site] = {}
        self.aliases: dict[tuple[str, str], Alias] = {}
        self.deployments: dict[str, Deployment] = {}
        self.domains: dict[str, str] = {}
        self.unreachable: set[str] = set()  # sites whose alias reads fail, as a backend would

    def get_site(self, name: str) -> Site:
        if name not in self.sites:
            raise SiteNotFound(f"no site named {name!r}")
        return self.sites[name]

    def get_domain(self, host: str) -> Domain | None:
        """Every claim here is approved (the edge serves only those: test_hosts.py)."""
        site = self.domains.get(host)
        return Domain(host, site, DomainStatus.APPROVED) if site else None

    def get_deployment(self, deployment_id: str) -> Deployment:
        if deployment_id not in self.deployments:
            raise DeploymentNotFound(f"no deployment {deployment_id!r}")
        return self.deployments[deployment_id]

    def get_alias(self, site: str, name: str) -> Alias | None:
        if site in self.unreachable:
            raise BackendUnavailable("the state store is unreachable")
        return self.aliases.get((site, name))

    def list_aliases(self, site: str) -> list[Alias]:
        return [a for (s, _), a in self.aliases.items() if s == site]

    def point(self, site: str, name: str, deployment_id: str) -> None:
        self.aliases[(site, name)] = Alias(site, name, deployment_id, deployment_id, time.time())


_TYPES = {
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "png": "image/png",
    "bin": "application/octet-stream",
}


@dataclass
class World:
    state: MemoryState = field(default_factory=MemoryState)
    store: MemoryStore = field(default_factory=MemoryStore)
    port: int = 0
    edge: Edge | None = None
    server: uvicorn.Server | None = None

    @property
    def repeats(self) -> Repeats:
        assert self.edge is not None
        return self.edge.repeats

    def publish(
        self,
        site: str,
        files: dict[str, bytes],
        *,
        alias: str | None = PRODUCTION,
        headers: str = "",
        redirects: str = "",
        compress: bool = True,
        created: float = 1_700_000_000.5,
    ) -> str:
        """Store blobs and a manifest the way the deployer does, then move the alias."""
        dep = new_id()
        manifest = Manifest(dep, site, created)
        for path, data in files.items():
            digest = hashlib.sha256(data).hexdigest()
            kind = _TYPES.get(path.rsplit(".", 1)[-1], "application/octet-stream")
            entry = FileEntry(digest, len(data), kind)
            self.store.put(blob_key(digest), data)
            if compress and kind.startswith("text/"):
                for encoding, packed in (
                    ("gzip", gzip.compress(data)),
                    ("br", brotli.compress(data)),
                ):
                    self.store.put(blob_key(digest, encoding), packed)
                    entry.encodings[encoding] = len(packed)
            manifest.files[path] = entry
        manifest.headers = parse_headers(headers) if headers else []
        manifest.redirects = parse_redirects(redirects) if redirects else []
        manifest.not_found = "404.html" if "404.html" in files else None
        self.store.put(manifest_key(dep), manifest.to_bytes())
        self.state.sites.setdefault(site, Site(site))
        self.state.deployments[dep] = Deployment(dep, site, "main", status=Status.READY)
        if alias:
            self.state.point(site, alias, dep)
            self.state.deployments[dep].status = Status.LIVE
        return dep

    def client(self, host: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Host": host, "Accept-Encoding": "identity"},
            follow_redirects=False,
        )

    def raw(
        self, method: str, target: str, host: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """A request with the target sent exactly as written (httpx would normalise it)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.endheaders()
            response = conn.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            conn.close()


async def _control(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A stand-in control plane that says who answered."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"control plane"})


@contextlib.contextmanager
def _serving(edge: Edge, **options: Any) -> Iterator[tuple[uvicorn.Server, int]]:
    """uvicorn on a free loopback port in a thread, with the protocol `pushsite serve` runs."""
    app = make_edge_or_control_app(edge, _control)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                            http=EdgeHttpToolsProtocol, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.02)
        assert server.started, "uvicorn did not start"
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    world = World()
    world.edge = Edge(world.state, world.store)
    # The protocol `pushsite serve` runs: repeated requests below take
    # its shortcut for cached answers, so every rule here is checked on both paths.
    with _serving(world.edge) as (server, port):
        world.port = port
        world.server = server
        yield world


_counter = iter(range(1_000_000))


def fresh_site() -> str:
    return f"site{next(_counter)}"


PAGES = {
    "index.html": b"<h1>home</h1>" * 50,
    "about.html": b"<h1>about</h1>",
    "docs/index.html": b"<h1>docs</h1>",
    "docs/guide.html": b"<h1>guide</h1>",
    "assets/app.3f9a2b7c.js": b"console.log('app');" * 40,
    "logo.png": b"\x89PNG fake image bytes",
    "caf\u00e9 menu.txt": b"accented name with a space",
    "\u65e5\u672c.txt": b"cjk name",
    "a#b?.txt": b"hash and question mark in the name",
    "404.html": b"<h1>custom not found</h1>",
}


@pytest.fixture(scope="module")
def site(world: World) -> str:
    name = fresh_site()
    world.publish(name, PAGES)
    return name


# --------------------------------------------------------------------------- paths


def test_root_serves_index_with_its_headers(world: World, site: str) -> None:
    with world.client(f"{site}.localhost") as client:
        r = client.get("/")
    assert r.status_code == 200
    assert r.content == PAGES["index.html"]
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-length"] == str(len(PAGES["index.html"]))
    assert r.headers["etag"].startswith('"') and r.headers["etag"].endswith('"')
    assert r.headers["last-modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert r.headers["cache-control"] == "public, max-age=0, must-revalidate"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["vary"] == "Accept-Encoding"
    assert "x-robots-tag" not in r.headers


@pytest.mark.parametrize(
    ("path", "status", "body_or_location"),
    [
        ("/about", 200, PAGES["about.html"]),
        ("/about.html", 200, PAGES["about.html"]),
        ("/about/", 301, "/about"),
        ("/docs", 301, "/docs/"),
        ("/docs?x=1", 301, "/docs/?x=1"),
        ("/docs/", 200, PAGES["docs/index.html"]),
        ("/docs/index.html", 200, PAGES["docs/index.html"]),
        ("/docs/guide", 200, PAGES["docs/guide.html"]),
        ("/caf%C3%A9%20menu.txt", 200, PAGES["caf\u00e9 menu.txt"]),
        ("/%E6%97%A5%E6%9C%AC.txt", 200, PAGES["\u65e5\u672c.txt"]),
        ("/a%23b%3F.txt", 200, PAGES["a#b?.txt"]),
    ],
)
def test_clean_urls_and_decoding(
    world: World, site: str, path: str, status: int, body_or_location: bytes | str
) -> None:
    code, headers, body = world.raw("GET", path, f"{site}.localhost")
    assert code == status
    if status == 301:
        assert headers["location"] == body_or_location
    else:
        assert body == body_or_location


def test_folder_redirect_keeps_non_ascii_names_encoded(world: World) -> None:
    name = fresh_site()
    world.publish(name, {"caf\u00e9/index.html": b"x"})
    code, headers, _ = world.raw("GET", "/caf%C3%A9", f"{name}.localhost")
    assert code == 301
    assert headers["location"] == "/caf%C3%A9/"


@pytest.mark.parametrize(
    "path",
    [
        "/../index.html",
        "/%2e%2e/index.html",
        "/docs/%2E%2E/about.html",
        "/docs/..%2fabout.html",
        "/docs%2fguide.html",
        "/docs%5cguide.html",
        "/docs\\guide.html",
        "/about%00.html",
        "/./about.html",
        "/%ff.txt",
    ],
)
def test_encoded_traversal_is_refused(world: World, site: str, path: str) -> None:
    code, _, body = world.raw("GET", path, f"{site}.localhost")
    assert code == 400
    assert b"<h1>" not in body


def test_decode_path() -> None:
    assert decode_path(b"/a%20b/c") == "/a b/c"
    assert decode_path(b"/") == "/"
    assert decode_path(b"/%2F") is None
    assert decode_path(b"x") is None


def test_custom_404_page(world: World, site: str) -> None:
    with world.client(f"{site}.localhost") as client:
        r = client.get("/missing/page")
    assert r.status_code == 404
    assert r.content == PAGES["404.html"]
    assert r.headers["content-type"] == "text/html; charset=utf-8"


def test_plain_404_and_no_directory_listing(world: World) -> None:
    name = fresh_site()
    world.publish(name, {"assets/a.css": b"a{}", "index.html": b"hi"})
    with world.client(f"{name}.localhost") as client:
        for path in ("/nothing", "/assets/", "/assets", "/index.html/"):
            r = client.get(path)
            assert r.status_code == 404, path
            assert r.text == "404 Not Found\n"


def test_unknown_site_and_site_without_deployment(world: World) -> None:
    world.state.sites["empty"] = Site("empty")
    for host in ("nosuchsite.localhost", "empty.localhost", "x--empty.localhost"):
        with world.client(host) as client:
            r = client.get("/")
        assert r.status_code == 404
        assert "no site is published" in r.text


def test_other_hosts_reach_the_control_plane(world: World, site: str) -> None:
    for host in (f"localhost:{world.port}", "127.0.0.1", "unclaimed.example.com"):
        with world.client(host) as client:
            assert client.get("/").text == "control plane"


def test_custom_domain(world: World, site: str) -> None:
    world.state.domains["www.example.org"] = site
    with world.client("www.example.org") as client:
        r = client.get("/about")
    assert r.content == PAGES["about.html"]
    assert "x-robots-tag" not in r.headers


# --------------------------------------------------------------------------- methods


def test_head_has_the_same_headers_and_no_body(world: World, site: str) -> None:
    with world.client(f"{site}.localhost") as client:
        get = client.get("/about")
        head = client.head("/about")
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-type", "content-length", "etag", "last-modified", "cache-control"):
        assert head.headers[name] == get.headers[name]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_not_allowed(world: World, site: str, method: str) -> None:
    with world.client(f"{site}.localhost") as client:
        r = client.request(method, "/about")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"


# --------------------------------------------------------------------------- validators


def test_if_none_match_gives_304(world: World, site: str) -> None:
    with world.client(f"{site}.localhost") as client:
        etag = client.get("/about").headers["etag"]
        r = client.get("/about", headers={"If-None-Match": etag})
        assert r.status_code == 304
        assert r.content == b""
        assert r.headers["etag"] == etag
        assert r.headers["cache-control"] == "public, max-age=0, must-revalidate"
        assert client.get("/about", headers={"If-None-Match": f"W/{etag}"}).status_code == 304
        assert client.get("/about", headers={"If-None-Match": f'"x", {etag}'}).status_code == 304
        assert client.get("/about", headers={"If-None-Match": "*"}).status_code == 304
        assert client.get("/about", headers={"If-None-Match": '"other"'}).status_code == 200


def test_etag_is_per_variant(world: World, site: str) -> None:
    with world.client(f"{site}.localhost") as client:
        plain = client.get("/about", headers={"Accept-Encoding": "identity"}).headers["etag"]
        br = client.get("/about", headers={"Accept-Encoding": "br"}).headers["etag"]
        assert plain != br
        r = client.get("/about", headers={"Accept-Encoding": "br", "If-None-Match": plain})
        assert r.status_code == 200


def test_if_modified_since(world: World, site: str) -> None:
    with world.client(f"{site}.localhost") as client:
        modified = client.get("/about").headers["last-modified"]
        assert client.get("/about", headers={"If-Modified-Since": modified}).status_code == 304
        old = {"If-Modified-Since": "Mon, 13 Nov 2023 00:00:00 GMT"}
        assert client.get("/about", headers=old).status_code == 200
        # If-None-Match decides when both are present
        both = {"If-Modified-Since": modified, "If-None-Match": '"other"'}
        assert client.get("/about", headers=both).status_code == 200


def test_404_is_never_304(world: World, site: str) -> None:
    with world.client(f"{site}.localhost") as client:
        r = client.get("/missing", headers={"If-None-Match": "*"})
    assert r.status_code == 404
    assert "etag" not in r.headers


# --------------------------------------------------------------------------- codings


def _get_raw(world: World, site: str, path: str, accept: str) -> tuple[int, dict[str, str], bytes]:
    return world.raw("GET", path, f"{site}.localhost", {"Accept-Encoding": accept})


def test_brotli_preferred_and_decodes_to_the_file(world: World, site: str) -> None:
    code, headers, body = _get_raw(world, site, "/", "gzip, deflate, br")
    assert code == 200
    assert headers["content-encoding"] == "br"
    assert headers["vary"] == "Accept-Encoding"
    assert headers["etag"].endswith('-br"')
    assert int(headers["content-length"]) == len(body)
    assert brotli.decompress(body) == PAGES["index.html"]


def test_gzip_when_brotli_refused(world: World, site: str) -> None:
    code, headers, body = _get_raw(world, site, "/", "br;q=0, gzip")
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == PAGES["index.html"]


def test_identity_when_nothing_else_fits(world: World, site: str) -> None:
    code, headers, body = _get_raw(world, site, "/", "deflate")
    assert "content-encoding" not in headers
    assert headers["vary"] == "Accept-Encoding"
    assert body == PAGES["index.html"]


def test_identity_refused_gives_406(world: World, site: str) -> None:
    code, headers, _ = _get_raw(world, site, "/", "identity;q=0, deflate")
    assert code == 406
    code, _, _ = _get_raw(world, site, "/logo.png", "*;q=0")
    assert code == 406


def test_files_without_variants_have_no_vary(world: World, site: str) -> None:
    code, headers, body = _get_raw(world, site, "/logo.png", "gzip, br")
    assert code == 200
    assert "vary" not in headers
    assert "content-encoding" not in headers
    assert headers["content-type"] == "image/png"
    assert body == PAGES["logo.png"]


# --------------------------------------------------------------------------- ranges


def test_single_range_on_the_identity_variant(world: World, site: str) -> None:
    size = len(PAGES["index.html"])
    headers = {"Range": "bytes=10-19", "Accept-Encoding": "br"}
    code, got, body = world.raw("GET", "/", f"{site}.localhost", headers)
    assert code == 206
    assert got["content-range"] == f"bytes 10-19/{size}"
    assert got["content-length"] == "10"
    assert "content-encoding" not in got
    assert body == PAGES["index.html"][10:20]
    code, got, body = world.raw("GET", "/", f"{site}.localhost", {"Range": "bytes=-5"})
    assert (code, body) == (206, PAGES["index.html"][-5:])
    code, got, body = world.raw("GET", "/", f"{site}.localhost", {"Range": "bytes=600-"})
    assert (code, body) == (206, PAGES["index.html"][600:])


def test_unsatisfiable_range_gives_416(world: World, site: str) -> None:
    size = len(PAGES["index.html"])
    code, got, body = world.raw("GET", "/", f"{site}.localhost", {"Range": f"bytes={size}-"})
    assert code == 416
    assert got["content-range"] == f"bytes */{size}"
    assert body == b""


def test_several_ranges_or_a_stale_if_range_give_the_whole_file(world: World, site: str) -> None:
    host = f"{site}.localhost"
    code, _, body = world.raw("GET", "/", host, {"Range": "bytes=0-1,4-5"})
    assert (code, body) == (200, PAGES["index.html"])
    code, _, body = world.raw("GET", "/", host, {"Range": "bytes=0-1", "If-Range": '"stale"'})
    assert (code, body) == (200, PAGES["index.html"])
    etag = world.raw("GET", "/", host)[1]["etag"]
    code, _, body = world.raw("GET", "/", host, {"Range": "bytes=0-1", "If-Range": etag})
    assert (code, body) == (206, PAGES["index.html"][:2])


def test_range_on_a_404_page_is_ignored(world: World, site: str) -> None:
    code, _, body = world.raw("GET", "/missing", f"{site}.localhost", {"Range": "bytes=0-1"})
    assert (code, body) == (404, PAGES["404.html"])


# --------------------------------------------------------------------------- caching


def test_fingerprinted_assets_are_immutable(world: World, site: str) -> None:
    with world.client(f"{site}.localhost") as client:
        r = client.get("/assets/app.3f9a2b7c.js")
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"


def test_hot_content_comes_from_memory(world: World) -> None:
    name = fresh_site()
    world.publish(name, {"index.html": b"cached"})
    with world.client(f"{name}.localhost") as client:
        assert client.get("/").content == b"cached"
        before = len(world.store.gets)
        for _ in range(5):
            assert client.get("/").content == b"cached"
            assert client.get("/", headers={"Accept-Encoding": "gzip"}).status_code == 200
    assert len(world.store.gets) == before + 1  # only the gzip variant's first read


def test_large_blobs_are_streamed_not_cached(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge_module, "STREAM_THRESHOLD", 1000)
    monkeypatch.setattr(edge_module, "CHUNK", 300)
    name = fresh_site()
    data = bytes(range(256)) * 10
    world.publish(name, {"big.bin": data})
    host = f"{name}.localhost"
    gets, opens = len(world.store.gets), len(world.store.opens)
    code, headers, body = world.raw("GET", "/big.bin", host)
    assert (code, body) == (200, data)
    assert headers["content-length"] == str(len(data))
    code, _, body = world.raw("GET", "/big.bin", host, {"Range": "bytes=250-1250"})
    assert (code, body) == (206, data[250:1251])
    code, _, body = world.raw("GET", "/big.bin", host)
    assert body == data
    code, headers, body = world.raw("HEAD", "/big.bin", host)
    assert (code, headers["content-length"], body) == (200, str(len(data)), b"")
    blob_gets = [k for k in world.store.gets[gets:] if k.startswith("blobs/")]
    assert len(blob_gets) == 4  # the range: 1001 bytes in chunks of 300
    assert len(world.store.opens) - opens == 2  # each whole read streams anew: never cached


def test_backend_failures_are_503_and_missing_blobs_500(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = fresh_site()
    world.publish(name, {"index.html": b"x", "big.bin": b"y" * 2000, "ok.html": b"fine"})
    host = f"{name}.localhost"
    assert world.raw("GET", "/ok", host)[0] == 200
    monkeypatch.setattr(edge_module, "STREAM_THRESHOLD", 1000)
    for digest in (hashlib.sha256(b"x").hexdigest(), hashlib.sha256(b"y" * 2000).hexdigest()):
        for key in list(world.store.objects):
            if digest in key:
                del world.store.objects[key]
    assert world.raw("GET", "/", host)[:3:2] == (500, b"500 Internal Server Error\n")
    assert world.raw("GET", "/big.bin", host)[0] == 500
    assert world.raw("GET", "/ok", host)[2] == b"fine"
    world.state.unreachable.add(name)
    code, _, body = world.raw("GET", "/ok", host)
    assert code == 503
    assert b"retry" in body


# --------------------------------------------------------------------------- aliases


def test_alias_move_shows_on_the_next_request(world: World) -> None:
    name = fresh_site()
    first = world.publish(name, {"index.html": b"one"})
    with world.client(f"{name}.localhost") as client:
        assert client.get("/").content == b"one"
        world.publish(name, {"index.html": b"two"})
        assert client.get("/").content == b"two"
        world.state.point(name, PRODUCTION, first)  # a rollback
        assert client.get("/").content == b"one"


def test_preview_and_permalink_are_noindex(world: World) -> None:
    name = fresh_site()
    live = world.publish(name, {"index.html": b"live"})
    world.publish(name, {"index.html": b"preview"}, alias=branch_alias("Feature/New"))
    with world.client(f"feature-new--{name}.localhost") as client:
        r = client.get("/")
        assert (r.content, r.headers["x-robots-tag"]) == (b"preview", "noindex")
    with world.client(f"{live}--{name}.localhost") as client:
        r = client.get("/")
        assert (r.content, r.headers["x-robots-tag"]) == (b"live", "noindex")
        assert client.get("/nope").headers["x-robots-tag"] == "noindex"
    world.state.deployments[live].status = Status.FAILED
    with world.client(f"{live}--{name}.localhost") as client:
        assert client.get("/").status_code == 404


# --------------------------------------------------------------------------- site rules

HEADERS = """\
/*
  X-Frame-Options: DENY
  ! X-Content-Type-Options
/assets/*
  Cache-Control: public, max-age=60
  Vary: Cookie
"""

REDIRECTS = """\
/old /about 301
/gone /missing 404
/blog/* /posts/:splat 302
/about /docs/ 301
/forced /about 301!
/spa/* /index.html 200
/elsewhere https://example.com/x?y=1 301
"""


@pytest.fixture(scope="module")
def ruled(world: World) -> str:
    name = fresh_site()
    world.publish(name, PAGES, headers=HEADERS, redirects=REDIRECTS)
    return name


@pytest.mark.parametrize(
    ("path", "status", "location"),
    [
        ("/old", 301, "/about"),
        ("/old?q=1", 301, "/about?q=1"),
        ("/blog/2024/hello", 302, "/posts/2024/hello"),
        ("/about", 200, None),  # a file answers: the unforced rule is shadowed
        ("/forced", 301, "/about"),
        ("/elsewhere", 301, "https://example.com/x?y=1"),
    ],
)
def test_redirect_rules(
    world: World, ruled: str, path: str, status: int, location: str | None
) -> None:
    code, headers, _ = world.raw("GET", path, f"{ruled}.localhost")
    assert code == status
    assert headers.get("location") == location
    assert headers["x-frame-options"] == "DENY"


def test_rewrite_rules_serve_the_target(world: World, ruled: str) -> None:
    code, headers, body = world.raw("GET", "/spa/deep/route", f"{ruled}.localhost")
    assert (code, body) == (200, PAGES["index.html"])
    code, headers, body = world.raw("GET", "/gone", f"{ruled}.localhost")
    assert (code, body) == (404, PAGES["404.html"])


def test_header_rules_apply_override_and_detach(world: World, ruled: str) -> None:
    host = f"{ruled}.localhost"
    code, headers, body = world.raw("GET", "/assets/app.3f9a2b7c.js", host)
    assert code == 200
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "public, max-age=60"  # overrides immutable
    assert "x-content-type-options" not in headers  # detached
    assert headers["content-length"] == str(len(body)) == str(len(PAGES["assets/app.3f9a2b7c.js"]))
    code, headers, _ = world.raw("GET", "/missing", host)
    assert (code, headers["x-frame-options"]) == (404, "DENY")


def test_header_rules_apply_to_every_kind_of_answer(world: World, ruled: str) -> None:
    host = f"{ruled}.localhost"
    etag = world.raw("GET", "/about", host)[1]["etag"]
    for method, path, headers, status in [
        ("GET", "/about", {"If-None-Match": etag}, 304),
        ("GET", "/about", {"Range": "bytes=9999-"}, 416),
        ("GET", "/about", {"Range": "bytes=0-1"}, 206),
        ("GET", "/about", {"Accept-Encoding": "identity;q=0"}, 406),
        ("POST", "/about", {}, 405),
        ("HEAD", "/docs", {}, 301),
    ]:
        code, got, _ = world.raw(method, path, host, headers)
        assert (code, got.get("x-frame-options")) == (status, "DENY"), (method, path, headers)


def test_header_rules_only_add_to_vary(world: World, ruled: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", world.port, timeout=10)
    try:
        conn.request("GET", "/assets/app.3f9a2b7c.js", headers={"Host": f"{ruled}.localhost"})
        vary = conn.getresponse().msg.get_all("vary")
    finally:
        conn.close()
    assert vary is not None
    assert sorted(vary) == ["Accept-Encoding", "Cookie"]


# --------------------------------------------------------------------------- ASGI shape


def test_websockets_to_a_site_are_refused_and_lifespan_goes_to_the_control(
    world: World, site: str
) -> None:
    import asyncio

    seen: list[str] = []

    async def control(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    app = make_edge_or_control_app(Edge(world.state, world.store), control)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    socket_scope = {"type": "websocket", "headers": [(b"host", f"{site}.localhost".encode())]}
    asyncio.run(app(socket_scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1003}]
    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert seen == ["lifespan"]


@given(st.binary(max_size=40))
def test_decoded_paths_never_hold_traversal(raw: bytes) -> None:
    path = decode_path(b"/" + raw)
    if path is not None:
        segments = path.split("/")
        assert "." not in segments and ".." not in segments
        assert "\\" not in path and "\x00" not in path


# --------------------------------------------------------------------------- cached answers


class _CountingRespond:
    """Wraps Edge.respond on one Edge to count the requests that did not take a shortcut."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.inner = edge.respond
        self.calls = 0

    def __enter__(self) -> _CountingRespond:
        async def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await self.inner(*args, **kwargs)

        self.edge.respond = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.edge.respond


def test_a_repeated_plain_get_is_answered_from_the_cache(world: World) -> None:
    name = fresh_site()
    world.publish(name, PAGES)
    assert world.edge is not None
    host = f"{name}.localhost"
    first = world.raw("GET", "/about", host, {"Accept-Encoding": "gzip"})
    with _CountingRespond(world.edge) as counter:
        again = world.raw("GET", "/about", host, {"Accept-Encoding": "gzip"})
        assert counter.calls == 0
        etag = first[1]["etag"]
        conditional = {"Accept-Encoding": "gzip", "If-None-Match": etag}
        assert world.raw("GET", "/about", host, conditional)[0] == 304
        assert world.raw("GET", "/about", host, {"Range": "bytes=0-3"})[0] == 206
        assert counter.calls == 2  # conditional and range requests never take the shortcut
    assert again[0] == first[0] == 200
    assert again[2] == first[2]
    assert {k: v for k, v in again[1].items() if k != "date"} == {
        k: v for k, v in first[1].items() if k != "date"
    }


def test_cached_answers_follow_deploys_and_rollbacks(world: World) -> None:
    name = fresh_site()
    one = world.publish(name, {"index.html": b"one"})
    host = f"{name}.localhost"
    for _ in range(3):
        assert world.raw("GET", "/", host)[2] == b"one"
    world.publish(name, {"index.html": b"two"})
    assert world.raw("GET", "/", host)[2] == b"two"
    assert world.raw("GET", "/", host)[2] == b"two"
    world.state.point(name, PRODUCTION, one)  # a rollback
    assert world.raw("GET", "/", host)[2] == b"one"
    world.state.aliases.pop((name, PRODUCTION))  # nothing live any more
    assert world.raw("GET", "/", host)[0] == 404


def test_head_after_get_has_the_headers_and_no_body(world: World) -> None:
    name = fresh_site()
    world.publish(name, PAGES)
    host = f"{name}.localhost"
    code, headers, body = world.raw("GET", "/", host)
    assert code == 200 and body == PAGES["index.html"]
    for _ in range(2):  # the second HEAD is a cached answer
        head_code, head_headers, head_body = world.raw("HEAD", "/", host)
        assert (head_code, head_body) == (200, b"")
        assert head_headers["content-length"] == str(len(PAGES["index.html"]))
        assert head_headers["etag"] == headers["etag"]
    assert world.raw("GET", "/", host)[2] == PAGES["index.html"]  # GET is not HEAD's answer


def test_cached_answers_depend_on_accept_encoding(world: World) -> None:
    name = fresh_site()
    world.publish(name, PAGES)
    host = f"{name}.localhost"
    for _ in range(2):
        code, headers, body = world.raw("GET", "/", host, {"Accept-Encoding": "gzip"})
        assert headers["content-encoding"] == "gzip"
        assert gzip.decompress(body) == PAGES["index.html"]
        code, headers, body = world.raw("GET", "/", host, {"Accept-Encoding": "br"})
        assert headers["content-encoding"] == "br"
        code, headers, body = world.raw("GET", "/", host)
        assert "content-encoding" not in headers and body == PAGES["index.html"]


def test_connection_close_is_honoured_on_a_cached_answer(world: World) -> None:
    name = fresh_site()
    world.publish(name, {"index.html": b"page"})
    host = f"{name}.localhost"
    assert world.raw("GET", "/", host, {"Connection": "keep-alive"})[2] == b"page"
    for _ in range(2):
        conn = http.client.HTTPConnection("127.0.0.1", world.port, timeout=10)
        try:
            conn.request("GET", "/", headers={"Host": host, "Connection": "close"})
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"page")
            assert response.getheader("connection") == "close"
            assert response.will_close
        finally:
            conn.close()


def test_pipelined_requests_are_answered_in_order(world: World) -> None:
    name = fresh_site()
    world.publish(name, {"index.html": b"home", "a.txt": b"first", "b.txt": b"second"})
    host = f"{name}.localhost"
    world.raw("GET", "/a.txt", host)  # cached: the shortcut answers it below
    request = "GET {} HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
    wire = "".join(request.format(p) for p in ("/a.txt", "/b.txt", "/a.txt", "/")).encode()
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as sock:
        sock.sendall(wire)
        received = b""
        while received.count(b"HTTP/1.1 200") < 4 or not received.endswith(b"home"):
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    bodies = [part.split(b"\r\n\r\n", 1)[1][:6] for part in received.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"first", b"second", b"first", b"home"]


# --------------------------------------------------------------------------- repeated requests


def _exchange(sock: socket.socket, wire: bytes, method: str = "GET") -> tuple[int, dict[str, str],
                                                                             bytes]:
    """Send one request's bytes in one write on a kept-alive connection; read its answer."""
    sock.sendall(wire)
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def _request(path: str, host: str, *lines: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", f"Host: {host}", *lines, "", ""]).encode()


def test_a_repeated_request_is_answered_without_parsing_it_again(world: World) -> None:
    name = fresh_site()
    world.publish(name, PAGES)
    wire = _request("/assets/app.3f9a2b7c.js", f"{name}.localhost", "Accept-Encoding: gzip")
    before = world.repeats.answered
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as sock:
        answers = [_exchange(sock, wire) for _ in range(4)]
    # the first is answered by the edge and cached, the second by the parser's shortcut, which
    # remembers its bytes; the others are looked up by their bytes alone
    assert world.repeats.answered - before == 2
    assert world.repeats.asked[wire][2] is not None  # a site host: its name says which site
    status, headers, body = answers[0]
    assert (status, headers["content-encoding"]) == (200, "gzip")
    assert gzip.decompress(body) == PAGES["assets/app.3f9a2b7c.js"]
    for again in answers[1:]:
        assert again[0] == status and again[2] == body
        assert {k: v for k, v in again[1].items() if k != "date"} == {
            k: v for k, v in headers.items() if k != "date"}


def test_repeated_requests_follow_deploys_and_rollbacks(world: World) -> None:
    name = fresh_site()
    one = world.publish(name, {"index.html": b"one"})
    wire = _request("/", f"{name}.localhost")
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as sock:
        for _ in range(3):
            assert _exchange(sock, wire)[2] == b"one"
        assert wire in world.repeats.asked
        world.publish(name, {"index.html": b"two"})
        for _ in range(3):
            assert _exchange(sock, wire)[2] == b"two"
        world.state.point(name, PRODUCTION, one)  # a rollback
        assert _exchange(sock, wire)[2] == b"one"
        world.state.unreachable.add(name)  # the state store fails: the ordinary path's 503
        assert _exchange(sock, wire)[0] == 503
        world.state.unreachable.discard(name)
        assert _exchange(sock, wire)[2] == b"one"
        world.state.aliases.pop((name, PRODUCTION))  # nothing live any more
        assert _exchange(sock, wire)[0] == 404


def test_only_a_read_of_exactly_one_plain_request_is_remembered(world: World) -> None:
    name = fresh_site()
    world.publish(name, {"index.html": b"home", "a.txt": b"first", "b.txt": b"second"})
    host = f"{name}.localhost"
    pipelined = _request("/a.txt", host) + _request("/b.txt", host)
    conditional = _request("/a.txt", host, 'If-None-Match: "nothing"')
    long_head = _request("/b.txt", host, "X-Pad: " + "p" * HEAD_BYTES_MAX)
    head = _request("/a.txt", host).replace(b"GET", b"HEAD", 1)
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(pipelined)
            received = b""
            while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(b"second"):
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
            assert received.index(b"first") < received.index(b"second")
            assert _exchange(sock, conditional)[0] == 200
            assert _exchange(sock, long_head)[2] == b"second"
            assert _exchange(sock, head, "HEAD")[1]["content-length"] == "5"
    assert pipelined not in world.repeats.asked  # two requests in one read: parsed every time
    assert conditional not in world.repeats.asked and long_head not in world.repeats.asked
    assert head in world.repeats.asked


def test_a_connection_answered_by_repeats_still_closes_once_idle(world: World) -> None:
    name = fresh_site()
    world.publish(name, {"index.html": b"page"})
    wire = _request("/", f"{name}.localhost")
    assert world.edge is not None
    with _serving(world.edge, timeout_keep_alive=1) as (_, port), \
            socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        before = world.repeats.answered
        for _ in range(4):
            assert _exchange(sock, wire)[2] == b"page"
        assert world.repeats.answered - before == 2
        assert sock.recv(1) == b""  # closed by the server after a second of silence


def test_a_repeat_moves_the_keep_alive_deadline_on(world: World) -> None:
    """uvicorn arms its timer after an ordinary answer; a repeated request leaves it armed, so
    when it fires with a repeat answered since, it waits again instead of closing."""
    name = fresh_site()
    world.publish(name, {"index.html": b"page"})
    wire = _request("/", f"{name}.localhost")
    assert world.server is not None
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as sock:
        assert _exchange(sock, wire)[2] == b"page"
        (protocol,) = [p for p in world.server.server_state.connections
                       if p.client == sock.getsockname()[:2]]
        assert isinstance(protocol, EdgeHttpToolsProtocol)
        protocol.timeout_keep_alive = 3600  # this test's pace cannot reach the deadline
        for _ in range(3):
            assert _exchange(sock, wire)[2] == b"page"
        fired = threading.Event()
        protocol.loop.call_soon_threadsafe(
            lambda: (protocol.timeout_keep_alive_handler(), fired.set()))
        assert fired.wait(10)
        assert protocol.timeout_keep_alive_task is not None  # armed again, not closed
        assert _exchange(sock, wire)[2] == b"page"


def test_a_repeated_request_to_a_custom_domain_follows_its_release(world: World) -> None:
    """A site host's name says which site it is, forever; a custom domain's claim is looked
    up for every repeat, so a released domain falls back to the control plane at once."""
    name = fresh_site()
    world.publish(name, {"index.html": b"claimed"})
    domain = f"www.{name}.example"
    world.state.domains[domain] = name
    wire = _request("/", domain)
    with socket.create_connection(("127.0.0.1", world.port), timeout=10) as sock:
        for _ in range(3):
            assert _exchange(sock, wire)[2] == b"claimed"
        assert world.repeats.asked[wire][2] is None  # not fixed by its name
        del world.state.domains[domain]
        assert _exchange(sock, wire)[2] == b"control plane"
