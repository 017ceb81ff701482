"""Who is calling: deploy tokens for the JSON API and the dashboard.

A token travels as `Authorization: Bearer <token>`, or as the password of HTTP Basic (any user
name), as git sends it. Scopes: "deploy" reads, uploads, activates, cancels and redeploys on
the sites the token covers; "admin" adds creating, configuring and deleting sites and managing
tokens, and implies "deploy". A token limited to one site covers only that site.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from pushsite.errors import Forbidden, NotAuthorized
from pushsite.model import Token
from pushsite.service import Service

SCOPES = ("deploy", "admin")


def secret_from_headers(headers: Mapping[str, str]) -> str:
    """The token a request carries (Bearer, or Basic's password), or "" when it has none."""
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return password or user
    return ""


def authenticate(service: Service, secret: str) -> Token:
    """The token record for a secret; NotAuthorized (401) when it is missing or unknown."""
    if not secret:
        raise NotAuthorized("this needs a deploy token: send `Authorization: Bearer <token>` "
                            "(create one with `pushsite tokens create`)")
    return service.check_token(secret, None, "deploy")


def require(token: Token, site: str | None = None, scope: str = "deploy") -> Token:
    """Check a token covers `site` and holds `scope`; Forbidden (403) otherwise."""
    if site is not None and not token.covers(site):
        raise Forbidden(f"token {token.name!r} does not cover site {site!r}; use a token "
                        "made for that site or for every site")
    if scope not in token.scopes and "admin" not in token.scopes:
        raise Forbidden(f"token {token.name!r} lacks the {scope!r} scope; create one with "
                        f"`pushsite tokens create{' --admin' if scope == 'admin' else ''}`")
    return token


def require_global_admin(token: Token) -> Token:
    """Managing every site's tokens needs an admin token not limited to one site."""
    require(token, None, "admin")
    if token.site is not None:
        raise Forbidden(f"token {token.name!r} is limited to site {token.site!r}; this needs an "
                        "admin token for every site")
    return token
