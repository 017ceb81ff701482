"""`pushsite deploy --server URL --token T`: deploy to a remote `pushsite serve` over its API.

The bundle is streamed to `POST /api/sites/<site>/deploys` (chunked, never read whole), then the
deployment is followed by polling its log until it ends. The outcome maps to the same errors,
and so the same exit codes, as a local deploy: the API names the error class of a failed
deployment (`error_kind`, see web/api.py), and an HTTP error maps by its status. When the
timeout passes first, the deployment is cancelled on the server (the live site stays) and the
deploy ends as timed out.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import httpx
from rich.markup import escape

from pushsite import __version__, errors, names
from pushsite.deploy.filelist import (
    Listing,
    frame_header,
    list_folder,
    list_tarball,
    tarball_files,
)
from pushsite.deploy.folder import open_source
from pushsite.deploy.hashcache import HashCache
from pushsite.errors import (
    BackendUnavailable,
    BundleRejected,
    ConfigError,
    DeploymentFailed,
    DeploymentTimedOut,
    NotAuthorized,
    PushsiteError,
)
from pushsite.limits import human_size
from pushsite.words import plural

POLL_SECONDS = 0.3  # the longest wait between two looks at a deployment's log
FIRST_POLL = 0.02  # the first: a one-file redeploy is live within a few hundredths
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
    base = _checked_request(server, token, site, branch)
    deadline = time.monotonic() + timeout
    with _client(base, token) as client:
        remote = _Remote(client, base)
        _check_target(remote, site, create)
        params = {"message": message, **({"branch": branch} if branch else {}),
                  **({"create": "true"} if create else {})}
        meter = UploadMeter(echo, _stream_size(stream))
        deployment = remote.call("POST", f"/sites/{site}/deploys", params=params,
                                 content=meter.counted(_chunks(stream)),
                                 headers={"Content-Type": "application/gzip"})
        meter.done()
        return _follow(remote, deployment["id"], deadline, timeout, echo)



def _checked_request(server: str, token: str, site: str, branch: str | None) -> str:
    """The API base for SERVER, once the names and the token are known to be usable."""
    base = api_base(server)
    names.check_site_name(site)
    if branch is not None:
        names.check_branch_name(branch)
    if not token:
        raise NotAuthorized(_NO_TOKEN)
    return base

def deploy_source(server: str, token: str, source: str, *, site: str,
                  branch: str | None = None, message: str = "", timeout: float = 900.0,
                  echo: Echo | None = None, create: bool = False) -> dict[str, Any]:
    """Deploy SOURCE (a folder, a .tar.gz, or - for stdin) to SERVER; returns the deployment.

    A folder or a .tar.gz file goes incrementally: its files are hashed here (on every core),
    the list goes first, and only the blobs the server lacks are uploaded, in batches. Stdin
    can be read once only, so it is streamed whole as before (deploy_remote).
    """
    if source == "-":
        return deploy_remote(server, token, open_source(source), site=site, branch=branch,
                             message=message, timeout=timeout, echo=echo, create=create)
    path = Path(source)
    if not path.exists():
        open_source(source)  # its error names what a SOURCE may be
    base = _checked_request(server, token, site, branch)
    deadline = time.monotonic() + timeout
    with _client(base, token) as client:
        remote = _Remote(client, base)
        _check_target(remote, site, create)
        started = time.monotonic()
        cache = _hash_cache(path) if path.is_dir() else None
        try:
            listing = (list_folder(path.resolve(), cache=cache) if path.is_dir()
                       else _list_file(path))
        except BundleRejected:  # the server reads it and records the failed deployment
            with open(path, "rb") as bundle:
                return deploy_remote(server, token, bundle, site=site, branch=branch,
                                     message=message, timeout=timeout, echo=echo,
                                     create=create)
        files = [r for r in listing.rows if r.is_file]
        unchanged = f", {cache.hits} unchanged since last time" if cache and cache.hits else ""
        _say(echo, "hash", f"hashed {plural(len(files), 'file')} ({_mb(listing.total_bytes)}"
             f"{unchanged}) in {time.monotonic() - started:.2f}s")
        answer = remote.call("POST", f"/sites/{site}/uploads", json={
            "files": [r.to_json() for r in listing.rows], "branch": branch,
            "message": message, "strip_top": listing.strip_top, "create": create})
        upload, missing = answer["upload"], set(answer["missing"])
        sizes = {r.sha256: r.size for r in files}
        need = sum(sizes[h] for h in missing)
        _say(echo, "upload", f"{plural(len(missing), 'blob')} to upload ({_mb(need)}); the server "
             f"holds the other {len({r.sha256 for r in files}) - len(missing)}")
        frames = _frames(path, listing, missing) if missing else iter(())
        sent = 0
        meter = UploadMeter(echo, need)
        for batch in _batches(frames):
            got = remote.call("PUT", f"/sites/{site}/uploads/{upload}/blobs",
                              content=meter.counted(batch),
                              headers={"Content-Type": "application/octet-stream"})
            sent += int(got["received"])
            _say(echo, "upload", f"uploaded {sent} of {plural(len(missing), 'blob')}")
        deployment = remote.call("POST", f"/sites/{site}/uploads/{upload}/finish")
        return _follow(remote, deployment["id"], deadline, timeout, echo)


_NO_TOKEN = ("--server needs a deploy token: pass --token or set PUSHSITE_TOKEN (create one on "
             "the server with `pushsite tokens create`)")
BATCH_BYTES = 64 << 20  # per PUT of blobs: one request is one retry's worth
BATCH_BLOBS = 2000
Frame = tuple[bytes, Iterator[bytes], int]  # header, content chunks, size


def _client(base: str, token: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}", "User-Agent": f"pushsite/{__version__}"}
    return httpx.Client(base_url=base, headers=headers,
                        timeout=httpx.Timeout(60.0, connect=10.0))


def _check_target(remote: _Remote, site: str, create: bool) -> None:
    """A bad token, a token for another site, or a missing site fail before any upload."""
    me = remote.call("GET", "/whoami")
    if me.get("site") not in (None, site):
        raise errors.Forbidden(f"this token is limited to site {me['site']!r}, not {site!r}; "
                               "use a token made for that site or for every site")
    if not create:  # a missing site fails here with the server's hint, before the upload
        remote.call("GET", f"/sites/{site}")


def _hash_cache(folder: Path) -> HashCache | None:
    """The hashes this machine took of the folder's files before (deploy/hashcache.py), in
    the user's cache folder (XDG): a remote deploy leaves PUSHSITE_HOME untouched. None
    without a home folder (every file is hashed)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    try:
        root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    except (RuntimeError, KeyError):
        return None
    return HashCache(root / "pushsite" / "hashes.sqlite", str(folder.resolve()))


