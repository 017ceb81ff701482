"""Issue 20: every list of sites pages by name. The API answers a page and `next_after`, the
dashboard's home shows 50 sites and a "More sites" link, and `pushsite sites` walks every
page. A real `pushsite serve` and real CLI subprocesses over a home whose sites were written
through the state itself (more than a page of each listing)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pushsite.ids import new_id
from pushsite.model import PRODUCTION, Deployment, Site, Status
from pushsite.state import SITE_PAGE
from pushsite.web.dashboard import SITES_SHOWN
from support.cli import ok
from support.servers import Server, serving
from support.service import open_service

COUNT = SITE_PAGE + 5  # past one page of the API and the CLI, and two of the dashboard
NAMES = [f"s{n:03d}" for n in range(COUNT)]
_SITE_ROW = re.compile(r'<th scope="row"><a href="/sites/([a-z0-9-]+)">')


def _fill_home() -> None:
    with open_service() as service:
        for name in NAMES:
            service.state.put_site(Site(name))
            live = Deployment(new_id(), name, "main", status=Status.LIVE, commit=name * 4)
            service.state.create_deployment(live)
            service.state.move_alias(name, PRODUCTION, live.id, live.id)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("sites-pages") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUSHSITE_HOME", str(home))
        _fill_home()
    with serving(home) as server:
        yield server


def test_pushsite_sites_lists_every_page(tmp_path: Path) -> None:
    _fill_home()
    rows = [json.loads(line) for line in ok("sites", "--json").stdout.splitlines()]
    assert [row["name"] for row in rows] == NAMES
    assert all(row["commit"] == row["name"] * 4 and row["live_deployment"] for row in rows)


def test_the_api_answers_a_page_of_sites_and_where_the_next_begins(board: Server) -> None:
    token = board.new_token("--name", "pages")
    headers = {"Authorization": f"Bearer {token}"}
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params = {"limit": "40", **({"after": after} if after else {})}
        answer = httpx.get(f"{board.url}/api/sites", params=params, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        seen += [site["name"] for site in body["sites"]]
        pages += 1
        after = body["next_after"]
        if after is None:
            break
        assert after == seen[-1]
    assert seen == NAMES and pages == 3
    default = httpx.get(f"{board.url}/api/sites", headers=headers, timeout=30).json()
    assert len(default["sites"]) == SITE_PAGE and default["next_after"] == NAMES[SITE_PAGE - 1]
    too_many = httpx.get(f"{board.url}/api/sites", params={"limit": str(SITE_PAGE + 1)},
                         headers=headers, timeout=30)
    assert too_many.status_code == 400 and "limit" in too_many.text, too_many.text
    scoped = board.new_token("--name", "one", "--site", "s007")
    mine = httpx.get(f"{board.url}/api/sites", headers={"Authorization": f"Bearer {scoped}"},
                     timeout=30).json()
    assert [s["name"] for s in mine["sites"]] == ["s007"] and mine["next_after"] is None


def test_the_dashboard_home_shows_a_page_of_sites_and_a_link_to_the_next(
        board: Server) -> None:
    token = board.new_token("--name", "dash")
    browser = httpx.Client(base_url=board.url, timeout=30, follow_redirects=False)
    form = browser.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    signed = browser.post("/login", data={"csrf": csrf.group(1), "token": token, "next": "/"})
    assert signed.status_code == 303, signed.text
    shown: list[str] = []
    page = browser.get("/")
    while True:
        assert page.status_code == 200, page.text
        rows = _SITE_ROW.findall(page.text)
        assert 0 < len(rows) <= SITES_SHOWN
        shown += rows
        more = re.search(r'href="/\?after=([a-z0-9-]+)" rel="next"', page.text)
        if more is None:
            break
        assert more.group(1) == rows[-1]
        page = browser.get(f"/?after={more.group(1)}")
    assert shown == NAMES
    assert browser.get("/?after=Not%20a%20site").status_code == 400
