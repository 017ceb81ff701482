"""Git hosts' push webhooks: signatures, pings, push parsing, and the endpoint over real HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pushsite.errors import BackendUnavailable, ConfigError, NotAuthorized, NotFound
from pushsite.sources.webhooks import (
    ZERO_COMMIT,
    PushEvent,
    is_ping,
    parse_push,
    parse_pushes,
    verify_signature,
)
from pushsite.web.hooks import MAX_BODY, MemorySeen, webhook_endpoint

DATA = Path(__file__).parent / "data" / "webhooks"
SECRET = "correct horse battery staple"
AFTER = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
BEFORE = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
SECOND = "3c2b1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c"
PUSHES = {
    "github": "github_push.json",
    "gitlab": "gitlab_push.json",
    "bitbucket": "bitbucket_push.json",
    "gitea": "gitea_push.json",
    "forgejo": "gitea_push.json",
}
DEFAULT_EVENT = {
    "github": "push",
    "gitlab": "Push Hook",
    "bitbucket": "repo:push",
    "gitea": "push",
    "forgejo": "push",
}


def payload(name: str) -> bytes:
    return (DATA / name).read_bytes()


def signed(
    provider: str,
    body: bytes,
    *,
    secret: str = SECRET,
    event: str | None = None,
    delivery: str | None = None,
) -> dict[str, str]:
    """The headers the host would send with this body."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    event = event or DEFAULT_EVENT[provider]
    delivery = delivery or str(uuid.uuid4())
    headers = {"Content-Type": "application/json"}
    if provider == "github":
        headers |= {
            "User-Agent": "GitHub-Hookshot/4f0e2b1",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-GitHub-Hook-ID": "498237641",
            "X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body, "sha1").hexdigest(),
            "X-Hub-Signature-256": "sha256=" + digest,
        }
    elif provider == "gitlab":
        headers |= {
            "User-Agent": "GitLab/17.6.0",
            "X-Gitlab-Event": event,
            "X-Gitlab-Event-UUID": delivery,
            "X-Gitlab-Webhook-UUID": "3c5c0404-c866-44bc-a5f6-452bb1bfc76e",
            "X-Gitlab-Instance": "https://gitlab.com",
            "X-Gitlab-Token": secret,
        }
    elif provider == "bitbucket":
        headers |= {
            "User-Agent": "Bitbucket-Webhooks/2.0",
            "X-Event-Key": event,
            "X-Request-UUID": delivery,
            "X-Hook-UUID": "9e6dd4f4-0a58-4a8a-8a6e-0e4cbb6e2a3f",
            "X-Attempt-Number": "1",
            "X-Hub-Signature": "sha256=" + digest,
        }
    else:  # Gitea sends GitHub- and Gogs-style headers too; Forgejo adds its own
        headers |= {
            "X-Gitea-Event": event,
            "X-Gitea-Event-Type": event,
            "X-Gitea-Delivery": delivery,
            "X-Gitea-Signature": digest,
            "X-Gogs-Event": event,
            "X-Gogs-Delivery": delivery,
            "X-Gogs-Signature": digest,
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": "sha256=" + digest,
        }
        if provider == "forgejo":
            headers |= {
                "X-Forgejo-Event": event,
                "X-Forgejo-Delivery": delivery,
                "X-Forgejo-Signature": digest,
            }
    return headers


# -- signatures -------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", sorted(PUSHES))
def test_a_correct_signature_passes(provider: str) -> None:
    body = payload(PUSHES[provider])
    verify_signature(provider, signed(provider, body), body, SECRET)


@pytest.mark.parametrize("provider", sorted(PUSHES))
def test_a_signature_made_with_another_secret_is_refused(provider: str) -> None:
    body = payload(PUSHES[provider])
    headers = signed(provider, body, secret="guess")
    with pytest.raises(NotAuthorized, match="is wrong"):
        verify_signature(provider, headers, body, SECRET)


@pytest.mark.parametrize("provider", ["github", "bitbucket", "gitea", "forgejo"])
def test_a_signature_of_another_body_is_refused(provider: str) -> None:
    body = payload(PUSHES[provider])
    headers = signed(provider, body)
    with pytest.raises(NotAuthorized):
        verify_signature(provider, headers, body.replace(b"main", b"prod"), SECRET)


