"""The dashboard: server-rendered pages over the service, with a little plain JavaScript.

Pages: `/` (sites), `/sites/<site>` (URLs, remotes, deployments), `/sites/<site>/search` (log
search), `/deployments/<id>` (log, files, diff, actions), `/deployments/<id>/events` (the log
and status as server-sent events); management in manage.py, notifications in notifypages.py.
Sign-in takes a deploy token; the session cookie and the CSRF value every form echoes come
from session.py. State calls block (SQLite, DynamoDB), so they run in the thread pool, never
on the event loop the edge shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pushsite import ids, names, pathindex
from pushsite.errors import (
    ConfigError,
    DeploymentNotFound,
    Forbidden,
    NotAuthorized,
    NotFound,
    PushsiteError,
    SiteNotFound,
)
from pushsite.limits import human_size
from pushsite.model import (
    PRODUCTION,
    Deployment,
    FileEntry,
    Manifest,
    Site,
    Status,
    Token,
    pending_key,
)
from pushsite.names import branch_label
from pushsite.service import Service
from pushsite.sources.webhooks import PROVIDERS
from pushsite.state import SiteHeads, StateStore
from pushsite.web import manage, notifypages
from pushsite.web.session import COOKIE, MAX_AGE, Session, SessionSigner, load_secret

_HERE = Path(__file__).parent
PAGE_SIZE = 20  # deployments per page of a site's table (`?limit=` picks another)
MAX_PAGE_SIZE = 200
FILES_SHOWN = 100  # files per page of a deployment's file list (searchable, `?files=`)
DIFFS_KEPT = 16  # diffs kept in memory (a big site's costs a walk of two file lists)
DIFF_KEPT_ROWS = 2000  # a diff listing more files than this is not kept
SEARCH_SHOWN = 50  # log search hits per page
SITES_SHOWN = 50  # sites per page of the sites list
DIFF_SHOWN = 200  # paths listed per kind of change
POLL_SECONDS = 0.2  # how often the event stream looks for new log lines
STREAM_LIMIT = 3600.0  # an event stream ends after this; the browser reconnects where it was
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def routes(service: Service) -> list[Any]:
    """The dashboard's routes, for the control plane's Starlette app."""
    board = Dashboard(service)
    return [
        Route("/", board.endpoint(board.sites_page)),
        Route("/login", board.login_page, methods=["GET"]),
        Route("/login", board.login, methods=["POST"]),
        Route("/logout", board.logout, methods=["POST"]),
        Route("/sites/{site}", board.endpoint(board.site_page)),
        Route("/sites/{site}/search", board.endpoint(board.search_page)),
        Route("/sites/{site}/domains/{host}/approve", board.approve_domain, methods=["POST"]),
        Route("/deployments/{id}", board.endpoint(board.deployment_page)),
        Route("/deployments/{id}/events", board.events),
        Route("/deployments/{id}/{action}", board.act, methods=["POST"]),
        *manage.routes(board),
        *notifypages.routes(board),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="dashboard-static"),
    ]


@dataclass
class Visit:
    """One request as the dashboard sees it: the session and the token it stands for."""

    request: Request
    session: Session
    token: Token | None
    set_cookie: bool  # the browser's cookie is missing, invalid or must change


@dataclass
class Page:
    """A template to render, with its context and status."""

    template: str
    context: dict[str, Any] = field(default_factory=dict)
    status: int = 200


@dataclass
class FileRows:
    """A deployment's files as (path, entry row) in path order, read again on each call of
    `rows` (none kept), with their number."""

    count: int
    rows: Callable[[], Iterator[tuple[str, list[Any]]]]
    small: bool  # a plain JSON manifest (under pathindex.INDEX_MIN_FILES): cheap to walk

    def page(self, wanted: str, page: int) -> tuple[list[tuple[str, FileEntry]], int]:
        """Page `page` of the files whose path holds `wanted` (any case), and how many
        do; without `wanted` the walk stops at the page."""
        start = (page - 1) * FILES_SHOWN
        needle = wanted.lower()
        shown: list[tuple[str, FileEntry]] = []
        matching = 0
        for path, row in self.rows():
            if needle and needle not in path.lower():
                continue
            if start <= matching < start + FILES_SHOWN:
                shown.append((path, FileEntry.from_json(row)))
            matching += 1
            if not needle and matching >= start + FILES_SHOWN:
                return shown, self.count
        return shown, matching

    def stored(self) -> int | None:
        """Bytes stored for the files, the smallest variant of each; None for a big site
        (it would mean reading every block)."""
        if not self.small:
            return None
        return sum(int(min([row[1], *row[3].values()])) for _, row in self.rows())


@dataclass
class Diff:
    """What changed from the previous deployment of the same branch."""

    previous: Deployment | None
    added: list[tuple[str, FileEntry]]
    removed: list[tuple[str, FileEntry]]
    changed: list[tuple[str, FileEntry, FileEntry]]
    unchanged: int


class Dashboard:
    """The pages and actions, over one Service."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.signer = SessionSigner(load_secret(service.config.home))
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters.update(size=human_bytes, age=human_age, duration=human_duration,
                                      iso=iso_time, iso_ms=iso_ms, clock=clock_time,
                                      short=short_commit)
        # diffs of two ready deployments never change (their files' hashes are fixed), and a
        # big site's costs a walk of both file lists: the last few are kept, if small
        self._diffs: OrderedDict[tuple[str, str], Diff] = OrderedDict()
        self._diffs_lock = threading.Lock()

    @property
    def state(self) -> StateStore:
        return self.service.state

    # sessions -----------------------------------------------------------------------------
    async def visit(self, request: Request) -> Visit:
        raw = request.cookies.get(COOKIE, "")
        session = self.signer.loads(raw) if raw else None
        if session is None:
            return Visit(request, Session(), None, True)
        if session.token_id is None:
            return Visit(request, session, None, False)
        token = await run_in_threadpool(self._token, session.token_id, session.sid)
        if token is None:  # signed out, or its token deleted since sign-in
            return Visit(request, Session(), None, True)
        return Visit(request, session, token, False)

    def _token(self, token_id: str, sid: str) -> Token | None:
        """The session's token, unless the session was ended or the token deleted."""
        if self.service.session_ended(sid):
            return None
        return next((t for t in self.state.list_tokens() if t.id == token_id), None)

    def finish(self, visit: Visit, response: Response) -> Response:
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        if visit.set_cookie:
            response.set_cookie(COOKIE, self.signer.dumps(visit.session), max_age=MAX_AGE,
                                path="/", httponly=True, samesite="lax",
                                secure=visit.request.url.scheme == "https")
        return response

    def render(self, visit: Visit, page: Page) -> Response:
        context = {"visit": visit, "csrf": visit.session.csrf, "token": visit.token,
                   "now": time.time(), "is_admin": manage.is_admin(visit.token),
                   "manages_tokens": visit.token is not None and "admin" in visit.token.scopes,
                   "admin_of": lambda site: manage.is_admin(visit.token, site),
                   **page.context}
        html = self.templates.get_template(page.template).render(context)
        return self.finish(visit, HTMLResponse(html, status_code=page.status))

    def error_page(self, visit: Visit, exc: PushsiteError) -> Response:
        page = Page("error.html", {"status": exc.http_status, "message": str(exc),
                                   "kind": type(exc).__name__}, exc.http_status)
        return self.render(visit, page)

    def to_login(self, visit: Visit) -> Response:
        target = visit.request.url.path
        if visit.request.url.query:
            target += "?" + visit.request.url.query
        return self.finish(visit, RedirectResponse("/login?" + urlencode({"next": target}), 303))

    def endpoint(self, view: Callable[..., Page | Response]
                 ) -> Callable[[Request], Awaitable[Response]]:
        """An async page endpoint around a blocking view(visit, **path_params)."""

        async def handle(request: Request) -> Response:
            visit = await self.visit(request)
            if visit.token is None:
                return self.to_login(visit)
            try:
                result = await run_in_threadpool(view, visit, **request.path_params)
            except PushsiteError as exc:
                return self.error_page(visit, exc)
            if isinstance(result, Response):
                return self.finish(visit, result)
            return self.render(visit, result)

        return handle

    def allowed(self, visit: Visit, site: str) -> None:
        """Raise Forbidden unless the signed-in token covers the site."""
        if visit.token is None or not visit.token.covers(site):
            raise Forbidden(f"the token you signed in with does not cover site {site!r}; "
                            "sign in with one that does")

    async def checked_form(self, visit: Visit) -> dict[str, str] | Response:
        """The POSTed form if its CSRF value matches the session's, else an error page."""
        form = await visit.request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        if not visit.session.csrf_ok(values.get("csrf", "")):
            return self.error_page(visit, Forbidden(
                "the form was stale or came from another site (its CSRF value did not match); "
                "reload the page and try again"))
        return values

    # signing in and out -------------------------------------------------------------------
    async def login_page(self, request: Request) -> Response:
        visit = await self.visit(request)
        if visit.token is not None:
            return self.finish(visit, RedirectResponse(_safe_next(request), 303))
        return self.render(visit, Page("login.html", {"next": _safe_next(request), "error": ""}))

    async def login(self, request: Request) -> Response:
        visit = await self.visit(request)
        form = await self.checked_form(visit)
        if isinstance(form, Response):
            return form
        target = _safe_next(request, form.get("next"))
        try:
            token = await run_in_threadpool(self.service.check_token, form.get("token", "").strip())
        except NotAuthorized as exc:
            page = Page("login.html", {"next": target, "error": str(exc)}, 401)
            return self.render(visit, page)
        visit.session = visit.session.signed_in(token.id)
        visit.set_cookie = True
        return self.finish(visit, RedirectResponse(target, 303))

    async def logout(self, request: Request) -> Response:
        visit = await self.visit(request)
        form = await self.checked_form(visit)
        if isinstance(form, Response):
            return form
        if visit.session.sid:
            await run_in_threadpool(self.service.end_session, visit.session.sid)
        visit.session, visit.set_cookie = Session(), True
        return self.finish(visit, RedirectResponse("/login", 303))

    # pages --------------------------------------------------------------------------------
    def sites_page(self, visit: Visit) -> Page:
        """A page of sites by name (`?after=` the last one shown), each with its live and
        newest deployment: a fixed number of queries a page, whatever the number of sites
        (issue 20: all 10,000 with one query each took 4.5 s)."""
        after = visit.request.query_params.get("after") or None
        if after is not None:
            names.check_site_name(after)
        token = visit.token
        sites: list[Site] = []
        if token is not None and token.site is not None:  # a site's token sees that site
            if after is None or token.site > after:
                with contextlib.suppress(SiteNotFound):
                    sites = [self.state.get_site(token.site)]
        elif token is not None:
            sites = self.state.list_sites(after=after, limit=SITES_SHOWN)
        heads = self.state.site_heads([site.name for site in sites])
        rows = [{"site": site, "url": self.service.config.site_url(site.name),
                 "live": heads.get(site.name, SiteHeads()).live,
                 "newest": heads.get(site.name, SiteHeads()).newest} for site in sites]
        more = len(sites) == SITES_SHOWN and (token is None or token.site is None)
        return Page("sites.html", {"rows": rows, "after": after,
                                   "next_after": sites[-1].name if more else None})

    def site_page(self, visit: Visit, site: str) -> Page:
        self.allowed(visit, site)
        record = self.service.site(site)
        before = visit.request.query_params.get("before") or None
        if before is not None and not ids.looks_like_id(before):
            raise ConfigError(f"invalid page marker {before!r}: follow the Older link instead")
        size = _page_size(visit.request.query_params.get("limit", ""))
        branch = visit.request.query_params.get("branch", "").strip() or None
        if branch is not None:
            names.check_branch_name(branch)
        batch = self.state.list_deployments(site, limit=size + 1, before=before, branch=branch)
        deployments, more = batch[:size], len(batch) > size
        base = str(visit.request.base_url).rstrip("/")
        previews = []
        for alias in self.state.list_aliases(site):
            if alias.name.startswith("branch/"):
                shown = alias.name.removeprefix("branch/")
                previews.append({"branch": shown, "deployment": alias.deployment_id,
                                 "url": self.site_url(f"{branch_label(shown)}--{site}")})
        production = self.state.get_alias(site, PRODUCTION)
        live = production.deployment_id if production else ""
        if not before and not branch and live and all(d.id != live for d in deployments):
            # production is on the newest page always: first when older than the rest
            with contextlib.suppress(DeploymentNotFound):
                deployments.insert(0, self.state.get_deployment(live))
        rows = [{"d": d, "production": d.id == live, "context": _context(d, record),
                 "own_url": self.site_url(f"{d.id}--{site}") if d.status.servable else ""}
                for d in deployments]
        branches = sorted({d.branch for d in deployments} | {p["branch"] for p in previews}
                          | {record.production_branch} | ({branch} if branch else set()))
        return Page("site.html", {
            "site": record, "deployments": deployments, "rows": rows, "previews": previews,
            "branch": branch or "", "branches": branches,
            "production": production, "url": self.site_url(site),
            "remote": f"{base}/{site}.git",
            "hooks": [(p, f"{base}/hooks/{p}/{site}") for p in PROVIDERS],
            "domains": self.service.domains(site), "before": before,
            "can_approve": _global_admin(visit.token),
            "variables": (self.service.variables(site)
                          if manage.is_admin(visit.token, site) else []),
            "challenge": self.service.domain_token(site),
            "older": deployments[-1].id if more and deployments else None,
            "limit": "" if size == PAGE_SIZE else str(size),
        })

    def search_page(self, visit: Visit, site: str) -> Page:
        self.allowed(visit, site)
        self.service.site(site)
        query = visit.request.query_params.get("q", "").strip()
        page = _page_number(visit.request.query_params.get("page", ""))
        wanted = page * SEARCH_SHOWN + 1
        found = self.state.search_logs(site, query, limit=wanted) if query else []
        lines = found[(page - 1) * SEARCH_SHOWN:page * SEARCH_SHOWN]
        return Page("search.html", {
            "site": site, "query": query, "page": page, "more": len(found) == wanted,
            "first": (page - 1) * SEARCH_SHOWN + 1,
            "hits": [{"line": line, "parts": highlighted(line.message, query)}
                     for line in lines]})

    def deployment_page(self, visit: Visit, id: str) -> Page:
        deployment = self._deployment(visit, id)
        site = self.service.site(deployment.site)
        logs = self.state.get_logs(deployment.id)
        listing = self._files(deployment)
        pointed = [a.name for a in self.state.list_aliases(site.name)
                   if a.deployment_id == deployment.id]
        production = self.state.get_alias(site.name, PRODUCTION)
        wanted = visit.request.query_params.get("files", "").strip()
        page = _page_number(visit.request.query_params.get("files_page", ""))
        shown, matching = listing.page(wanted, page) if listing else ([], 0)
        rollback = (deployment.branch == site.production_branch and production is not None
                    and deployment.id < production.deployment_id)
        optimise = self._optimise(deployment)
        ended = [line.time for line in logs if line.stage == "optimise"]
        return Page("deployment.html", {
            "d": deployment, "site": site, "logs": logs, "pointed": pointed,
            "optimise": optimise,
            "optimise_at": ended[-1] if ended and optimise not in ("", *ONGOING) else None,
            "following": not deployment.status.finished or optimise in ONGOING,
            "last_seq": logs[-1].seq if logs else 0,
            "files": shown,
            "files_total": listing.count if listing else 0, "files_matching": matching,
            "files_query": wanted, "files_page": page,
            "files_pages": max((matching + FILES_SHOWN - 1) // FILES_SHOWN, 1),
            "files_first": (page - 1) * FILES_SHOWN + 1,
            "production": production is not None and production.deployment_id == deployment.id,
            "context": _context(deployment, site),
            "stored_total": listing.stored() if listing else None,
            "diff": self._diff(deployment, listing) if listing else None,
            "diff_shown": DIFF_SHOWN,
            "own_url": self.site_url(f"{deployment.id}--{site.name}") if listing else "",
            "can_activate": listing is not None and deployment.status.servable
                            and PRODUCTION not in pointed,
            "activate_label": "Roll back to this" if rollback else "Promote to production",
            "can_cancel": not deployment.status.finished,
            "can_redeploy": listing is not None,
        })

    def site_url(self, label: str) -> str:
        return self.service.config.site_url(label)

    def _deployment(self, visit: Visit, deployment_id: str) -> Deployment:
        if not ids.looks_like_id(deployment_id):
            raise DeploymentNotFound(f"no deployment {deployment_id!r}: an id has 26 letters "
                                     "and digits; the site's page lists them")
        deployment = self.state.get_deployment(deployment_id)
        self.allowed(visit, deployment.site)
        return deployment

    def _manifest(self, deployment: Deployment) -> Manifest | None:
        if not deployment.status.servable:
            return None
        try:
            return self.service.manifest(deployment.id)
        except DeploymentNotFound:
            return None

    def _files(self, deployment: Deployment) -> FileRows | None:
        """A ready deployment's files in path order. A big site's manifest is read through
        its index by path (pathindex.py), a block at a time, never parsed whole: a page of
        a 70,000-file deployment took 1.3 s and the whole manifest in memory."""
        if not deployment.status.servable:
            return None
        try:
            index = pathindex.PathIndex(partial(self.service.store.get,
                                                pathindex.index_key(deployment.id)))
        except NotFound:
            manifest = self._manifest(deployment)
            if manifest is None:
                return None
            files = manifest.files
            return FileRows(len(files), lambda: ((p, files[p].to_json()) for p in sorted(files)),
                            small=True)
        return FileRows(len(index), index.rows, small=False)

    def _diff(self, deployment: Deployment, listing: FileRows) -> Diff:
        """Against the previous ready deployment of the branch: both lists walked side by
        side in path order, an entry made only for what changed."""
        previous, old = None, None
        for candidate in self.state.list_deployments(deployment.site, branch=deployment.branch,
                                                     limit=20, before=deployment.id):
            old = self._files(candidate)
            if old is not None:
                previous = candidate
                break
        diff = Diff(previous, [], [], [], 0)
        if old is None or previous is None:  # the first of its branch: every file is new
            return diff
        key = (previous.id, deployment.id)
        with self._diffs_lock:
            kept = self._diffs.get(key)
        if kept is not None:
            return kept
        olds = old.rows()
        news = listing.rows()
        a, b = next(olds, None), next(news, None)
        while a is not None or b is not None:
            if b is None or (a is not None and a[0] < b[0]):
                assert a is not None
                diff.removed.append((a[0], FileEntry.from_json(a[1])))
                a = next(olds, None)
            elif a is None or b[0] < a[0]:
                diff.added.append((b[0], FileEntry.from_json(b[1])))
                b = next(news, None)
            else:
                if a[1][0] != b[1][0]:  # the hashes
                    diff.changed.append((b[0], FileEntry.from_json(a[1]),
                                         FileEntry.from_json(b[1])))
                else:
                    diff.unchanged += 1
                a, b = next(olds, None), next(news, None)
        if len(diff.added) + len(diff.changed) + len(diff.removed) <= DIFF_KEPT_ROWS:
            with self._diffs_lock:
                self._diffs[key] = diff
                while len(self._diffs) > DIFFS_KEPT:
                    self._diffs.popitem(last=False)
        return diff

    # actions ------------------------------------------------------------------------------
    async def act(self, request: Request) -> Response:
        visit = await self.visit(request)
        if visit.token is None:
            return self.to_login(visit)
        form = await self.checked_form(visit)
        if isinstance(form, Response):
            return form
        action = request.path_params["action"]
        handlers = {"activate": self._activate, "cancel": self._cancel,
                    "redeploy": self._redeploy}
        if action not in handlers:
            return self.error_page(visit, ConfigError(
                f"unknown action {action!r}: use activate, cancel or redeploy"))
        try:
            target = await run_in_threadpool(handlers[action], visit, request.path_params["id"])
        except PushsiteError as exc:
            return self.error_page(visit, exc)
        return self.finish(visit, RedirectResponse(f"/deployments/{target}", 303))

    async def approve_domain(self, request: Request) -> Response:
        """An admin's approval of a pending custom domain (an admin token for every site:
        a site's own authority never approves what its pushsite.toml claimed)."""
        visit = await self.visit(request)
        if visit.token is None:
            return self.to_login(visit)
        form = await self.checked_form(visit)
        if isinstance(form, Response):
            return form
        site, host = request.path_params["site"], request.path_params["host"]
        try:
            if not _global_admin(visit.token):
                raise Forbidden("approving a custom domain needs an admin token for every "
                                "site; sign in with one")
            await run_in_threadpool(self.service.approve_domain, site, host)
        except PushsiteError as exc:
            return self.error_page(visit, exc)
        return self.finish(visit, RedirectResponse(f"/sites/{site}", 303))

    def _activate(self, visit: Visit, deployment_id: str) -> str:
        deployment = self._deployment(visit, deployment_id)
        return self.service.promote(deployment.id).id

    def _cancel(self, visit: Visit, deployment_id: str) -> str:
        deployment = self._deployment(visit, deployment_id)
        return self.service.cancel(deployment.id).id

    def _redeploy(self, visit: Visit, deployment_id: str) -> str:
        """A new deployment of the same files (Service.redeploy: a manifest copy, so it is
        done in the time of this request, and a failure is recorded like any run's)."""
        deployment = self._deployment(visit, deployment_id)
        return self.service.redeploy(deployment.id).id

    # the live log -------------------------------------------------------------------------
    async def events(self, request: Request) -> Response:
        """Log lines and status changes as server-sent events, until the deployment ends.

        `?status=1` sends status changes only (the badges on list pages). A reconnecting
        browser sends Last-Event-ID, so it resumes after the last line it got.
        """
        visit = await self.visit(request)
        if visit.token is None:
            return self.finish(visit, Response("sign in first", 401))
        try:
            deployment = await run_in_threadpool(self._deployment, visit, request.path_params["id"])
        except PushsiteError as exc:
            return self.finish(visit, Response(str(exc), exc.http_status))
        raw_after = request.headers.get("last-event-id") or request.query_params.get("after", "0")
        after = int(raw_after) if raw_after.isdigit() else 0
        logs = request.query_params.get("status") != "1"
        stream = self._stream(deployment.id, after, logs)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    def _poll(self, deployment_id: str, after: int, logs: bool
              ) -> tuple[list[Any], Deployment, str]:
        lines = self.state.get_logs(deployment_id, after=after, limit=500) if logs else []
        deployment = self.state.get_deployment(deployment_id)
        return lines, deployment, self._optimise(deployment) if logs else ""

    def _optimise(self, d: Deployment) -> str:
        """optimise_state; for a live one whose variants still wait for the worker that
        makes them (the store holds its marker), QUEUED: its page keeps following it."""
        state = optimise_state(d)
        if state or d.status != Status.LIVE:
            return state
        return QUEUED if self.service.store.has([pending_key(d.id)]) else ""

    async def _stream(self, deployment_id: str, after: int, logs: bool) -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        sent: dict[str, Any] | None = None
        started = last_write = time.monotonic()
        quiet_since: float | None = None
        while time.monotonic() - started < STREAM_LIMIT:
            lines, deployment, optimise = await run_in_threadpool(
                self._poll, deployment_id, after, logs)
            for line in lines:
                after = line.seq
                yield _event("log", line.to_dict(), line.seq)
            status = _status_event(deployment, optimise)
            now = time.monotonic()
            if status != sent:
                sent = status
                yield _event("status", status)
                last_write = now
            elif lines:
                last_write = now
            ended = deployment.status.finished and optimise not in ONGOING
            if ended:
                # the last lines are flushed just after the final status; wait for them
                # (and a live one's stream goes on while it is optimised, until it says so)
                quiet_since = None if lines else (quiet_since or now)
                if not logs or (quiet_since is not None and now - quiet_since >= 1.0):
                    yield _event("end", {"status": str(deployment.status)})
                    return
            if now - last_write > 15:
                last_write = now
                yield ": keep-alive\n\n"
            await asyncio.sleep(POLL_SECONDS)


def _event(name: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _status_event(d: Deployment, optimise: str = "") -> dict[str, Any]:
    """What the deployment page shows live: the status, and the counters a run writes at
    most every 0.5 s (service/progress.py)."""
    return {"status": str(d.status), "finished": d.status.finished, "error": d.error,
            "progress": d.progress, "files": d.files, "seconds": d.seconds,
            "files_read": d.files - d.carried, "carried": d.carried, "stage": d.stage,
            "duration": human_duration(d.seconds), "bytes": human_bytes(d.bytes_in),
            "bytes_stored": human_bytes(d.bytes_stored),
            "blobs_new": d.blobs_new, "blobs_reused": d.blobs_reused,
            "optimise": optimise}


OPTIMISING = "optimising"
QUEUED = "optimising queued"
ONGOING = (OPTIMISING, QUEUED)
_CLOCK_AT = re.compile(r" at \d{1,2}:\d{2}:\d{2}$")


def optimise_state(d: Deployment) -> str:
    """Where a finished deployment's after-live optimisation is ("optimising", "optimised in
    4.94s", "optimising stopped", ...; "" for none), from its record's progress line
    (service/optimising.py), without the server's clock time: the page shows when it ended
    in the browser's own time, from the log line that said so."""
    if not d.status.finished:
        return ""
    tail = d.progress.rsplit("; ", 1)[-1]
    return _CLOCK_AT.sub("", tail) if tail.startswith("optimis") else ""


def _context(d: Deployment, site: Site) -> str:
    """What a deployment was made as: production (its branch), preview, or draft."""
    if d.draft:
        return "draft"
    return "production" if d.branch == site.production_branch else "preview"


def highlighted(message: str, query: str) -> list[tuple[str, bool]]:
    """The message in parts, True where a searched word matches (case-insensitive)."""
    words = [re.escape(w) for w in query.split() if w]
    if not words:
        return [(message, False)]
    pattern = re.compile("|".join(sorted(words, key=len, reverse=True)), re.IGNORECASE)
    parts: list[tuple[str, bool]] = []
    at = 0
    for match in pattern.finditer(message):
        if match.start() > at:
            parts.append((message[at:match.start()], False))
        parts.append((match.group(), True))
        at = match.end()
    if at < len(message):
        parts.append((message[at:], False))
    return parts


def _page_number(raw: str) -> int:
    if not raw:
        return 1
    if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
        raise ConfigError(f"invalid page {raw!r}: follow the page links instead")
    return int(raw)


def _page_size(raw: str) -> int:
    if not raw:
        return PAGE_SIZE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise ConfigError(f"invalid page size {raw!r}: use 1 to {MAX_PAGE_SIZE}")
    return int(raw)


def _global_admin(token: Token | None) -> bool:
    return token is not None and token.site is None and "admin" in token.scopes


def _safe_next(request: Request, value: str | None = None) -> str:
    """Where to go after signing in: a path on this server only, never another host."""
    target = value if value is not None else request.query_params.get("next", "/")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return quote(target, safe="/?=&%-._~")


# formatting (Jinja filters) -----------------------------------------------------------------
def human_bytes(size: int | float | None) -> str:
    """IEC units, as everywhere pushsite shows a size (limits.human_size)."""
    return human_size(size)


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def human_age(when: float | None, now: float | None = None) -> str:
    if when is None:
        return ""
    delta = max((time.time() if now is None else now) - when, 0)
    for limit, unit, size in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600),
                              (30 * 86400, "d", 86400)):
        if delta < limit:
            return f"{int(delta // size)} {unit} ago"
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d")


def iso_time(when: float | None) -> str:
    return "" if when is None else datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


def iso_ms(when: float) -> str:
    """A log line's time to the millisecond, for the browser to show in its own zone."""
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")


def clock_time(when: float) -> str:
    """UTC, said so; the page's script shows the browser's local time, UTC on hover."""
    return datetime.fromtimestamp(when, UTC).strftime("%H:%M:%S.%f")[:-3] + " UTC"


def short_commit(commit: str) -> str:
    return commit[:10]
