"""Commit statuses on the git host, for deployments a webhook started.

    github   POST {api}/repos/{owner}/{repo}/statuses/{sha}        Authorization: Bearer
    gitlab   POST {base}/api/v4/projects/{id|path}/statuses/{sha}  PRIVATE-TOKEN
    gitea    POST {base}/api/v1/repos/{owner}/{repo}/statuses/{sha} Authorization: token
    forgejo  (as gitea)
    bitbucket POST {api}/2.0/repositories/{workspace}/{repo}/commit/{sha}/statuses/build
                                                                   Authorization: Bearer

The base is the site's webhook base URL, the one its archives come from (sources/archive.py);
Bitbucket's public API lives on api.bitbucket.org, not bitbucket.org. Pending when queued,
success (the deployment's own URL as the target) when ready, failure with the error.

Sent from the queue like notifications (service/notify.py): a 5xx, 429 or no answer is tried
again with the same backoff; another 4xx (a bad token, no access) is not worth repeating. Every
failure is a warning in the deployment's log and never touches the deployment itself.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pushsite.errors import DeploymentNotFound, SiteNotFound
from pushsite.model import Deployment, Status
from pushsite.service import notify

if TYPE_CHECKING:
    from pushsite.service.running import Running as ServiceBase

CONTEXT = "pushsite"
DEFAULT_APIS = {
    "github": "https://api.github.com",
    "gitlab": "https://gitlab.com",
    "bitbucket": "https://api.bitbucket.org",
    "gitea": "https://gitea.com",
    "forgejo": "https://codeberg.org",
}
# our state -> each host's word for it
_STATES = {
    "github": {"pending": "pending", "success": "success", "failure": "failure"},
    "gitea": {"pending": "pending", "success": "success", "failure": "failure"},
    "gitlab": {"pending": "pending", "success": "success", "failure": "failed"},
    "bitbucket": {"pending": "INPROGRESS", "success": "SUCCESSFUL", "failure": "FAILED"},
}
_DESCRIPTIONS = {"pending": "deploying", "success": "deployed"}
_MAX_DESCRIPTION = 140  # GitHub's limit; the others allow more


def state_for(status: Status) -> str | None:
    """The commit status a deployment's status reports; None for a cancelled one (a newer
    push superseded it, or someone cancelled it: its own status will come)."""
    if status in (Status.QUEUED, Status.RUNNING):
        return "pending"
    if status.servable:
        return "success"
    if status in (Status.FAILED, Status.TIMED_OUT):
        return "failure"
    return None


def status_request(provider: str, base_url: str, repo: str, sha: str, token: str, state: str,
                   target_url: str, description: str) -> tuple[str, dict[str, str],
                                                              dict[str, Any]]:
    """URL, headers and JSON body of one status report."""
    family = "gitea" if provider == "forgejo" else provider
    base = (base_url or DEFAULT_APIS[provider]).rstrip("/")
    path = "/".join(quote(part, safe="") for part in repo.split("/"))
    word = _STATES[family][state]
    description = description[:_MAX_DESCRIPTION]
    headers = {"user-agent": "pushsite", "content-type": "application/json"}
    body: dict[str, Any]
    if family == "github":
        url = f"{base}/repos/{path}/statuses/{sha}"
        headers |= {"accept": "application/vnd.github+json",
                    "x-github-api-version": "2022-11-28", "authorization": f"Bearer {token}"}
        body = {"state": word, "target_url": target_url, "description": description,
                "context": CONTEXT}
    elif family == "gitlab":
        url = f"{base}/api/v4/projects/{quote(repo, safe='')}/statuses/{sha}"
        headers["private-token"] = token
        body = {"state": word, "target_url": target_url, "description": description,
                "name": CONTEXT}
    elif family == "gitea":
        url = f"{base}/api/v1/repos/{path}/statuses/{sha}"
        headers["authorization"] = f"token {token}"
        body = {"state": word, "target_url": target_url, "description": description,
                "context": CONTEXT}
    else:
        url = f"{base}/2.0/repositories/{path}/commit/{sha}/statuses/build"
        headers["authorization"] = f"Bearer {token}"
        body = {"key": CONTEXT, "state": word, "name": CONTEXT, "url": target_url,
                "description": description}
    return url, headers, body


def announce(service: ServiceBase, deployment: Deployment) -> bool:
    """Queue a status report for a deployment a webhook started (others have no host)."""
    if not deployment.source.startswith("webhook:") or not deployment.commit:
        return False
    state = state_for(deployment.status)
    if state is None:
        return False
    now = time.time()
    service.queue.send({"status": {"deployment": deployment.id, "state": state,
                                   "attempt": 1, "first": now}})
    return True


# one report per deployment at a time in this process: a late `pending` never lands after the
# `success` (it is skipped once the deployment has finished, see deliver)
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def _lock_for(deployment_id: str) -> threading.Lock:
    with _locks_guard:
        if len(_locks) > 1000:
            for name in [n for n, lock in _locks.items() if not lock.locked()]:
                del _locks[name]
        return _locks[deployment_id]


def deliver(service: ServiceBase, message: dict[str, Any]) -> str | None:
    """One attempt at one status report; returns the outcome (None: nothing to send). Raises
    only when the state or the queue fails (the message then stays on the queue)."""
    if notify.not_yet(service, "status", message):
        return None
    with _lock_for(message["deployment"]):
        try:
            deployment = service.state.get_deployment(message["deployment"])
            site = service.state.get_site(deployment.site)
        except (DeploymentNotFound, SiteNotFound):
            return None
        state = message["state"]
        if state == "pending" and deployment.status.finished:
            return None  # stale: the final status is (or will be) reported instead
        outcome = _send(service, deployment, site.settings.webhook, state, message)
    notify.count(service, "commit_status", outcome)
    return outcome


def _send(service: ServiceBase, deployment: Deployment, hook: Any, state: str,
          message: dict[str, Any]) -> str:
    import httpx  # only a delivery needs it: see notify.client()

    provider = deployment.source.removeprefix("webhook:")
    attempt = int(message.get("attempt", 1))
    if provider not in DEFAULT_APIS or not hook.repo:
        service._note(deployment, "warning", "status", f"no commit status sent to {provider}: "
                      "the site is bound to no repository yet")
        return "skipped"
    target = notify.deployment_urls(service, deployment)["deployment"]
    description = deployment.error if state == "failure" else _DESCRIPTIONS[state]
    url, headers, body = status_request(provider, hook.base_url, hook.repo, deployment.commit,
                                        hook.access_token, state, target, description)
    try:
        answer = notify.client(service.config.notify_timeout).post(url, json=body,
                                                                   headers=headers)
        code, problem = answer.status_code, f"answered {answer.status_code}"
    except httpx.HTTPError as exc:
        code, problem = 0, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if 200 <= code < 300:
        return "delivered"
    where = url.split("?")[0]
    retry = code == 0 or code == 429 or code >= 500
    now = time.time()
    if retry and now - float(message["first"]) < service.config.notify_window:
        wait = notify.backoff(attempt, service.config.notify_retry)
        service._note(deployment, "warning", "status", f"the {state} commit status to "
                      f"{where} failed ({problem}); tried again in {wait:.0f} s")
        notify.postpone(service, "status", {**message, "attempt": attempt + 1}, now + wait)
        return "retrying"
    hint = " (check the site's access token)" if code in (401, 403) else ""
    service._note(deployment, "warning", "status", f"the {state} commit status to {where} "
                  f"failed ({problem}){hint}; not sent")
    return "gave_up"
