"""Deploy tokens: made once, stored only as a sha256, checked for a site and a scope."""

from __future__ import annotations

import hashlib
import secrets

from pushsite import ids, names
from pushsite.errors import Forbidden, NotAuthorized
from pushsite.model import Token
from pushsite.state import StateStore


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(state: StateStore, name: str, site: str | None = None,
                 scopes: list[str] | None = None) -> str:
    """A new deploy token; only its hash is stored, the secret is returned once."""
    if site is not None:
        names.check_site_name(site)
    secret = "psk_" + secrets.token_urlsafe(24)
    state.put_token(Token(ids.new_id(), name, hash_token(secret), site, scopes or ["deploy"]))
    return secret


def check_token(state: StateStore, secret: str, site: str | None = None,
                scope: str = "deploy") -> Token:
    """The token a secret names, if it covers the site and has the scope ("admin" has all)."""
    token = state.find_token(hash_token(secret)) if secret else None
    if token is None:
        raise NotAuthorized("a valid deploy token is required (create one with "
                            "`pushsite tokens create`)")
    if site is not None and not token.covers(site):
        raise Forbidden(f"this token does not cover site {site!r}")
    if scope not in token.scopes and "admin" not in token.scopes:
        raise Forbidden(f"this token lacks the {scope!r} scope")
    return token
