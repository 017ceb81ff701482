"""Push webhooks from git hosts: verify signatures, recognise pings, parse pushes.

    POST /hooks/<provider>/<site>     provider: github, gitlab, bitbucket, gitea, forgejo

No HTTP framework here: the endpoint that answers the host, with its dedup, is web/hooks.py.

Each host signs differently; every comparison is constant-time and a missing or wrong
signature is NotAuthorized before the body is even parsed:

    github      X-Hub-Signature-256: sha256=<HMAC-SHA256 hex of the body>
    gitea       X-Gitea-Signature: <HMAC-SHA256 hex>  (Forgejo also sends X-Forgejo-Signature)
    gitlab      X-Gitlab-Token: <the secret itself>
    bitbucket   X-Hub-Signature: sha256=<HMAC-SHA256 hex>   (Bitbucket Cloud)

Tests the hosts send: GitHub's `ping` event, Bitbucket's `diagnostics:ping`, and Gitea's
"Test Delivery", a push whose before and after are both the zero id. GitLab's "Test" button
sends a real push of the default branch's last commits that no header tells apart, so it
deploys that commit like any push (and the commit dedup makes a repeat harmless).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qs

from pushsite.errors import ConfigError, NotAuthorized, NotFound

PROVIDERS = ("github", "gitlab", "bitbucket", "gitea", "forgejo")
ZERO_COMMIT = "0" * 40

_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


@dataclass(frozen=True)
class PushEvent:
    """One ref update a git host told us about."""

    provider: str
    delivery_id: str
    repo: str  # "owner/name"; GitLab: path_with_namespace
    ref: str  # "refs/heads/main", "refs/tags/v1.0"
    branch: str | None
    tag: str | None
    commit: str  # the commit the ref now points at; ZERO_COMMIT when deleted
    deleted: bool
    forced: bool
    message: str
    pusher: str
    project_id: str = ""  # GitLab's numeric project id
    before: str = ""  # the commit the ref pointed at before; ZERO_COMMIT when created

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- repositories ------------------------------------------------------------------------

# "owner/name", and GitLab's "group/subgroup/name": path segments of letters, digits, . _ -
_REPO = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+$")


def check_repo_name(repo: str) -> str:
    """A repository name as hosts write it ("owner/name"), or ConfigError."""
    repo = repo.strip().strip("/")
    if len(repo) > 255 or not _REPO.match(repo) or ".." in repo.split("/"):
        raise ConfigError(f"invalid repository {repo!r}: expected owner/name, as in the "
                          "repository's URL (GitLab: group/subgroup/name)")
    return repo


def same_repo(bound: str, repo: str) -> bool:
    """Whether a push from `repo` is for the `bound` repository: hosts treat owner and name
    case-insensitively (GitHub, Gitea, GitLab paths, Bitbucket workspaces and slugs)."""
    return bound.strip("/").casefold() == repo.strip("/").casefold()


# -- signatures ----------------------------------------------------------------------------


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def check_provider(provider: str) -> str:
    """The provider, or NotFound for a host we have no parser for."""
    if provider not in PROVIDERS:
        raise NotFound(f"unknown webhook provider {provider!r}: use one of {', '.join(PROVIDERS)}")
    return provider


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def verify_signature(provider: str, headers: Mapping[str, str], body: bytes, secret: str) -> None:
    """Raise NotAuthorized unless the request carries this provider's valid signature."""
    check_provider(provider)
    if not secret:
        raise NotAuthorized(
            "this site has no webhook secret, so no webhook can be trusted: set one for the "
            "site and enter the same secret in the git host's webhook settings"
        )
    lowered = _lower(headers)
    if provider == "gitlab":
        header, given = "X-Gitlab-Token", lowered.get("x-gitlab-token", "")
        valid = bool(given) and _same(given, secret)
    else:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if provider in ("gitea", "forgejo"):
            header = "X-Gitea-Signature"
            given = lowered.get("x-forgejo-signature") or lowered.get("x-gitea-signature", "")
            expected = digest
        else:
            header = "X-Hub-Signature-256" if provider == "github" else "X-Hub-Signature"
            given, expected = lowered.get(header.lower(), ""), "sha256=" + digest
        valid = bool(given) and _same(given.strip().lower(), expected)
    if not valid:
        state = "wrong" if given else "missing"
        raise NotAuthorized(
            f"the {provider} webhook's {header} header is {state}: make the secret in the git "
            "host's webhook settings match the site's webhook secret"
        )


