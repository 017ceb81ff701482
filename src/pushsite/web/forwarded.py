"""Proxy headers, believed only from the proxies the operator named (`--forwarded-allow-ips`).

Behind Caddy or nginx every connection comes from the proxy, so the visitor's address, the
scheme it used and the host it asked for arrive as X-Forwarded-For, X-Forwarded-Proto and
X-Forwarded-Host. From any other peer these headers are a visitor's claim and change nothing.
The default trusts no one: uvicorn's own default would trust 127.0.0.1, that is every process
on the machine, without the operator asking.

uvicorn's ProxyHeadersMiddleware applies -For and -Proto (the request's client and scheme, so
`request.url` says https and the dashboard's cookies are Secure). `ForwardedHost` applies -Host
(the Host the edge and the control plane route on), checked against the same list before
uvicorn's middleware replaces the peer's address with the visitor's. Caddy keeps the Host
header as the visitor sent it, so behind Caddy -Host only repeats it.
"""

from __future__ import annotations

import ipaddress
from typing import Any, cast

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from pushsite.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted(value: str) -> tuple[bool, tuple[Network, ...]]:
    """(everyone?, networks) from "127.0.0.1, 10.0.0.0/8, ::1" or "*"."""
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    networks = []
    for entry in entries:
        if entry == "*":
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"invalid --forwarded-allow-ips entry {entry!r}: expected an IP "
                              "address or network such as 127.0.0.1 or 10.0.0.0/8, or *") from None
    return "*" in entries, tuple(networks)


class ForwardedHost:
    """Routes on X-Forwarded-Host when the direct peer is a trusted proxy."""

    def __init__(self, app: ASGIApp, trusted: str) -> None:
        self.app = app
        self.everyone, self.networks = parse_trusted(trusted)

    def trusts(self, peer: str) -> bool:
        if self.everyone:
            return True
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            if client and self.trusts(client[0]):
                scope = _with_forwarded_host(scope)
        await self.app(scope, receive, send)


def _with_forwarded_host(scope: Scope) -> Scope:
    forwarded = None
    for name, value in scope["headers"]:
        if name == b"x-forwarded-host":
            forwarded = value
    if forwarded is None:
        return scope
    # the last proxy's entry: the one a trusted peer wrote (earlier ones are its client's word)
    host = forwarded.rsplit(b",", 1)[-1].strip()
    if not host:
        return scope
    headers = [(n, v) for n, v in scope["headers"] if n != b"host"]
    headers.append((b"host", host))
    return {**scope, "headers": headers}


def trusting_proxies(app: Any, trusted: str) -> Any:
    """`app` behind the proxy-header middlewares for `trusted` ("" : `app` unchanged)."""
    if not trusted.strip():
        return app
    parse_trusted(trusted)  # one clear error for a bad entry, before uvicorn's
    # uvicorn types its middleware with its own, narrower ASGI scope types: the same protocol
    behind = cast(ASGIApp, ProxyHeadersMiddleware(app, trusted_hosts=trusted))
    return ForwardedHost(behind, trusted)
