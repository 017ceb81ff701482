"""Webhooks from git hosts: `POST /hooks/<provider>/<site>` queues a fetch-and-deploy.

The host gets its answer as soon as the deployment is queued (well within a second); the
worker fetches the commit's archive into staging and deploys it. A site's webhook settings
(`pushsite hooks SITE --base-url ... --access-token ...`) say where its archives come from.
Parsing and signatures are sources/webhooks.py; this module is the HTTP side.

Duplicates are dropped twice: by delivery id (a host's retry of the same event) and by the
ref update itself, (site, ref, before, commit), seen again within a minute or so: one push
reported by two hooks. The ref is in that key so that fast-forwarding `main` to a commit
already previewed on a branch still deploys production; the time window, so that pushing
the same update again later (A->B, back to A, B again) deploys again. When `on_push` fails,
the keys it took are forgotten (where the dedup store can forget) so a retry is not dropped.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pushsite import names
from pushsite.errors import (
    BackendUnavailable,
    BundleTooLarge,
    ConfigError,
    PushsiteError,
    SiteNotFound,
)
from pushsite.model import HostedRepo
from pushsite.service import Service
from pushsite.sources.webhooks import (
    PushEvent,
    check_provider,
    event_name,
    is_ping,
    parse_pushes,
    verify_signature,
)

log = logging.getLogger(__name__)

MAX_BODY = 1_000_000
_DRAIN_FACTOR = 16  # read and drop at most this many times the limit before giving up


def routes(service: Service) -> list[Any]:
    def get_secret(site: str) -> str | None:
        """The site's secret; None only for a site that does not exist (404). An outage of
        the state answers 503, so a host retries instead of being told the site is gone."""
        try:
            names.check_site_name(site)
            return service.site(site).webhook_secret or None
        except (SiteNotFound, ConfigError):  # a name no site can have is an unknown site
            return None
        except PushsiteError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a backend raised: it is down
            raise BackendUnavailable(f"the state store did not answer ({exc!r}); the git "
                                     "host will retry the delivery") from exc

    async def on_push(site: str, event: PushEvent) -> dict[str, Any]:
        hosted = HostedRepo(event.provider, event.repo, event.project_id)
        outcome = await run_in_threadpool(
            lambda: service.deploy_ref(site, event.ref, event.before, event.commit,
                                       message=event.message, hosted=hosted))
        if outcome.action == "ignore":
            return {"ignored": outcome.reason}
        if outcome.deployment is None:
            return {"deleted": True, "branch": outcome.branch}
        return {"deployment": outcome.deployment.id, "status": str(outcome.deployment.status)}

    endpoint = webhook_endpoint(get_secret, on_push, remember=service.remember_delivery,
                                forget=service.forget_delivery)
    return [Route("/hooks/{provider}/{site}", endpoint, methods=["POST"])]


class MemorySeen:
    """Dedup keys kept in memory (the most recent `size`); StateStore.remember persists them."""

    def __init__(self, size: int = 10_000) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def __call__(self, key: str) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return True

    def forget(self, key: str) -> None:
        self._keys.pop(key, None)


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, or BundleTooLarge as soon as it passes `limit` (never buffered past it)."""
    declared = request.headers.get("content-length", "")
    chunks: list[bytes] = []
    total = 0
    stream = request.stream()
    if not (declared.isdigit() and int(declared) > limit):
        async for chunk in stream:
            total += len(chunk)
            if total > limit:
                break
            chunks.append(chunk)
        else:
            return b"".join(chunks)
    await _drain(stream, limit * _DRAIN_FACTOR)
    raise BundleTooLarge(
        f"the webhook body is over the limit of {limit} bytes: a push payload is far smaller, "
        "so check the URL points at a webhook and not an upload"
    )


async def _drain(stream: AsyncIterator[bytes], most: int) -> None:
    """Read and drop the rest so the client sees our answer and not a reset connection."""
    dropped = 0
    async for chunk in stream:
        dropped += len(chunk)
        if dropped > most:
            return


