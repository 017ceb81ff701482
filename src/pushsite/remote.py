"""`pushsite deploy --server URL --token T`: deploy to a remote `pushsite serve` over its API.

A folder or a .tar.gz file goes incrementally (deploy_source): the client asks the server
first whether the site holds anything to build on (`uploads/basis`, sent before the folder is
walked and read after), hashes its files (a hash cache makes a redeploy read only changed
files), sends the list, uploads only the blobs the server lacks and finishes with `wait`: the
answer comes when the deployment has ended, no polling. A site with nothing to reuse (a first
deploy) gets the folder as one tar.gz instead, hashed for the cache as it is packed. Stdin is
streamed whole to `POST /api/sites/<site>/deploys` (deploy_remote). A bundle's answer waits
up to BUNDLE_WAIT for its deployment to end (polling follows only a longer one), with a
Ctrl-C held meanwhile: the answer names the deployment it cancels.

The outcome maps to the same errors, and so the same exit codes, as a local deploy: the API
names the error class of a failed deployment (`error_kind`, see web/api.py), and an HTTP
error maps by its status. When the timeout passes first, the deployment is cancelled on the
server (the live site stays) and the deploy ends as timed out.

Imports are few (no httpx, rich or pushsite.limits unless needed): `pushsite/launch.py` runs
a plain `deploy DIR --server` through here without loading the CLI, for a redeploy of about
80 ms in all. The HTTP is httplite's, or httpx's when a proxy is set in the environment.
"""

from __future__ import annotations

import io
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress

from pushsite import __version__, errors, names
from pushsite.deploy.filelist import Listing, frame_header, hash_pending, scan_folder
from pushsite.errors import (
    BackendUnavailable,
    BundleRejected,
    ConfigError,
    DeploymentFailed,
    DeploymentTimedOut,
    NotAuthorized,
    PushsiteError,
)
from pushsite.httplite import split_url
from pushsite.words import plural

TYPE_CHECKING = False  # typing is not imported at run time (the client's start, launch.py)
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from pushsite.deploy.hashcache import HashCache

    Echo = Callable[..., Any]

POLL_SECONDS = 0.3  # the longest wait between two looks at a deployment's log
FIRST_POLL = 0.02  # the first: a one-file redeploy is live within a few hundredths
WAIT_SECONDS = 30.0  # how long one answer may wait for the deployment to end (API `wait`)
WAIT_SHOWN = 1.0  # with log lines to show: they print after at most this, then live
_CHUNK = 1 << 20
_BY_STATUS: dict[int, type[PushsiteError]] = {
    400: ConfigError, 401: NotAuthorized, 403: errors.Forbidden, 404: errors.NotFound,
    409: errors.AliasConflict, 413: errors.BundleTooLarge, 422: errors.BundleRejected,
    503: BackendUnavailable,
}


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
    with _Remote(base, token) as remote:
        _basis(remote, site, branch, create)()  # a bad token or site fails before the upload
        return _send_bundle(remote, _chunks(stream), _stream_size(stream), site=site,
                            branch=branch, message=message, create=create, deadline=deadline,
                            timeout=timeout, echo=echo)


def _send_bundle(remote: _Remote, chunks: Iterator[bytes], size: int | None, *, site: str,
                 branch: str | None, message: str, create: bool, deadline: float,
                 timeout: float, echo: Echo | None,
                 cache: HashCache | None = None) -> dict[str, Any]:
    wait = min(BUNDLE_WAIT if echo is None else WAIT_SHOWN, timeout)  # log lines: 1 s late
    params = {"message": message, "wait": f"{wait:.3f}",
              **({"branch": branch} if branch else {}), **({"create": "true"} if create else {})}
    meter = UploadMeter(echo, size)
    answer = remote.begin("POST", f"/sites/{site}/deploys", params=params,
                          content=meter.counted(chunks),
                          headers={"Content-Type": "application/gzip"})
    meter.done()
    saving = _saved_meanwhile(cache)  # what the packing hashed, while the server deploys
    try:
        with _ctrl_c_held() as pressed:  # the answer names the deployment a Ctrl-C cancels
            status, deployment = answer()
    finally:
        saving()
    if pressed:
        raise _interrupted(remote, deployment["id"])
    return _ended(remote, status, deployment, deadline, timeout, echo)