def _list_file(path: Path) -> Listing:
    with open(path, "rb") as handle:
        return list_tarball(handle)


def _frames(path: Path, listing: Listing, missing: set[str]) -> Iterator[Frame]:
    """Each missing blob once, as a frame: from the folder's files, or the tarball re-read."""
    left = set(missing)
    if path.is_dir():
        for row in listing.rows:
            if row.is_file and row.sha256 in left:
                left.discard(row.sha256)
                yield frame_header(row.sha256, row.size), _file_chunks(path / row.path,
                                                                       row.size), row.size
        return
    by_path = {r.path: r for r in listing.rows if r.is_file}
    with open(path, "rb") as handle:
        for member_path, size, reader in tarball_files(handle):
            member = by_path.get(member_path)
            if member is not None and member.sha256 in left:
                left.discard(member.sha256)
                yield frame_header(member.sha256, size), _reader_chunks(reader), size


def _file_chunks(path: Path, size: int) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as handle:
        left = size
        while left and (chunk := handle.read(min(_CHUNK, left))):
            left -= len(chunk)
            yield chunk
    if left:
        raise ConfigError(f"{path} changed while it was uploaded; deploy again")


def _reader_chunks(reader: Any) -> Iterator[bytes]:
    while chunk := reader.read(_CHUNK):
        yield chunk


