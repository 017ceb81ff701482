"""A site deploys the pushes of one repository: a real `pushsite serve`, the hosts' recorded
payloads (tests/data/webhooks/) signed with the site's secret, real CLI subprocesses.

The hole this closes: a push event for `mallory/site`, validly signed with the site's secret
(a secret shared between repositories, an organisation-wide hook), deployed to a site fed by
`acme/site`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.servers import Server, serving

DATA = Path(__file__).parent / "data" / "webhooks"
# provider -> (the recorded push, the repository it names, its event header)
PUSHES = {
    "github": ("github_push.json", "acme/www", {"X-GitHub-Event": "push"}),
    "gitlab": ("gitlab_push.json", "acme/web/www", {"X-Gitlab-Event": "Push Hook"}),
    "bitbucket": ("bitbucket_push.json", "acme/www", {"X-Event-Key": "repo:push"}),
    "gitea": ("gitea_push.json", "acme/www", {"X-Gitea-Event": "push"}),
    "forgejo": ("gitea_push.json", "acme/www", {"X-Forgejo-Event": "push"}),
}


def _signed(provider: str, body: bytes, secret: str) -> dict[str, str]:
    """The headers the host sends: its event, a fresh delivery id and its signature."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    delivery = str(uuid.uuid4())
    headers = {"Content-Type": "application/json", **PUSHES[provider][2]}
    if provider == "github":
        headers |= {"X-GitHub-Delivery": delivery, "X-Hub-Signature-256": f"sha256={digest}"}
    elif provider == "gitlab":
        headers |= {"X-Gitlab-Event-UUID": delivery, "X-Gitlab-Token": secret}
    elif provider == "bitbucket":
        headers |= {"X-Request-UUID": delivery, "X-Hub-Signature": f"sha256={digest}"}
    else:
        headers |= {"X-Gitea-Delivery": delivery, "X-Gitea-Signature": digest}
    return headers


COMMIT = b"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"  # what every recorded push pushed


def _payload(provider: str, owner: str = "acme") -> bytes:
    """The recorded push; from `owner`'s repository of the same name (and another commit,
    so the same-push dedup does not hide what the binding does) when not acme."""
    body = (DATA / PUSHES[provider][0]).read_bytes()
    if owner == "acme":
        return body
    return body.replace(b"acme/", f"{owner}/".encode()).replace(COMMIT, b"e" * 40)


def _send(server: Server, provider: str, site: str, secret: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/hooks/{provider}/{site}", content=body, timeout=10,
                      headers=_signed(provider, body, secret))


def _hooks(server: Server, site: str, *args: str) -> dict[str, str]:
    """`pushsite hooks SITE ARGS` as {first word: rest}."""
    done = server.cli("hooks", site, *args)
    assert done.returncode == 0, done.stderr
    return dict(line.split(None, 1) for line in done.stdout.decode().splitlines())


def _deployments(server: Server, site: str) -> list[dict[str, object]]:
    done = server.cli("deploys", site, "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """One server for the module, its stderr kept; archives are fetched from a closed port
    (the deployments fail: what matters is which pushes were taken)."""
    home = tmp_path_factory.mktemp("binding")
    log = home / "serve.log"
    with serving(home / "home", log=log) as server:
        yield server, log


def _site(server: Server, name: str, *args: str) -> str:
    """A new site whose archives would come from a closed port; its webhook secret."""
    assert server.cli("sites", "create", name).returncode == 0
    return _hooks(server, name, "--base-url", "http://127.0.0.1:9", *args)["secret"]


@pytest.mark.parametrize("provider", list(PUSHES))
def test_the_first_valid_push_binds_and_other_repositories_are_ignored(
        hub: tuple[Server, Path], provider: str) -> None:
    server, log = hub
    site = f"bind-{provider}"
    secret = _site(server, site)
    assert _hooks(server, site)["repository"].startswith("(not bound yet")
    repo = PUSHES[provider][1]
    first = _send(server, provider, site, secret, _payload(provider))
    assert first.status_code == 200, first.text
    [event] = first.json()["events"]
    assert "deployment" in event, event
    assert _hooks(server, site)["repository"] == repo
    shown = server.cli("log", event["deployment"]).stdout.decode()  # the binding is logged
    assert f"site {site} is now bound to repository {repo}" in shown, shown
    # the same push from another repository, signed with the same secret: 2xx, ignored
    other = repo.replace("acme/", "mallory/")
    answer = _send(server, provider, site, secret, _payload(provider, "mallory"))
    assert answer.status_code == 200, answer.text
    [ignored] = answer.json()["events"]
    assert "deployment" not in ignored
    assert f"the push is for repository {other}" in ignored["ignored"]
    assert f"deploys only {repo}" in ignored["ignored"]
    assert len(_deployments(server, site)) == 1
    assert _hooks(server, site)["ignored"].startswith(f"pushes from {other}")
    admin = server.new_token("--name", f"admin-{provider}", "--admin")
    settings = httpx.get(f"{server.url}/api/sites/{site}", timeout=10,
                         headers={"Authorization": f"Bearer {admin}"}).json()["settings"]
    assert (settings["webhook_repo"], settings["webhook_last_ignored_repo"]) == (repo, other)
    expected = f"ignored a signed push for repository {other}: site {site} deploys only {repo}"
    assert expected in log.read_text()


def test_a_repository_set_with_hooks_repo_is_the_only_one_deployed(
        hub: tuple[Server, Path]) -> None:
    server, _ = hub
    secret = _site(server, "preset", "--repo", "acme/www")
    assert _hooks(server, "preset")["repository"] == "acme/www"
    # the first push comes from elsewhere: ignored, and it binds nothing
    answer = _send(server, "github", "preset", secret, _payload("github", "mallory"))
    assert answer.status_code == 200 and "ignored" in answer.json()["events"][0]
    assert _deployments(server, "preset") == []
    assert _hooks(server, "preset")["repository"] == "acme/www"
    # owner and name compare as the hosts do, without case
    upper = _payload("github").replace(b'"full_name": "acme/www"', b'"full_name": "Acme/WWW"')
    taken = _send(server, "github", "preset", secret, upper)
    assert "deployment" in taken.json()["events"][0], taken.text
    # rebinding takes effect at once (another branch's push: not the one just taken)
    _hooks(server, "preset", "--repo", "mallory/www")
    forced = (DATA / "github_push_forced.json").read_bytes().replace(b"acme/", b"mallory/")
    moved = _send(server, "github", "preset", secret, forced)
    assert "deployment" in moved.json()["events"][0], moved.text
    again = _send(server, "github", "preset", secret, _payload("github").replace(COMMIT, b"f" * 40))
    assert "deploys only mallory/www" in again.json()["events"][0]["ignored"]
    refused = server.cli("hooks", "preset", "--repo", "not a repo")
    assert refused.returncode == 2 and b"invalid repository 'not a repo'" in refused.stderr
