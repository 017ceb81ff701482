"""The built-in git remote: git's own `git http-backend` behind the ASGI app.

The request body is pumped into the CGI process while its output is streamed back at the same
time; buffering either side whole would deadlock a large push (git waits for us to read while
we wait for it to finish reading). Pushes authenticate with HTTP Basic and a deploy token (the
password; any user name). The repository's proc-receive hook calls back into
`/internal/post-receive` (its old name) on an IP address with its secret header (both checked
before host routing, so no site's host can answer it): each updated branch is deployed here,
from the repository (git has moved the pushed objects in by then), while the push waits; the
progress reaches the pusher's terminal as `remote:` lines, and a failed deploy refuses its
ref (githook.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from pushsite import names
from pushsite.deploy.gitcommit import SiteRepos, hook_environment
from pushsite.errors import Forbidden, NotAuthorized, PushsiteError
from pushsite.githook import verdict_line
from pushsite.limits import human_size
from pushsite.model import Deployment, Status
from pushsite.names import branch_label
from pushsite.secretfile import shared_secret
from pushsite.service import Service
from pushsite.words import plural

# What a git client asks of a repository over HTTP (smart, and dumb for old clients); anything
# else (`..`, other files of the repository) is refused before git http-backend sees it.
_GIT_PATH = re.compile(
    r"(info/refs|git-upload-pack|git-receive-pack|HEAD|objects/info/[a-z-]+"
    r"|objects/[0-9a-f]{2}/[0-9a-f]{38}|objects/pack/pack-[0-9a-f]{40}\.(pack|idx))"
)
_CHUNK = 64 << 10


# The hook's call-back: this path with this header reaches the control plane before any host
# routing (web/app.py), on an IP address no site may claim (edge/hosts.py reserved_reason).
HOOK_PATH = "/internal/post-receive"
HOOK_HEADER = "x-pushsite-hook-secret"


COUNT_EVERY = 0.5  # seconds between two counting lines of a push (the counters' own pace)


def counting_line(deployment: Deployment) -> str:
    """How far a running deployment got, as one `remote:` line of the push."""
    read = deployment.files - deployment.carried
    carried = f", {deployment.carried} carried over" if deployment.carried else ""
    return (f"pushsite: {deployment.stage or 'read'}: {read} files read{carried}, "
            f"{human_size(deployment.bytes_in)}, {deployment.blobs_new} new blobs")


def routes(service: Service) -> list[Any]:
    bridge = GitBridge(service)
    return [
        Route("/{site}.git/{rest:path}", bridge.handle, methods=["GET", "POST"]),
        Route(HOOK_PATH, bridge.post_receive, methods=["POST"]),
    ]


def callback_url(server: tuple[str, int | None] | None) -> str:
    """Where the hook reaches this server: the address the push came in on when it is a
    specific IP address, else the loopback address; always an IP literal, never a name."""
    host, port = server or ("127.0.0.1", 80)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or address.is_unspecified:
        literal = "127.0.0.1"
    else:
        literal = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{literal}:{port or 80}{HOOK_PATH}"


def _basic_secret(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        user, _, password = base64.b64decode(value).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return password or user


def _challenge(message: str, status: int = 401) -> Response:
    headers = {"WWW-Authenticate": 'Basic realm="pushsite"'} if status == 401 else {}
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


class _PipeResponse(Response):
    """A streamed response that never reads `receive` while it sends.

    Starlette's StreamingResponse listens on `receive` for a disconnect, which swallows the
    request body chunks git http-backend is still being fed: a large push would arrive cut.
    """

    def __init__(self, body: AsyncIterator[bytes], status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        # Starlette's own name for the raw list (its `_headers` is a MutableHeaders view)
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in headers.items()]
        self._body = body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        async for chunk in self._body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# what every push's deploy imports on first use (a commit may ask for a build; live first
# queues the optimising): imported once the server is up, not inside the first push
_PUSH_MODULES = ("pushsite.service.building", "pushsite.service.optimising")


def _import_push_modules() -> None:
    import importlib

    for name in _PUSH_MODULES:
        importlib.import_module(name)


class GitBridge:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.repos = SiteRepos(service.config.repos)
        self.hook_secret = shared_secret(service.config.home / "hook-secret", 16)
        # a push's deploys, each started by the thread that accepted it: started from the
        # event loop, a deploy began only after the accept's thread handed back to the loop
        # and the loop to a thread again (20-90 ms of a first push under load)
        self._runs = ThreadPoolExecutor(thread_name_prefix="push-deploy")
        threading.Thread(target=_import_push_modules, name="push-imports", daemon=True).start()

    async def handle(self, request: Request) -> Response:
        site = request.path_params["site"]
        rest = request.path_params["rest"]
        if not _GIT_PATH.fullmatch(rest):
            return PlainTextResponse(f"pushsite: {rest!r} is not something git asks a "
                                     "repository for\n", status_code=404)
        pushing = rest == "git-receive-pack" or request.query_params.get("service") == \
            "git-receive-pack"
        try:
            names.check_site_name(site)
            self.service.check_token(_basic_secret(request), site)
        except Forbidden as exc:
            return _challenge(f"pushsite: {exc}", 403)
        except NotAuthorized as exc:
            return _challenge(f"pushsite: {exc}")
        except PushsiteError as exc:
            return PlainTextResponse(f"pushsite: {exc}\n", status_code=exc.http_status)
        if not self.repos.exists(site):
            try:  # sites are created on purpose: a push to a typo is refused, naming the fix
                record = await asyncio.to_thread(self.service.deploy_target, site)
            except PushsiteError as exc:
                return PlainTextResponse(f"pushsite: {exc}\n", status_code=exc.http_status)
            if not pushing:
                return PlainTextResponse(f"pushsite: site {site!r} has no repository yet; push "
                                         "to it first\n", status_code=404)
            await asyncio.to_thread(self.repos.create, site, record.production_branch)
        elif pushing:  # a repository made by an older version gets today's hooks
            await asyncio.to_thread(self.repos.ensure_hooks, site)
        return await self._cgi(request, site, rest)

    async def _cgi(self, request: Request, site: str, rest: str) -> Response:
        env = {
            "GIT_PROJECT_ROOT": str(self.repos.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{site}.git/{rest}",
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.url.query,
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "REMOTE_USER": "pushsite",
            "REMOTE_ADDR": request.client.host if request.client else "",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "HOME": str(self.repos.root),
            **hook_environment(callback_url(request.scope.get("server")), self.hook_secret),
        }
        for header, var in (("content-length", "CONTENT_LENGTH"),
                            ("content-encoding", "HTTP_CONTENT_ENCODING"),
                            ("git-protocol", "GIT_PROTOCOL")):
            if header in request.headers:
                env[var] = request.headers[header]
        for name in ("PUSHSITE_HOME", "PUSHSITE_WAIT"):
            if name in os.environ:
                env[name] = os.environ[name]
        proc = await asyncio.create_subprocess_exec(
            "git", "http-backend", env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        stdout = proc.stdout  # narrowed, also for body() below
        pump = asyncio.create_task(self._pump(request, proc.stdin))
        status, headers = 200, {}
        while True:
            line = (await proc.stdout.readline()).decode("latin-1").rstrip("\r\n")
            if not line:
                break
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            else:
                headers[name.strip()] = value.strip()
        headers.pop("Content-Length", None)

        async def body() -> AsyncIterator[bytes]:
            try:
                while chunk := await stdout.read(_CHUNK):
                    yield chunk
            finally:
                await pump
                await proc.wait()

        return _PipeResponse(body(), status, headers)

    @staticmethod
    async def _pump(request: Request, stdin: asyncio.StreamWriter) -> None:
        try:
            async for chunk in request.stream():
                if not chunk:  # Starlette ends with an empty chunk; git may be gone by then
                    continue
                stdin.write(chunk)
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass  # git stopped reading (it answers with its own error); uvloop: RuntimeError
        finally:
            stdin.close()

    # the hook's call-back -------------------------------------------------------------------
    async def post_receive(self, request: Request) -> Response:
        """The proc-receive hook's call (the path keeps its old name: tests and proxies know
        it): a body of the site's name, then one `old new ref` line per update. Deploy each
        updated branch while the push waits, stream the progress, and end with the verdict
        per ref (githook.verdict_line)."""
        given = request.headers.get(HOOK_HEADER, "")
        if not hmac.compare_digest(given, self.hook_secret):
            return PlainTextResponse("forbidden\n", status_code=403)
        site, *rows = (await request.body()).decode(errors="replace").splitlines() or [""]
        updates = [row.split(" ", 2) for row in rows if row]
        if any(len(update) != 3 for update in updates):
            return PlainTextResponse("pushsite: an update is not `old new ref`\n",
                                     status_code=400)
        try:
            names.check_site_name(site)
        except PushsiteError as exc:
            return PlainTextResponse(f"pushsite: {exc}\n", status_code=exc.http_status)
        # accepted and started before the answer starts streaming: the deploy does not wait
        # for the response machinery (~18 ms under load between the two)
        lines: list[str] = []
        # each deploy runs in a thread of its own, started as soon as it is accepted (one
        # that outlives the wait goes on after the push is accepted)
        accepted = await asyncio.to_thread(self._accept_updates, site, updates, lines)
        runs = [(ref, deployment_id, asyncio.wrap_future(run))
                for ref, deployment_id, run in accepted]
        return StreamingResponse(self._push(lines, runs), media_type="text/plain; charset=utf-8")

    async def _push(self, lines: list[str], runs: list[tuple[str, str, asyncio.Future[None]]]
                    ) -> AsyncIterator[str]:
        verdicts: dict[str, str] = {}
        for line in lines:
            yield line + "\n"
        for ref, deployment_id, run in runs:
            async for line in self._follow(deployment_id, run, verdicts, ref):
                yield line
        yield verdict_line(verdicts)

    def _run_quietly(self, deployment_id: str) -> None:
        # live first: the push is answered once the deployment is live; its brotli variants
        # are made by whoever takes the "optimise" message it queued (this server's worker,
        # in this process: the deploy's list of blobs is handed over). Optimising here too
        # kept the push waiting for brotli (8 s on medium under load) while the worker
        # made the same variants beside it.
        with contextlib.suppress(PushsiteError):  # recorded on the deployment: _follow says
            self.service.run(deployment_id, optimise=False)

    def _accept_updates(self, site: str, updates: list[list[str]],
                        lines: list[str]) -> list[tuple[str, str, Future[None]]]:
        """Each updated ref to Service.deploy_ref, which decides; its outcome as a line.
        Each accepted deploy is started here: (ref, deployment id, its run)."""
        accepted = []
        for old, new, ref in updates:
            try:
                outcome = self.service.deploy_ref(site, ref, old, new, enqueue=False)
            except PushsiteError as exc:
                lines.append(f"pushsite: error: {exc} (the site was not updated)")
                continue
            if outcome.deployment is not None:
                deployment = outcome.deployment
                lines.append(f"pushsite: {outcome.branch} {deployment.commit[:12]}: deploying "
                             f"as {deployment.id}")
                accepted.append((ref, deployment.id,
                                 self._runs.submit(self._run_quietly, deployment.id)))
            elif outcome.action == "remove":
                lines.append(f"pushsite: {outcome.branch} deleted; its preview is gone")
            else:
                lines.append(f"pushsite: {ref} ignored: {outcome.reason}")
        return accepted

    async def _follow(self, deployment_id: str, run: asyncio.Future[None],
                      verdicts: dict[str, str], ref: str) -> AsyncIterator[str]:
        wait = self.service.config.wait
        deadline = time.monotonic() + wait
        seen = 0
        counted: tuple[int, ...] = ()
        next_count = 0.0
        while True:
            ran = run.done()  # before the read: a run that ended has moved its aliases
            deployment = await asyncio.to_thread(self.service.state.get_deployment,
                                                 deployment_id)
            logs = await asyncio.to_thread(self.service.state.get_logs, deployment_id, seen)
            for entry in logs:
                seen = entry.seq
                if (entry.stage in ("read", "build", "manifest", "activate")
                        or entry.level != "info"):
                    yield f"pushsite: {entry.message}\n"
            # after the lines read in this pass: "reading the bundle" comes before its count
            counts = (deployment.files, deployment.bytes_in, deployment.blobs_new)
            if (deployment.status == Status.RUNNING and any(counts) and counts != counted
                    and time.monotonic() >= next_count):
                counted, next_count = counts, time.monotonic() + COUNT_EVERY
                yield counting_line(deployment) + "\n"
            if deployment.status.finished and (ran or not deployment.status.servable):
                yield self._outcome(deployment, verdicts, ref) + "\n"
                return
            if time.monotonic() > deadline:
                url = self.service.config.site_url(f"{deployment_id}--{deployment.site}")
                yield (f"pushsite: still {deployment.status} after {wait:.0f}s: the push is "
                       f"accepted and the deploy goes on; it will be at {url} (follow it "
                       f"with `pushsite log {deployment_id}`)\n")
                return
            if ran:
                await asyncio.sleep(0.05)
            else:  # woken the moment the run ends: the push is answered without a poll's lag
                await asyncio.wait({run}, timeout=0.05)

    def _outcome(self, deployment: Any, verdicts: dict[str, str], ref: str) -> str:
        config = self.service.config
        site = self.service.state.get_site(deployment.site)
        if deployment.status in (Status.LIVE, Status.READY):
            # the words the CLI prints: production, preview or draft, never "live" for all
            if deployment.draft:
                word, url = "draft", config.site_url(f"{deployment.id}--{deployment.site}")
            elif deployment.branch == site.production_branch and deployment.status == \
                    Status.READY and site.settings.locked:  # `pushsite lock`: not published
                url = config.site_url(f"{deployment.id}--{deployment.site}")
                return (f"pushsite: production of {site.name} is locked: not published; ready "
                        f"at {url} ({plural(deployment.files, 'file')}, "
                        f"{plural(deployment.blobs_new, 'new blob')}, "
                        f"{deployment.seconds or 0:.2f}s); promote it with `pushsite promote "
                        f"{deployment.id}`, or `pushsite unlock {site.name}`")
            elif deployment.branch == site.production_branch:
                word, url = "production", config.site_url(deployment.site)
            else:
                word = "preview"
                url = config.site_url(f"{branch_label(deployment.branch)}--{deployment.site}")
            return (f"pushsite: {word}: {url} ({plural(deployment.files, 'file')}, "
                    f"{plural(deployment.blobs_new, 'new blob')}, "
                    f"{deployment.seconds or 0:.2f}s)")
        error = deployment.error or str(deployment.status)
        if site.settings.reject_failed_pushes:
            verdicts[ref] = "deploy failed: " + " ".join(error.split())[:300]
            return (f"pushsite: error: {error}; the push is refused, the branch stays where it "
                    "was (fix it and push again)")
        return (f"pushsite: error: {error}; the site was not updated (the commits are stored)")
