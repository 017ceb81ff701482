"""The edge: the HTTP logic that serves every site's files (`Edge.respond`), an ASGI app.

`pushsite serve` runs it under uvicorn with a parser-level shortcut
(pushsite.edge.uvicorn_shortcut) that reuses whole cached answers (`Edge.cached`) for plain
GET/HEAD requests while the host serves the same deployment.

Host -> deployment (hosts.py, the alias read on every request) -> manifest (cached by
deployment id) -> file -> blob variant (cached by hash; large ones streamed from the store).

URL paths map to manifest paths in one canonical form for each kind of file:

    /                      index.html
    /css/app.css           css/app.css exactly as stored (percent-decoded UTF-8)
    /about                 about.html if present (clean URL; /about.html also works)
    /docs  -> 301 /docs/   when only docs/index.html exists: a folder's URL ends in "/"
    /docs/                 docs/index.html
    /about/ -> 301 /about  when only about.html exists
    anything else          404.html with status 404 if the site has one, else a plain 404

A path whose decoding is not UTF-8, or holds NUL, a backslash, an encoded "/" or a "." or
".." segment, is answered 400: nothing can reach outside the manifest anyway, as the manifest
is a table and not a file system. `_redirects` rules come first (non-forced ones only when no
file answers the path); `_headers` rules apply to every response whose path could be decoded.

HTTP (RFC 9110/9111): GET and HEAD only; per-variant strong ETags; If-None-Match (weak
comparison) before If-Modified-Since; one byte range, always on the identity variant; several
ranges get the full content with 200; br > gzip > identity by q-value, 406 when the client
refuses identity and nothing else fits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, BinaryIO, cast
from urllib.parse import quote, unquote_to_bytes

import anyio.to_thread

from pushsite import pathindex
from pushsite.caches import BoundedCache
from pushsite.edge import http_semantics as hs
from pushsite.edge.blobcache import ByteLRU
from pushsite.edge.hosts import STALE_SECONDS, HostResolver, SiteTarget, split_host
from pushsite.edge.repeats import Repeats
from pushsite.errors import BackendUnavailable, NotFound, PushsiteError
from pushsite.model import FAST_GZIP, FileEntry, Manifest, manifest_key, pending_key
from pushsite.pathindex import index_key
from pushsite.rules import CompiledRules
from pushsite.state import StateStore
from pushsite.state.counters import Tally
from pushsite.stores import ObjectStore

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

STREAM_THRESHOLD = 4 << 20  # blobs above this are streamed from the store, never cached
CHUNK = 256 << 10
_PLANS_PER_DEPLOYMENT = 4096
PENDING_RECHECK = 0.5  # s between two looks whether a live deployment's brotli is done

# Headers `_headers` may not set or detach: they describe the bytes we send, and a wrong one
# breaks clients and caches (Vary may only be added to).
_PROTECTED = frozenset(
    {
        "content-length",
        "content-encoding",
        "content-range",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "etag",
        "last-modified",
        "accept-ranges",
    }
)
_SAFE_URL = "/:@!$&'()*+,;=-._~?#%[]"
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NOINDEX = [(b"x-robots-tag", b"noindex")]
_VARY = (b"vary", b"Accept-Encoding")
_TEXT = b"text/plain; charset=utf-8"
_TARGET = "pushsite.site"  # scope key: the SiteTarget the dispatcher already resolved


class _Plan:
    """What a path means in one deployment: a file with a status, a redirect, or a message."""

    __slots__ = (
        "status",
        "path",
        "entry",
        "codings",
        "body",
        "headers",
        "add",
        "detach",
        "_merged",
    )

    def __init__(
        self,
        status: int,
        path: str = "",
        entry: FileEntry | None = None,
        body: bytes = b"",
        headers: Headers | None = None,
        add: Headers | None = None,
        detach: frozenset[str] = frozenset(),
    ) -> None:
        self.status = status
        self.path = path  # manifest path of the file to serve; "" for redirects and messages
        self.entry = entry
        self.codings = tuple(sorted(entry.encodings)) if entry else ()  # stored variants
        self.body = body
        self.headers = headers or []  # final headers of a redirect or message
        self.add = add or []  # `_headers` additions for this request path
        self.detach = detach
        self._merged: dict[tuple[str, bool], Headers] = {}


class _Deployed:
    """One deployment as the edge serves it: manifest, compiled rules, routed paths.

    `indexed`: its files are a PathIndex (a big site): looking a path up may read the store,
    so the edge routes a new path on a thread (Edge._plan), never on the event loop."""

    def __init__(self, manifest: Manifest, indexed: bool = False) -> None:
        self.manifest = manifest
        self.indexed = indexed
        self.files = manifest.files
        self.rules = (
            CompiledRules(manifest.headers, manifest.redirects)
            if manifest.headers or manifest.redirects
            else None
        )
        self.last_modified = hs.http_date(manifest.created).encode()
        self.created = manifest.created
        self.plans: BoundedCache[tuple[str, bytes, str], _Plan] = BoundedCache(
            _PLANS_PER_DEPLOYMENT)
        self._variants: dict[tuple[str, str, bool], Headers] = {}
        self.weight = 0  # what the edge's manifest cache counts it as

    def plan(self, host: str, raw_path: bytes, query: str) -> _Plan:
        """The routed meaning of a request (memoised: rules may look at host and query)."""
        key = (host, raw_path, query)
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans.put(key, self._route(host, raw_path, query))
        return plan

    def headers(self, plan: _Plan, encoding: str, full: bool) -> Headers:
        """The response headers of a file plan's variant, with `_headers` applied (memoised)."""
        merged = plan._merged.get((encoding, full))
        if merged is None:
            merged = plan._merged[(encoding, full)] = _apply_rules(
                self._variant(plan, encoding, full), plan.add, plan.detach
            )
        return merged

    def _variant(self, plan: _Plan, encoding: str, full: bool) -> Headers:
        path = plan.path
        key = (path, encoding, full)
        headers = self._variants.get(key)
        if headers is None:
            entry = plan.entry
            assert entry is not None
            size = entry.encodings[encoding] if encoding else entry.size
            headers = [
                (b"content-type", entry.type.encode()),
                (b"content-length", str(size).encode()),
            ]
            if encoding:
                headers.append((b"content-encoding", encoding.encode()))
            if entry.encodings:
                headers.append(_VARY)
            if full:
                headers.append((b"etag", _etag(entry, encoding).encode()))
                headers.append((b"last-modified", self.last_modified))
                headers.append((b"accept-ranges", b"bytes"))
            headers.append((b"cache-control", hs.default_cache_control(path, entry.type).encode()))
            headers.append(_NOSNIFF)
            self._variants[key] = headers
        return headers

    # routing -------------------------------------------------------------------------------
    def _route(self, host: str, raw_path: bytes, query: str) -> _Plan:
        path = decode_path(raw_path)
        if path is None:
            return _message(400, "400 Bad Request: the URL path is not valid.\n")
        add: Headers = []
        detach: frozenset[str] = frozenset()
        host = split_host(host)
        if self.rules is not None:
            extra, drop = self.rules.headers_for(path, host)
            add = [
                (n.lower().encode(), v.encode()) for n, v in extra if n.lower() not in _PROTECTED
            ]
            detach = frozenset(drop) - _PROTECTED
        found, canonical = self._resolve(path[1:])
        if self.rules is not None:
            exists = found is not None or canonical is not None
            rule = self.rules.redirect_for(path, query, exists, host)
            if rule is not None:
                return self._apply_redirect(rule.status, rule.target, add, detach)
        if found is not None:
            return _Plan(200, found, self.files[found], add=add, detach=detach)
        if canonical is not None:
            target = quote(canonical, safe=_SAFE_URL) + ("?" + query if query else "")
            return _redirect(301, target, add, detach)
        return self._not_found(add, detach)

    def _resolve(self, key: str) -> tuple[str | None, str | None]:
        """(manifest path that answers, or the canonical URL path to redirect to)."""
        files = self.files
        if key == "" or key.endswith("/"):
            index = key + "index.html"
            if index in files:
                return index, None
            if key and key[:-1] + ".html" in files:
                return None, "/" + key[:-1]
            return None, None
        if key in files:
            return key, None
        if key + ".html" in files:
            return key + ".html", None
        if key + "/index.html" in files:
            return None, "/" + key + "/"
        return None, None

    def _apply_redirect(
        self, status: int, target: str, add: Headers, detach: frozenset[str]
    ) -> _Plan:
        if 300 <= status < 400:
            return _redirect(status, quote(target, safe=_SAFE_URL), add, detach)
        if not target.startswith("/"):
            # Proxying to another origin is not something a static edge does.
            return _message(502, "502 Bad Gateway: this site proxies to another server.\n")
        path = decode_path(target.partition("#")[0].partition("?")[0].encode())
        found = self._file_for(path[1:]) if path is not None else None
        if found is None:
            return self._not_found(add, detach)
        return _Plan(status, found, self.files[found], add=add, detach=detach)

    def _file_for(self, key: str) -> str | None:
        """The file a rewrite target names, with clean URLs and folder indexes, no redirects."""
        candidates = (
            (key + "index.html", key[:-1] + ".html")
            if key == "" or key.endswith("/")
            else (key, key + ".html", key + "/index.html")
        )
        for candidate in candidates:
            if candidate in self.files:
                return candidate
        return None

    def _not_found(self, add: Headers, detach: frozenset[str]) -> _Plan:
        page = self.manifest.not_found
        if page and page in self.files:
            return _Plan(404, page, self.files[page], add=add, detach=detach)
        plan = _message(404, "404 Not Found\n")
        plan.headers = _apply_rules(plan.headers, add, detach)
        return plan


