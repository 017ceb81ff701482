"""The JSON API of the control plane, mounted at /api; its OpenAPI is /api/openapi.json.

Every endpoint needs a deploy token (see web/auth.py). Errors answer in one shape,
`{"ok": false, "error": "...", "status": N}` (see web/errors.py).

A deployment's answer carries `error_kind` and `exit_code` so that a client can end the way a
local `pushsite deploy` would: `exit_code` is null while the deployment is queued or running
(or ready for the moment before it goes live), 0 when it has ended ready or live, else the exit
code of the error class named by `error_kind`
(a class of pushsite.errors: `DeploymentTimedOut`, `BundleRejected`, `SiteConfigError`, ...).

Uploads (`POST /api/sites/{site}/deploys`) are streamed: the request body goes chunk by chunk
into staging, never whole in memory: the deployment is recorded `receiving` once the first
bytes have come (its `bytes_in` and `progress` count what arrived), and the answer (202, with
a Location) comes once it is queued. The server's worker runs it; follow it with
`GET /api/deployments/{id}` or with `GET /api/deployments/{id}/log?after=<seq>`.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from functools import partial
from typing import Annotated, Any, BinaryIO, Literal, cast

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount

from pushsite import __version__, errors, ids, names, pathindex
from pushsite.errors import (
    BundleRejected,
    BundleTooLarge,
    ConfigError,
    DeploymentNotFound,
    Forbidden,
    NotFound,
    PushsiteError,
    SiteNotFound,
)
from pushsite.model import (
    ADMIN_SCOPE,
    PRODUCTION,
    Deployment,
    FileEntry,
    LogLine,
    Manifest,
    Site,
    Status,
    Token,
    site_scope,
)
from pushsite.service import Service
from pushsite.state import SITE_PAGE
from pushsite.web import auth
from pushsite.web.errors import install_error_handlers, with_debug_flag

_GZIP_MAGIC = b"\x1f\x8b"
# a deployment's (path, entry row) pairs in path order, from a given path on
FilesFrom = Callable[[str], Iterator[tuple[str, list[Any]]]]
_MAX_UPLOADS = 8
# what uploads/basis says this server takes; a client uses the ones it knows
UPLOAD_FEATURES = ("finish-blobs", "list-gzip")
_SETTLE_SECONDS = 60.0  # a ready deployment older than this is past its alias moves
_WAIT_STEP, _WAIT_STEP_UNWATCHED = 0.002, 0.05  # `wait`'s looks at the state (_answer_when_ended)


# --- response and request bodies -------------------------------------------------------------
class ErrorBody(BaseModel):
    ok: Literal[False]
    error: str = Field(description="What was wrong, the value, what to do next.")
    status: int


class Urls(BaseModel):
    deployment: str = Field(description="This deployment, forever.")
    branch: str = Field(description="The branch preview.")
    production: str | None = Field(None, description="Set when the branch is the production one "
                                   "(null while a locked production left it ready).")


class DeploymentOut(BaseModel):
    id: str
    site: str
    branch: str
    status: Status
    commit: str
    message: str
    source: str
    created: float
    started: float | None
    finished: float | None
    seconds: float | None
    files: int
    bytes_in: int
    bytes_stored: int
    blobs_new: int
    blobs_reused: int
    error: str
    progress: str
    carried: int = Field(description="Files a push carried over from the previous deployment "
                         "unread (their git blob id did not change).")
    stage: str = Field(description="Where a running deployment is: read, manifest, activate; "
                       "the counters above are written at most every 0.5 s while it runs.")
    draft: bool
    mirror: str = Field(description="The hosting copy's outcome (PUSHSITE_MIRROR): empty when "
                        "never mirrored, else 'mirrored: ...', 'paused: ...' (the next run goes "
                        "on) or 'refused: ...' (over the max-delete share; not retried).")
    production: bool = Field(description="The site's production alias points at it: exactly "
                             "one deployment of a site is production.")
    context: Literal["production", "preview", "draft"] = Field(
        description="What it was deployed as: its site's production branch, a branch preview, "
                    "or a draft (no alias moves until it is promoted).")
    error_kind: str | None = Field(description="The pushsite.errors class of the failure.")
    exit_code: int | None = Field(description="null while unfinished, 0 when ready or live, "
                                  "else what a local `pushsite deploy` would exit with.")
    urls: Urls


class DeploymentPage(BaseModel):
    deployments: list[DeploymentOut]
    next_before: str | None = Field(description="Pass as `before` for the next page.")


class AliasOut(BaseModel):
    name: str
    deployment_id: str
    updated: float


class SiteSettingsOut(BaseModel):
    deploy_tags: bool
    webhook_base_url: str
    webhook_access_token_set: bool
    webhook_repo: str = Field(description="The repository whose pushes deploy the site "
                              "(owner/name); empty until set or bound by the first valid push.")
    webhook_last_ignored_repo: str = Field(description="The latest repository whose signed "
                                           "push was ignored because the site is bound to "
                                           "another.")
    locked: bool = Field(default=False, description="Production is locked: production-branch "
                         "deployments become ready without going live (`pushsite lock`).")
    reject_failed_pushes: bool = Field(default=True, description="A git push whose deploy "
                                       "fails is refused (false: the commits are kept).")


class SiteOut(BaseModel):
    name: str
    production_branch: str
    created: float
    domains: list[str]
    settings: SiteSettingsOut
    aliases: list[AliasOut]
    url: str


class SiteList(BaseModel):
    sites: list[SiteOut]
    next_after: str | None = Field(None, description="Pass as `after` for the next page; "
                                   "null on the last page.")


class SiteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(examples=["blog"])
    production_branch: str = "main"


class SiteSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    production_branch: str | None = None
    deploy_tags: bool | None = None
    reject_failed_pushes: bool | None = None
    webhook_base_url: str | None = None
    webhook_access_token: str | None = Field(None, description="Write-only.")
    webhook_repo: str | None = Field(None, description="Bind the site to this repository "
                                     "(owner/name); empty: the next valid push binds it.")


class DomainOut(BaseModel):
    host: str
    status: Literal["pending", "approved"] = Field(
        description="Only an approved domain is served.")
    scope: str = Field(description="Who claimed it: admin, or site:<name> (the site's own "
                       "pushsite.toml or a token limited to it).")
    claimed: float


class DomainList(BaseModel):
    site: str
    domains: list[str] = Field(description="Every host the site holds, pending or approved.")
    claims: list[DomainOut]
    challenge: str = Field(description="What a DNS TXT record _pushsite-challenge.<host> must "
                           "hold for `verify` to approve a claim.")


class Deleted(BaseModel):
    ok: Literal[True]
    deleted: str


class VariableIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = Field(max_length=32_768)
    secret: bool = Field(False, description="Never shown again; redacted from build output.")


class VariableOut(BaseModel):
    name: str
    value: str = Field(description="The value, or •••• for a secret.")
    secret: bool


class VariableList(BaseModel):
    variables: list[VariableOut]


class PruneOut(BaseModel):
    deployments: int
    blobs: int


class FileOut(BaseModel):
    path: str
    size: int
    type: str
    hash: str
    encodings: dict[str, int]


class FilePage(BaseModel):
    files: list[FileOut]
    total: int = Field(description="Files in the deployment matching the prefix.")
    next_after: str | None = Field(description="Pass as `after` for the next page.")


class DiffEntry(BaseModel):
    path: str
    size: int
    old_size: int | None = None


class DiffOut(BaseModel):
    deployment: str
    against: str
    added: list[DiffEntry]
    changed: list[DiffEntry]
    removed: list[DiffEntry]
    unchanged: int


class LogLineOut(BaseModel):
    deployment_id: str
    seq: int
    time: float
    level: str
    stage: str
    message: str
    fields: dict[str, Any]


class LogPage(BaseModel):
    lines: list[LogLineOut]
    last_seq: int = Field(description="Pass as `after` to get only newer lines.")
    status: Status
    finished: bool = Field(description="The deployment has ended (and moved its aliases).")


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2000, examples=["https://ci.example.com/hooks/pushsite"])
    events: list[str] | None = Field(None, description="Default: every event.")
    format: Literal["standard", "slack"] = "standard"


class EndpointOut(BaseModel):
    id: str
    site: str
    url: str
    events: list[str]
    format: str
    created: float
    failing_since: float = Field(description="When its current run of failures began; 0 "
                                 "when the last delivery went through.")
    disabled: bool
    secret: str | None = Field(None, description="The signing secret (whsec_...): in the "
                               "answer that creates the endpoint only.")


class EndpointList(BaseModel):
    endpoints: list[EndpointOut]


class DeliveryOut(BaseModel):
    endpoint_id: str
    message_id: str
    event: str
    attempt: int
    outcome: str = Field(description="delivered, retrying, gave_up or dropped.")
    status: int = Field(description="The receiver's HTTP status; 0 when it never answered.")
    latency: float
    error: str
    time: float


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]


class LogSearch(BaseModel):
    site: str
    query: str
    lines: list[LogLineOut]


class TokenOut(BaseModel):
    id: str
    name: str
    site: str | None
    scopes: list[str]
    created: float


class TokenList(BaseModel):
    tokens: list[TokenOut]


Scope = Literal["deploy", "admin"]


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("api", min_length=1, max_length=100)
    site: str | None = Field(None, description="Limit the token to one site.")
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["deploy"]), min_length=1)


class ListedFile(BaseModel):
    path: str = Field(max_length=4096)
    sha256: str | None = Field(default=None, description="Hex sha256 of a file's content.")
    size: int | None = Field(default=None, description="A file's size in bytes.")
    mode: str = Field(default="100644", description="100644 / 100755 a file, 120000 a link, "
                      "040000 a folder.")
    target: str | None = Field(default=None, description="A link's target, from the root.")


class UploadIn(BaseModel):
    # each row is checked by filelist.check_rows (as a bundle's member would be), not by a
    # model: validating 1,000 models and dumping them again was ~5 ms of a ~80 ms redeploy
    files: list[dict[str, Any]] = Field(json_schema_extra={
        "items": ListedFile.model_json_schema()})
    branch: str | None = Field(default=None, max_length=255)
    message: str = Field(default="", max_length=2000)
    strip_top: bool = Field(default=False, description="Strip a single top folder (a tar.gz "
                            "wrapped in one), as a bundle upload does.")
    create: bool = Field(default=False, description="Create the site if it does not exist "
                         "(a token for every site).")


class UploadStarted(BaseModel):
    upload: str = Field(description="The upload's id; also the deployment's once finished.")
    missing: list[str] = Field(description="The sha256s whose content the server lacks: PUT "
                               "them to .../blobs, then POST .../finish.")


class BlobsIn(BaseModel):
    received: int


class UploadBasis(BaseModel):
    exists: bool = Field(description="The site exists (false only with `create`).")
    held: bool = Field(description="It has a production or branch deployment whose blobs an "
                       "incremental upload reuses; false: send the whole bundle instead.")
    features: list[str] = Field(default=[], description="What this server's uploads also "
                                "take: `finish-blobs`, the last batch of blobs as finish's "
                                "body; `list-gzip`, a gzipped file list.")


class TokenCreated(BaseModel):
    token: TokenOut
    secret: str = Field(description="Shown once; only its hash is stored.")


# --- the app ---------------------------------------------------------------------------------
# Patterns are documented, not enforced by the framework: the service's own checks answer a
# bad value with a message that says what a valid one looks like.
SiteName = Annotated[str, Path(description="A site name (a DNS label).", max_length=63,
                               json_schema_extra={"pattern": "^[a-z0-9][a-z0-9-]{0,62}$"})]
DeploymentId = Annotated[str, Path(description="A deployment id.", max_length=64,
                                   json_schema_extra={"pattern": "^[0-9a-z]{26}$"})]
HostName = Annotated[str, Path(description="A host name, e.g. www.example.com.",
                               max_length=253,
                               json_schema_extra={"pattern": "^[A-Za-z0-9.-]{1,253}$"})]
EndpointId = Annotated[str, Path(description="A notification endpoint id.", max_length=64,
                                 json_schema_extra={"pattern": "^ep_[0-9a-z]{26}$"})]
VariableName = Annotated[str, Path(description="A build variable's name.", max_length=128,
                                   json_schema_extra={"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"})]
TokenId = Annotated[str, Path(description="A token id.", max_length=64,
                              json_schema_extra={"pattern": "^[0-9a-z]{26}$"})]
_Wait = Annotated[float, Query(ge=0, le=60, description="Seconds to wait for the deployment "
                               "to end (and move its aliases) before answering: a client "
                               "learns the outcome without polling.")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in ((400, "Bad request"), (401, "No valid token"),
                       (403, "The token does not cover this"), (404, "Not found"),
                       (503, "A backend is unavailable"))
}
# answered before any route, by the HTTP layer (edge/bounded.py), as nginx answers them
for _code, _text in ((414, "The request target is over 8 KiB"),
                     (431, "The request head is over 32 KiB, or a header line over 8 KiB")):
    _ERRORS[_code] = {"description": _text,
                      "content": {"text/plain": {"schema": {"type": "string"}}}}


def _caller(request: Request) -> Token:
    """The calling token (a dependency of every endpoint, so 401 comes before validation)."""
    service: Service = request.app.state.service
    return auth.authenticate(service, auth.secret_from_headers(request.headers))


Caller = Annotated[Token, Depends(_caller)]


def _errors(*extra: int) -> dict[int | str, dict[str, Any]]:
    more = {409: "Conflict", 413: "Bundle too large", 422: "Bundle rejected"}
    return {**_ERRORS, **{c: {"model": ErrorBody, "description": more[c]} for c in extra}}


def routes(service: Service) -> list[Any]:
    """The API as one mount, for build_app's control plane."""
    mount = Mount("/api", app=with_debug_flag(create_api(service)))
    # a decoded path may hold a newline (%0A); let those reach the API's JSON 404 too
    mount.path_regex = re.compile(mount.path_regex.pattern, re.DOTALL)
    return [mount]


