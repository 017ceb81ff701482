"""The records a plain deploy never builds: custom domains, pushes' outcomes, tokens,
notification endpoints and their deliveries (a site without endpoints reads none).

Why here and not in model.py: every `@dataclass` compiles its __init__, __repr__ and __eq__
when its module is imported, and a one-shot `pushsite deploy` imports model.py before it reads
a byte (issue 20). These load with the verbs that use them; `from pushsite.model import Token`
still works (model.__getattr__).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pushsite.model import ADMIN_SCOPE, NOTIFY_EVENTS, DomainStatus

if TYPE_CHECKING:
    from pushsite.model import Deployment


@dataclass(frozen=True)
class Domain:
    """A custom host name claimed by one site; served only once approved.

    `scope` is the authority of whoever claimed it: ADMIN_SCOPE, or site_scope(site) for a
    claim in the site's own pushsite.toml (a deploy token speaks for that site alone).
    """

    host: str
    site: str
    status: DomainStatus = DomainStatus.PENDING
    scope: str = ADMIN_SCOPE
    claimed: float = field(default_factory=time.time)

    @property
    def approved(self) -> bool:
        return self.status is DomainStatus.APPROVED

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "site": self.site, "status": str(self.status),
                "scope": self.scope, "claimed": self.claimed}


@dataclass(frozen=True)
class HostedRepo:
    """A repository on a git host, whose commits' archives a worker fetches (webhooks)."""

    provider: str  # github, gitlab, bitbucket, gitea, forgejo
    repo: str  # "owner/name"; GitLab: path_with_namespace
    project_id: str = ""  # GitLab's numeric project id


@dataclass(frozen=True)
class RefOutcome:
    """What one pushed ref update did (Service.deploy_ref), for the pusher or the git host.

    action: "deploy" (a deployment was queued), "remove" (a preview went with its branch or
    tag), or "ignore" (`reason` says why).
    """

    ref: str
    action: str
    branch: str = ""  # the deployment's branch: the branch name, or tag/<name> for a tag
    deployment: Deployment | None = None
    reason: str = ""


@dataclass
class Token:
    """A deploy token. Only its sha256 is stored; the secret is shown once at creation."""

    id: str
    name: str
    hash: str
    site: str | None = None  # None: every site, and may create sites
    scopes: list[str] = field(default_factory=lambda: ["deploy"])  # deploy, admin
    created: float = field(default_factory=time.time)

    def covers(self, site: str) -> bool:
        return self.site is None or self.site == site


@dataclass
class NotifyEndpoint:
    """A URL told about a site's events, signed with its own secret (Standard Webhooks).

    `failing_since`: when its current run of failed deliveries began (0: the last one went
    through); an endpoint failing for a whole retry window is `disabled` and told nothing.
    """

    id: str
    site: str
    url: str
    secret: str  # "whsec_<base64 key>", shown once when the endpoint is added
    events: list[str] = field(default_factory=lambda: list(NOTIFY_EVENTS))
    format: str = "standard"  # or "slack": {"text": ...}, unsigned by Slack's rules
    created: float = field(default_factory=time.time)
    failing_since: float = 0.0
    disabled: bool = False

    def wants(self, event: str) -> bool:
        return not self.disabled and event in self.events

    def to_dict(self, *, secret: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not secret:
            data.pop("secret")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NotifyEndpoint:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Delivery:
    """One attempt to deliver one message to one endpoint, for the endpoint's delivery log.

    outcome: delivered (2xx), retrying (failed, tried again later), gave_up (failed for a
    whole retry window: the endpoint is disabled), dropped (the endpoint went meanwhile).
    `message`: what a gave_up attempt failed to deliver (its id, event, time and data), kept
    so that it can be sent again (service/notify.resend); None on every other attempt.
    """

    endpoint_id: str
    message_id: str
    event: str
    attempt: int
    outcome: str
    status: int = 0  # the receiver's HTTP status; 0 when it never answered
    latency: float = 0.0  # seconds until the answer (or the failure)
    error: str = ""
    time: float = field(default_factory=time.time)
    message: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Delivery:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