# -- events --------------------------------------------------------------------------------


def _event_name(provider: str, headers: dict[str, str]) -> str:
    if provider == "github":
        return headers.get("x-github-event", "")
    if provider == "gitlab":
        return headers.get("x-gitlab-event", "")
    if provider == "bitbucket":
        return headers.get("x-event-key", "")
    return (
        headers.get("x-forgejo-event")
        or headers.get("x-gitea-event")
        or headers.get("x-gogs-event", "")
    )


def event_name(provider: str, headers: Mapping[str, str]) -> str:
    """The host's name for the delivery's event, e.g. `push` or `Push Hook` ("" if none)."""
    return _event_name(check_provider(provider), _lower(headers))


def delivery_id(provider: str, headers: Mapping[str, str]) -> str:
    """The host's id of this delivery, the same when the host retries it ("" if none)."""
    lowered = _lower(headers)
    names = {
        "github": ("x-github-delivery",),
        "gitlab": ("idempotency-key", "x-gitlab-event-uuid"),
        "bitbucket": ("x-request-uuid", "x-hook-uuid"),
        "gitea": ("x-gitea-delivery", "x-forgejo-delivery", "x-gogs-delivery"),
        "forgejo": ("x-forgejo-delivery", "x-gitea-delivery"),
    }[check_provider(provider)]
    return next((lowered[name] for name in names if lowered.get(name)), "")


def _load(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The JSON payload; GitHub and Gitea may also send it form-encoded as `payload=`."""
    text: str | bytes = body
    if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        text = parse_qs(body.decode("utf-8", "replace")).get("payload", [""])[0]
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"the webhook body is not valid JSON ({error}): set the webhook's content type "
            "to application/json"
        ) from error
    if not isinstance(data, dict):
        raise ConfigError("the webhook body is JSON but not an object: expected a push payload")
    return data


def is_ping(provider: str, headers: Mapping[str, str], body: bytes) -> bool:
    """True for a host's connection test, which is answered 200 and deploys nothing."""
    lowered = _lower(headers)
    event = _event_name(check_provider(provider), lowered)
    if provider == "github":
        return event == "ping"
    if provider == "bitbucket":
        return event == "diagnostics:ping"
    if provider in ("gitea", "forgejo") and event == "push":
        try:
            data = _load(lowered, body)
        except ConfigError:
            return False
        return data.get("before") == ZERO_COMMIT and data.get("after") == ZERO_COMMIT
    return False


def _get(data: Mapping[str, Any], *path: str) -> Any:
    value: Any = data
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _required(data: Mapping[str, Any], *path: str) -> str:
    value = _get(data, *path)
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"the push payload lacks {'.'.join(path)!r}: is this really a push event?"
        )
    return value


def _commit(value: str) -> str:
    if not _SHA.match(value):
        raise ConfigError(f"the push payload's commit id {value!r} is not a hex git object id")
    return value


def _event(
    provider: str,
    delivery: str,
    repo: str,
    ref: str,
    commit: str,
    *,
    forced: bool = False,
    message: str = "",
    pusher: str = "",
    project_id: str = "",
    before: str = "",
) -> PushEvent:
    deleted = commit.strip("0") == ""
    branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None
    tag = ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else None
    return PushEvent(
        provider=provider,
        delivery_id=delivery,
        repo=repo,
        ref=ref,
        branch=branch,
        tag=tag,
        commit=ZERO_COMMIT if deleted else _commit(commit.lower()),
        deleted=deleted,
        forced=forced,
        message="" if deleted else message,
        pusher=pusher,
        project_id=project_id,
        before=before.lower() if _SHA.match(before.lower()) else "",
    )


def _github_like(provider: str, delivery: str, data: dict[str, Any]) -> PushEvent:
    """GitHub's push payload; Gitea and Forgejo send the same shape."""
    after = _required(data, "after")
    head = _get(data, "head_commit")
    # An annotated tag's `after` is the tag object; head_commit is the commit it names.
    commit = (_text(_get(head, "id")) or after) if after.strip("0") else after
    pusher = (
        _text(_get(data, "pusher", "login"))
        or _text(_get(data, "pusher", "username"))
        or _text(_get(data, "pusher", "name"))
    )
    return _event(
        provider,
        delivery,
        _required(data, "repository", "full_name"),
        _required(data, "ref"),
        commit,
        forced=bool(data.get("forced")),
        message=_text(_get(head, "message")),
        pusher=pusher,
        before=_text(data.get("before")),
    )