def create_api(service: Service) -> FastAPI:
    api = FastAPI(title="pushsite API", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", description=__doc__ or "",
                  responses=_ERRORS)
    install_error_handlers(api)
    api.state.service = service
    _offline_docs(api)

    view = _Views(service)
    # uploads wait on their senders in threads of their own, so slow ones cannot starve the
    # pool that every other endpoint runs in (made on first use: it needs the event loop)
    uploads: list[anyio.CapacityLimiter | None] = [None]

    # sites ---------------------------------------------------------------------------------
    @api.get("/sites", response_model=SiteList, tags=["sites"])
    def list_sites(token: Caller, after: Annotated[str | None, Query(max_length=63)] = None,
                   limit: Annotated[int, Query(ge=1, le=SITE_PAGE)] = SITE_PAGE,
                   ) -> dict[str, Any]:
        """Sites the token covers, by name, a page at a time: `next_after` names the next
        page's `after`."""
        if token.site is not None:  # a site's token covers that one site
            page = []
            if after is None or token.site > after:
                with contextlib.suppress(SiteNotFound):
                    page = [service.state.get_site(token.site)]
            return {"sites": [view.site(s) for s in page], "next_after": None}
        page = service.state.list_sites(after=after, limit=limit)
        return {"sites": [view.site(s) for s in page],
                "next_after": page[-1].name if len(page) == limit else None}

    @api.post("/sites", status_code=201, response_model=SiteOut, tags=["sites"],
              responses=_errors(409))
    def create_site(token: Caller, body: SiteIn) -> dict[str, Any]:
        """Create a site (admin)."""
        auth.require(token, names.check_site_name(body.name), "admin")
        return view.site(service.create_site(body.name, body.production_branch))

    @api.get("/sites/{site}", response_model=SiteOut, tags=["sites"])
    def get_site(token: Caller, site: SiteName) -> dict[str, Any]:
        """A site, its aliases and settings."""
        return view.site(service.site(_covered(token, site)))

    @api.patch("/sites/{site}", response_model=SiteOut, tags=["sites"])
    def update_site(token: Caller, site: SiteName, body: SiteSettingsIn) -> dict[str, Any]:
        """Change a site's settings (admin); fields left out stay as they are."""
        record = service.update_site(
            _covered(token, site, "admin"), production_branch=body.production_branch,
            tags=body.deploy_tags, webhook_base_url=body.webhook_base_url,
            webhook_access_token=body.webhook_access_token, webhook_repo=body.webhook_repo,
            reject_failed_pushes=body.reject_failed_pushes)
        return view.site(record)

    @api.put("/sites/{site}/lock", response_model=SiteOut, tags=["sites"])
    def lock_site(token: Caller, site: SiteName) -> dict[str, Any]:
        """Lock production: deployments of the production branch become ready and do not go
        live until promoted (a rollback stays put)."""
        return view.site(service.lock(_covered(token, site)))

    @api.delete("/sites/{site}/lock", response_model=SiteOut, tags=["sites"])
    def unlock_site(token: Caller, site: SiteName) -> dict[str, Any]:
        """Unlock production: the next production-branch deployment goes live again."""
        return view.site(service.lock(_covered(token, site), False))

    @api.delete("/sites/{site}", response_model=Deleted, tags=["sites"], responses=_errors(409))
    def delete_site(token: Caller, site: SiteName) -> dict[str, Any]:
        """Delete a site with its aliases, domains, deployments and logs (admin).

        Its git repository goes too; blobs stay until the next prune. A site with a queued or
        running deployment is kept.
        """
        service.delete_site(_covered(token, site, "admin"))
        return {"ok": True, "deleted": site}

    @api.get("/sites/{site}/env", response_model=VariableList, tags=["sites"])
    def list_variables(token: Caller, site: SiteName) -> dict[str, Any]:
        """The variables the site's builds see (admin); a secret's value shows as ••••."""
        return {"variables": service.variables(_covered(token, site, "admin"))}

    @api.put("/sites/{site}/env/{name}", response_model=VariableOut, tags=["sites"])
    def set_variable(token: Caller, site: SiteName, name: VariableName,
                     body: VariableIn) -> dict[str, Any]:
        """Set a build variable (admin); the answer never holds a secret's value."""
        return service.set_variable(_covered(token, site, "admin"), name, body.value,
                                    secret=body.secret)

    @api.delete("/sites/{site}/env/{name}", response_model=Deleted, tags=["sites"])
    def unset_variable(token: Caller, site: SiteName, name: VariableName) -> dict[str, Any]:
        """Remove a build variable (admin)."""
        service.unset_variable(_covered(token, site, "admin"), name)
        return {"ok": True, "deleted": name}

    @api.get("/sites/{site}/notifications", response_model=EndpointList, tags=["notifications"])
    def list_endpoints(token: Caller, site: SiteName) -> dict[str, Any]:
        """The site's notification endpoints (never their secrets)."""
        found = service.list_endpoints(_covered(token, site))
        return {"endpoints": [e.to_dict() for e in found]}

    @api.post("/sites/{site}/notifications", status_code=201, response_model=EndpointOut,
              tags=["notifications"])
    def add_endpoint(token: Caller, site: SiteName, body: EndpointIn) -> dict[str, Any]:
        """Send the site's events to a URL (admin); the answer holds its secret, once."""
        endpoint = service.add_endpoint(_covered(token, site, "admin"), body.url, body.events,
                                        body.format)
        return endpoint.to_dict(secret=True)

    @api.delete("/sites/{site}/notifications/{endpoint_id}", response_model=Deleted,
                tags=["notifications"])
    def remove_endpoint(token: Caller, site: SiteName, endpoint_id: EndpointId) -> dict[str, Any]:
        """Stop telling an endpoint (admin)."""
        service.remove_endpoint(_covered(token, site, "admin"), endpoint_id)
        return {"ok": True, "deleted": endpoint_id}

    @api.get("/sites/{site}/notifications/{endpoint_id}/deliveries",
             response_model=DeliveryList, tags=["notifications"])
    def list_deliveries(token: Caller, site: SiteName, endpoint_id: EndpointId,
                        limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
        """The endpoint's delivery log, newest first: outcome, status, latency, attempt."""
        found = service.deliveries(_covered(token, site), endpoint_id, limit)
        return {"deliveries": [d.to_dict() for d in found]}

    @api.get("/sites/{site}/domains", response_model=DomainList, tags=["sites"])
    def list_domains(token: Caller, site: SiteName) -> dict[str, Any]:
        """The site's custom domains, each pending or approved (only approved ones are
        served)."""
        return view.domains(_covered(token, site))

    @api.put("/sites/{site}/domains/{host}", response_model=DomainList, tags=["sites"],
             responses=_errors(409))
    def add_domain(token: Caller, site: SiteName,
                   host: HostName) -> dict[str, Any]:
        """Claim a custom domain for the site (admin); a host belongs to one site at most,
        and the control plane's names, IP addresses and names under the base domain to none.
        An admin token for every site approves it at once; one limited to the site leaves it
        pending."""
        service.add_domain(_covered(token, site, "admin"), host, approve=token.site is None)
        return view.domains(site)

    @api.post("/sites/{site}/domains/{host}/approve", response_model=DomainList,
              tags=["sites"])
    def approve_domain(token: Caller, site: SiteName, host: HostName) -> dict[str, Any]:
        """Approve a pending claim, so that the edge serves it (an admin token for every
        site: a site's own authority never approves its claims)."""
        auth.require_global_admin(token)
        service.approve_domain(names.check_site_name(site), host)
        return view.domains(site)

    @api.post("/sites/{site}/domains/{host}/verify", response_model=DomainList,
              tags=["sites"], responses=_errors(409))
    def verify_domain(token: Caller, site: SiteName, host: HostName) -> dict[str, Any]:
        """Approve the site's claim (claiming the host first when free) if DNS proves control
        of it: a TXT record _pushsite-challenge.<host> holding the site's `challenge`."""
        _covered(token, site)
        scope = ADMIN_SCOPE if "admin" in token.scopes and token.site is None \
            else site_scope(site)
        service.verify_domain(site, host, scope=scope)
        return view.domains(site)

    @api.delete("/sites/{site}/domains/{host}", response_model=DomainList, tags=["sites"])
    def remove_domain(token: Caller, site: SiteName,
                      host: HostName) -> dict[str, Any]:
        """Release a custom domain (admin)."""
        service.remove_domain(_covered(token, site, "admin"), host)
        return view.domains(site)

    @api.post("/sites/{site}/rollback", response_model=DeploymentOut, tags=["actions"],
              responses=_errors(409))
    def rollback_site(token: Caller, site: SiteName,
                      lock: Annotated[bool, Query(description="Also lock production, so the "
                                                  "next push does not replace the rollback."
                                                  )] = False) -> dict[str, Any]:
        """Point production back at the ready deployment before the live one."""
        deployment = service.rollback(_covered(token, site))
        if lock:
            service.lock(site)
        return view.deployment(deployment)

    @api.post("/sites/{site}/prune", response_model=PruneOut, tags=["actions"])
    def prune_site(token: Caller, site: SiteName,
                   keep: Annotated[int, Query(ge=1, le=100_000)]) -> dict[str, int]:
        """Delete all but the `keep` newest ready deployments and unused blobs (admin)."""
        return service.prune(_covered(token, site, "admin"), keep)

    @api.get("/sites/{site}/logs", response_model=LogSearch, tags=["logs"])
    def search_logs(token: Caller, site: SiteName,
                    q: Annotated[str, Query(min_length=1, max_length=500)],
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        """Search every deployment log of a site (words, all must match), newest first."""
        record = service.site(_covered(token, site))
        if any(ord(c) < 32 for c in q):
            raise ConfigError(f"the search {q!r} holds a control character; search for words")
        lines = service.state.search_logs(record.name, q, limit=limit)
        return {"site": record.name, "query": q, "lines": [_line(x) for x in lines]}

    # deployments ---------------------------------------------------------------------------
    @api.get("/sites/{site}/deploys", response_model=DeploymentPage, tags=["deployments"])
    def list_deployments(
        token: Caller, site: SiteName, branch: str | None = None,
        status: Status | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: Annotated[str | None, Query(max_length=64)] = None,
    ) -> dict[str, Any]:
        """A site's deployments, newest first; page with `before`; `branch` keeps one
        branch's."""
        record = service.site(_covered(token, site))
        if branch is not None:
            names.check_branch_name(branch)
        rows = service.state.list_deployments(record.name, branch=branch, status=status,
                                              limit=limit, before=before)
        return {"deployments": view.deployments(record, rows),
                "next_before": rows[-1].id if len(rows) == limit else None}

    @api.post("/sites/{site}/deploys", status_code=202, response_model=DeploymentOut,
              tags=["actions"], responses={**_errors(413, 422), 200: {
                  "model": DeploymentOut, "description": "It ended within `wait`."}},
              openapi_extra={"requestBody": {"required": True, "description": "The bundle: a "
                             "tar.gz as `git archive` makes it, streamed.", "content": {
                                 "application/gzip": {"schema": {"type": "string",
                                                                 "format": "binary"}}}}})
    async def upload(
        request: Request, token: Caller, site: SiteName,
        branch: Annotated[str | None, Query(max_length=255)] = None,
        message: Annotated[str, Query(max_length=2000)] = "",
        create: Annotated[bool, Query(description="Create the site if it does not exist "
                                      "(a token for every site); without it an unknown "
                                      "site is 404.")] = False,
        wait: _Wait = 0.0,
    ) -> JSONResponse:
        """Upload a bundle as a new deployment; 202 once it is queued (Location: the deployment),
        or with `wait`, 200 as soon as it has ended within that time."""
        auth.require(token, names.check_site_name(site))
        if create and token.site is not None:
            raise Forbidden(f"token {token.name!r} is limited to site {token.site!r} and may "
                            "not create sites; use a token made for every site")
        if not create:  # before the body is read: a typo is refused at once
            await anyio.to_thread.run_sync(service.deploy_target, site)
        reader = await _BodyReader.start(request.stream(), _upload_limit(service),
                                         service.config.upload_idle)
        if uploads[0] is None:
            uploads[0] = anyio.CapacityLimiter(_MAX_UPLOADS)
        deployment = await anyio.to_thread.run_sync(
            lambda: service.accept(site, cast(BinaryIO, reader), branch=branch, message=message,
                                   source="api", receiving=True), limiter=uploads[0])
        return await _answer_when_ended(request, view, deployment, wait)

    # incremental uploads (service/uploads.py): the list, the blobs the server lacks, finish
    @api.get("/sites/{site}/uploads/basis", response_model=UploadBasis, tags=["actions"])
    def upload_basis(token: Caller, site: SiteName,
                     branch: Annotated[str | None, Query(max_length=255)] = None,
                     create: bool = False) -> dict[str, Any]:
        """Asked before a client hashes its files: whether the site exists and holds a
        production or branch deployment an upload could reuse blobs of (else a client sends
        the whole bundle to .../deploys). Checks the token and the site as an upload would."""
        if token.site not in (None, site):
            raise Forbidden(f"this token is limited to site {token.site!r}, not {site!r}; use "
                            "a token made for that site or for every site")
        if create and token.site is not None:
            raise Forbidden(f"token {token.name!r} is limited to site {token.site!r} and may "
                            "not create sites; use a token made for every site")
        return {**service.upload_basis(_covered(token, site), branch=branch, create=create),
                "features": list(UPLOAD_FEATURES)}

    lists = APIRouter(route_class=_GzipBodyRoute)  # a list may come gzipped

    @lists.post("/sites/{site}/uploads", status_code=201, response_model=UploadStarted,
                tags=["actions"], responses=_errors(413, 422))
    def start_upload(token: Caller, site: SiteName, body: UploadIn) -> dict[str, Any]:
        """Send a deploy's file list (it may be gzipped: `Content-Encoding: gzip`); the
        answer names the blobs to upload (the rest the server holds already). Its deployment
        (id: the upload's) is `receiving` until `finish` queues it; a client gone for a
        lease has it failed."""
        if body.create and token.site is not None:
            raise Forbidden(f"token {token.name!r} is limited to site {token.site!r} and may "
                            "not create sites; use a token made for every site")
        upload_id, missing = service.start_upload(
            _covered(token, site), body.files,
            branch=body.branch, message=body.message, strip_top=body.strip_top,
            create=body.create)
        return {"upload": upload_id, "missing": missing}

    api.include_router(lists)

    @api.put("/sites/{site}/uploads/{upload_id}/blobs", response_model=BlobsIn,
             tags=["actions"], responses=_errors(413, 422),
             openapi_extra={"requestBody": {"required": True, "description": "Asked-for "
                            "blobs, each as a line `<sha256> <size>` then its bytes.",
                            "content": {"application/octet-stream": {"schema": {
                                "type": "string", "format": "binary"}}}}})
    async def put_blobs(request: Request, token: Caller, site: SiteName,
                        upload_id: DeploymentId) -> dict[str, Any]:
        """Upload a batch of asked-for blobs (streamed); a blob not asked for, or whose size
        or content is not what the list said, discards the whole upload (422)."""
        _covered(token, site)
        reader = _blob_reader(request, service)
        if uploads[0] is None:
            uploads[0] = anyio.CapacityLimiter(_MAX_UPLOADS)
        count = await anyio.to_thread.run_sync(
            lambda: service.receive_blobs(site, upload_id, reader), limiter=uploads[0])
        return {"received": count}

    @api.post("/sites/{site}/uploads/{upload_id}/finish", status_code=202,
              response_model=DeploymentOut, tags=["actions"],
              responses={**_errors(413, 422), 200: {"model": DeploymentOut,
                                                    "description": "It ended within `wait`."}},
              openapi_extra={"requestBody": {"required": False, "description": "Optional: "
                             "the last batch of asked-for blobs, as a PUT of blobs sends "
                             "them (one request less for a small redeploy).", "content": {
                                 "application/octet-stream": {"schema": {
                                     "type": "string", "format": "binary"}}}}})
    async def finish_upload(request: Request, token: Caller, site: SiteName,
                            upload_id: DeploymentId, wait: _Wait = 0.0) -> JSONResponse:
        """Queue the deployment once every asked-for blob has come (202, Location: it), or
        with `wait`, answer 200 as soon as it has ended within that time. A body is a last
        batch of blobs, received first under the PUT's rules (a lie discards the upload)."""
        name = _covered(token, site)
        if _has_body(request):
            if uploads[0] is None:
                uploads[0] = anyio.CapacityLimiter(_MAX_UPLOADS)
            await anyio.to_thread.run_sync(
                lambda: service.receive_blobs(name, upload_id, _blob_reader(request, service)),
                limiter=uploads[0])
        def finish() -> tuple[Deployment, dict[str, Any] | None]:
            """With `wait`, a small one starts now, and a smaller one ends here (spliced:
            service/splicing.py), answered in the same thread hop, with no wait loop."""
            deployment = service.finish_upload(name, upload_id, run_now=wait > 0)
            ended = wait > 0 and view.settled(deployment)
            return deployment, view.deployment(deployment) if ended else None

        deployment, data = await anyio.to_thread.run_sync(finish)
        if data is not None:
            return _created(request, data, 200)
        return await _answer_when_ended(request, view, deployment, wait)

    @api.get("/deployments/{deployment_id}", response_model=DeploymentOut, tags=["deployments"])
    def get_deployment(token: Caller, deployment_id: DeploymentId) -> dict[str, Any]:
        """One deployment, with `exit_code` once it has finished."""
        return view.deployment(view.covered_deployment(token, deployment_id))

    @api.get("/deployments/{deployment_id}/files", response_model=FilePage,
             tags=["deployments"])
    def list_files(
        token: Caller, deployment_id: DeploymentId,
        prefix: Annotated[str, Query(max_length=1024)] = "",
        after: Annotated[str | None, Query(max_length=1024)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, Any]:
        """The files a deployment publishes, sorted by path; page with `after`."""
        deployment = view.covered_deployment(token, deployment_id)
        return _file_page(_file_rows(service, deployment.id), prefix, after, limit)

    @api.get("/deployments/{deployment_id}/log", response_model=LogPage, tags=["logs"])
    def get_log(
        token: Caller, deployment_id: DeploymentId,
        after: Annotated[int, Query(ge=0, description="Only lines with a larger seq.")] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, Any]:
        """A deployment's log lines, oldest first, with its status (poll with `after`)."""
        deployment = view.covered_deployment(token, deployment_id)
        lines = service.state.get_logs(deployment.id, after=after, limit=limit)
        return {"lines": [_line(x) for x in lines],
                "last_seq": lines[-1].seq if lines else after,
                "status": deployment.status, "finished": view.settled(deployment)}

    @api.get("/deployments/{deployment_id}/diff", response_model=DiffOut, tags=["deployments"])
    def diff(token: Caller, deployment_id: DeploymentId,
             against: Annotated[str, Query(max_length=64, description="The older deployment.")],
             ) -> dict[str, Any]:
        """Paths added, changed and removed since the `against` deployment, with sizes."""
        new = service.manifest(view.covered_deployment(token, deployment_id).id)
        old = service.manifest(view.covered_deployment(token, against).id)
        return _diff(new, old)

    @api.post("/deployments/{deployment_id}/activate", response_model=DeploymentOut,
              tags=["actions"], responses=_errors(409))
    def activate(token: Caller, deployment_id: DeploymentId) -> dict[str, Any]:
        """Point production at this ready deployment (a rollback or roll-forward)."""
        deployment = view.covered_deployment(token, deployment_id)
        return view.deployment(service.promote(deployment.id))

    @api.post("/deployments/{deployment_id}/cancel", response_model=DeploymentOut,
              tags=["actions"])
    def cancel(token: Caller, deployment_id: DeploymentId) -> dict[str, Any]:
        """Cancel a queued or running deployment; the live site stays as it is."""
        return view.deployment(service.cancel(view.covered_deployment(token, deployment_id).id))

    @api.post("/deployments/{deployment_id}/redeploy", status_code=201,
              response_model=DeploymentOut, tags=["actions"], responses=_errors(409))
    def redeploy(request: Request, token: Caller, deployment_id: DeploymentId) -> JSONResponse:
        """A new deployment with this one's files, on its branch; it goes live at once."""
        deployment = service.redeploy(view.covered_deployment(token, deployment_id).id)
        return _created(request, view.deployment(deployment), 201)

    # tokens ----------------------------------------------------------------------------------
    @api.get("/tokens", response_model=TokenList, tags=["tokens"])
    def list_tokens(token: Caller) -> dict[str, Any]:
        """Tokens (never their secrets) this admin token may manage."""
        auth.require(token, token.site, "admin")
        return {"tokens": [_token(t) for t in service.state.list_tokens()
                           if token.site is None or t.site == token.site]}

    @api.post("/tokens", status_code=201, response_model=TokenCreated, tags=["tokens"])
    def create_token(token: Caller, body: TokenIn) -> dict[str, Any]:
        """Create a token (admin); its secret is in this answer only."""
        if body.site is None:
            auth.require_global_admin(token)
        else:
            auth.require(token, names.check_site_name(body.site), "admin")
        secret = service.create_token(body.name, body.site, sorted(set(body.scopes)))
        record = service.state.find_token(_hash(secret))
        assert record is not None
        return {"token": _token(record), "secret": secret}

    @api.delete("/tokens/{token_id}", response_model=Deleted, tags=["tokens"])
    def delete_token(token: Caller, token_id: TokenId
                     ) -> dict[str, Any]:
        """Revoke a token (admin)."""
        auth.require(token, token.site, "admin")
        return {"ok": True, "deleted": service.delete_token(token_id, site=token.site).id}

    @api.get("/whoami", response_model=TokenOut, tags=["tokens"])
    def whoami(token: Caller) -> dict[str, Any]:
        """The token this request carries (to check a token works)."""
        return _token(token)

    # FastAPI's documented way to customise the schema is to replace this method
    api.openapi = lambda: _openapi(api)  # type: ignore[method-assign]
    return api


# --- helpers ---------------------------------------------------------------------------------
def _covered(token: Token, site: str, scope: str = "deploy") -> str:
    auth.require(token, names.check_site_name(site), scope)
    return site


class _Views:
    """Records as API answers (a deployment with its URLs and exit code; a site)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def covered_deployment(self, token: Token, deployment_id: str) -> Deployment:
        if not ids.looks_like_id(deployment_id):
            raise DeploymentNotFound(f"no deployment with id {deployment_id!r}: an id is 26 "
                                     "lowercase letters and digits, as `pushsite deploys` shows")
        deployment = self.service.state.get_deployment(deployment_id)
        auth.require(token, deployment.site)
        return deployment

    def deployments(self, site: Site, rows: list[Deployment]) -> list[dict[str, Any]]:
        """Many of one site's deployments (its record and production alias read once)."""
        live = self.service.state.get_alias(site.name, PRODUCTION)
        return [self.deployment(d, site=site, live=live.deployment_id if live else "")
                for d in rows]

    def deployment(self, deployment: Deployment, *, site: Site | None = None,
                   live: str | None = None) -> dict[str, Any]:
        data = deployment.to_dict()
        data.pop("bundle_key", None)
        kind = failure_kind(deployment)
        data["error_kind"] = kind.__name__ if kind else None
        data["exit_code"] = (None if not self.settled(deployment)
                             else kind.exit_code if kind else 0)
        config = self.service.config
        if site is None:
            try:
                site = self.service.state.get_site(deployment.site)
            except NotFound:
                site = None
        production = site.production_branch if site is not None else ""
        if live is None:
            alias = self.service.state.get_alias(deployment.site, PRODUCTION)
            live = alias.deployment_id if alias else ""
        data["production"] = live == deployment.id
        data["context"] = ("draft" if deployment.draft else
                           "production" if deployment.branch == production else "preview")
        # a locked production left it ready: the production URL does not serve it
        held = (site is not None and site.settings.locked and deployment.status != Status.LIVE)
        data["urls"] = {
            "deployment": config.site_url(f"{deployment.id}--{deployment.site}"),
            "branch": config.site_url(f"{names.branch_label(deployment.branch)}--"
                                      f"{deployment.site}"),
            "production": (config.site_url(deployment.site)
                           if deployment.branch == production and not held else None)}
        return data

    def settled(self, deployment: Deployment) -> bool:
        """Finished, and done moving aliases: a run marks a deployment ready just before it
        moves the aliases and makes it live, then logs its "done" line (a live one is
        settled by that line too: a `wait` answered before it showed a log without its
        last lines)."""
        if not deployment.status.finished:
            return False
        if deployment.status not in (Status.READY, Status.LIVE) or deployment.finished is None:
            return True
        if time.time() - deployment.finished > _SETTLE_SECONDS:
            return True
        return any(x.stage == "done" for x in self.service.state.get_logs(deployment.id))

    def domains(self, site: str) -> dict[str, Any]:
        claims = self.service.domains(site)
        return {"site": site, "domains": [claim.host for claim in claims],
                "claims": [claim.to_dict() for claim in claims],
                "challenge": self.service.domain_token(site)}

    def site(self, site: Site) -> dict[str, Any]:
        hook = site.settings.webhook
        return {
            "name": site.name, "production_branch": site.production_branch,
            "created": site.created, "domains": site.domains,
            "settings": {"deploy_tags": site.settings.tags,
                         "webhook_base_url": hook.base_url,
                         "webhook_access_token_set": bool(hook.access_token),
                         "webhook_repo": hook.repo,
                         "webhook_last_ignored_repo": hook.last_ignored_repo,
                         "locked": site.settings.locked,
                         "reject_failed_pushes": site.settings.reject_failed_pushes},
            "aliases": [{"name": a.name, "deployment_id": a.deployment_id, "updated": a.updated}
                        for a in self.service.state.list_aliases(site.name)],
            "url": self.service.config.site_url(site.name),
        }


def _file_rows(service: Service, deployment_id: str) -> tuple[int, FilesFrom]:
    """A deployment's file count and its (path, entry row) pairs in path order from a given
    path on. A big site's manifest is read through its index by path (pathindex.py), a
    block at a time, never parsed whole (0.4 s for each page of a 70,000-file site)."""
    try:
        index = pathindex.PathIndex(partial(service.store.get,
                                            pathindex.index_key(deployment_id)))
    except NotFound:  # a small site's plain JSON manifest: parsed in a few ms
        files = service.manifest(deployment_id).files
        paths = sorted(files)

        def rows_from(path: str) -> Iterator[tuple[str, list[Any]]]:
            for p in paths[bisect.bisect_left(paths, path):]:
                yield p, files[p].to_json()

        return len(paths), rows_from
    return len(index), index.rows_from


def _file_page(listing: tuple[int, FilesFrom], prefix: str, after: str | None,
               limit: int) -> dict[str, Any]:
    """One page of list_files: the walk starts where the page does and stops one row past
    it; with a prefix it walks the prefix's range (its total counts every match)."""
    count, rows_from = listing
    page: list[tuple[str, list[Any]]] = []
    more = False
    total = 0
    for path, row in rows_from(prefix or after or ""):
        if not path.startswith(prefix):
            break
        total += 1
        if after is not None and path <= after:
            continue
        if len(page) < limit:
            page.append((path, row))
        else:
            more = True
            if not prefix:
                break
    if not prefix:
        total = count
    files = []
    for path, row in page:
        entry = FileEntry.from_json(row)
        files.append({"path": path, "size": entry.size, "type": entry.type,
                      "hash": entry.hash, "encodings": entry.encodings})
    return {"files": files, "total": total, "next_after": page[-1][0] if more else None}


_STATUS_KINDS: dict[Status, type[PushsiteError]] = {
    Status.FAILED: errors.DeploymentFailed,
    Status.TIMED_OUT: errors.DeploymentTimedOut,
    Status.CANCELLED: errors.DeploymentCancelled,
}


def failure_kind(deployment: Deployment) -> type[PushsiteError] | None:
    """The error class a finished, unsuccessful deployment stopped with (None otherwise).

    The service stores it on the deployment when it fails (`error_kind`); one stopped without
    a class (superseded, or recorded by an older version) answers for its status.
    """
    fallback = _STATUS_KINDS.get(deployment.status)
    if fallback is None:
        return None
    if deployment.error_kind == "internal":
        return PushsiteError
    named = getattr(errors, deployment.error_kind, None) if deployment.error_kind else None
    if isinstance(named, type) and issubclass(named, PushsiteError):
        return named
    return fallback


def _diff(new: Manifest, old: Manifest) -> dict[str, Any]:
    added, changed, removed = [], [], []
    unchanged = 0
    for path in sorted(new.files.keys() | old.files.keys()):
        now, before = new.files.get(path), old.files.get(path)
        if before is None and now is not None:
            added.append({"path": path, "size": now.size})
        elif now is None and before is not None:
            removed.append({"path": path, "size": before.size})
        elif now is not None and before is not None:
            if now.hash != before.hash:
                changed.append({"path": path, "size": now.size, "old_size": before.size})
            else:
                unchanged += 1
    return {"deployment": new.deployment_id, "against": old.deployment_id, "added": added,
            "changed": changed, "removed": removed, "unchanged": unchanged}


async def _answer_when_ended(request: Request, view: _Views, deployment: Deployment,
                             wait: float) -> JSONResponse:
    """A queued deployment's answer: 202 at once, or 200 once it has ended if that happens
    within `wait` seconds. The state is looked at every few milliseconds, but read only after
    a commit when it can tell cheaply (SQLite's change token; DynamoDB every 50 ms): a poll
    from the client cost up to its growing pause, ~0.3 s, after the deployment was live."""
    from pushsite.state import Watchable

    state = view.service.state

    def ended() -> dict[str, Any] | None:
        """The deployment's answer once it has ended and settled, else None (one thread
        hand-off a look: each look used to be two, and the answer four more)."""
        current = state.get_deployment(deployment.id)
        if not view.settled(current):
            return None
        # read again: a ready one read just before it went live is settled by the "done"
        # line logged after that
        return view.deployment(state.get_deployment(deployment.id))

    deadline = time.monotonic() + wait
    seen: object = None
    while wait > 0:
        mark = state.change_token() if isinstance(state, Watchable) else None
        if mark is None or mark != seen:
            seen = mark
            data = await anyio.to_thread.run_sync(ended)
            if data is not None:
                return _created(request, data, 200)
        if time.monotonic() >= deadline:
            break
        await anyio.sleep(_WAIT_STEP if mark is not None else _WAIT_STEP_UNWATCHED)
    return _created(request, await anyio.to_thread.run_sync(view.deployment, deployment), 202)


def _created(request: Request, deployment: dict[str, Any], status: int) -> JSONResponse:
    """A new deployment's answer, with its URL in Location."""
    root = request.scope.get("root_path", "").rstrip("/")  # "/api" where it is mounted
    location = str(request.url.replace(path=f"{root}/deployments/{deployment['id']}", query=""))
    return JSONResponse(DeploymentOut.model_validate(deployment).model_dump(mode="json"),
                        status_code=status, headers={"Location": location})


def _line(line: LogLine) -> dict[str, Any]:
    return {"deployment_id": line.deployment_id, "seq": line.seq, "time": line.time,
            "level": line.level, "stage": line.stage, "message": line.message,
            "fields": line.fields}


def _token(token: Token) -> dict[str, Any]:
    return {"id": token.id, "name": token.name, "site": token.site, "scopes": token.scopes,
            "created": token.created}


def _hash(secret: str) -> str:
    from pushsite.service.tokens import hash_token

    return hash_token(secret)


class _GzipBody(Request):
    """A request whose JSON body may come gzipped (Content-Encoding: gzip): a 1,000-file
    list is ~160 KB of JSON, ~60 KB gzipped. Inflated up to a bound (a list of max_files
    rows), so a small bomb cannot fill memory."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            raw = await super().body()
            coding = self.headers.get("content-encoding", "identity").strip().lower()
            if coding == "gzip":
                raw = _gunzip(raw, _list_limit(self.app.state.service))
            elif coding != "identity":
                raise HTTPException(415, f"Content-Encoding {coding!r} is not taken here; "
                                    "send the list as it is or gzipped")
            self._body = raw
        return self._body


class _GzipBodyRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_gzip(request: Request) -> Response:
            return await handler(_GzipBody(request.scope, request.receive))

        return with_gzip


def _list_limit(service: Service) -> int:
    """The most bytes a file list may inflate to: max_files rows of a generous size."""
    return service.config.max_files * 2048 + (1 << 20)


def _gunzip(data: bytes, limit: int) -> bytes:
    import zlib

    inflater = zlib.decompressobj(wbits=31)
    parts: list[bytes] = []
    size = 0
    try:
        while not inflater.eof:  # a MiB at a time: a bound as large as the limit is a
            part = inflater.decompress(data, 1 << 20)  # buffer that large
            if not part and not data:
                break  # nothing more comes: cut off
            parts.append(part)
            data = inflater.unconsumed_tail
            size += len(part)
            if size > limit:
                raise HTTPException(413, f"the list inflates to more than {limit} bytes (a "
                                    "list of max_files rows)")
    except zlib.error as exc:
        raise HTTPException(400, f"the body is not valid gzip ({exc})") from None
    if not inflater.eof or inflater.unused_data:
        raise HTTPException(400, "the gzipped body is cut off or has bytes after its end")
    return b"".join(parts)


def _has_body(request: Request) -> bool:
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0") not in ("", "0")


def _blob_reader(request: Request, service: Service) -> BinaryIO:
    """A batch of blobs in a request's body, as a blocking file (service/uploads.receive)."""
    return cast(BinaryIO, io.BufferedReader(
        _BodyReader(request.stream(), b"", _upload_limit(service),
                    service.config.upload_idle), 1 << 20))


def _upload_limit(service: Service) -> int:
    """The most bytes an upload may have: the unpacked limit plus tar's per-file overhead."""
    config = service.config
    return (config.max_total_mb << 20) + config.max_files * 1536 + (1 << 20)


class _BodyReader(io.RawIOBase):
    """The request body as a blocking file, for the service running in a worker thread.

    Each read pulls the next chunk from the event loop, so the body is never held whole; the
    first bytes are checked to be gzip before anything is staged.
    """

    def __init__(self, chunks: AsyncIterator[bytes], first: bytes, limit: int,
                 idle: float) -> None:
        super().__init__()
        self._chunks = chunks
        self._buffer = first
        self._total = len(first)
        self._limit = limit
        self._idle = idle
        self._done = False

    @classmethod
    async def start(cls, chunks: AsyncIterator[bytes], limit: int,
                    idle: float) -> _BodyReader:
        first = b""
        while len(first) < len(_GZIP_MAGIC):
            chunk = await cls._next(chunks, idle)
            if chunk is None:
                break
            first += chunk
        if not first:
            raise BundleRejected("the upload was empty: send the bundle (a tar.gz, e.g. from "
                                 "`git archive --format=tar.gz HEAD`) as the request body")
        if not first.startswith(_GZIP_MAGIC):
            raise BundleRejected(f"the upload is not gzip (it starts with {first[:8]!r}); send "
                                 "a tar.gz bundle as the request body")
        return cls(chunks, first, limit, idle)

    @staticmethod
    async def _next(chunks: AsyncIterator[bytes], idle: float) -> bytes | None:
        """The next bytes; a client silent for `idle` seconds (upload_idle) is dropped, so a
        vanished one does not hold an upload slot and a worker thread for ever."""
        try:
            while True:
                with anyio.fail_after(idle):
                    chunk = await chunks.__anext__()
                if chunk:
                    return chunk
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise BundleRejected(f"nothing arrived for {idle:g} s (the server's upload_idle): "
                                 "the upload is dropped and nothing went live; send it "
                                 "again") from None
        except ClientDisconnect:
            raise BundleRejected("the upload was cut off before its end; send the whole "
                                 "bundle again") from None

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer and not self._done:
            chunk = anyio.from_thread.run(self._next, self._chunks, self._idle)
            if chunk is None:
                self._done = True
                break
            self._total += len(chunk)
            if self._total > self._limit:
                raise BundleTooLarge(f"the upload is over {self._limit} bytes, more than any "
                                     "bundle this server accepts (see max_total_mb)")
            self._buffer = chunk
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def _offline_docs(api: FastAPI) -> None:
    """/docs: Swagger UI from the swagger-ui-bundle package, served here (FastAPI's default
    loads it from a CDN: a blank page without internet, and a request to another host)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.responses import HTMLResponse
    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    api.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @api.get("/docs/openapi.json", include_in_schema=False)
    def docs_schema() -> dict[str, Any]:
        """The schema labelled 3.0 for the packaged Swagger UI (4.15, which refuses 3.1);
        what FastAPI writes renders the same. /openapi.json stays the real 3.1 one."""
        return {**api.openapi(), "openapi": "3.0.3"}

    @api.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}/docs/openapi.json", title="pushsite API",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None})


def _openapi(api: FastAPI) -> dict[str, Any]:
    """FastAPI's description, with the error shape for bad requests and token security."""
    if api.openapi_schema:
        return api.openapi_schema
    schema = get_openapi(title=api.title, version=api.version, description=api.description,
                         routes=api.routes)
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "HTTPValidationError" in str(responses.get("422", "")):
                del responses["422"]  # bad requests answer 400 in the one error shape
            responses.setdefault("400", {"description": "Bad request", "content": {
                "application/json": {"schema": error_ref}}})
    components = schema.setdefault("components", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "A deploy token (`pushsite tokens create`)."},
        "basic": {"type": "http", "scheme": "basic",
                  "description": "Any user name, the deploy token as the password."}}
    schema["security"] = [{"bearer": []}, {"basic": []}]
    schema["servers"] = [{"url": "/api"}]
    api.openapi_schema = schema
    return schema