@pytest.mark.parametrize(
    "provider, header",
    [
        ("github", "X-Hub-Signature-256"),
        ("gitlab", "X-Gitlab-Token"),
        ("bitbucket", "X-Hub-Signature"),
        ("gitea", "X-Gitea-Signature"),
    ],
)
def test_a_missing_signature_is_refused(provider: str, header: str) -> None:
    body = payload(PUSHES[provider])
    headers = signed(provider, body)
    del headers[header]
    with pytest.raises(NotAuthorized, match="is missing"):
        verify_signature(provider, headers, body, SECRET)


def test_github_sha1_signature_alone_is_not_enough() -> None:
    body = payload("github_push.json")
    headers = signed("github", body)
    del headers["X-Hub-Signature-256"]
    with pytest.raises(NotAuthorized):
        verify_signature("github", headers, body, SECRET)


def test_forgejo_signature_header_alone_is_enough() -> None:
    body = payload("gitea_push.json")
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    verify_signature("forgejo", {"x-forgejo-signature": digest}, body, SECRET)


def test_a_site_without_a_secret_trusts_no_webhook() -> None:
    body = payload("gitlab_push.json")
    with pytest.raises(NotAuthorized, match="no webhook secret"):
        verify_signature("gitlab", signed("gitlab", body, secret=""), body, "")


def test_an_unknown_provider_is_not_found() -> None:
    with pytest.raises(NotFound, match="unknown webhook provider"):
        verify_signature("sourcehut", {}, b"{}", SECRET)


# -- pings and pushes -------------------------------------------------------------------------


def test_pings_are_recognised() -> None:
    ping = payload("github_ping.json")
    assert is_ping("github", signed("github", ping, event="ping"), ping)
    assert is_ping("bitbucket", {"X-Event-Key": "diagnostics:ping"}, b"{}")
    test = payload("gitea_test_delivery.json")
    assert is_ping("gitea", signed("gitea", test), test)
    assert is_ping("forgejo", signed("forgejo", test), test)
    for provider, name in PUSHES.items():
        body = payload(name)
        assert not is_ping(provider, signed(provider, body), body)


def test_github_push() -> None:
    body = payload("github_push.json")
    event = parse_push("github", signed("github", body, delivery="d-1"), body)
    assert event == PushEvent(
        provider="github",
        delivery_id="d-1",
        repo="acme/www",
        ref="refs/heads/main",
        branch="main",
        tag=None,
        commit=AFTER,
        deleted=False,
        forced=False,
        message="Fix the footer links\n\nThe old links pointed at the staging host.",
        pusher="ada",
        before=BEFORE,
    )


def test_github_forced_push_delete_and_tag() -> None:
    forced = payload("github_push_forced.json")
    event = parse_push("github", signed("github", forced), forced)
    assert event is not None and event.forced and event.branch == "feature/login"
    deleted = payload("github_push_delete.json")
    event = parse_push("github", signed("github", deleted), deleted)
    assert event is not None and event.deleted and event.commit == ZERO_COMMIT
    assert event.branch == "feature/login" and event.message == ""
    tag = payload("github_push_tag.json")
    event = parse_push("github", signed("github", tag), tag)
    # An annotated tag: `after` is the tag object, head_commit the commit it names.
    assert event is not None and event.tag == "v2.1.0" and event.branch is None
    assert event.commit == AFTER


def test_gitlab_push_keeps_path_and_project_id() -> None:
    body = payload("gitlab_push.json")
    event = parse_push("gitlab", signed("gitlab", body, delivery="g-1"), body)
    assert event is not None
    assert (event.repo, event.project_id, event.branch) == ("acme/web/www", "48151623", "main")
    assert (event.commit, event.pusher, event.delivery_id) == (AFTER, "ada", "g-1")
    assert event.message == "Fix the footer links\n"


def test_gitlab_tag_push_and_delete() -> None:
    tag = payload("gitlab_tag_push.json")
    event = parse_push("gitlab", signed("gitlab", tag, event="Tag Push Hook"), tag)
    assert event is not None and event.tag == "v2.1.0" and event.commit == AFTER
    deleted = payload("gitlab_push_delete.json")
    event = parse_push("gitlab", signed("gitlab", deleted), deleted)
    assert event is not None and event.deleted and event.branch == "feature/login"


