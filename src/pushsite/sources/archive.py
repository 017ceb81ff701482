"""Fetch a pushed commit's tar.gz from the git host's API, streamed straight to a file.

    github      {api}/repos/{owner}/{repo}/tarball/{sha}          Authorization: Bearer <token>
    gitlab      {base}/api/v4/projects/{id|path}/repository/archive.tar.gz?sha={sha}
                                                                  PRIVATE-TOKEN: <token>
    gitea       {base}/api/v1/repos/{owner}/{repo}/archive/{sha}.tar.gz
                                                                  Authorization: token <token>
    bitbucket   {base}/{workspace}/{repo}/get/{sha}.tar.gz        Authorization: Bearer <token>

Redirects are followed by hand so that a token never travels to another origin (GitHub sends
the tarball from codeload.github.com; httpx would keep a PRIVATE-TOKEN header there). 5xx,
429 and connection errors are retried with exponential backoff, rewinding the destination;
401, 403, 404 and other 4xx fail at once with the URL (never the token) and the status.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from pushsite.errors import BundleTooLarge, ConfigError, DeploymentFailed
from pushsite.sources.webhooks import PushEvent

log = logging.getLogger(__name__)

DEFAULT_BASES = {
    "github": "https://api.github.com",
    "gitlab": "https://gitlab.com",
    "bitbucket": "https://bitbucket.org",
    "gitea": "https://gitea.com",
    "forgejo": "https://codeberg.org",
}
CHUNK = 64 * 1024
MAX_REDIRECTS = 5
_CREDENTIALS = ("authorization", "private-token")
_REPO = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+$")
_COMMIT = re.compile(r"^[0-9a-fA-F]{7,64}$")
_HINTS = {
    401: "the git host did not accept the site's access token; set a valid token",
    403: "the site's access token may not read this repository; give it read access",
    404: "check the repository name and the commit, and for a private repository that the "
    "site has an access token that can read it",
}


@dataclass(frozen=True)
class ArchiveSource:
    """Which archive to fetch and how to authenticate; base_url "" means the public host."""

    provider: str
    base_url: str
    repo: str  # "owner/name"; GitLab: the path with namespace
    commit: str
    token: str = ""
    project_id: str = ""  # GitLab: used instead of the path when set


def source_for(event: PushEvent, base_url: str = "", token: str = "") -> ArchiveSource:
    """The archive of the commit a push event names."""
    return ArchiveSource(
        provider=event.provider,
        base_url=base_url,
        repo=event.repo,
        commit=event.commit,
        token=token,
        project_id=event.project_id,
    )


def _check(source: ArchiveSource) -> None:
    if source.provider not in DEFAULT_BASES:
        known = ", ".join(DEFAULT_BASES)
        raise ConfigError(f"unknown git host {source.provider!r}: use one of {known}")
    segments = source.repo.split("/")
    flat = source.provider != "gitlab"  # only GitLab has nested groups
    if not _REPO.match(source.repo) or ".." in segments or (flat and len(segments) != 2):
        raise ConfigError(
            f"invalid repository {source.repo!r} for {source.provider}: expected 'owner/name'"
        )
    if not _COMMIT.match(source.commit):
        raise ConfigError(f"invalid commit {source.commit!r}: expected a hex commit id")
    if source.project_id and not source.project_id.isdigit():
        raise ConfigError(f"invalid GitLab project id {source.project_id!r}: expected digits")
    scheme = urlsplit(source.base_url).scheme if source.base_url else "https"
    if scheme not in ("http", "https"):
        raise ConfigError(
            f"invalid base URL {_redact(source.base_url)!r}: expected http:// or https://"
        )


def archive_request(source: ArchiveSource) -> tuple[str, dict[str, str]]:
    """The URL and headers that fetch the source's tar.gz (the token only in the headers)."""
    _check(source)
    base = (source.base_url or DEFAULT_BASES[source.provider]).rstrip("/")
    repo = "/".join(quote(part, safe="") for part in source.repo.split("/"))
    commit = source.commit
    headers = {"User-Agent": "pushsite", "Accept-Encoding": "identity"}
    if source.provider == "github":
        url = f"{base}/repos/{repo}/tarball/{commit}"
        headers["Accept"] = "application/vnd.github+json"
        headers["X-GitHub-Api-Version"] = "2022-11-28"
        auth = {"Authorization": f"Bearer {source.token}"}
    elif source.provider == "gitlab":
        project = source.project_id or quote(source.repo, safe="")
        url = f"{base}/api/v4/projects/{project}/repository/archive.tar.gz?sha={commit}"
        auth = {"PRIVATE-TOKEN": source.token}
    elif source.provider == "bitbucket":
        url = f"{base}/{repo}/get/{commit}.tar.gz"
        auth = {"Authorization": f"Bearer {source.token}"}
    else:
        url = f"{base}/api/v1/repos/{repo}/archive/{commit}.tar.gz"
        auth = {"Authorization": f"token {source.token}"}
    if source.token:
        headers.update(auth)
    return url, headers


