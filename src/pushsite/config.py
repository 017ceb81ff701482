"""Server settings: one table of (name, type, default, help), validated once into a Config.

Each setting is also a `pushsite serve` option and a `PUSHSITE_<NAME>` environment variable,
so `--help` shows the whole surface. URLs choose the backends (DESIGN.md "Layers").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pushsite.errors import ConfigError
from pushsite.limits import Limits


@dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("home", str, "", "data directory for the embedded defaults (default "
            "$XDG_DATA_HOME/pushsite, i.e. ~/.local/share/pushsite; never the current folder)"),
    Setting("store", str, "", "object store URL (default file://$PUSHSITE_HOME/store; "
            "or s3://bucket/prefix)"),
    Setting("state", str, "", "state store URL (default sqlite://$PUSHSITE_HOME/state.db; "
            "or dynamodb://table)"),
    Setting("queue", str, "", "queue URL (default local://$PUSHSITE_HOME/queue.db; "
            "or sqs://queue)"),
    Setting("base_domain", str, "localhost", "sites answer at <site>.<base-domain>"),
    Setting("public_url", str, "", "how visitors reach the edge, for printed URLs "
            "(default http://<base-domain>:8000)"),
    Setting("workers", int, 0, "compression threads per deploy (0: one per core)"),
    Setting("max_files", int, 200_000, "most files a bundle may hold"),
    Setting("max_file_mb", int, 4096, "largest file a bundle may hold, in MB"),
    Setting("max_total_mb", int, 16384, "most bytes a bundle may unpack to, in MB"),
    Setting("max_path", int, 1024, "longest path in a bundle, in bytes"),
    Setting("max_ratio", int, 0, "largest compression ratio a bundle may have (0: the "
            "reader's default); stops gzip bombs"),
    Setting("wait", float, 120.0, "seconds a git push waits for its deploy; one that takes "
            "longer is accepted and continues"),
    Setting("prune_grace", float, 3600.0, "seconds for which prune keeps any blob however "
            "unused: longer than any deploy may take to reference what it found stored"),
    Setting("lease", float, 30.0, "seconds a runner's lease on a running deployment lasts "
            "(renewed every third of it; an expired one is taken over)"),
    Setting("upload_idle", float, 600.0, "seconds an upload's open connection may send "
            "nothing and keep its deployment (its lease is renewed meanwhile); past that "
            "the server drops the request (422) and the deployment fails"),
    Setting("notify_retry", float, 30.0, "seconds before a failed notification or commit "
            "status is tried again (doubling each time, at most an hour, with jitter)"),
    Setting("notify_window", float, 86400.0, "seconds a notification is retried for; an "
            "endpoint failing that long is disabled"),
    Setting("notify_timeout", float, 10.0, "seconds a notification receiver or git host has "
            "to answer one delivery"),
    Setting("metrics", bool, True, "serve /metrics (Prometheus) and count edge requests"),
    Setting("metrics_allow", str, "", "addresses or networks (comma-separated) that may read "
            "/metrics without a token; others need an admin token"),
    Setting("tls_previews", bool, False, "let Caddy's on-demand TLS get a certificate for "
            "branch previews and deployment permalinks too (one each; off: a wildcard "
            "certificate covers them, see README)"),
    Setting("forwarded_allow_ips", str, "", "proxies (IPs or networks, comma-separated, or *) "
            "whose X-Forwarded-For/-Proto/-Host are believed; default none"),
    Setting("dns", str, "", "DNS server that `domains verify` asks for a domain's TXT "
            "record, an IP address or IP:port (default: the system's resolvers)"),
    Setting("mirror", str, "", "s3://bucket[/prefix] that production is mirrored to as plain "
            "files, <prefix>/<site>/ (the AWS stack sets it); a rollback re-mirrors"),
    Setting("mirror_max_delete", float, 0.5, "largest share of a site's mirrored objects one "
            "mirror may delete; more fails it, recorded in the deployment's log"),
    Setting("s3_create_sites", bool, False, "let a bundle in the S3 staging bucket under a new "
            "name create that site (off: it is rejected with a log line naming the key)"),
    Setting("build_paths", str, "", "read-only folders (colon-separated) a site's build may "
            "use besides /usr, e.g. a virtualenv holding MkDocs; their bin/ goes on PATH"),
    Setting("builds", int, 0, "builds at once on this machine (0: half the cores, at least 1)"),
    Setting("build_network", bool, False, "let every build reach the network (otherwise only "
            "a site whose [build] says network = true)"),
    Setting("build_queue", str, "", "queue URL that deployments needing a build are handed to, "
            "for `pushsite worker --builds` to run (a Lambda cannot build); unset: builds run "
            "where the deployment runs"),
    Setting("edge_stale", float, 1.0, "seconds serve's edge may keep which deployment a host "
            "serves over a state that signals no changes (DynamoDB); its own writes drop it at "
            "once; 0: read on every request"),
    Setting("build_wait", float, 86_400.0, "seconds a deployment handed to the builders may "
            "wait for one to take it; past that it fails, naming the build queue"),
)


@dataclass(frozen=True)
class Config:
    """Everything a command needs to open the backends, decided once."""

    home: Path
    store: str
    state: str
    queue: str
    base_domain: str = "localhost"
    public_url: str = ""
    workers: int = 2
    max_files: int = 200_000
    max_file_mb: int = 4096
    max_total_mb: int = 16384
    max_path: int = 1024
    max_ratio: int = 0
    wait: float = 120.0
    prune_grace: float = 3600.0
    lease: float = 30.0
    upload_idle: float = 600.0
    notify_retry: float = 30.0
    notify_window: float = 86400.0
    notify_timeout: float = 10.0
    metrics: bool = True
    metrics_allow: str = ""
    tls_previews: bool = False
    forwarded_allow_ips: str = ""
    dns: str = ""
    mirror: str = ""
    mirror_max_delete: float = 0.5
    s3_create_sites: bool = False
    build_paths: str = ""
    builds: int = 0
    build_network: bool = False
    build_queue: str = ""
    build_wait: float = 86_400.0
    edge_stale: float = 1.0

    @property
    def staging(self) -> Path:
        return self.home / "staging"

    @property
    def repos(self) -> Path:
        return self.home / "repos"

    def site_url(self, label: str) -> str:
        """The URL of a host label on the edge: `blog`, `preview--blog`, `<id>--blog`."""
        scheme, _, rest = self.public_url.partition("://")
        return f"{scheme}://{label}.{rest}/"

    def limits(self) -> Limits:
        values: dict[str, Any] = {
            "max_files": self.max_files,
            "max_file_bytes": self.max_file_mb << 20,
            "max_total_bytes": self.max_total_mb << 20,
            "max_path_length": self.max_path,
        }
        if self.max_ratio:
            values["max_ratio"] = self.max_ratio
        return Limits(**values)


def default_home() -> Path:
    """The per-user data folder (the XDG base directory rule, as platformdirs applies it on
    Linux): one home whichever folder a command runs in, so the CLI and `pushsite serve` meet.
    A relative XDG_DATA_HOME is invalid by the specification and ignored."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / "pushsite"