BUNDLE_WAIT = 2.0  # how long an uploaded bundle's answer waits for its deployment to end


@contextmanager
def _ctrl_c_held() -> Iterator[list[bool]]:
    """Ctrl-C noted, not raised, for the block (a bounded wait for an answer: without it
    the deployment to cancel is unknown); the list holds True once it was pressed. Only
    the main thread receives signals: elsewhere nothing changes."""
    import signal
    import threading

    pressed: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return
    before = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(True))
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, before)


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
    can be read once only, so it is streamed whole as before (deploy_remote). So is a source
    for a site that holds nothing yet (a folder packed as it is sent).
    """
    if source == "-" or not os.path.exists(source):
        from pushsite.deploy.folder import open_source  # its error names what SOURCE may be

        return deploy_remote(server, token, open_source(source), site=site, branch=branch,
                             message=message, timeout=timeout, echo=echo, create=create)
    base = _checked_request(server, token, site, branch)
    deadline = time.monotonic() + timeout
    folder = os.path.abspath(source) if os.path.isdir(source) else None
    with _Remote(base, token) as remote:
        basis = _basis(remote, site, branch, create)  # answered while the folder is walked
        started = time.monotonic()
        cache = _hash_cache(folder) if folder else None
        scan = scan_folder(folder, cache) if folder else None
        asked = basis()
        if not asked["held"]:
            if scan is None:
                with open(source, "rb") as bundle:
                    return _send_bundle(remote, _chunks(bundle), _stream_size(bundle),
                                        site=site, branch=branch, message=message,
                                        create=create, deadline=deadline, timeout=timeout,
                                        echo=echo)
            from pushsite.deploy.packing import packed_folder

            return _send_bundle(remote, packed_folder(scan, cache), None, site=site,
                                branch=branch, message=message, create=create,
                                deadline=deadline, timeout=timeout, echo=echo, cache=cache)
        try:
            listing = hash_pending(scan, cache=cache) if scan else _list_file(source)
        except BundleRejected:  # the server reads it and records the failed deployment
            with open(source, "rb") as bundle:
                return _send_bundle(remote, _chunks(bundle), _stream_size(bundle), site=site,
                                    branch=branch, message=message, create=create,
                                    deadline=deadline, timeout=timeout, echo=echo)
        files = [r for r in listing.rows if r.is_file]
        if echo is not None:
            unchanged = f", {cache.hits} unchanged since last time" if cache and cache.hits \
                else ""
            _say(echo, "hash", f"hashed {plural(len(files), 'file')} "
                 f"({_mb(listing.total_bytes)}{unchanged}) in "
                 f"{time.monotonic() - started:.2f}s")
        answer = remote.call("POST", f"/sites/{site}/uploads",
                             json=start_body(listing, branch, message, create),
                             gzip="list-gzip" in asked.get("features", ()))
        upload, missing = answer["upload"], set(answer["missing"])
        sizes = {r.sha256: r.size for r in files}
        need = sum(sizes[h] for h in missing)
        if echo is not None:
            _say(echo, "upload", f"{plural(len(missing), 'blob')} to upload ({_mb(need)}); "
                 f"the server holds the other {len({r.sha256 for r in files}) - len(missing)}")
        frames = _frames(source, listing, missing) if missing else iter(())
        sent = 0
        meter = UploadMeter(echo, need)
        plan = _batch_plan(_frame_sizes(listing, missing))
        batches = _batches(frames, plan)
        at_finish = "finish-blobs" in asked.get("features", ())  # else an older server
        for batch in itertools.islice(batches, len(plan) - 1 if at_finish and plan else None):
            got = remote.call("PUT", f"/sites/{site}/uploads/{upload}/blobs",
                              content=meter.counted(batch),
                              headers={"Content-Type": "application/octet-stream"})
            sent += int(got["received"])
            if echo is not None:
                _say(echo, "upload", f"uploaded {sent} of {plural(len(missing), 'blob')}")
        last = next(batches, None)  # it goes with finish: one request less
        if last is None:
            meter.done()
        saving = _saved_meanwhile(cache)  # for the next deploy, while the server deploys
        try:
            status, deployment = remote.answer(
                "POST", f"/sites/{site}/uploads/{upload}/finish",
                params={"wait": _wait(deadline, echo)},
                **({} if last is None else {
                    "content": meter.counted(last, ending=True),
                    "headers": {"Content-Type": "application/octet-stream"}}))
        except errors.Interrupted:
            raise _interrupted(remote, upload) from None
        finally:
            saving()
        return _ended(remote, status, deployment, deadline, timeout, echo)


class JsonText(str):
    """JSON already written (a start's body): `_Remote.begin` sends it as it is."""


def start_body(listing: Listing, branch: str | None, message: str, create: bool) -> JsonText:
    """An upload's start: the JSON of {"files": [row.to_json() ...], "branch", "message",
    "strip_top", "create"} (compact), its rows written one by one: 1,062 rows in ~0.5 ms,
    where making their dicts and dumping them took ~1.7."""
    from _json import encode_basestring_ascii as text

    from pushsite import jsonlite
    from pushsite.deploy.filelist import LINK

    def row(r: Any) -> str:
        if r.is_file:
            return (f'{{"path":{text(r.path)},"mode":{text(r.mode)},"sha256":'
                    f'{text(r.sha256)},"size":{int(r.size)}}}')
        if r.mode == LINK:
            return f'{{"path":{text(r.path)},"mode":"{LINK}","target":{text(r.target)}}}'
        return f'{{"path":{text(r.path)},"mode":{text(r.mode)}}}'

    rest = jsonlite.dumps({"branch": branch, "message": message,
                           "strip_top": listing.strip_top, "create": create}, (",", ":"))
    return JsonText('{"files":[' + ",".join(map(row, listing.rows)) + "]," + rest[1:])


def _saved_meanwhile(cache: HashCache | None) -> Callable[[], None]:
    """Start writing the hash cache on a thread; the result waits for it to be written.
    Nothing to write (a redeploy whose only changed file is too new to remember): no
    thread, and no threading imported."""
    if cache is None or not cache.unsaved:
        return lambda: None
    import threading

    thread = threading.Thread(target=cache.save, name="hash-cache", daemon=True)
    thread.start()
    return thread.join


_NO_TOKEN = ("--server needs a deploy token: pass --token or set PUSHSITE_TOKEN (create one on "
             "the server with `pushsite tokens create`)")
BATCH_BYTES = 64 << 20  # per PUT of blobs: one request is one retry's worth
BATCH_BLOBS = 2000
Frame = tuple[bytes, Iterator[bytes], int]  # header, content chunks, size


def _basis(remote: _Remote, site: str, branch: str | None,
           create: bool) -> Callable[[], dict[str, Any]]:
    """Ask what the site holds; the answer is read by calling the result. A bad token, a
    token for another site, or a missing site (without `create`) fail there, before any
    upload."""
    params = {**({"branch": branch} if branch else {}), **({"create": "true"} if create else {})}
    answer = remote.begin("GET", f"/sites/{site}/uploads/basis", params=params)
    return lambda: answer()[1]


def _hash_cache(folder: str) -> HashCache | None:
    """The hashes this machine took of the folder's files before (deploy/hashcache.py), in
    the user's cache folder (XDG), one file per folder: a remote deploy leaves
    PUSHSITE_HOME untouched. None without a home folder (every file is hashed)."""
    from pushsite.deploy.filelist import sha256_hasher
    from pushsite.deploy.hashcache import HashCache

    base = os.environ.get("XDG_CACHE_HOME", "")
    root = base if os.path.isabs(base) else os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(root):  # no home folder to expand
        return None
    hasher = sha256_hasher(0)
    hasher.update(os.fsencode(folder))
    name = hasher.hexdigest()[:32]
    return HashCache(os.path.join(root, "pushsite", "hashes", f"{name}.json"), folder)


def _list_file(path: str) -> Listing:
    from pushsite.deploy.filelist import list_tarball

    with open(path, "rb") as handle:
        return list_tarball(handle)


def _frames(source: str, listing: Listing, missing: set[str]) -> Iterator[Frame]:
    """Each missing blob once, as a frame: from the folder's files, or the tarball re-read."""
    left = set(missing)
    if os.path.isdir(source):
        for row in listing.rows:
            if row.is_file and row.sha256 in left:
                left.discard(row.sha256)
                yield frame_header(row.sha256, row.size), _file_chunks(
                    os.path.join(source, row.path), row.size), row.size
        return
    from pushsite.deploy.filelist import tarball_files

    by_path = {r.path: r for r in listing.rows if r.is_file}
    with open(source, "rb") as handle:
        for member_path, size, reader in tarball_files(handle):
            member = by_path.get(member_path)
            if member is not None and member.sha256 in left:
                left.discard(member.sha256)
                yield frame_header(member.sha256, size), _reader_chunks(reader), size


def _file_chunks(path: str, size: int) -> Iterator[bytes]:
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


def _frame_sizes(listing: Listing, missing: set[str]) -> list[int]:
    """The sizes of the frames _frames yields, in its order (each missing blob once)."""
    left = set(missing)
    sizes = []
    for row in listing.rows:
        if row.is_file and row.sha256 in left:
            left.discard(row.sha256)
            sizes.append(row.size)
    return sizes


def _batch_plan(sizes: list[int]) -> list[int]:
    """How many frames each body holds: about BATCH_BYTES or BATCH_BLOBS each, decided from
    the sizes before any is read (so the last body is known, and goes with `finish`)."""
    plan: list[int] = []
    total = 0
    for size in sizes:
        if not plan or total >= BATCH_BYTES or plan[-1] >= BATCH_BLOBS:
            plan.append(0)
            total = 0
        plan[-1] += 1
        total += size
    return plan


def _batches(frames: Iterator[Frame], plan: list[int]) -> Iterator[Iterator[bytes]]:
    """The frames as request bodies of `plan[i]` frames each, pulled only as each body is
    sent (a tarball's reader moves on to the next member only then)."""
    for count in plan:
        yield _body(itertools.islice(frames, count))


def _body(frames: Iterable[Frame]) -> Iterator[bytes]:
    for header, chunks, _ in frames:
        yield header
        yield from chunks


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

    def counted(self, chunks: Iterable[bytes], ending: bool = False) -> Iterator[bytes]:
        """The chunks, counted; `ending`: the upload's last body, the last figure after it."""
        if self.echo is None:  # nothing to say: the chunks as they are
            yield from chunks
            return
        for chunk in chunks:
            self.sent += len(chunk)
            if time.monotonic() >= self._next:
                self._next = time.monotonic() + self.EVERY
                self._say()
            yield chunk
        if ending:
            self.done()

    def done(self) -> None:
        """The last figure, once something was said (a short upload stays quiet)."""
        if self._said:
            self._say()

    def _say(self) -> None:
        from pushsite.limits import human_size

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
        from rich.markup import escape

        echo(f"[dim]{stage:<9}[/] {escape(message)}", highlight=False)


def _mb(size: int) -> str:
    from pushsite.limits import human_size

    return human_size(size)


def report_data(deployment: dict[str, Any], control: str) -> dict[str, Any]:
    """The deployment as `deploy --server --json` prints it: with its context and the URL of
    its log on the server's dashboard (CONTROL is the --server value)."""
    urls = deployment.setdefault("urls", {})
    deployment.setdefault("context", "production" if urls.get("production") else "preview")
    if "log" not in urls:
        urls["log"] = f"{control.rstrip('/')}/deployments/{deployment['id']}"
    return deployment


def api_base(server: str) -> str:
    """The API root for a --server value (`https://deploy.example.com` -> `.../api`)."""
    url = server.strip().rstrip("/")
    parts = split_url(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"invalid --server {server!r}: give the server's URL, e.g. "
                          "https://deploy.example.com or http://127.0.0.1:8000")
    return url if url.endswith("/api") else url + "/api"


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


class _Remote:
    """Calls to the API, with its errors turned into PushsiteErrors: over httplite, or over
    httpx when the environment names a proxy (httpx honours it, httplite does not)."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        headers = {"Authorization": f"Bearer {token}", "User-Agent": f"pushsite/{__version__}",
                   "Accept": "application/json"}
        self._httpx: Any = None
        self._lite: Any = None
        if _proxied():
            import httpx

            self._httpx = httpx.Client(base_url=base, headers=headers,
                                       timeout=httpx.Timeout(WAIT_SECONDS + 60.0, connect=10.0))
        else:
            from pushsite.httplite import Connection

            self._lite = Connection(base, headers, timeout=WAIT_SECONDS + 60.0)

    def __enter__(self) -> _Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        (self._httpx or self._lite).close()

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self.answer(method, path, **kwargs)[1]

    def answer(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """The HTTP status and the JSON of a successful call."""
        return self.begin(method, path, **kwargs)()

    def begin(self, method: str, path: str, *, params: dict[str, Any] | None = None,
              json: Any = None, content: Iterable[bytes] | None = None,
              headers: dict[str, str] | None = None,
              gzip: bool = False) -> Callable[[], tuple[int, dict[str, Any]]]:
        """Send a call now; calling the result reads its answer (work may go on between).
        With `gzip`, a JSON body goes gzipped (a file list: ~160 -> ~60 KB for 1,000 files,
        so it fits one segment of a loopback relay that holds a second for an ACK)."""
        body: bytes | Iterable[bytes] | None = content
        if json is not None:
            from pushsite import jsonlite

            text = json if isinstance(json, JsonText) else jsonlite.dumps(json)
            body = text.encode()
            headers = {**(headers or {}), "Content-Type": "application/json"}
            if gzip:
                import zlib

                packer = zlib.compressobj(1, wbits=31)
                body = packer.compress(body) + packer.flush()
                headers["Content-Encoding"] = "gzip"
        if self._httpx is not None:
            sent = body
            return lambda: self._httpx_call(method, path, params, sent, headers)
        with self._translated():
            self._lite.send(method, path, params=params, body=body, headers=headers)

        def answer() -> tuple[int, dict[str, Any]]:
            with self._translated():
                got = self._lite.receive()
            return self._checked(path, got.status_code, got.content)

        return answer

    def _httpx_call(self, method: str, path: str, params: Any, content: Any,
                    headers: Any) -> tuple[int, dict[str, Any]]:
        with self._translated():
            response = self._httpx.request(method, path, params=params, content=content,
                                           headers=headers)
        return self._checked(path, response.status_code, response.content)

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """A transport's failure as BackendUnavailable naming the server."""
        try:
            yield
        except (OSError, ValueError) as exc:
            raise self._unreachable(exc) from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("httpx", "httpcore")):
                raise self._unreachable(exc) from exc
            raise

    def _unreachable(self, exc: Exception) -> BackendUnavailable:
        reason = str(exc) or type(exc).__name__
        return BackendUnavailable(f"could not reach the pushsite server at {self.base} "
                                  f"({reason}); check --server and that `pushsite serve` "
                                  "runs there")

    def _checked(self, path: str, status: int, content: bytes) -> tuple[int, dict[str, Any]]:
        from pushsite import jsonlite

        try:
            data = jsonlite.loads(content)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.base}{path} did not answer like a pushsite server (HTTP "
                              f"{status}); check --server")
        if 200 <= status < 300:
            return status, data
        text = str(data.get("error") or f"the server answered HTTP {status}")
        cls = _BY_STATUS.get(status, BackendUnavailable if status >= 502 else PushsiteError)
        raise cls(text)


