"""Commit statuses for deployments a webhook started, sent to a local HTTP server that stands
in for each git host and checks what that host documents: method, path, headers, body."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from pushsite.model import Status
from pushsite.service import Service
from support.receivers import WAIT, Receiver, receivers_fixture, running_fixture
from support.service import bundle, site_files

receivers = pytest.fixture(receivers_fixture)
running = pytest.fixture(running_fixture)

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "tok-secret-1"
# provider -> (repository, path the status goes to, the auth header and its value,
#              body keys, the state words for pending / success / failure)
HOSTS: dict[str, tuple[str, str, tuple[str, str], set[str], tuple[str, str, str]]] = {
    "github": ("acme/site", f"/repos/acme/site/statuses/{SHA}",
               ("authorization", f"Bearer {TOKEN}"),
               {"state", "target_url", "description", "context"},
               ("pending", "success", "failure")),
    "gitlab": ("acme/web/site", f"/api/v4/projects/acme%2Fweb%2Fsite/statuses/{SHA}",
               ("private-token", TOKEN), {"state", "target_url", "description", "name"},
               ("pending", "success", "failed")),
    "gitea": ("acme/site", f"/api/v1/repos/acme/site/statuses/{SHA}",
              ("authorization", f"token {TOKEN}"),
              {"state", "target_url", "description", "context"},
              ("pending", "success", "failure")),
    "forgejo": ("acme/site", f"/api/v1/repos/acme/site/statuses/{SHA}",
                ("authorization", f"token {TOKEN}"),
                {"state", "target_url", "description", "context"},
                ("pending", "success", "failure")),
    "bitbucket": ("acme/site", f"/2.0/repositories/acme/site/commit/{SHA}/statuses/build",
                  ("authorization", f"Bearer {TOKEN}"),
                  {"key", "state", "name", "url", "description"},
                  ("INPROGRESS", "SUCCESSFUL", "FAILED")),
}


def bind(service: Service, provider: str, base: str) -> None:
    """The site's webhook settings: base URL, token, and the repository it is bound to."""
    service.create_site("blog")
    service.update_site("blog", webhook_base_url=base, webhook_access_token=TOKEN)
    site = service.state.get_site("blog")
    site.settings = replace(site.settings,
                            webhook=replace(site.settings.webhook, repo=HOSTS[provider][0]))
    service.state.put_site(site)


def webhook_deploy(service: Service, provider: str, ok: bool = True) -> Any:
    data = bundle(site_files("hi")) if ok else b"not a gzip stream"
    deployment = service.accept("blog", io.BytesIO(data), commit=SHA,
                                source=f"webhook:{provider}")
    deadline = time.monotonic() + WAIT
    while not (found := service.state.get_deployment(deployment.id)).status.finished or \
            found.status == Status.READY:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return found


def base_of(receiver: Receiver) -> str:
    return receiver.url.removesuffix("/hook")


@pytest.mark.parametrize("provider", sorted(HOSTS))
def test_pending_then_success_or_failure_as_each_host_documents_it(
        provider: str, running: Callable[..., Service],
        receivers: Callable[..., Receiver]) -> None:
    repo, path, (header, value), keys, (pending, success, failure) = HOSTS[provider]
    host = receivers(answer=lambda n: 201)
    service = running(notify_retry=0.1)
    bind(service, provider, base_of(host))
    good = webhook_deploy(service, provider)
    assert good.status == Status.LIVE
    host.wait_for(lambda: len(host.seen) == 2, "pending and success")
    bad = webhook_deploy(service, provider, ok=False)
    assert bad.status == Status.FAILED
    host.wait_for(lambda: len(host.seen) == 4, "pending and failure")
    for sent in host.seen:
        assert sent.path == path
        assert sent.headers[header] == value
        assert sent.headers["content-type"] == "application/json"
        assert set(sent.json()) == keys
    bodies = [sent.json() for sent in host.seen]
    states = [b["state"] for b in bodies]
    assert states == [pending, success, pending, failure]
    link = "url" if provider == "bitbucket" else "target_url"
    assert bodies[1][link] == f"http://{good.id}--blog.localhost:8000/"
    assert bodies[3]["description"] == bad.error[:140]
    assert bodies[3][link] == f"http://{bad.id}--blog.localhost:8000/"


def test_a_host_refusing_the_token_is_logged_and_the_deploy_goes_live(
        running: Callable[..., Service], receivers: Callable[..., Receiver]) -> None:
    host = receivers(answer=lambda n: 401)
    service = running(notify_retry=0.1)
    bind(service, "github", base_of(host))
    deployment = webhook_deploy(service, "github")
    assert deployment.status == Status.LIVE and not deployment.error
    host.wait_for(lambda: len(host.seen) == 2, "pending and success")

    def warned() -> list[str]:
        return [line.message for line in service.state.get_logs(deployment.id)
                if line.stage == "status"]

    deadline = time.monotonic() + WAIT
    while len(warned()) < 2:
        assert time.monotonic() < deadline, warned()
        time.sleep(0.02)
    assert all("answered 401" in m and "access token" in m and TOKEN not in m
               for m in warned())
    time.sleep(0.4)  # a 401 is not retried (the token will not get better by itself)
    assert len(host.seen) == 2
    assert service.state.get_deployment(deployment.id).status == Status.LIVE


def test_a_host_answering_503_is_retried_and_a_cli_deploy_reports_nothing(
        running: Callable[..., Service], receivers: Callable[..., Receiver]) -> None:
    host = receivers(answer=lambda n: 503 if n <= 2 else 201)
    service = running(notify_retry=0.1)
    bind(service, "gitea", base_of(host))
    service.accept("blog", io.BytesIO(bundle(site_files("cli"))), commit=SHA)  # source cli
    deployment = webhook_deploy(service, "gitea")
    # the first two reports answered 503 and were tried again; a retried pending is skipped
    # once the deployment has finished (stale), the retried success goes through
    host.wait_for(lambda: any(s.answered == 201 and s.json()["state"] == "success"
                              for s in host.seen), "a retried success")
    assert [s.answered for s in host.seen][:2] == [503, 503] and len(host.seen) <= 4
    assert all(s.json()["target_url"].startswith(f"http://{deployment.id}--")
               for s in host.seen)
