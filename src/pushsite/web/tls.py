"""Caddy's on-demand TLS `ask` endpoint: pushsite decides which names deserve a certificate.

Caddy asks `GET /tls/allowed?domain=NAME` before it obtains a certificate for a name it meets
for the first time in a TLS handshake; any answer but a 2xx refuses it. Anyone can send any
name (SNI) or point any DNS name at the server, and a certificate authority limits how many
certificates an account may get, so the answer is 200 only for a name a visitor can be served:

    <site>.<base-domain>                    a site with a live deployment
    <branch>--<site>.<base-domain>          a preview that resolves now   } only with the
    <deployment-id>--<site>.<base-domain>   a servable deployment         } tls_previews setting
    <custom domain>                         a site's approved custom domain (the edge serves it)

Every answer is the edge's own host resolution (hosts.py: a cached host parse, a domain record
read by key, the alias or deployment to serve, cached until the state changes), never a scan
of the state, so it stays fast with any number of sites. A site that has never been deployed
serves nothing, so its name gets no certificate until its first deploy. It reads the state
and nothing else: no request leaves the server on a caller's behalf.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pushsite.edge.hosts import HostResolver, Kind, parse_site_host, split_host
from pushsite.errors import ConfigError
from pushsite.names import check_host
from pushsite.service import Service


def allowed(service: Service, hosts: HostResolver, domain: str) -> tuple[bool, str]:
    """Whether pushsite serves `domain` (a bare host name), and why not when it does not."""
    try:
        name = check_host(domain)
    except ConfigError:
        return False, "not a host name"
    if split_host(name) != name:  # a port, brackets: Caddy sends bare names only
        return False, "not a host name"
    under_base = parse_site_host(name, hosts.base_domain)
    target = hosts.target(name)
    if target is None:
        return False, "no site answers on this name"
    if under_base is None:  # a custom domain: the resolver names its site only once approved
        return True, f"custom domain of site {target.site}"
    if target.kind is not Kind.PRODUCTION and not service.config.tls_previews:
        return False, "certificates for previews and permalinks are off (tls_previews)"
    # the edge's own answer (kept until the state changes, when the state says so)
    if hosts.deployment_id(target) is None:
        return False, f"site {target.site} serves nothing on this name"
    return True, f"{target.kind} of site {target.site}"


def routes(service: Service, hosts: HostResolver) -> list[Any]:
    async def ask(request: Request) -> JSONResponse:
        domain = request.query_params.get("domain", "")
        if not domain:
            return JSONResponse({"allowed": False, "reason": "the domain parameter is missing"},
                                status_code=400)
        ok, reason = allowed(service, hosts, domain)
        return JSONResponse({"allowed": ok, "domain": domain, "reason": reason},
                            status_code=200 if ok else 404)

    return [Route("/tls/allowed", ask, methods=["GET"])]