def _etag(entry: FileEntry, encoding: str) -> str:
    """The variant's strong ETag. A JS or CSS file served its quick gzip until the optimiser
    made the final one (model.fast_gzip_key) has other bytes under the same coding, so its
    tag says which: a cache revalidating the quick one gets the final one, not a 304."""
    quick = (encoding == "gzip" and entry.refs is not None
             and entry.refs.get("gzip", "").endswith(FAST_GZIP))
    return hs.make_etag(entry.hash, "gzip-quick" if quick else encoding)


def decode_path(raw: bytes) -> str | None:
    """The decoded URL path ("/a b/c") or None when it is not a safe path (answer 400)."""
    if not raw.startswith(b"/"):
        return None
    segments = raw.split(b"/")
    decoded = []
    for segment in segments:
        try:
            text = unquote_to_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            return None
        if "/" in text or "\\" in text or "\x00" in text or text in (".", ".."):
            return None
        decoded.append(text)
    return "/".join(decoded)


def _apply_rules(base: Headers, add: Headers, detach: frozenset[str]) -> Headers:
    """Base headers with `_headers` applied: detached and replaced names removed, then added."""
    if not add and not detach:
        return base
    replaced = {name for name, _ in add if name != b"vary"} | {n.encode() for n in detach}
    return [h for h in base if h[0] not in replaced] + add


