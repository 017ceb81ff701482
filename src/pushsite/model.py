"""The records every layer passes around: sites, deployments, aliases, manifests."""

from __future__ import annotations

import enum
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pushsite.errors import ConfigError

if TYPE_CHECKING:
    from pushsite.records import Delivery as Delivery
    from pushsite.records import Domain as Domain
    from pushsite.records import HostedRepo as HostedRepo
    from pushsite.records import NotifyEndpoint as NotifyEndpoint
    from pushsite.records import RefOutcome as RefOutcome
    from pushsite.records import Token as Token

# records a plain deploy never builds, defined in records.py and loaded when first named here
_IN_RECORDS = frozenset({"Delivery", "Domain", "HostedRepo", "NotifyEndpoint", "RefOutcome",
                         "Token"})


def __getattr__(name: str) -> Any:
    """`from pushsite.model import Token` as before the records moved (records.py)."""
    if name in _IN_RECORDS:
        from pushsite import records

        return getattr(records, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Status(enum.StrEnum):
    RECEIVING = "receiving"  # an upload is arriving; queued once it has all arrived
    QUEUED = "queued"
    RUNNING = "running"
    READY = "ready"
    LIVE = "live"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (Status.RECEIVING, Status.QUEUED, Status.RUNNING)

    @property
    def servable(self) -> bool:
        return self in (Status.READY, Status.LIVE)


PRODUCTION = "production"


def branch_alias(branch: str) -> str:
    """The alias name of a branch preview."""
    return f"branch/{branch}"


@dataclass(frozen=True)
class WebhookSettings:
    """Where a site's webhook pushes fetch their archives from (a git host's API), and the
    one repository whose pushes may deploy it (the secret alone proves only who signed)."""

    base_url: str = ""  # a self-hosted host's API base; "" for the public host
    access_token: str = ""  # for private repositories; never shown back
    repo: str = ""  # "owner/name" the site is bound to; "" until set or the first valid push
    last_ignored_repo: str = ""  # the latest signed push from another repository, ignored

    def to_dict(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "access_token": self.access_token,
                "repo": self.repo, "last_ignored_repo": self.last_ignored_repo}

    @classmethod
    def from_dict(cls, data: Any) -> WebhookSettings:
        data = data if isinstance(data, dict) else {}
        return cls(*(str(data.get(key) or "") for key in
                     ("base_url", "access_token", "repo", "last_ignored_repo")))


HIDDEN = "••••"  # how a secret variable's value is shown, once set


MAX_VARIABLES = 200
_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_variable_name(name: str) -> str:
    """A build variable's name: what a shell accepts; PATH is the sandbox's own."""
    if not _VARIABLE_NAME.match(name) or name == "PATH":
        raise ConfigError(f"{name!r} is not a variable name a build may set: letters, digits "
                          "and _, not starting with a digit (PATH is set by the sandbox)")
    return name


def check_variable_value(name: str, value: str) -> str:
    if "\0" in value or len(value) > 32_768:
        raise ConfigError(f"the value of {name} must be text of at most 32,768 characters "
                          "without NUL")
    return value


@dataclass(frozen=True)
class Variable:
    """A variable the site's builds see in their environment. A secret's value is never
    shown again once set (API, CLI, dashboard) and is redacted from build output."""

    name: str
    value: str
    secret: bool = False

    def shown(self) -> dict[str, Any]:
        return {"name": self.name, "value": HIDDEN if self.secret else self.value,
                "secret": self.secret}


@dataclass(frozen=True)
class SiteSettings:
    """A site's settings as one value; state stores keep it as the dict `to_dict` makes.

    `tags`: tag pushes deploy too (as `tag/<name>` previews), set by `pushsite hooks --tags`,
    the API or the production branch's pushsite.toml.
    """

    tags: bool = False
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    # the value a DNS TXT record `_pushsite-challenge.<host>` holds to prove the site's owner
    # controls <host> (not a secret: it is published); made on first use
    domain_token: str = ""
    variables: tuple[Variable, ...] = ()  # the build's environment (`pushsite env`)
    # production locked (`pushsite lock`): production-branch deployments become ready, and
    # only a promote or a rollback moves production
    locked: bool = False
    # a git push whose deploy fails is refused (the branch stays); False keeps the commits
    reject_failed_pushes: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"tags": self.tags, "webhook": self.webhook.to_dict(),
                "domain_token": self.domain_token,
                "variables": [[v.name, v.value, v.secret] for v in self.variables],
                "locked": self.locked, "reject_failed_pushes": self.reject_failed_pushes}

    @classmethod
    def from_dict(cls, data: Any) -> SiteSettings:
        """Read a stored dict, including older ones with keys left out (or unknown ones)."""
        data = data if isinstance(data, dict) else {}
        variables = tuple(Variable(str(row[0]), str(row[1]), bool(row[2]))
                          for row in data.get("variables") or () if len(row) == 3)
        return cls(bool(data.get("tags", False)), WebhookSettings.from_dict(data.get("webhook")),
                   str(data.get("domain_token") or ""), variables, bool(data.get("locked")),
                   bool(data.get("reject_failed_pushes", True)))


