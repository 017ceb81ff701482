"""Host -> site resolution: production, branch previews, permalinks, custom domains."""

from __future__ import annotations

import time

import pytest

from pushsite.edge.hosts import (
    HostResolver,
    Kind,
    SiteTarget,
    parse_site_host,
    reserved_reason,
    split_host,
)
from pushsite.errors import DeploymentNotFound, SiteNotFound
from pushsite.ids import new_id
from pushsite.model import (
    PRODUCTION,
    Alias,
    Deployment,
    Domain,
    DomainStatus,
    Site,
    Status,
    branch_alias,
)


class MemoryState:
    """A test double of the StateStore protocol: just the reads hosts.py makes, in dicts."""

    def __init__(self) -> None:
        self.sites: dict[str, Site] = {}
        self.aliases: dict[tuple[str, str], Alias] = {}
        self.deployments: dict[str, Deployment] = {}
        self.domains: dict[str, Domain] = {}
        self.calls: list[str] = []

    def get_site(self, name: str) -> Site:
        if name not in self.sites:
            raise SiteNotFound(f"no site named {name!r}")
        return self.sites[name]

    def get_domain(self, host: str) -> Domain | None:
        self.calls.append("get_domain")
        return self.domains.get(host)

    def get_deployment(self, deployment_id: str) -> Deployment:
        if deployment_id not in self.deployments:
            raise DeploymentNotFound(f"no deployment {deployment_id!r}")
        return self.deployments[deployment_id]

    def get_alias(self, site: str, name: str) -> Alias | None:
        self.calls.append("get_alias")
        return self.aliases.get((site, name))

    def list_aliases(self, site: str) -> list[Alias]:
        self.calls.append("list_aliases")
        return [a for (s, _), a in self.aliases.items() if s == site]

    def point(self, site: str, name: str, deployment_id: str) -> None:
        self.aliases[(site, name)] = Alias(site, name, deployment_id, deployment_id, time.time())


@pytest.fixture
def state() -> MemoryState:
    state = MemoryState()
    state.sites["blog"] = Site("blog")
    return state


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Blog.LocalHost:8000", "blog.localhost"),
        ("blog.localhost.", "blog.localhost"),
        ("[::1]:8000", "[::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
        (" example.com ", "example.com"),
    ],
)
def test_split_host(host: str, expected: str) -> None:
    assert split_host(host) == expected


def test_parse_site_host_forms() -> None:
    dep = new_id()
    assert parse_site_host("blog.localhost", "localhost") == SiteTarget("blog", Kind.PRODUCTION)
    assert parse_site_host("feature-x--blog.localhost", "localhost") == SiteTarget(
        "blog", Kind.PREVIEW, "feature-x"
    )
    assert parse_site_host(f"{dep}--blog.localhost", "localhost") == SiteTarget(
        "blog", Kind.DEPLOYMENT, dep
    )
    assert parse_site_host("blog.example.test", "example.test") is not None


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "a.b.localhost",
        "-blog.localhost",
        "blog.other",
        "x---blog.localhost",
        "--blog.localhost",
        "blog--.localhost",
        "b_log.localhost",
        "notlocalhost",
    ],
)
def test_parse_site_host_rejects(host: str) -> None:
    assert parse_site_host(host, "localhost") is None


def test_previews_and_permalinks_are_noindex() -> None:
    assert not SiteTarget("blog", Kind.PRODUCTION).noindex
    assert SiteTarget("blog", Kind.PREVIEW, "x").noindex
    assert SiteTarget("blog", Kind.DEPLOYMENT, "x").noindex


def test_production_follows_the_alias_on_every_call(state: MemoryState) -> None:
    resolver = HostResolver(state)
    target = resolver.target("blog.localhost:8000")
    assert target is not None
    assert resolver.deployment_id(target) is None
    state.point("blog", PRODUCTION, "d1")
    assert resolver.deployment_id(target) == "d1"
    state.point("blog", PRODUCTION, "d2")
    assert resolver.deployment_id(target) == "d2"


def test_branch_preview_matches_by_label_and_sees_alias_moves(state: MemoryState) -> None:
    resolver = HostResolver(state)
    state.point("blog", branch_alias("Feature/Login_Form"), "d1")
    target = resolver.target("feature-login-form--blog.localhost")
    assert target == SiteTarget("blog", Kind.PREVIEW, "feature-login-form")
    assert resolver.deployment_id(target) == "d1"
    state.calls.clear()
    state.point("blog", branch_alias("Feature/Login_Form"), "d2")
    assert resolver.deployment_id(target) == "d2"
    assert state.calls == ["get_alias"]  # the label is cached, the alias is read again
    del state.aliases[("blog", branch_alias("Feature/Login_Form"))]
    assert resolver.deployment_id(target) is None