def _message(status: int, text: str, extra: Headers | None = None) -> _Plan:
    body = text.encode()
    headers = [
        (b"content-type", _TEXT),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", hs.REVALIDATE.encode()),
        _NOSNIFF,
        *(extra or []),
    ]
    return _Plan(status, body=body, headers=headers)


def _redirect(status: int, location: str, add: Headers, detach: frozenset[str]) -> _Plan:
    headers = [
        (b"location", location.encode("latin-1", "replace")),
        (b"content-length", b"0"),
        (b"cache-control", hs.REVALIDATE.encode()),
    ]
    return _Plan(status, headers=_apply_rules(headers, add, detach))


_NO_SITE = _message(404, "404 Not Found: no site is published at this address.\n")
_NOT_ALLOWED = _message(405, "405 Method Not Allowed\n", [(b"allow", b"GET, HEAD")])
_UNAVAILABLE = _message(503, "503 Service Unavailable: storage is not reachable, retry soon.\n")
_FAILED = _message(500, "500 Internal Server Error\n")


@dataclass(frozen=True, slots=True)
class Conditions:
    """A request's conditional and range headers; without any, its answer may be cached."""

    none_match: str | None = None
    since: str | None = None
    range_: str | None = None
    if_range: str | None = None

    @property
    def plain(self) -> bool:
        return self.none_match is None and self.since is None and self.range_ is None