class DomainStatus(enum.StrEnum):
    PENDING = "pending"  # claimed: held for the site, never served
    APPROVED = "approved"  # an admin approved it or DNS proved it: the edge serves it


ADMIN_SCOPE = "admin"  # a claim by an admin (the local CLI, an admin token)


def site_scope(site: str) -> str:
    """The scope of a claim made with authority over one site only (its pushsite.toml)."""
    return f"site:{site}"


@dataclass
class Site:
    name: str
    production_branch: str = "main"
    created: float = field(default_factory=time.time)
    domains: list[str] = field(default_factory=list)  # claimed hosts, pending or approved
    webhook_secret: str = ""
    settings: SiteSettings = field(default_factory=SiteSettings)

    def to_dict(self) -> dict[str, Any]:
        """The record without its secrets (the webhook secret, the git host's token)."""
        data = asdict(self)
        data.pop("webhook_secret")
        data["settings"]["webhook"].pop("access_token")
        data["settings"]["variables"] = [v.shown() for v in self.settings.variables]
        return data


@dataclass
class Deployment:
    id: str
    site: str
    branch: str
    status: Status = Status.QUEUED
    commit: str = ""
    message: str = ""
    source: str = ""  # where the bundle came from: cli, git, webhook, api, redeploy
    bundle_key: str = ""  # the bundle in staging, while it waits or runs
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    files: int = 0
    bytes_in: int = 0
    bytes_stored: int = 0
    blobs_new: int = 0
    blobs_reused: int = 0
    error: str = ""
    progress: str = ""  # how far it got, e.g. "1200 files (34.0 MiB read), 3 new blobs, ..."
    # while running: who holds its lease ("<kind>@<host>:<pid>:<nonce>", see service/lease.py)
    # and until when (epoch seconds, renewed by the runner's heartbeat; 0: never leased)
    runner: str = ""
    lease_until: float = 0.0
    # the pushsite.errors class it stopped with ("internal" for anything else), set on failure
    error_kind: str = ""
    # a draft moves no alias: reached at its own URL only, until promoted (`pushsite promote`)
    draft: bool = False
    # written while it runs (service/progress.py), at most every PROGRESS_EVERY seconds: the
    # files a push carried over unread, and the stage it is in (read, manifest, activate, ...)
    carried: int = 0
    stage: str = ""
    # the hosting copy's outcome for it (aws/mirror.py, with PUSHSITE_MIRROR): "" when never
    # mirrored, else "mirrored: <counts>", "paused: <counts>" (resumed by the next run) or
    # "refused: <why>" (the max-delete guard: not retried, the copy stays as it was)
    mirror: str = ""

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return round(self.finished - self.started, 3)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        data["seconds"] = self.seconds
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deployment:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["status"] = Status(known.get("status", "queued"))
        known["draft"] = bool(known.get("draft", False))  # SQLite keeps 0 or 1
        return cls(**known)


@dataclass(frozen=True)
class Alias:
    site: str
    name: str  # "production" or "branch/<name>"
    deployment_id: str
    moved_by: str  # the id of what moved it last: a deployment id, or a fresh id for a rollback
    updated: float