def _batches(frames: Iterator[Frame]) -> Iterator[Iterator[bytes]]:
    """The frames as request bodies of about BATCH_BYTES each, pulled only as each body is
    sent (a tarball's reader moves on to the next member only then)."""
    cursor = _Cursor(frames)
    while cursor.current is not None:
        yield cursor.body()


class _Cursor:
    def __init__(self, frames: Iterator[Frame]) -> None:
        self._frames = frames
        self.current = next(frames, None)

    def body(self) -> Iterator[bytes]:
        total = count = 0
        while self.current is not None and (
                count == 0 or (total < BATCH_BYTES and count < BATCH_BLOBS)):
            header, chunks, size = self.current
            yield header
            yield from chunks
            total, count = total + size, count + 1
            self.current = next(self._frames, None)


class UploadMeter:
    """Bytes sent, with the rate, said on the terminal at most every EVERY seconds while an
    upload runs (a 240 MB upload used to print nothing until it had ended)."""

    EVERY = 1.0

    def __init__(self, echo: Echo | None, total: int | None) -> None:
        self.echo = echo
        self.total = total
        self.sent = 0
        self.started = time.monotonic()
        self._next = self.started + self.EVERY
        self._said = False

    def counted(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.sent += len(chunk)
            if time.monotonic() >= self._next:
                self._next = time.monotonic() + self.EVERY
                self._say()
            yield chunk

    def done(self) -> None:
        """The last figure, once something was said (a short upload stays quiet)."""
        if self._said:
            self._say()

    def _say(self) -> None:
        self._said = True
        seconds = max(time.monotonic() - self.started, 1e-6)
        of = f" of {human_size(self.total)}" if self.total else ""
        _say(self.echo, "upload", f"sent {human_size(self.sent)}{of} "
             f"({human_size(self.sent / seconds)}/s)")


def _stream_size(stream: BinaryIO) -> int | None:
    """The bytes left in a file (None for a pipe such as stdin)."""
    try:
        return os.fstat(stream.fileno()).st_size - stream.tell() or None
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None


def _say(echo: Echo | None, stage: str, message: str) -> None:
    if echo is not None:
        echo(f"[dim]{stage:<9}[/] {escape(message)}", highlight=False)


def _mb(size: int) -> str:
    return human_size(size)


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
    """Print new log lines until the deployment ends; cancel it when the deadline passes, or
    on Ctrl-C (the CLI turns it into errors.Interrupted)."""
    after = 0
    pause = FIRST_POLL
    try:
        while True:
            page = remote.call("GET", f"/deployments/{deployment_id}/log",
                               params={"after": after})
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
                    f"deployment {deployment_id} did not finish within {timeout:g}s, so it "
                    "was cancelled; the live site is unchanged (give a larger --timeout)")
            time.sleep(pause)
            pause = min(pause * 1.5, POLL_SECONDS)
    except errors.Interrupted:
        raise _interrupted(remote, deployment_id) from None
    deployment = remote.call("GET", f"/deployments/{deployment_id}")
    _echo_lines(remote.call("GET", f"/deployments/{deployment_id}/log", params={"after": after}),
                after, echo)
    if deployment.get("exit_code") == 0:
        return deployment
    raise _failure(deployment)


def _interrupted(remote: _Remote, deployment_id: str) -> errors.Interrupted:
    """Ctrl-C while following: the server's deployment is cancelled, as a local one is."""
    with suppress(ConfigError):  # it ended meanwhile; say how below
        remote.call("POST", f"/deployments/{deployment_id}/cancel")
    deployment = remote.call("GET", f"/deployments/{deployment_id}")
    failure = errors.Interrupted(
        f"deployment {deployment_id} {deployment.get('status')} on the server: interrupted "
        "(Ctrl-C)" + ("; the live site is unchanged" if deployment.get("status") == "cancelled"
                      else ""))
    failure.deployment = deployment  # type: ignore[attr-defined]  # for `--json`
    return failure


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
