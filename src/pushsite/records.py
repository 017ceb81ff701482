"""The records a plain deploy never builds: custom domains, pushes' outcomes, tokens.

Why here and not in model.py: every `@dataclass` compiles its __init__, __repr__ and __eq__
when its module is imported, and a one-shot `pushsite deploy` imports model.py before it reads
a byte (issue 20). These load with the verbs that use them; `from pushsite.model import Token`
still works (model.__getattr__).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pushsite.model import ADMIN_SCOPE, DomainStatus

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