def test_unknown_preview_label(state: MemoryState) -> None:
    resolver = HostResolver(state)
    state.point("blog", branch_alias("other"), "d1")
    target = resolver.target("nope--blog.localhost")
    assert target is not None
    assert resolver.deployment_id(target) is None


def test_production_branch_preview_falls_back_to_production(state: MemoryState) -> None:
    resolver = HostResolver(state)
    state.point("blog", PRODUCTION, "d1")
    target = resolver.target("main--blog.localhost")
    assert target is not None
    assert resolver.deployment_id(target) == "d1"


def test_permalink_only_for_servable_deployments_of_that_site(state: MemoryState) -> None:
    resolver = HostResolver(state)
    dep = new_id()
    state.deployments[dep] = Deployment(dep, "blog", "main", status=Status.READY)
    target = resolver.target(f"{dep}--blog.localhost")
    assert target is not None
    assert resolver.deployment_id(target) == dep
    state.deployments[dep].status = Status.LIVE
    assert resolver.deployment_id(target) == dep
    for status in (Status.QUEUED, Status.RUNNING, Status.FAILED, Status.TIMED_OUT):
        state.deployments[dep].status = status
        assert resolver.deployment_id(target) is None
    state.deployments[dep].status = Status.LIVE
    other = resolver.target(f"{dep}--docs.localhost")
    assert other is not None
    assert resolver.deployment_id(other) is None  # another site's id
    missing = resolver.target(f"{new_id()}--blog.localhost")
    assert missing is not None
    assert resolver.deployment_id(missing) is None


def _claim(host: str, site: str = "blog", status: DomainStatus = DomainStatus.APPROVED) -> Domain:
    return Domain(host, site, status)


def test_custom_domains_are_read_every_time(state: MemoryState) -> None:
    resolver = HostResolver(state)
    assert resolver.target("www.example.com") is None
    state.domains["www.example.com"] = _claim("www.example.com", status=DomainStatus.PENDING)
    assert resolver.target("www.example.com") is None  # pending: never served
    state.domains["www.example.com"] = _claim("www.example.com")
    assert resolver.target("WWW.example.com:443") == SiteTarget("blog", Kind.PRODUCTION)
    del state.domains["www.example.com"]
    assert resolver.target("www.example.com") is None


def test_control_plane_hosts_need_no_lookup(state: MemoryState) -> None:
    resolver = HostResolver(state)
    for host in ("localhost:8000", "localhost", "[::1]:8000", ""):
        assert resolver.target(host) is None
    assert "get_domain" not in state.calls


def test_reserved_names_are_never_mapped_whatever_the_state_holds(state: MemoryState) -> None:
    """A claim an older version let through (or written by hand) still never serves the
    control plane's address, loopback names or names under the base domain."""
    resolver = HostResolver(state, base_domain="sites.example.test")
    for host in ("127.0.0.1", "10.1.2.3", "localhost", "app.localhost",
                 "a.b.sites.example.test", "sites.example.test"):
        state.domains[host] = _claim(host, "evil")
    for host in ("127.0.0.1:8000", "10.1.2.3", "[::1]:8000", "localhost", "app.localhost",
                 "a.b.sites.example.test", "sites.example.test:443"):
        assert resolver.target(host) is None, host
    assert "get_domain" not in state.calls


@pytest.mark.parametrize(("host", "why"), [
    ("127.0.0.1", "IP address"), ("::1", "IP address"), ("[2001:db8::1]", "IP address"),
    ("LOCALHOST.", "loopback"), ("x.localhost", "loopback"),
    ("example.test", "under the base domain"), ("a.b.example.test", "under the base domain"),
    ("deploy.example.org", "control plane's host name"),
])
def test_reserved_reason_names_why(host: str, why: str) -> None:
    assert why in reserved_reason(host, "example.test", ("deploy.example.org",))


def test_ordinary_names_are_claimable() -> None:
    for host in ("www.example.com", "example.com", "notexample.test", "localhost.example.com"):
        assert reserved_reason(host, "example.test", ("deploy.example.org",)) == ""


def test_custom_base_domain(state: MemoryState) -> None:
    resolver = HostResolver(state, base_domain="Sites.Example.Test")
    assert resolver.target("blog.sites.example.test") == SiteTarget("blog", Kind.PRODUCTION)
    assert resolver.target("blog.localhost") is None
