"""Host -> site and what to serve: production, a branch preview, one deployment, a custom domain.

    <site>.<base>                  the site's production alias
    <branch-label>--<site>.<base>  the alias branch/<branch> whose names.branch_label is the label
    <deployment-id>--<site>.<base> that deployment, while its status is ready or live
    <custom domain>                the production alias of the site that claimed it, once the
                                   claim is approved (an admin, or DNS proof); never an IP
                                   literal, `localhost` or a name under the base domain

`reserved_reason` says which names no site may claim: those the edge or the control plane
answer on by themselves.

Parsing a host is pure and cached. Which deployment a host serves (and which site a custom
domain names) is read from the state store, and how long an answer is kept depends on what the
store can tell:

- SQLite (state.Watchable): kept until the next commit, so a deploy or rollback by any process
  shows on the very next request.
- DynamoDB (state.OwnWrites): kept for at most STALE_SECONDS (1 s) from the start of the read
  that made it, and dropped at once when this process writes a site, domain, deployment or
  alias. So a deploy, rollback or promote made in this process (serve's own worker) shows on
  the next request, one made elsewhere (a Lambda, a worker, another serve) within 1 s; and a
  busy host costs one state lookup a second per process, not one per request (a consistent
  read of one item per page view capped a site at that item's read limit). The second is
  PUSHSITE_EDGE_STALE; 0 reads the state on every request, for who needs every edge to agree
  at once more than it needs the reads.
- Any other store: read on every request.

The branch-label -> alias-name mapping is cached apart, and checked by that same read.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from pushsite.caches import BoundedCache
from pushsite.errors import NotFound
from pushsite.ids import looks_like_id
from pushsite.model import PRODUCTION, branch_alias
from pushsite.names import branch_label
from pushsite.state import OwnWrites, StateStore, Watchable

_T = TypeVar("_T")

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_BRANCH_PREFIX = branch_alias("")
_MAX_CACHED_HOSTS = 10_000
_MISSING = object()
STALE_SECONDS = 1.0  # how old an answer may be over a store without a change signal
_clock = time.monotonic


class Kind(StrEnum):
    PRODUCTION = "production"
    PREVIEW = "preview"
    DEPLOYMENT = "deployment"


@dataclass(frozen=True)
class SiteTarget:
    """What a host names: a site and which of its versions (`label` is a branch label or id)."""

    site: str
    kind: Kind
    label: str = ""

    @property
    def noindex(self) -> bool:
        """Previews and permalinks must not compete with production in search engines."""
        return self.kind is not Kind.PRODUCTION


def split_host(host: str) -> str:
    """The lowercased host name of a Host header value, without port or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


def parse_site_host(host: str, base_domain: str) -> SiteTarget | None:
    """The target of a host under the base domain, or None if it is not a site host there.

    A permalink label wins over a branch label when both could match (a branch label that
    looks exactly like a 26-character deployment id).
    """
    suffix = "." + base_domain
    if not host.endswith(suffix):
        return None
    prefix = host[: -len(suffix)]
    if not _LABEL.match(prefix):
        return None
    left, sep, site = prefix.rpartition("--")
    if not sep:
        return SiteTarget(prefix, Kind.PRODUCTION)
    if not _LABEL.match(site) or not _LABEL.match(left) or "--" in left:
        return None
    if looks_like_id(left):
        return SiteTarget(site, Kind.DEPLOYMENT, left)
    return SiteTarget(site, Kind.PREVIEW, left)


def is_ip_literal(host: str) -> bool:
    """An IPv4 or IPv6 address written as a host (bracketed or not, any zone dropped)."""
    bare = host.strip("[]").split("%", 1)[0]
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        return False
    return True


def _at_or_under(host: str, name: str) -> bool:
    return bool(name) and (host == name or host.endswith("." + name))


def reserved_reason(host: str, base_domain: str, control_hosts: tuple[str, ...] = ()) -> str:
    """Why no site may claim `host`, or "" when a site may (after approval).

    IP addresses and `localhost` reach the control plane (and the git hook's call-back); the
    base domain and every name under it are the edge's own labels (`<site>.<base>`,
    previews, permalinks); `control_hosts` are the names the control plane is reached at.
    """
    bare = host.strip().lower().rstrip(".")
    name = bare if is_ip_literal(bare) else split_host(bare)  # "::1" has no port to drop
    if is_ip_literal(name):
        return f"{name} is an IP address: it reaches the control plane, never a site"
    if _at_or_under(name, "localhost"):
        return f"{name} is a loopback name: it reaches the control plane, never a site"
    base = split_host(base_domain)
    if _at_or_under(name, base):
        return (f"{name} is under the base domain {base}: its names are the edge's own "
                f"(<site>.{base} and previews)")
    for control in control_hosts:
        if name == split_host(control):
            return f"{name} is the control plane's host name"
    return ""