@dataclass(slots=True)
class FileEntry:
    """One published path: its blob and how it is stored."""

    hash: str  # sha256 hex of the identity content
    size: int
    type: str  # media type with charset for text
    encodings: dict[str, int] = field(default_factory=dict)  # "br"/"gzip" -> stored size
    git: str = ""  # the git blob id when the deployment came from a push
    # where a variant ("", "gzip", "br") lives when not at its own blob_key: a range of a
    # pack object ("packs/<id>@<offset>+<length>"), written by stores that pack small blobs,
    # or a quick gzip's own key until the optimiser made the final one (fast_gzip_key)
    # (None, not an empty dict, when there is none: 100,000 entries stay small)
    refs: dict[str, str] | None = None

    def key(self, encoding: str = "") -> str:
        """The store key to read a variant from: its pack range, else its own object."""
        return (self.refs and self.refs.get(encoding)) or blob_key(self.hash, encoding)

    def to_json(self) -> list[Any]:
        row = [self.hash, self.size, self.type, self.encodings, self.git]
        return [*row, self.refs] if self.refs else row

    @classmethod
    def from_json(cls, row: list[Any]) -> FileEntry:
        return cls(row[0], row[1], row[2], row[3], row[4] if len(row) > 4 else "",
                   row[5] if len(row) > 5 else None)


@dataclass
class Manifest:
    """A deployment's table: path -> file, plus the site's headers, redirects and 404 page.

    Paths are relative, decoded, '/'-separated, with no leading slash ("about/index.html").
    `headers` and `redirects` hold the rules siteconfig.py parsed at deploy time.
    """

    deployment_id: str
    site: str
    created: float
    files: dict[str, FileEntry] = field(default_factory=dict)
    headers: list[dict[str, Any]] = field(default_factory=list)
    redirects: list[dict[str, Any]] = field(default_factory=list)
    not_found: str | None = None
    commit: str = ""
    # variants still to be made after the deployment went live ("br"; deploy/optimise.py):
    # the edge offers only what `encodings` lists, and looks again once this is empty
    pending: list[str] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "version": 1,
            "deployment": self.deployment_id,
            "site": self.site,
            "created": self.created,
            "commit": self.commit,
            "files": {path: entry.to_json() for path, entry in self.files.items()},
            "headers": self.headers,
            "redirects": self.redirects,
            "not_found": self.not_found,
        }
        if self.pending:
            doc["pending"] = self.pending
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        raw = json.loads(data)
        return cls(
            deployment_id=raw["deployment"],
            site=raw["site"],
            created=raw["created"],
            commit=raw.get("commit", ""),
            files={path: FileEntry.from_json(row) for path, row in raw["files"].items()},
            headers=raw.get("headers", []),
            redirects=raw.get("redirects", []),
            not_found=raw.get("not_found"),
            pending=list(raw.get("pending") or ()),
        )


def manifest_key(deployment_id: str) -> str:
    return f"manifests/{deployment_id}.json"


def pending_key(deployment_id: str) -> str:
    """A marker stored while a live deployment's later variants are still being made: the
    edge looks for the optimised manifest once it is gone (deploy/optimise.py)."""
    return f"pending/{deployment_id}"


def blob_key(digest: str, encoding: str = "") -> str:
    """The store key of a blob variant: identity, 'gzip' or 'br'."""
    suffix = {"": "", "gzip": ".gz", "br": ".br"}[encoding]
    return f"blobs/{digest[:2]}/{digest}{suffix}"


FAST_GZIP = ".gzf"


def fast_gzip_key(digest: str) -> str:
    """Where a quick gzip lives that a live-first deploy serves until the optimiser stores
    the final one at blob_key(digest, 'gzip') (JavaScript and CSS: deploy/encode.py); a
    manifest names it in its entry's refs, so each key's bytes never change."""
    return f"blobs/{digest[:2]}/{digest}{FAST_GZIP}"


@dataclass
class LogLine:
    """One structured line of a deployment's log."""

    deployment_id: str
    time: float
    level: str  # debug, info, warning, error
    stage: str  # accept, read, store, manifest, activate, ...
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    seq: int = 0  # position in the deployment's log, set by the state store

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# outgoing notifications (service/notify.py) -------------------------------------------------
NOTIFY_EVENTS = ("deployment.queued", "deployment.started", "deployment.succeeded",
                 "deployment.failed", "deployment.timed_out", "deployment.cancelled",
                 "site.production_changed")
NOTIFY_FORMATS = ("standard", "slack")