def test_gitlab_idempotency_key_is_the_delivery_id_when_present() -> None:
    body = payload("gitlab_push.json")
    headers = signed("gitlab", body) | {"Idempotency-Key": "908a6d9e-45fd-46c8-97e6-c4f350f219dd"}
    event = parse_push("gitlab", headers, body)
    assert event is not None and event.delivery_id == "908a6d9e-45fd-46c8-97e6-c4f350f219dd"


def test_bitbucket_push_forced_delete_tag() -> None:
    body = payload("bitbucket_push.json")
    event = parse_push("bitbucket", signed("bitbucket", body, delivery="b-1"), body)
    assert event is not None
    assert (event.repo, event.branch, event.commit) == ("acme/www", "main", AFTER)
    assert (event.pusher, event.delivery_id, event.forced) == ("ada", "b-1", False)
    assert event.before == BEFORE
    forced = payload("bitbucket_push_forced.json")
    event = parse_push("bitbucket", signed("bitbucket", forced), forced)
    assert event is not None and event.forced and event.branch == "feature/login"
    deleted = payload("bitbucket_push_delete.json")
    event = parse_push("bitbucket", signed("bitbucket", deleted), deleted)
    assert event is not None and event.deleted and event.branch == "feature/login"
    tag = payload("bitbucket_push_tag.json")
    event = parse_push("bitbucket", signed("bitbucket", tag), tag)
    assert event is not None and event.tag == "v2.1.0" and event.commit == AFTER
    assert event.before == ZERO_COMMIT


def test_bitbucket_push_of_two_branches_is_two_events() -> None:
    body = payload("bitbucket_push_two_branches.json")
    events = parse_pushes("bitbucket", signed("bitbucket", body), body)
    assert [(e.branch, e.commit) for e in events] == [("main", AFTER), ("docs", SECOND)]


def test_gitea_push_tag_and_delete_event() -> None:
    body = payload("gitea_push.json")
    event = parse_push("forgejo", signed("forgejo", body, delivery="f-1"), body)
    assert event is not None and (event.provider, event.delivery_id) == ("forgejo", "f-1")
    assert (event.repo, event.branch, event.commit, event.pusher) == (
        "acme/www",
        "main",
        AFTER,
        "ada",
    )
    tag = payload("gitea_push_tag.json")
    event = parse_push("gitea", signed("gitea", tag), tag)
    assert event is not None and event.tag == "v2.1.0"
    deleted = payload("gitea_delete.json")
    event = parse_push("gitea", signed("gitea", deleted, event="delete"), deleted)
    assert event is not None and event.deleted and event.ref == "refs/heads/feature/login"


def test_events_that_are_not_pushes_are_none() -> None:
    ping = payload("github_ping.json")
    assert parse_push("github", signed("github", ping, event="ping"), ping) is None
    assert parse_push("gitlab", {"X-Gitlab-Event": "Issue Hook"}, b"{}") is None
    assert parse_push("bitbucket", {"X-Event-Key": "pullrequest:created"}, b"{}") is None
    assert parse_push("gitea", {"X-Gitea-Event": "issues"}, b"{}") is None


def test_form_encoded_github_payload() -> None:
    body = urlencode({"payload": payload("github_push.json").decode()}).encode()
    headers = signed("github", body) | {"Content-Type": "application/x-www-form-urlencoded"}
    verify_signature("github", headers, body, SECRET)
    event = parse_push("github", headers, body)
    assert event is not None and event.commit == AFTER


@pytest.mark.parametrize("body", [b"{not json", b'["a list"]', b"\xff\xfe"])
def test_malformed_payloads_are_config_errors(body: bytes) -> None:
    with pytest.raises(ConfigError):
        parse_push("github", {"X-GitHub-Event": "push"}, body)


def test_a_push_payload_without_its_fields_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="lacks 'after'"):
        parse_push("github", {"X-GitHub-Event": "push"}, b'{"ref": "refs/heads/main"}')
    bad_sha = json.dumps(
        {"ref": "refs/heads/main", "after": "main", "repository": {"full_name": "a/b"}}
    )
    with pytest.raises(ConfigError, match="not a hex"):
        parse_push("gitea", {"X-Gitea-Event": "push"}, bad_sha.encode())


