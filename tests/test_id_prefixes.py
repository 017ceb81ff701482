"""`log`, `rollback`, `promote` and `cancel` take what a user types: a unique prefix of a
deployment's id (at least 4 characters, as git takes a commit's), or a site's name for its
newest deployment; an ambiguous prefix is exit 2 listing the candidates. Real CLI
subprocesses on the test's home; the lookup is the state's prefix read (the contract test in
tests/contracts/test_state_contract.py runs it on SQLite and DynamoDB)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pushsite.config import load_config
from pushsite.service import Service
from support.cli import create_site, ok, ok_json, pushsite


def _common(a: str, b: str) -> str:
    n = 0
    while a[n] == b[n]:
        n += 1
    return a[:n]


def _unique(deployment_id: str, *others: str) -> str:
    """The shortest prefix of `deployment_id` that no id of `others` starts with."""
    return deployment_id[:max(len(_common(deployment_id, o)) for o in others) + 1]


def test_prefixes_and_site_names_name_deployments(make_site: Callable[..., Path]) -> None:
    create_site("blog")
    create_site("docs")
    first = ok_json("deploy", str(make_site()), "--site", "blog")["id"]
    draft = ok_json("deploy", str(make_site({"index.html": "two"})), "--site", "blog",
                    "--draft")["id"]
    other = ok_json("deploy", str(make_site()), "--site", "docs")["id"]
    shared = _common(first, draft)
    assert len(shared) >= 4  # ids start with their time: made seconds apart, they share it

    ambiguous = pushsite("log", shared[:4])
    assert ambiguous.returncode == 2
    assert first in ambiguous.stderr and draft in ambiguous.stderr
    assert "more than one deployment" in ambiguous.stderr
    short = pushsite("log", first[:3])
    assert short.returncode == 2 and "at least 4 characters" in short.stderr
    missing = pushsite("log", "zzzz")
    assert missing.returncode == 4 and "starts with 'zzzz'" in missing.stderr

    # a unique prefix is the deployment; a site's name is its newest one
    made = (first, draft, other)
    whole = ok("log", first).stdout
    assert whole and ok("log", _unique(first, *made[1:])).stdout == whole
    assert ok("log", _unique(first, *made[1:]).upper()).stdout == whole
    assert ok("log", "blog").stdout == ok("log", draft).stdout != whole
    assert ok("log", "docs").stdout == ok("log", other).stdout

    promoted = ok("promote", _unique(draft, first, other))
    assert f"promoted {draft}" in promoted.stderr
    # rollback looks the prefix up among the site's own deployments
    back = ok("rollback", "blog", _unique(first, *made[1:]))
    assert f"now serves {first}" in back.stderr
    wrong_site = pushsite("rollback", "blog", _unique(other, first, draft))
    assert wrong_site.returncode == 4 and "of site 'blog'" in wrong_site.stderr
    assert pushsite("rollback", "blog", other).returncode == 4  # a whole id of another site

    # cancel by the site's name: its newest deployment, queued here
    service = Service(load_config(home=os.environ["PUSHSITE_HOME"]))
    try:
        queued = service.accept("blog", None, enqueue=False)
    finally:
        service.close()
    cancelled = ok("cancel", "blog")
    assert cancelled.stderr.strip() == f"cancelled {queued.id}"
    again = pushsite("cancel", _unique(queued.id, *made))
    assert again.returncode == 2 and f"deployment {queued.id} is cancelled" in again.stderr


def test_a_site_without_deployments_says_so() -> None:
    create_site("blog")
    empty = pushsite("log", "blog")
    assert empty.returncode == 4 and "site blog has no deployments yet" in empty.stderr