def _error(error: PushsiteError) -> JSONResponse:
    body = {"ok": False, "error": error.message, "status": error.http_status}
    return JSONResponse(body, status_code=error.http_status)


def webhook_endpoint(
    get_secret: Callable[[str], str | None],
    on_push: Callable[[str, PushEvent], Awaitable[dict[str, Any]]],
    read_limit: int = MAX_BODY,
    *,
    remember: Callable[[str], bool] | None = None,
    forget: Callable[[str], None] | None = None,
    same_push_window: float = 60.0,
    clock: Callable[[], float] = time.time,
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint for `/hooks/{provider}/{site}`.

    `get_secret(site)` is the site's webhook secret, None for an unknown site (404).
    `on_push(site, event)` decides what the ref update does (Service.deploy_ref: a branch
    deploys, a tag only where the site deploys tags) and returns a small dict that goes into
    the answer, with "ignored" when it did nothing; it must be quick, the host is waiting.
    `remember(key)` is True the first time it sees a key (default: in memory); pass
    StateStore.remember to dedup across restarts and processes, and `forget(key)` if the store
    has one, so that a push whose `on_push` failed is taken again when the host retries.
    An ignored update's dedup keys are forgotten too. The same ref update is dropped
    when seen again within `same_push_window` seconds (and taken after twice that).
    Answers JSON: {"ok": true, "site": ..., "events": [...]}, or {"ok": false, "error", "status"}.
    """
    if remember is None:
        memory = MemorySeen()
        remember, forget = memory, memory.forget
    seen = remember

    async def endpoint(request: Request) -> Response:
        provider = request.path_params.get("provider", "")
        site = request.path_params.get("site", "")
        try:
            if request.method != "POST":
                return JSONResponse(
                    {"ok": False, "error": "webhooks are POST requests", "status": 405},
                    status_code=405,
                )
            check_provider(provider)
            secret = get_secret(site)
            if secret is None:
                raise SiteNotFound(f"no site named {site!r}: create it before adding a webhook")
            body = await _read_capped(request, read_limit)
            verify_signature(provider, request.headers, body, secret)
            if is_ping(provider, request.headers, body):
                return JSONResponse({"ok": True, "ping": True, "site": site})
            events = parse_pushes(provider, request.headers, body)
            if not events:
                event = event_name(provider, request.headers) or "unnamed"
                return JSONResponse({"ok": True, "ignored": f"{event} is not a push event"})
            results = [await _handle(site, event) for event in events]
            return JSONResponse({"ok": True, "site": site, "events": results})
        except PushsiteError as error:
            return _error(error)
        except ClientDisconnect:  # the host gave up mid-body; it will retry, nothing was taken
            return Response(status_code=400)

    async def _handle(site: str, event: PushEvent) -> dict[str, Any]:
        summary: dict[str, Any] = {"ref": event.ref, "commit": event.commit}
        taken = []
        delivery = f"hook:{site}:{event.provider}:{event.delivery_id}:{event.ref}"
        if event.delivery_id:
            if not seen(delivery):
                return {**summary, "ignored": "duplicate delivery"}
            taken.append(delivery)
        if not event.deleted:
            # Keys for this time bucket and the one before: a repeat within one window always
            # meets one of them; both are recorded, so no short-circuit.
            bucket = int(clock() // same_push_window)
            update = f"push:{site}:{event.ref}:{event.before}:{event.commit}"
            keys = [f"{update}:{bucket}", f"{update}:{bucket - 1}"]
            fresh = [seen(key) for key in keys]
            taken += [key for key, new in zip(keys, fresh, strict=True) if new]
            if not all(fresh):
                return {**summary, "ignored": "this push was already received"}
        log.info("webhook %s for %s: %s at %s", event.provider, site, event.ref, event.commit)
        try:
            result = await on_push(site, event)
        except BaseException:
            _forget(taken)
            raise
        if "ignored" in result:  # nothing was done: a later delivery may be taken
            _forget(taken)
        return {**summary, **result}

    def _forget(keys: list[str]) -> None:
        if forget is not None:
            for key in keys:
                forget(key)

    return endpoint