def _gitea_delete(provider: str, delivery: str, data: dict[str, Any]) -> PushEvent | None:
    """Gitea reports a deleted branch as a `delete` event, not as a push."""
    if data.get("ref_type") != "branch":
        return None
    ref = "refs/heads/" + _required(data, "ref").removeprefix("refs/heads/")
    pusher = _text(_get(data, "sender", "login")) or _text(_get(data, "sender", "username"))
    repo = _required(data, "repository", "full_name")
    return _event(provider, delivery, repo, ref, ZERO_COMMIT, pusher=pusher)


def _gitlab(delivery: str, data: dict[str, Any]) -> PushEvent:
    after = _required(data, "after")
    # A tag push's `after` may be an annotated tag object; checkout_sha is its commit.
    commit = _text(data.get("checkout_sha")) or after
    listed = data.get("commits")
    commits: list[Any] = listed if isinstance(listed, list) else []
    last = next((c for c in commits if isinstance(c, dict) and c.get("id") == commit), None)
    message = _text(_get(last or {}, "message")) or _text(data.get("message"))
    project_id = data.get("project_id", _get(data, "project", "id"))
    return _event(
        "gitlab",
        delivery,
        _required(data, "project", "path_with_namespace"),
        _required(data, "ref"),
        commit,
        message=message,
        pusher=_text(data.get("user_username")) or _text(data.get("user_name")),
        project_id=str(project_id) if isinstance(project_id, int | str) else "",
        before=_text(data.get("before")),
    )


def _bitbucket(delivery: str, data: dict[str, Any]) -> list[PushEvent]:
    """One event per change: a single Bitbucket push may update several refs."""
    changes = _get(data, "push", "changes")
    if not isinstance(changes, list):
        raise ConfigError("the push payload lacks 'push.changes': is this really a push event?")
    repo = _required(data, "repository", "full_name")
    pusher = _text(_get(data, "actor", "nickname")) or _text(_get(data, "actor", "display_name"))
    events = []
    for change in changes:
        side = (change.get("new") or change.get("old")) if isinstance(change, dict) else None
        if not isinstance(side, dict) or side.get("type") not in ("branch", "tag"):
            continue
        prefix = "refs/heads/" if side["type"] == "branch" else "refs/tags/"
        new, old = change.get("new"), change.get("old")
        commit = _required(new, "target", "hash") if new else ZERO_COMMIT
        before = _text(_get(old, "target", "hash")) if old else ZERO_COMMIT
        events.append(
            _event(
                "bitbucket",
                delivery,
                repo,
                prefix + _required(side, "name"),
                commit,
                forced=bool(change.get("forced")),
                message=_text(_get(new or {}, "target", "message")),
                pusher=pusher,
                before=before,
            )
        )
    return events


def parse_pushes(provider: str, headers: Mapping[str, str], body: bytes) -> list[PushEvent]:
    """Every ref update in a delivery; empty for events that are not pushes."""
    lowered = _lower(headers)
    event = _event_name(check_provider(provider), lowered)
    delivery = delivery_id(provider, lowered)
    if provider == "github":
        return [_github_like(provider, delivery, _load(lowered, body))] if event == "push" else []
    if provider == "gitlab":
        if event not in ("Push Hook", "Tag Push Hook", "Push Event", "Tag Push Event"):
            return []
        return [_gitlab(delivery, _load(lowered, body))]
    if provider == "bitbucket":
        return _bitbucket(delivery, _load(lowered, body)) if event == "repo:push" else []
    if event == "push":
        return [_github_like(provider, delivery, _load(lowered, body))]
    if event == "delete":
        deleted = _gitea_delete(provider, delivery, _load(lowered, body))
        return [deleted] if deleted else []
    return []


def parse_push(provider: str, headers: Mapping[str, str], body: bytes) -> PushEvent | None:
    """The delivery's push (the first ref update of a multi-ref Bitbucket push), or None."""
    events = parse_pushes(provider, headers, body)
    return events[0] if events else None