def _redact(url: str) -> str:
    """The URL without any user:password part, fit for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


class _Retry(Exception):
    """A failure worth another try: a 5xx, a 429, a dropped or refused connection."""


def _rewind(dest: BinaryIO, start: int | None, written: int) -> None:
    if start is not None:
        dest.seek(start)
        dest.truncate()
    elif written:
        raise DeploymentFailed(
            "the archive download broke off after the first bytes were written to a "
            "destination that cannot be rewound, so it cannot be retried: try the push again"
        )


def _attempt(
    client: httpx.Client,
    url: str,
    headers: dict[str, str],
    dest: BinaryIO,
    start: int | None,
    max_bytes: int | None,
) -> int:
    """One try, following redirects by hand; returns the bytes written."""
    target, sent = httpx.URL(url), dict(headers)
    for _hop in range(MAX_REDIRECTS + 1):
        with client.stream("GET", target, headers=sent) as response:
            status = response.status_code
            if response.is_redirect and "location" in response.headers:
                following = target.join(response.headers["location"])
                if _origin(following) != _origin(target):
                    sent = {k: v for k, v in sent.items() if k.lower() not in _CREDENTIALS}
                target = following
                continue
            if status >= 500 or status == 429:
                raise _Retry(f"HTTP {status} from {_redact(str(target))}")
            if status >= 300:
                reason = response.reason_phrase or "error"
                hint = _HINTS.get(status, "check the site's git host settings")
                raise DeploymentFailed(
                    f"fetching the archive from {_redact(url)} failed with HTTP {status} "
                    f"{reason}: {hint}"
                )
            written = 0
            try:
                for chunk in response.iter_bytes(CHUNK):
                    written += len(chunk)
                    if max_bytes is not None and written > max_bytes:
                        raise BundleTooLarge(
                            f"the archive from {_redact(url)} is over the limit of {max_bytes} "
                            "bytes: make the site smaller or raise the limit"
                        )
                    dest.write(chunk)
            except httpx.TransportError as error:
                _rewind(dest, start, written)
                raise _Retry(f"{type(error).__name__} after {written} bytes: {error}") from error
            return written
    raise DeploymentFailed(
        f"fetching the archive from {_redact(url)} was redirected more than {MAX_REDIRECTS} "
        "times: check the site's git host base URL"
    )


def fetch_archive(
    source: ArchiveSource,
    dest: BinaryIO,
    *,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 60.0,
    max_bytes: int | None = None,
) -> int:
    """Stream the commit's tar.gz into `dest` (never whole in memory); the bytes written.

    Retries up to `retries` more times, sleeping backoff, 2*backoff, 4*backoff... (at most
    30 s). A seekable `dest` is rewound to where it started before each retry; a pipe that
    already took bytes cannot be, so that failure is final. `timeout` bounds each network
    step (connect, each read), not the whole download. Over `max_bytes`: BundleTooLarge.
    """
    url, headers = archive_request(source)
    start = dest.tell() if dest.seekable() else None
    failure = ""
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for attempt in range(retries + 1):
            if attempt:
                delay = min(backoff * 2 ** (attempt - 1), 30.0)
                log.warning("archive fetch failed (%s); retry %d in %.1fs", failure, attempt, delay)
                time.sleep(delay)
            try:
                return _attempt(client, url, headers, dest, start, max_bytes)
            except _Retry as error:
                failure = str(error)
            except httpx.TransportError as error:  # refused, reset, timed out before a status
                failure = f"{type(error).__name__}: {error}"
    raise DeploymentFailed(
        f"fetching the archive from {_redact(url)} failed {retries + 1} times, last with "
        f"{failure}: the git host may be down; try the push again later"
    )
