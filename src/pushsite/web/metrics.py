"""GET /metrics: the Prometheus text format, for an admin token or a configured address.

Everything it shows is summed over every process of the home (state/counters.py), so any one
of `pushsite serve --http-workers N` answers for all of them; queue depth and age are read
from the state at scrape time.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pushsite.errors import Forbidden, NotAuthorized
from pushsite.service import Service
from pushsite.service.metrics import CONTENT_TYPE, render
from pushsite.web import auth

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def allowed_networks(setting: str) -> list[Network]:
    return [ipaddress.ip_network(part.strip(), strict=False)
            for part in setting.split(",") if part.strip()]


def routes(service: Service) -> list[Any]:
    if not service.config.metrics:
        return []
    networks = allowed_networks(service.config.metrics_allow)

    def from_allowed(request: Request) -> bool:
        host = request.client.host if request.client else ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in networks)

    async def metrics(request: Request) -> Response:
        if not from_allowed(request):
            try:
                token = auth.authenticate(service, auth.secret_from_headers(request.headers))
                auth.require_global_admin(token)
            except Forbidden as exc:  # (a kind of NotAuthorized: first)
                return PlainTextResponse(f"{exc}\n", 403)
            except NotAuthorized as exc:
                return PlainTextResponse(f"{exc}\n", 401,
                                         headers={"www-authenticate": "Bearer"})
        body = await run_in_threadpool(render, service)
        return Response(body, headers={"content-type": CONTENT_TYPE,
                                       "cache-control": "no-store"})

    return [Route("/metrics", metrics)]