def _proxied() -> bool:
    """Whether the environment names a proxy (then httpx, which honours it, is used)."""
    return any(name.lower() in ("http_proxy", "https_proxy", "all_proxy") and value
               for name, value in os.environ.items())


def _wait(deadline: float, echo: Echo | None) -> str:
    """The `wait` of a call that queues the deployment: up to WAIT_SECONDS, within the
    deadline; WAIT_SHOWN when log lines are shown live (they print after it at the latest)."""
    left = max(deadline - time.monotonic(), 0.0)
    return f"{min(left, WAIT_SHOWN if echo is not None else WAIT_SECONDS):.3f}"


def _ended(remote: _Remote, status: int, deployment: dict[str, Any], deadline: float,
           timeout: float, echo: Echo | None) -> dict[str, Any]:
    """The deployment a call that queued it answered: 200 when it ended within the call's
    `wait` (its log is shown, its outcome raised), else followed until it ends."""
    if status != 200:
        return _follow(remote, deployment["id"], deadline, timeout, echo)
    if echo is not None:
        _echo_lines(remote.call("GET", f"/deployments/{deployment['id']}/log",
                                params={"after": 0}), 0, echo)
    if deployment.get("exit_code") == 0:
        return deployment
    raise _failure(deployment)


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
    if echo is not None and page["lines"]:
        from rich.markup import escape
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
