"""`pushsite deploy --server URL --token T`: deploy to a remote `pushsite serve` over its API.

The bundle is streamed to `POST /api/sites/<site>/deploys` (chunked, never read whole), then the
deployment is followed by polling its log until it ends. The outcome maps to the same errors,
and so the same exit codes, as a local deploy: the API names the error class of a failed
deployment (`error_kind`, see web/api.py), and an HTTP error maps by its status. When the
timeout passes first, the deployment is cancelled on the server (the live site stays) and the
deploy ends as timed out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import httpx
from rich.markup import escape

from pushsite import __version__, errors, names
from pushsite.errors import (
    BackendUnavailable,
    ConfigError,
    DeploymentFailed,
    DeploymentTimedOut,
    NotAuthorized,
    PushsiteError,
)

POLL_SECONDS = 0.3
_CHUNK = 1 << 20
_BY_STATUS: dict[int, type[PushsiteError]] = {
    400: ConfigError, 401: NotAuthorized, 403: errors.Forbidden, 404: errors.NotFound,
    409: errors.AliasConflict, 413: errors.BundleTooLarge, 422: errors.BundleRejected,
    503: BackendUnavailable,
}
Echo = Callable[..., Any]


def deploy_remote(server: str, token: str, stream: BinaryIO, *, site: str,
                  branch: str | None = None, message: str = "", timeout: float = 900.0,
                  echo: Echo | None = None, create: bool = False) -> dict[str, Any]:
    """Upload a bundle to SERVER and follow the deployment; returns it (with "urls").

    Raises the PushsiteError a local deploy would: BundleRejected for a bad bundle,
    DeploymentTimedOut when `timeout` passes first, NotAuthorized for a bad token, ...
    `echo` (called like rich's Console.print) receives the deployment's log lines. A site
    that does not exist is SiteNotFound, unless `create` (and a token that may create sites).
    """
    base = api_base(server)
    names.check_site_name(site)
    if branch is not None:
        names.check_branch_name(branch)
    if not token:
        raise NotAuthorized("--server needs a deploy token: pass --token or set PUSHSITE_TOKEN "
                            "(create one on the server with `pushsite tokens create`)")
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}", "User-Agent": f"pushsite/{__version__}"}
    with httpx.Client(base_url=base, headers=headers,
                      timeout=httpx.Timeout(60.0, connect=10.0)) as client:
        remote = _Remote(client, base)
        me = remote.call("GET", "/whoami")  # a bad token fails here, before a large upload
        if me.get("site") not in (None, site):
            raise errors.Forbidden(f"this token is limited to site {me['site']!r}, not {site!r}; "
                                   "use a token made for that site or for every site")
        if not create:  # a missing site fails here with the server's hint, before the upload
            remote.call("GET", f"/sites/{site}")
        params = {"message": message, **({"branch": branch} if branch else {}),
                  **({"create": "true"} if create else {})}
        deployment = remote.call("POST", f"/sites/{site}/deploys", params=params,
                                 content=_chunks(stream),
                                 headers={"Content-Type": "application/gzip"})
        return _follow(remote, deployment["id"], deadline, timeout, echo)


def api_base(server: str) -> str:
    """The API root for a --server value (`https://deploy.example.com` -> `.../api`)."""
    url = server.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"invalid --server {server!r}: give the server's URL, e.g. "
                          "https://deploy.example.com or http://127.0.0.1:8000")
    return url if url.endswith("/api") else url + "/api"


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


class _Remote:
    """Calls to the API, with its errors turned into PushsiteErrors."""

    def __init__(self, client: httpx.Client, base: str) -> None:
        self.client = client
        self.base = base

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise BackendUnavailable(
                f"could not reach the pushsite server at {self.base} ({reason}"
                "); check --server and that `pushsite serve` runs there") from exc
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.base}{path} did not answer like a pushsite server (HTTP "
                              f"{response.status_code}); check --server")
        if response.is_success:
            return data
        text = str(data.get("error") or f"the server answered HTTP {response.status_code}")
        cls = _BY_STATUS.get(response.status_code,
                             BackendUnavailable if response.status_code >= 502 else PushsiteError)
        raise cls(text)


def _follow(remote: _Remote, deployment_id: str, deadline: float, timeout: float,
            echo: Echo | None) -> dict[str, Any]:
    """Print new log lines until the deployment ends; cancel it when the deadline passes."""
    after = 0
    while True:
        page = remote.call("GET", f"/deployments/{deployment_id}/log", params={"after": after})
        after = _echo_lines(page, after, echo)
        if page["finished"]:
            break
        if time.monotonic() >= deadline:
            try:
                remote.call("POST", f"/deployments/{deployment_id}/cancel")
            except ConfigError:  # it finished meanwhile: report how it ended
                time.sleep(POLL_SECONDS)
                continue
            raise DeploymentTimedOut(
                f"deployment {deployment_id} did not finish within {timeout:g}s, so it was "
                "cancelled; the live site is unchanged (give a larger --timeout)")
        time.sleep(POLL_SECONDS)
    deployment = remote.call("GET", f"/deployments/{deployment_id}")
    _echo_lines(remote.call("GET", f"/deployments/{deployment_id}/log", params={"after": after}),
                after, echo)
    if deployment.get("exit_code") == 0:
        return deployment
    raise _failure(deployment)


def _echo_lines(page: dict[str, Any], after: int, echo: Echo | None) -> int:
    for line in page["lines"]:
        if echo is not None:
            style = {"warning": "yellow", "error": "red"}.get(line["level"], "dim")
            echo(f"[{style}]{escape(line['stage']):<9}[/] {escape(line['message'])}",
                 highlight=False)
    return int(page.get("last_seq", after))


def _failure(deployment: dict[str, Any]) -> PushsiteError:
    """The error a local deploy would have raised for this finished deployment."""
    named = getattr(errors, str(deployment.get("error_kind")), None)
    cls = named if isinstance(named, type) and issubclass(named, PushsiteError) else \
        DeploymentFailed
    status, error = deployment.get("status"), deployment.get("error") or ""
    if status == "cancelled":
        failure = cls(f"deployment {deployment['id']} was cancelled ({error or 'by a request'})"
                      "; the live site is unchanged")
    else:
        failure = cls(error or f"deployment {deployment['id']} ended {status}")
    failure.deployment = deployment  # type: ignore[attr-defined]  # for `--json`
    return failure