def _parse(kind: type, raw: Any) -> Any:
    """A setting's value from an option or an environment variable (`bool("0")` is True)."""
    if kind is bool and isinstance(raw, str):
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("", "0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    return kind(raw)


def load_config(**overrides: Any) -> Config:
    """Build a Config from overrides (options given), then PUSHSITE_* variables, then defaults."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = overrides.get(setting.name)
        if raw is None or raw == "":
            raw = os.environ.get(f"PUSHSITE_{setting.name.upper()}", setting.default)
        try:
            values[setting.name] = _parse(setting.type, raw)
        except (TypeError, ValueError):
            raise ConfigError(
                f"invalid value {raw!r} for setting {setting.name} "
                f"(PUSHSITE_{setting.name.upper()}): expected {setting.type.__name__}"
            ) from None
    home = Path(values.pop("home") or default_home()).absolute()
    values["store"] = values["store"] or f"file://{home / 'store'}"
    values["state"] = values["state"] or f"sqlite://{home / 'state.db'}"
    values["queue"] = values["queue"] or f"local://{home / 'queue.db'}"
    default_url = f"http://{values['base_domain']}:8000"
    values["public_url"] = (values["public_url"] or default_url).rstrip("/")
    if values["workers"] <= 0:
        values["workers"] = os.cpu_count() or 2
    for name in ("max_files", "max_file_mb", "max_total_mb", "max_path", "lease", "upload_idle"):
        if values[name] <= 0:
            raise ConfigError(f"setting {name} must be positive, got {values[name]}")
    return Config(home=home, **values)
