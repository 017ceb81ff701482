"""Issue 17's smaller things, as a user meets them in a real browser (Playwright on Debian's
chromium, a real `pushsite serve`), which no test looked at until its audit: log search shows
one line per hit with the words highlighted, a page at a time; log times are the browser's
local time with UTC on hover; "started N s ago" ticks; each deployment row links its own
URL; production is locked and unlocked from the site page, and rolling back offers the lock.

Log lines for the search are written into the server's state by the test, so the number of
hits does not depend on what a deploy happens to log."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from test_browser import WAIT_MS, browser, playwright, sign_in  # noqa: F401 - fixtures

from pushsite.model import LogLine
from pushsite.state import open_state_store
from support.servers import Server, serving
from support.sites import write_files

_DEPLOYMENT = re.compile(r"deployment ([0-9a-z]{26})")
TOKYO = timedelta(hours=9)  # Asia/Tokyo: UTC+9 all year


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("smaller") / "home") as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(board: Server) -> str:
    return board.new_token("--name", "boss", "--admin")


@pytest.fixture
def page(browser: Browser, board: Server, admin: str) -> Iterator[Page]:  # noqa: F811
    context = browser.new_context(base_url=board.url, timezone_id="Asia/Tokyo",
                                  viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    try:
        sign_in(tab, admin)
        yield tab
    finally:
        context.close()


def _deploy(board: Server, site: str, folder: Path, text: str) -> str:
    write_files(folder, {"index.html": f"<h1>{text}</h1>"})
    board.create_site(site)
    done = board.cli("deploy", str(folder), "--site", site)
    assert done.returncode == 0, done.stderr
    said = done.stdout.decode() + done.stderr.decode()
    found = _DEPLOYMENT.search(said)
    assert found, said
    return found.group(1)


def _site(board: Server, admin: str, site: str) -> Any:
    answer = httpx.get(f"{board.url}/api/sites/{site}",
                       headers={"Authorization": f"Bearer {admin}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_log_search_is_one_highlighted_line_per_hit_a_page_at_a_time(
        page: Page, board: Server, tmp_path: Path) -> None:
    deployment = _deploy(board, "searched", tmp_path / "s", "searched")
    state = open_state_store(f"sqlite:///{board.home}/state.db")
    filler = " ".join(f"word{n}" for n in range(60))  # wider than any screen
    state.append_logs([LogLine(deployment, time.time(), "info", "read",
                               f"needle {n} among {filler}") for n in range(60)])
    page.goto("/sites/searched/search?q=NEEDLE")
    hits = page.locator("ol.results li")
    expect(hits).to_have_count(50)
    expect(page.get_by_role("status")).to_contain_text("Lines 1–50 of those found")
    marks = page.locator("ol.results mark")
    expect(marks).to_have_count(50)
    assert set(marks.all_inner_texts()) == {"needle"}
    for width in (1280, 390):  # a desktop and a phone
        page.set_viewport_size({"width": width, "height": 800})
        heights = {round(box["height"]) for box in
                   (hits.nth(n).bounding_box() for n in range(50)) if box}
        line = page.evaluate("parseFloat(getComputedStyle("
                             "document.querySelector('ol.results li')).lineHeight)")
        assert len(heights) == 1 and heights.pop() < 2 * line, (width, heights, line)
    assert hits.first.get_attribute("title", timeout=WAIT_MS) == f"needle 59 among {filler}"
    page.get_by_role("link", name="Older »").click()
    expect(hits).to_have_count(10)
    expect(page.get_by_role("status")).to_contain_text("Lines 51–60")
    expect(hits.last).to_contain_text("needle 0 among")
    expect(page.get_by_role("link", name="Older »")).to_have_count(0)
    page.get_by_role("link", name="« Newer").click()
    expect(hits).to_have_count(50)


def test_log_times_are_local_with_utc_on_hover_and_ages_tick(
        page: Page, board: Server, tmp_path: Path) -> None:
    deployment = _deploy(board, "timed", tmp_path / "t", "timed")
    page.goto(f"/deployments/{deployment}")
    first = page.locator("#log li time").first
    stamp = first.get_attribute("datetime")
    assert stamp
    utc = datetime.fromisoformat(stamp)
    local = (utc + TOKYO).strftime("%H:%M:%S.%f")[:-3]
    expect(first).to_have_text(local)
    expect(first).to_have_attribute("title", utc.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC")
    page.goto("/sites/timed")
    age = page.locator("time[data-ago]").first
    expect(age).to_have_text(re.compile(r"^\d+ s ago$"))
    said = age.inner_text()
    expect(age).not_to_have_text(said)  # it ticks, no reload
    own = page.locator("a.own-url").first
    expect(own).to_have_attribute("href", f"http://{deployment}--timed.localhost:{board.port}/")


def test_production_is_locked_from_the_site_page_and_a_rollback_offers_the_lock(
        page: Page, board: Server, admin: str, tmp_path: Path) -> None:
    first = _deploy(board, "lockable", tmp_path / "l", "one")
    _deploy(board, "lockable", tmp_path / "l", "two")
    page.goto("/sites/lockable")
    expect(page.locator("#lock-state")).to_contain_text("go live")
    page.locator("#lock-toggle").click()
    expect(page.locator("#lock-state")).to_contain_text("locked")
    assert _site(board, admin, "lockable")["settings"]["locked"] is True
    page.locator("#lock-toggle").click()
    expect(page.locator("#lock-state")).to_contain_text("go live")
    assert _site(board, admin, "lockable")["settings"]["locked"] is False
    expect(page.locator("#rollback-lock")).to_be_checked()  # offered, and on by default
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.locator("#rollback").click()
    expect(page.locator("#production-badge")).to_be_visible()
    assert page.url.endswith(f"/deployments/{first}")
    assert asked == ["Roll lockable back to the deployment before the live one?"]
    settings = _site(board, admin, "lockable")
    assert settings["settings"]["locked"] is True
    production = [a for a in settings["aliases"] if a["name"] == "production"]
    assert production and production[0]["deployment_id"] == first, settings["aliases"]