class HostResolver:
    """Maps hosts to targets and targets to the deployment id to serve right now."""

    def __init__(self, state: StateStore, base_domain: str = "localhost",
                 stale_seconds: float = STALE_SECONDS) -> None:
        self.state = state
        self.stale_seconds = stale_seconds
        self.base_domain = split_host(base_domain)
        self._hosts: BoundedCache[str, SiteTarget | None] = BoundedCache(_MAX_CACHED_HOSTS)
        self._preview_alias: BoundedCache[tuple[str, str], str] = BoundedCache(
            _MAX_CACHED_HOSTS)
        # With a state that tells when it changed, answers are kept until it does; without,
        # read on every request.
        self._watched = state if isinstance(state, Watchable) else None
        self._seen_version: object = None
        self._answers: BoundedCache[SiteTarget, str | None] = BoundedCache(_MAX_CACHED_HOSTS)
        self._seen_token: bytes | None = None
        # With one that counts its own writes (DynamoDB): answers kept for stale_seconds
        # (PUSHSITE_EDGE_STALE; 0 reads on every request)
        self._own = (state if self._watched is None and isinstance(state, OwnWrites)
                     and stale_seconds > 0 else None)
        self._timed: BoundedCache[object, tuple[float, int, object]] = BoundedCache(
            _MAX_CACHED_HOSTS)

    def target(self, host: str) -> SiteTarget | None:
        """The site a Host header names, or None when the control plane should answer."""
        cached = self._hosts.get(host, _MISSING)
        if cached is None or isinstance(cached, SiteTarget):
            return cached
        name = split_host(host)
        target = parse_site_host(name, self.base_domain)
        if target is not None or "." not in name or reserved_reason(name, self.base_domain):
            return self._hosts.put(host, target)
        # Custom domains are claimed, approved and released at any time: never cached for
        # long (at most STALE_SECONDS over DynamoDB, see the module's docstring).
        return self._bounded(("domain", name), lambda: self._domain_target(name))

    def named(self, host: str) -> SiteTarget | None:
        """The target a Host header names by its form alone (a name under the base domain),
        which never changes; None for a custom domain or a host that names no site."""
        return parse_site_host(split_host(host), self.base_domain)

    def _domain_target(self, name: str) -> SiteTarget | None:
        domain = self.state.get_domain(name)
        return SiteTarget(domain.site, Kind.PRODUCTION) if domain and domain.approved else None

    def _bounded(self, key: object, read: Callable[[], _T]) -> _T:
        """`read()`, kept for STALE_SECONDS while this process writes nothing, over a store
        that counts its own writes; read every time over any other."""
        own = self._own
        if own is None:
            return read()
        writes = own.own_writes()  # before the read: a write after it changes the count
        now = _clock()
        hit = self._timed.get(key)
        if hit is not None and hit[0] > now and hit[1] == writes:
            return hit[2]  # type: ignore[return-value]
        value = read()
        self._timed.put(key, (now + self.stale_seconds, writes, value))
        return value

    def deployment_id(self, target: SiteTarget) -> str | None:
        """The deployment to serve for a target now, or None when there is none."""
        watched = self._watched
        if watched is None:
            return self._bounded(target, lambda: self._lookup(target))
        token = watched.change_token()
        if token is None or token != self._seen_token:
            # Read before the version: a commit after this read changes the next token.
            version = watched.version()
            self._seen_token = token
            if version != self._seen_version:
                self._answers.clear()
                self._seen_version = version
        answer = self._answers.get(target, _MISSING)
        if answer is None or isinstance(answer, str):
            return answer
        return self._answers.put(target, self._lookup(target))

    def _lookup(self, target: SiteTarget) -> str | None:
        if target.kind is Kind.PRODUCTION:
            alias = self.state.get_alias(target.site, PRODUCTION)
            return alias.deployment_id if alias else None
        if target.kind is Kind.DEPLOYMENT:
            try:
                deployment = self.state.get_deployment(target.label)
            except NotFound:
                return None
            if deployment.site != target.site or not deployment.status.servable:
                return None
            return deployment.id
        return self._preview(target.site, target.label)

    def _preview(self, site: str, label: str) -> str | None:
        key = (site, label)
        name = self._preview_alias.get(key)
        if name is not None:
            alias = self.state.get_alias(site, name)
            if alias is not None:
                return alias.deployment_id
            self._preview_alias.pop(key)
        for alias in self.state.list_aliases(site):
            if alias.name.startswith(_BRANCH_PREFIX) and (
                branch_label(alias.name[len(_BRANCH_PREFIX) :]) == label
            ):
                self._preview_alias.put(key, alias.name)
                return alias.deployment_id
        # The production branch's preview is production itself when it has no branch alias.
        try:
            production_branch = self.state.get_site(site).production_branch
        except NotFound:
            return None
        if branch_label(production_branch) == label:
            alias = self.state.get_alias(site, PRODUCTION)
            return alias.deployment_id if alias else None
        return None