def test_memory_seen_forgets_the_oldest() -> None:
    seen = MemorySeen(size=2)
    assert seen("a") and seen("b") and not seen("a")
    assert seen("c")  # evicts b, the least recently seen
    assert seen("b") and not seen("c")


# -- the endpoint over real HTTP --------------------------------------------------------------


@dataclass
class Hooks:
    """What the endpoint handed on, and how the test configured it."""

    url: str
    pushes: list[tuple[str, PushEvent]] = field(default_factory=list)
    fail: Exception | None = None


class _Holder:
    endpoint: Any = None


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, _Holder]]:
    holder = _Holder()

    async def route(request: Request) -> Response:
        response: Response = await holder.endpoint(request)
        return response

    app = Starlette(routes=[Route("/hooks/{provider}/{site}", route, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not uv.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", holder
    finally:
        uv.should_exit = True
        thread.join()
        sock.close()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_795_000_000.0

    def __call__(self) -> float:
        return self.now


def make_hooks(
    server: tuple[str, _Holder], *, tags: bool = False, clock: Clock | None = None
) -> Hooks:
    base, holder = server
    hooks = Hooks(base)
    secrets = {"www": SECRET, "docs": SECRET}

    async def on_push(site: str, event: PushEvent) -> dict[str, Any]:
        if hooks.fail:
            raise hooks.fail
        if event.tag is not None and not tags:  # as Service.deploy_ref decides
            return {"ignored": "tag pushes are not deployed for this site"}
        hooks.pushes.append((site, event))
        return {"deployment": f"dep{len(hooks.pushes)}", "status": "queued"}

    holder.endpoint = webhook_endpoint(
        secrets.get, on_push, clock=clock or Clock()
    )
    return hooks


@pytest.fixture
def hooks(server: tuple[str, _Holder]) -> Hooks:
    return make_hooks(server)


def post(
    hooks: Hooks, provider: str, body: Any, headers: dict[str, str], site: str = "www"
) -> httpx.Response:
    return httpx.post(f"{hooks.url}/hooks/{provider}/{site}", content=body, headers=headers)


@pytest.mark.parametrize("provider", sorted(PUSHES))
def test_a_signed_push_is_handed_on(hooks: Hooks, provider: str) -> None:
    body = payload(PUSHES[provider])
    answer = post(hooks, provider, body, signed(provider, body))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "ok": True,
        "site": "www",
        "events": [
            {"ref": "refs/heads/main", "commit": AFTER, "deployment": "dep1", "status": "queued"}
        ],
    }
    [(site, event)] = hooks.pushes
    assert (site, event.provider, event.branch, event.commit) == ("www", provider, "main", AFTER)


@pytest.mark.parametrize("provider", sorted(PUSHES))
def test_a_wrong_signature_is_401_and_queues_nothing(hooks: Hooks, provider: str) -> None:
    body = payload(PUSHES[provider])
    answer = post(hooks, provider, body, signed(provider, body, secret="not the secret"))
    assert answer.status_code == 401
    assert answer.json()["ok"] is False and answer.json()["status"] == 401
    assert "is wrong" in answer.json()["error"]
    assert hooks.pushes == []


def test_a_missing_signature_is_401_and_queues_nothing(hooks: Hooks) -> None:
    body = payload("github_push.json")
    answer = post(hooks, "github", body, {"X-GitHub-Event": "push"})
    assert answer.status_code == 401 and "is missing" in answer.json()["error"]
    assert hooks.pushes == []


@pytest.mark.parametrize(
    "provider, name, event",
    [
        ("github", "github_ping.json", "ping"),
        ("gitea", "gitea_test_delivery.json", None),
        ("forgejo", "gitea_test_delivery.json", None),
        ("bitbucket", "bitbucket_push.json", "diagnostics:ping"),
    ],
)
def test_pings_answer_200_and_queue_nothing(
    hooks: Hooks, provider: str, name: str, event: str | None
) -> None:
    body = payload(name)
    answer = post(hooks, provider, body, signed(provider, body, event=event))
    assert answer.status_code == 200 and answer.json() == {"ok": True, "ping": True, "site": "www"}
    assert hooks.pushes == []


def test_a_ping_must_be_signed_too(hooks: Hooks) -> None:
    body = payload("github_ping.json")
    answer = post(hooks, "github", body, signed("github", body, secret="x", event="ping"))
    assert answer.status_code == 401


@pytest.mark.parametrize(
    "provider, name, event",
    [
        ("github", "github_push_tag.json", None),
        ("gitlab", "gitlab_tag_push.json", "Tag Push Hook"),
        ("bitbucket", "bitbucket_push_tag.json", None),
        ("gitea", "gitea_push_tag.json", None),
    ],
)
def test_tag_pushes_are_ignored_unless_the_site_deploys_tags(
    server: tuple[str, _Holder], provider: str, name: str, event: str | None
) -> None:
    body = payload(name)
    hooks = make_hooks(server)
    answer = post(hooks, provider, body, signed(provider, body, event=event))
    assert answer.status_code == 200
    assert "tag pushes are not deployed" in answer.json()["events"][0]["ignored"]
    assert hooks.pushes == []
    hooks = make_hooks(server, tags=True)
    answer = post(hooks, provider, body, signed(provider, body, event=event))
    assert answer.status_code == 200 and answer.json()["events"][0]["status"] == "queued"
    [(_, pushed)] = hooks.pushes
    assert pushed.tag == "v2.1.0" and pushed.commit == AFTER


@pytest.mark.parametrize(
    "provider, name, event",
    [
        ("github", "github_push_delete.json", None),
        ("gitlab", "gitlab_push_delete.json", None),
        ("bitbucket", "bitbucket_push_delete.json", None),
        ("gitea", "gitea_delete.json", "delete"),
    ],
)
def test_a_deleted_branch_is_handed_on_as_deleted(
    hooks: Hooks, provider: str, name: str, event: str | None
) -> None:
    body = payload(name)
    answer = post(hooks, provider, body, signed(provider, body, event=event))
    assert answer.status_code == 200, answer.text
    [(_, pushed)] = hooks.pushes
    assert pushed.deleted and pushed.branch == "feature/login" and pushed.commit == ZERO_COMMIT


@pytest.mark.parametrize(
    "provider, name",
    [("github", "github_push_forced.json"), ("bitbucket", "bitbucket_push_forced.json")],
)
def test_a_forced_push_is_marked_forced(hooks: Hooks, provider: str, name: str) -> None:
    body = payload(name)
    assert post(hooks, provider, body, signed(provider, body)).status_code == 200
    [(_, pushed)] = hooks.pushes
    assert pushed.forced and pushed.branch == "feature/login"


def test_a_body_over_the_limit_is_413_even_when_signed(hooks: Hooks) -> None:
    body = b'{"pad": "' + b"x" * MAX_BODY + b'"}'
    answer = post(hooks, "github", body, signed("github", body))
    assert answer.status_code == 413 and answer.json()["status"] == 413
    assert hooks.pushes == []


def test_a_streamed_body_over_the_limit_is_413(hooks: Hooks) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for _ in range(20):
            yield b" " * 100_000

    answer = post(
        hooks, "gitlab", chunks(), {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook"}
    )
    assert answer.status_code == 413
    assert "over the limit of 1000000 bytes" in answer.json()["error"]
    assert hooks.pushes == []


def test_a_body_at_the_limit_is_read(hooks: Hooks) -> None:
    raw = payload("github_push.json")
    body = raw + b" " * (MAX_BODY - len(raw))
    answer = post(hooks, "github", body, signed("github", body))
    assert answer.status_code == 200 and len(hooks.pushes) == 1


def test_malformed_json_is_400(hooks: Hooks) -> None:
    body = b'{"ref": "refs/heads/main", "after": '
    answer = post(hooks, "gitea", body, signed("gitea", body))
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]
    assert hooks.pushes == []


def test_a_redelivery_is_ignored(hooks: Hooks) -> None:
    body = payload("github_push.json")
    headers = signed("github", body, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    first = post(hooks, "github", body, headers)
    again = post(hooks, "github", body, headers)
    assert first.json()["events"][0]["status"] == "queued"
    assert again.status_code == 200 and again.json()["events"][0]["ignored"] == "duplicate delivery"
    assert len(hooks.pushes) == 1


def test_the_same_commit_from_a_second_hook_is_ignored_but_another_branch_is_not(
    hooks: Hooks,
) -> None:
    github = payload("github_push.json")
    gitea = payload("gitea_push.json")
    assert post(hooks, "github", github, signed("github", github)).status_code == 200
    answer = post(hooks, "gitea", gitea, signed("gitea", gitea))
    assert "already received" in answer.json()["events"][0]["ignored"]
    forced = payload("github_push_forced.json")  # the same commit, on feature/login
    assert post(hooks, "github", forced, signed("github", forced)).json()["events"][0]["status"]
    assert [event.branch for _, event in hooks.pushes] == ["main", "feature/login"]


def test_a_bitbucket_push_of_two_branches_queues_both(hooks: Hooks) -> None:
    body = payload("bitbucket_push_two_branches.json")
    answer = post(hooks, "bitbucket", body, signed("bitbucket", body))
    assert [e["ref"] for e in answer.json()["events"]] == ["refs/heads/main", "refs/heads/docs"]
    assert [event.branch for _, event in hooks.pushes] == ["main", "docs"]


def test_unknown_site_and_provider_are_404(hooks: Hooks) -> None:
    body = payload("github_push.json")
    answer = post(hooks, "github", body, signed("github", body), site="nope")
    assert answer.status_code == 404 and "no site named 'nope'" in answer.json()["error"]
    answer = post(hooks, "sourcehut", body, signed("github", body))
    assert answer.status_code == 404 and "unknown webhook provider" in answer.json()["error"]
    assert hooks.pushes == []


def test_other_events_are_answered_and_ignored(hooks: Hooks) -> None:
    body = json.dumps({"action": "opened", "repository": {"full_name": "acme/www"}}).encode()
    answer = post(hooks, "github", body, signed("github", body, event="issues"))
    assert answer.status_code == 200
    assert answer.json() == {"ok": True, "ignored": "issues is not a push event"}
    assert hooks.pushes == []


def test_a_failing_queue_is_reported_with_its_status(hooks: Hooks) -> None:
    hooks.fail = BackendUnavailable("the queue is unreachable: check that the worker is running")
    body = payload("gitlab_push.json")
    answer = post(hooks, "gitlab", body, signed("gitlab", body))
    assert answer.status_code == 503
    assert answer.json() == {
        "ok": False,
        "error": "the queue is unreachable: check that the worker is running",
        "status": 503,
    }


def test_a_failed_hand_on_is_taken_again_when_the_host_retries(hooks: Hooks) -> None:
    hooks.fail = BackendUnavailable("the queue is unreachable: check that the worker is running")
    body = payload("github_push.json")
    headers = signed("github", body, delivery="0b1e9a50-cc78-11e3-81ab-4c9367dc0958")
    assert post(hooks, "github", body, headers).status_code == 503
    hooks.fail = None
    retry = post(hooks, "github", body, headers)
    assert retry.status_code == 200 and retry.json()["events"][0]["status"] == "queued"
    assert len(hooks.pushes) == 1


def test_the_same_update_is_deployed_again_after_the_window(server: tuple[str, _Holder]) -> None:
    clock = Clock()
    hooks = make_hooks(server, clock=clock)
    body = payload("github_push.json")

    def push() -> dict[str, Any]:
        answer = post(hooks, "github", body, signed("github", body)).json()
        event: dict[str, Any] = answer["events"][0]
        return event

    assert push()["status"] == "queued"
    clock.now += 59  # a second hook's copy, within a minute
    assert push()["ignored"] == "this push was already received"
    clock.now += 121  # the same update pushed again later (A->B, back to A, B again)
    assert push()["status"] == "queued"
    assert len(hooks.pushes) == 2


def test_pushing_back_to_an_earlier_commit_deploys_it(hooks: Hooks) -> None:
    forward = payload("github_push.json")
    data = json.loads(forward)
    data |= {"before": AFTER, "after": BEFORE, "forced": True, "commits": []}
    data["head_commit"] = dict(data["head_commit"], id=BEFORE, message="Update the header")
    back = json.dumps(data).encode()
    assert post(hooks, "github", forward, signed("github", forward)).status_code == 200
    answer = post(hooks, "github", back, signed("github", back))
    assert answer.json()["events"][0]["status"] == "queued"
    assert [event.commit for _, event in hooks.pushes] == [AFTER, BEFORE]