NO_CONDITIONS = Conditions()


class Answer:
    """A finished response: status, headers, body, and for a streamed blob the rest of it.

    An answer without a stream is immutable once built, so the edge may hand the same one to
    many requests (see Edge.cached).
    """

    __slots__ = ("status", "headers", "body", "rest", "_wire")

    def __init__(
        self,
        status: int,
        headers: Headers,
        body: bytes = b"",
        rest: AsyncGenerator[bytes, None] | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body  # for a stream: its first chunk, read before the status goes out
        self.rest = rest  # the stream's remaining chunks, or None
        self._wire: bytes | None = None

    @property
    def wire_headers(self) -> bytes:
        """The header lines as HTTP/1.1 sends them, through the blank line that ends them."""
        wire = self._wire
        if wire is None:
            wire = self._wire = b"".join(
                [name + b": " + value + b"\r\n" for name, value in self.headers] + [b"\r\n"]
            )
        return wire


def _answer(plan: _Plan, head: bool, extra: Headers | None = None) -> Answer:
    headers = plan.headers + extra if extra else plan.headers
    return Answer(plan.status, headers, b"" if head else plan.body)


# The answers cache: (host, raw path, query, Accept-Encoding, HEAD?) -> (deployment, answer).
_ANSWERS_MAX = 4096
_ANSWERS_BYTES = 64 << 20
_CODINGS_MAX = 1024  # clients repeat the same few Accept-Encoding values
_MISSING = object()
AnswerKey = tuple[str, bytes, str, "str | None", bool]


class Edge:
    """Serves the sites, with bounded in-memory caches: `respond` is the whole HTTP logic,
    the ASGI `__call__` (and the uvicorn shortcut) only carry requests and answers."""

    def __init__(
        self,
        state: StateStore,
        store: ObjectStore,
        base_domain: str = "localhost",
        cache_bytes: int = 256 * 2**20,
        stale_seconds: float = STALE_SECONDS,
    ) -> None:
        self.state = state
        self.store = store
        self.hosts = HostResolver(state, base_domain, stale_seconds)
        self.blobs: ByteLRU[bytes] = ByteLRU(
            cache_bytes - cache_bytes // 8, max_item=min(STREAM_THRESHOLD, cache_bytes // 8)
        )
        self.manifests: ByteLRU[_Deployed] = ByteLRU(cache_bytes // 8, max_item=cache_bytes // 8)
        self._codings: BoundedCache[tuple[str, tuple[str, ...]], str | None] = BoundedCache(
            _CODINGS_MAX)
        self._answers: BoundedCache[AnswerKey, tuple[str | None, Answer]] = BoundedCache(
            _ANSWERS_MAX, max_weight=_ANSWERS_BYTES)
        # requests by status class and answer-cache hit, for /metrics (None: not counted)
        self.tally: Tally | None = None
        # requests answered before, by their bytes: the HTTP shortcut does not parse a repeat
        self.repeats = Repeats()
        # deployments served while their later variants are made (live first, see
        # deploy/optimise.py) -> when to look again whether they are done
        self._pending: dict[str, float] = {}

    def _due(self, deployment_id: str | None) -> bool:
        due = self._pending.get(deployment_id or "")
        return due is not None and time.monotonic() >= due

    def site_for_host(self, host: str) -> SiteTarget | None:
        """The site a Host header names; None when the control plane should answer."""
        return self.hosts.target(host)

    def cached(self, key: AnswerKey, target: SiteTarget) -> Answer | None:
        """The answer a plain GET/HEAD got before, if the host still serves that deployment.

        Plain means no If-None-Match, If-Modified-Since or Range: with those absent, the answer
        is a function of the key and the deployment alone (rules see only host, path, query).
        The deployment is read per request (HostResolver), so a deploy or rollback shows on the
        next request exactly as without this cache.
        """
        hit = self._answers.get(key)
        if hit is not None and hit[0] == self.hosts.deployment_id(target):
            if self._pending and self._due(hit[0]):
                return None  # the full path looks whether its later variants exist now
            if self.tally is not None:
                self.tally.count(hit[1].status, True)
            return hit[1]
        return None

    def _remember(self, key: AnswerKey, deployment_id: str | None, answer: Answer) -> None:
        self._answers.put(key, (deployment_id, answer), weight=len(answer.body) + 512)

    async def respond(
        self,
        method: str,
        host: str,
        raw_path: bytes,
        query: str,
        accept: str | None = None,
        conditions: Conditions | None = None,
        target: SiteTarget | None = None,
    ) -> Answer:
        """The answer to one request on a site host (`target` when the caller resolved it)."""
        head = method == "HEAD"
        try:
            if target is None:
                target = self.hosts.target(host)
            deployment_id = self.hosts.deployment_id(target) if target else None
            conditions = conditions or NO_CONDITIONS
            plain = (head or method == "GET") and conditions.plain
            key: AnswerKey = (host, raw_path, query, accept, head)
            if plain:
                hit = self._answers.get(key)
                if hit is not None and hit[0] == deployment_id and not (
                        self._pending and self._due(deployment_id)):
                    if self.tally is not None:
                        self.tally.count(hit[1].status, True)
                    return hit[1]
            if target is None or deployment_id is None:
                answer = _answer(_NO_SITE, head)
            else:
                answer = await self._respond(
                    method, head, target, deployment_id, host, raw_path, query, accept, conditions
                )  # fmt: skip
            if plain and answer.rest is None:
                self._remember(key, deployment_id, answer)
        except BackendUnavailable:
            answer = _answer(_UNAVAILABLE, head)
        except PushsiteError:
            answer = _answer(_FAILED, head)
        if self.tally is not None:
            self.tally.count(answer.status, False)
        return answer

    async def _respond(
        self,
        method: str,
        head: bool,
        target: SiteTarget,
        deployment_id: str,
        host: str,
        raw_path: bytes,
        query: str,
        accept: str | None,
        conditions: Conditions,
    ) -> Answer:
        deployed = await self._deployed(deployment_id)
        if deployed.indexed:
            plan = await self._plan(deployed, host, raw_path, query)
        else:
            plan = deployed.plan(host, raw_path, query)
        extra = _NOINDEX if target.noindex else None
        if not head and method != "GET":
            headers = _apply_rules(_NOT_ALLOWED.headers, plan.add, plan.detach)
            return Answer(405, headers + (extra or []), _NOT_ALLOWED.body)
        if plan.entry is None:
            return _answer(plan, head, extra)
        return await self._serve_file(deployed, plan, head, extra, accept, conditions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            elif scope["type"] == "websocket":  # static sites have none: refuse the handshake
                await receive()
                await send({"type": "websocket.close", "code": 1003})
            return
        host = accept = none_match = since = range_ = if_range = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"accept-encoding":
                accept = value if accept is None else accept + b"," + value
            elif name == b"if-none-match":
                none_match = value
            elif name == b"if-modified-since":
                since = value
            elif name == b"range":
                range_ = value
            elif name == b"if-range":
                if_range = value
        answer = await self.respond(
            scope["method"],
            host.decode("latin-1") if host else "",
            scope.get("raw_path") or quote(scope["path"]).encode(),
            scope.get("query_string", b"").decode("latin-1"),
            _text(accept),
            Conditions(_text(none_match), _text(since), _text(range_), _text(if_range)),
            scope.get(_TARGET),
        )  # fmt: skip
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": answer.headers})  # fmt: skip
        if answer.rest is None:
            await send({"type": "http.response.body", "body": answer.body})
            return
        async with _closing(answer.rest) as rest:
            await send({"type": "http.response.body", "body": answer.body, "more_body": True})
            async for chunk in rest:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _serve_file(
        self,
        deployed: _Deployed,
        plan: _Plan,
        head: bool,
        extra: Headers | None,
        accept: str | None,
        conditions: Conditions,
    ) -> Answer:
        none_match, since = conditions.none_match, conditions.since
        range_, if_range = conditions.range_, conditions.if_range
        entry = plan.entry
        assert entry is not None
        full = plan.status == 200
        byte_range: tuple[int, int] | hs.Unsatisfiable | None = None
        if full and range_ is not None:
            byte_range = hs.parse_range(range_, entry.size)
            if byte_range is not None and if_range is not None:
                etag = hs.make_etag(entry.hash)
                if not hs.if_range_allows(if_range, etag, deployed.created):
                    byte_range = None
        if byte_range is not None:
            encoding = ""  # ranges are offsets into the identity content
        else:
            chosen = self._coding(accept, plan.codings)
            if chosen is None:
                body = b"406 Not Acceptable: identity is refused and no other coding fits.\n"
                headers = [(b"content-type", _TEXT), (b"content-length", str(len(body)).encode())]
                if plan.codings:
                    headers.append(_VARY)
                headers = _apply_rules(headers + [_NOSNIFF], plan.add, plan.detach)
                return Answer(406, headers + (extra or []), b"" if head else body)
            encoding = chosen
        headers = deployed.headers(plan, encoding, full)
        if extra:
            headers = headers + extra
        if full:
            if none_match is not None:
                fresh = hs.none_match(none_match, _etag(entry, encoding))
            else:
                fresh = since is not None and hs.not_modified_since(since, deployed.created)
            if fresh:
                return Answer(304, [h for h in headers if h[0] != b"content-length"])
        size = entry.encodings[encoding] if encoding else entry.size
        key = entry.key(encoding)
        if isinstance(byte_range, hs.Unsatisfiable):
            headers = [h for h in headers if h[0] != b"content-length"] + [
                (b"content-range", f"bytes */{size}".encode()),
                (b"content-length", b"0"),
            ]
            return Answer(416, headers)
        status, start, end = plan.status, 0, size
        if byte_range is not None:
            start, end = byte_range
            status = 206
            headers = [h for h in headers if h[0] != b"content-length"] + [
                (b"content-range", f"bytes {start}-{end - 1}/{size}".encode()),
                (b"content-length", str(end - start).encode()),
            ]
        if head:
            return Answer(status, headers)
        if size > STREAM_THRESHOLD:
            rest = self._chunks(key, start, end, size)
            try:
                first = await rest.__anext__()
            except BaseException:
                await rest.aclose()
                raise
            return Answer(status, headers, first, rest)
        data = self.blobs.get(key)
        if data is None:
            data = await anyio.to_thread.run_sync(self.store.get, key)
            self.blobs.put(key, data, len(data))
        return Answer(status, headers, data if end - start == size else data[start:end])

    def _coding(self, accept: str | None, codings: tuple[str, ...]) -> str | None:
        """choose_encoding, memoised: clients repeat the same few Accept-Encoding values."""
        if accept is None:
            return ""
        key = (accept, codings)
        chosen = self._codings.get(key, _MISSING)
        if chosen is None or isinstance(chosen, str):
            return chosen
        return self._codings.put(key, hs.choose_encoding(accept, codings))

    async def _chunks(self, key: str, start: int, end: int,
                      size: int) -> AsyncGenerator[bytes, None]:
        """A large blob in chunks read from the store, so memory stays bounded.

        The whole object is read as one stream (one GET on S3); a range with ranged reads.
        The caller reads the first chunk before the status goes out, so a missing blob is
        still a 500; a later failure or an object that ends early ends the body short.
        """
        handle: BinaryIO | None = None
        if start == 0 and end == size:
            handle = await anyio.to_thread.run_sync(self.store.open, key)

        def read(position: int) -> bytes:
            if handle is not None:
                return handle.read(min(CHUNK, end - position))
            return self.store.get(key, position, min(position + CHUNK, end))

        try:
            position = start
            chunk = await anyio.to_thread.run_sync(read, position)
            while chunk:
                yield chunk
                position += len(chunk)
                if position >= end:
                    return
                try:
                    chunk = await anyio.to_thread.run_sync(read, position)
                except (PushsiteError, OSError):
                    return
        finally:
            if handle is not None:
                handle.close()

    def warm(self, manifest: Manifest) -> None:
        """Cache a manifest the deployer just built in this process, so the first request
        after an alias move does not parse it again (a 40,000-file manifest is 5 MB JSON).
        A big one the deployer streamed (its files read from an index) is read here later."""
        files: object = manifest.files  # a streamed manifest's is a pathindex.PathIndex
        if not isinstance(files, dict):
            return
        self.manifests.put(manifest.deployment_id, _Deployed(manifest),
                           len(manifest.files) * 600 + 4096)
        self._watch(manifest)

    def _watch(self, manifest: Manifest) -> None:
        """A manifest with variants pending: look again at most every PENDING_RECHECK s."""
        if manifest.pending:
            self._pending[manifest.deployment_id] = time.monotonic() + PENDING_RECHECK

    async def _deployed(self, deployment_id: str) -> _Deployed:
        deployed = self.manifests.get(deployment_id)
        if deployed is not None and self._pending and self._due(deployment_id):
            deployed = await self._recheck(deployment_id, deployed)
        if deployed is None:
            deployed = await self._load(deployment_id)
        return deployed

    async def _plan(self, deployed: _Deployed, host: str, raw_path: bytes,
                    query: str) -> _Plan:
        """A big site's routed path: a new one is looked up in its index on a thread."""
        key = (host, raw_path, query)
        plan = deployed.plans.get(key)
        if plan is None:
            index = cast(pathindex.PathIndex, deployed.files)  # indexed: read through one
            try:
                with index.cached_only():  # its blocks in memory: no thread needed
                    plan = deployed._route(host, raw_path, query)
            except pathindex.WouldRead:
                plan = await anyio.to_thread.run_sync(deployed._route, host, raw_path, query)
            deployed.plans.put(key, plan)
        return plan

    async def _load(self, deployment_id: str) -> _Deployed:
        deployed = await anyio.to_thread.run_sync(self._read_deployed, deployment_id)
        self.manifests.put(deployment_id, deployed, deployed.weight)
        self._watch(deployed.manifest)
        return deployed

    def _read_deployed(self, deployment_id: str) -> _Deployed:
        """A deployment's table, on a thread: a big site's index by path (its head only; a
        path costs one ranged read later), else its whole manifest, parsed."""
        key = index_key(deployment_id)
        try:
            first = self.store.get(key, 0, pathindex.HEAD_GUESS)
        except NotFound:
            raw = self.store.get(manifest_key(deployment_id))
            deployed = _Deployed(Manifest.from_bytes(raw))
            deployed.weight = len(raw) * 4  # the parsed form takes a few times the JSON's size
            return deployed
        index = pathindex.PathIndex(lambda start, end: self.store.get(key, start, end), first)
        deployed = _Deployed(index.manifest(), indexed=True)
        deployed.weight = index.head_bytes * 4 + pathindex.BLOCKS_KEPT * 64 * 1024
        return deployed

    async def _recheck(self, deployment_id: str, deployed: _Deployed) -> _Deployed:
        """While a deployment's marker is stored its manifest stands; once it is gone the
        manifest was rewritten with the new variants: read it again, and forget every
        answer given before (they offered fewer variants)."""
        self._pending[deployment_id] = time.monotonic() + PENDING_RECHECK
        key = pending_key(deployment_id)
        if await anyio.to_thread.run_sync(self.store.has, [key]):
            return deployed
        self._pending.pop(deployment_id, None)
        fresh = await self._load(deployment_id)
        self._pending.pop(deployment_id, None)  # no marker: what it says now is final
        self._answers.clear()
        return fresh


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


@contextlib.asynccontextmanager
async def _closing(
        rest: AsyncGenerator[bytes, None]) -> AsyncIterator[AsyncGenerator[bytes, None]]:
    """Close a stream's generator (and its store handle) however the sending ends."""
    try:
        yield rest
    finally:
        await rest.aclose()


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def make_edge_or_control_app(edge: Edge, control_app: ASGIApp) -> ASGIApp:
    """One ASGI app for the port: site hosts go to the edge, every other host to the control."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = b""
            for name, value in scope["headers"]:
                if name == b"host":
                    host = value
                    break
            target = edge.site_for_host(host.decode("latin-1"))
            if target is not None:
                scope[_TARGET] = target  # so the edge does not look a custom domain up again
                await edge(scope, receive, send)
                return
        await control_app(scope, receive, send)

    app.edge = edge  # type: ignore[attr-defined]  # for pushsite.edge.uvicorn_shortcut
    return app
