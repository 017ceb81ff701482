"""One exception tree for the whole product, mapped to exit codes and HTTP statuses at the edges.

    PushsiteError                      exit 1  HTTP 500  base, never raised itself
    ├── ConfigError                    exit 2  HTTP 400  bad option, setting or backend URL
    ├── BundleRejected                 exit 3  HTTP 422  unsafe path, not gzip, truncated, corrupt
    │   └── BundleTooLarge             exit 3  HTTP 413  over a limit (files, bytes, ratio, path)
    ├── SiteConfigError                exit 3  HTTP 422  bad _headers, _redirects, pushsite.toml
    ├── NotFound                       exit 4  HTTP 404
    │   ├── SiteNotFound
    │   └── DeploymentNotFound
    ├── AliasConflict                  exit 5  HTTP 409  a newer push moved the alias first
    ├── DomainConflict                 exit 5  HTTP 409  a host is already claimed by another site
    ├── DeploymentFailed               exit 6  HTTP 500  pipeline stopped, live site untouched
    │   ├── DeploymentTimedOut                           the deadline came first
    │   └── DeploymentCancelled                          someone cancelled it
    │       └── Interrupted            exit 130          Ctrl-C (SIGINT) stopped the deploy
    ├── BackendUnavailable             exit 7  HTTP 503  store, state or queue unreachable
    │   └── DiskFull                           HTTP 507  no space left where the data lives
    └── NotAuthorized                  exit 8  HTTP 401  token missing or not allowed
        └── Forbidden                          HTTP 403  token valid but does not cover this

Messages are sentences for the user: what was wrong, the value, what to do next.
"""

from __future__ import annotations


class PushsiteError(Exception):
    """Base of every error pushsite reports to a user."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(PushsiteError):
    exit_code = 2
    http_status = 400


class BundleRejected(PushsiteError):
    exit_code = 3
    http_status = 422


class BundleTooLarge(BundleRejected):
    http_status = 413


class SiteConfigError(PushsiteError):
    exit_code = 3
    http_status = 422


class NotFound(PushsiteError):
    exit_code = 4
    http_status = 404


class SiteNotFound(NotFound):
    pass


class DeploymentNotFound(NotFound):
    pass


class AliasConflict(PushsiteError):
    exit_code = 5
    http_status = 409


class DomainConflict(PushsiteError):
    exit_code = 5
    http_status = 409


class DeploymentFailed(PushsiteError):
    exit_code = 6
    http_status = 500


class DeploymentTimedOut(DeploymentFailed):
    pass


class BuildStopped(DeploymentFailed):
    """A build's sandbox was killed for a limit (the message says which)."""


class DeploymentCancelled(DeploymentFailed):
    pass


class Interrupted(DeploymentCancelled):
    """Ctrl-C during a deploy: the deployment is cancelled, not failed, and the process exits
    128 + SIGINT, as a shell reports an interrupted command."""

    exit_code = 130


class BackendUnavailable(PushsiteError):
    exit_code = 7
    http_status = 503


class DiskFull(BackendUnavailable):
    """The file system holding pushsite's data is full (ENOSPC, SQLite's SQLITE_FULL): an
    outage reported in one line, never a traceback; the live site is untouched. The backends
    recognise it (diskspace.py) where they write."""

    http_status = 507

    @classmethod
    def holding(cls, path: object) -> DiskFull:
        return cls(f"no space left on the device holding {path}; free some space there "
                   "(`pushsite prune SITE --keep N` drops old deployments) and try again")


class NotAuthorized(PushsiteError):
    exit_code = 8
    http_status = 401


class Forbidden(NotAuthorized):
    http_status = 403
