"""State stores: sites, deployments, aliases, logs, tokens; chosen by URL.

    sqlite:///path/state.db     state/sqlite.py  (the embedded default)
    dynamodb://table            state/dynamodb.py

The one rule every backend keeps: `move_alias` is a compare-and-set. An alias moves only when
it is absent or was last moved by something that sorts before `moved_by` (ids sort by time),
so a deployment accepted later always wins and one that finishes late never replaces a newer
one. A rollback passes a fresh id as `moved_by`, so it beats everything accepted before it.
Nothing here imports service, web, cli or aws.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pushsite.backends import open_backend
from pushsite.errors import ConfigError
from pushsite.model import (
    ADMIN_SCOPE,
    Alias,
    Deployment,
    DomainStatus,
    LogLine,
    Site,
    Status,
)

if TYPE_CHECKING:  # records a deploy never builds (records.py)
    from pushsite.records import Delivery, Domain, NotifyEndpoint, Token

# How long an endpoint's delivery log is kept. The log is for finding out why a receiver
# missed an event: retries end after a day (Config.notify_window) and an endpoint failing
# that long is disabled, so a month covers noticing a quiet failure weeks later and looking
# (Stripe keeps its events as long). 500 attempts per endpoint bound a failing one: a message
# is tried about 38 times in its day, so that is a dozen events retried for a whole day, or
# 500 delivered ones, at ~250 bytes a record.
DELIVERY_DAYS = 30
DELIVERY_RETENTION = DELIVERY_DAYS * 86400.0  # seconds
DELIVERIES_KEPT = 500  # per endpoint

# The most sites one list_sites call returns (issue 20: 10,000 sites listed whole took 1.5 s
# on SQLite). Listings page by name; a caller that must see every site walks the pages
# (every_site), never relying on one call holding them all.
SITE_PAGE = 100


def site_page(limit: int) -> int:
    """`limit` checked for list_sites: a larger page is refused, never cut short (a caller
    that stops at the first short page would stop early)."""
    if not 1 <= limit <= SITE_PAGE:
        raise ConfigError(f"a page of sites holds 1 to {SITE_PAGE}, not {limit}")
    return limit


@dataclass
class SiteHeads:
    """What a list of sites shows beside each name: its newest deployment and the one its
    production alias points at (either may be None)."""

    newest: Deployment | None = None
    live: Deployment | None = None


@dataclass
class Sweep:
    """One prune's sweep, as deploys see it (service/sweeps.py): a deploy that overlapped a
    sweep's batches re-checks the blobs it reused before it goes live.

    `begun` and `ended` count the batches of deletions started and finished; a batch is in
    progress while they differ. `alive_until` is renewed by the prune's heartbeat, so a killed
    prune's record stops mattering; `finished` is set when the prune ends (0 until then).
    """

    id: str
    started: float
    alive_until: float
    begun: int = 0
    ended: int = 0
    finished: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sweep:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class StateStore(Protocol):
    # sites ---------------------------------------------------------------------------------
    def put_site(self, site: Site) -> None:
        """Create or replace a site record."""

    def get_site(self, name: str) -> Site:
        """Raises SiteNotFound."""

    def list_sites(self, *, after: str | None = None, limit: int) -> list[Site]:
        """Sites by name, those after `after`, at most `limit` (capped at SITE_PAGE): a
        keyset page. Callers that need every site walk the pages with every_site."""

    def site_heads(self, sites: Sequence[str]) -> dict[str, SiteHeads]:
        """Each named site's newest and live deployment (a page of sites, as the dashboard
        and `pushsite sites` show them), a fixed number of reads however many sites are
        named, never one query per site on SQLite. Unknown sites are left out."""

    def delete_site(self, name: str) -> None:
        """Remove the site, its aliases, domains, deployments and logs."""

    # domains -------------------------------------------------------------------------------
    def claim_domain(self, host: str, site: str, *,
                     status: DomainStatus = DomainStatus.PENDING,
                     scope: str = ADMIN_SCOPE) -> Domain:
        """Hold `host` for `site` and return the claim. Raises DomainConflict when another
        site holds it, pending or approved (the first claimer keeps it until released). For
        the same site it is idempotent, except that an APPROVED claim approves a pending one
        (and takes its scope); it never turns an approved claim back to pending."""

    def approve_domain(self, host: str, site: str) -> bool:
        """Mark `site`'s claim of `host` approved; False when `site` does not hold it."""

    def release_domain(self, host: str, site: str) -> None: ...

    def domain_site(self, host: str) -> str | None:
        """The site holding `host`, pending or approved (the edge asks get_domain)."""

    def get_domain(self, host: str) -> Domain | None: ...

    def list_domains(self, site: str) -> list[Domain]:
        """The site's claims, by host."""

    # deployments ---------------------------------------------------------------------------
    def create_deployment(self, deployment: Deployment) -> None: ...

    def get_deployment(self, deployment_id: str) -> Deployment:
        """Raises DeploymentNotFound."""

    def update_deployment(
        self, deployment: Deployment, expect_status: Status | None = None,
        *, expect_runner: str | None = None,
    ) -> bool:
        """Write every field; with expect_status, only if the stored status is that one, and
        with expect_runner, only if the stored `runner` is that one (the lease holder)."""

    def claim_lease(self, deployment_id: str, runner: str, until: float, *, holder: str,
                    held_until: float | None = None) -> bool:
        """Set `runner` and `lease_until` of a running deployment, writing nothing else, only
        if `holder` holds its lease (and, with held_until, its lease still ends then: nobody
        renewed it since it was read). True when written: a renewal (holder == runner) or a
        takeover of an expired lease (service/lease.py)."""

    def record_progress(self, deployment: Deployment) -> bool:
        """Write a running deployment's counters and stage (files, carried, bytes_in,
        bytes_stored, blobs_new, blobs_reused, progress, stage) and nothing else (never its
        lease), only while it is running under `deployment.runner`; True when written."""

    def list_deployments(
        self,
        site: str | None = None,
        *,
        branch: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Deployment]:
        """Newest first; `before` is an id for paging."""

    def find_deployments(self, prefix: str, *, site: str | None = None,
                         limit: int = 10) -> list[Deployment]:
        """Deployments whose id starts with `prefix` (of `site`, when given), newest first:
        a range read on the id index, never a scan (`pushsite log 01hx...`)."""

    # aliases -------------------------------------------------------------------------------
    def get_alias(self, site: str, name: str) -> Alias | None: ...

    def list_aliases(self, site: str) -> list[Alias]: ...

    def move_alias(self, site: str, name: str, deployment_id: str, moved_by: str) -> bool:
        """Compare-and-set (see the module docstring); True when the alias moved."""

    def delete_alias(self, site: str, name: str) -> None: ...

    # logs ----------------------------------------------------------------------------------
    def append_logs(self, lines: list[LogLine]) -> None:
        """Store lines; each gets the next `seq` of its deployment."""

    def get_logs(self, deployment_id: str, after: int = 0, limit: int = 10_000) -> list[LogLine]:
        """Lines with seq > after, oldest first."""

    def search_logs(self, site: str, query: str, limit: int = 100) -> list[LogLine]:
        """Full-text search over every deployment's log of a site, newest first."""

    # tokens --------------------------------------------------------------------------------
    def put_token(self, token: Token) -> None: ...

    def find_token(self, token_hash: str) -> Token | None: ...

    def list_tokens(self) -> list[Token]: ...

    def delete_token(self, token_id: str) -> None: ...

    # notification endpoints and their delivery logs (service/notify.py) ----------------------
    def put_endpoint(self, endpoint: NotifyEndpoint) -> None:
        """Create or replace an endpoint (a site's delete_site removes its endpoints)."""

    def update_endpoint(self, endpoint: NotifyEndpoint) -> bool:
        """Replace an endpoint only if it still exists (a removal meanwhile stands)."""

    def list_endpoints(self, site: str) -> list[NotifyEndpoint]:
        """A site's endpoints, oldest first."""

    def delete_endpoint(self, site: str, endpoint_id: str) -> bool:
        """Remove an endpoint and its delivery log; True when it existed."""

    def append_delivery(self, delivery: Delivery) -> None:
        """Add one attempt to its endpoint's delivery log; a backend drops what is older than
        DELIVERY_RETENTION on its own (DynamoDB's TTL, SQLite on the next append), and may
        drop all but the latest DELIVERIES_KEPT."""

    def list_deliveries(self, endpoint_id: str, limit: int = 50) -> list[Delivery]:
        """An endpoint's delivery log, newest first, without records past their retention."""

    def prune_deliveries(self, endpoint_id: str, before: float, keep: int) -> int:
        """Delete the endpoint's delivery records older than `before` (epoch seconds) and all
        but its newest `keep`; returns how many went (housekeeping)."""

    # dedup ---------------------------------------------------------------------------------
    def remember(self, key: str) -> bool:
        """Record a key (a webhook delivery, an S3 event); True only the first time."""

    def forget(self, key: str) -> None:
        """Drop a remembered key, so that `remember(key)` is True again (a webhook whose
        hand-on failed is taken again when the host retries it)."""

    def recalls(self, key: str) -> bool:
        """Whether `remember(key)` was called before; a read that records nothing."""

    # prune's sweeps (service/sweeps.py) -----------------------------------------------------
    def put_sweep(self, sweep: Sweep) -> None:
        """Create or replace a sweep record (only its own prune writes it)."""

    def list_sweeps(self) -> list[Sweep]:
        """Every sweep record, oldest first (a handful: prune removes old ones)."""

    def delete_sweep(self, sweep_id: str) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Watchable(Protocol):
    """An optional ability: a state store that tells cheaply whether anything changed
    (state/sqlite.py), so a reader (the edge) may keep answers until it does.

    `version()` changes on every commit; `change_token()` is a cheaper first check: the same
    bytes as last time prove nothing was committed in between, None means "ask version()".
    A store without these is read on every request.
    """

    def version(self) -> object: ...

    def change_token(self) -> bytes | None: ...


@runtime_checkable
class OwnWrites(Protocol):
    """An optional ability of a store with no cheap change signal (state/dynamodb.py): a
    count of this process's writes to sites, domains, deployments and aliases. A reader that
    keeps answers for a bounded time (edge/hosts.py) drops them when it grows, so what this
    process deploys shows at once, and only other processes' writes wait out the bound."""

    def own_writes(self) -> int: ...


def every_site(state: StateStore) -> Iterator[Site]:
    """Every site by name, a page at a time, without a cap: for callers that must see them
    all (prune's marks, a typo's suggestions). Issue 12's rule: no silent cap in a loop that
    decides a deletion."""
    after: str | None = None
    while True:
        page = state.list_sites(after=after, limit=SITE_PAGE)
        yield from page
        if len(page) < SITE_PAGE:
            return
        after = page[-1].name


_BACKENDS = {
    "sqlite": "pushsite.state.sqlite:SqliteState",
    "dynamodb": "pushsite.state.dynamodb:DynamoState",
}


def open_state_store(url: str) -> StateStore:
    """Open the state store a URL names; the backend is imported only when used."""
    backend: StateStore = open_backend(url, _BACKENDS, "state")
    return backend
