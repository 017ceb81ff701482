"""Issue 17's visible changes in a real browser (Playwright on Debian's chromium): counters
that move during a slow deploy, a page that completes itself, one production badge after a
promote, and /api/docs with no request to another host."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Playwright, Route, expect, sync_playwright
from test_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, many_files_repo, sign_in

from support.servers import Server, serving
from support.sites import git, write_files


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("live") / "home",
                 extra_env={"PUSHSITE_WORKERS": "1"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def token(board: Server) -> str:
    return board.new_token("--name", "live")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as driver:
        chromium = launch(driver)
        try:
            yield chromium
        finally:
            chromium.close()


def launch(driver: Playwright) -> Browser:
    return driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


@pytest.fixture
def page(browser: Browser, board: Server, token: str) -> Iterator[Page]:
    """Signed in; every request to a host other than 127.0.0.1 fails the test."""
    context = browser.new_context(base_url=board.url)
    context.set_default_timeout(WAIT_MS)
    elsewhere: list[str] = []

    def only_here(route: Route) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if host == "127.0.0.1" or host.endswith(".localhost"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_here)
    tab = context.new_page()
    try:
        sign_in(tab, token)
        yield tab
    finally:
        context.close()
    assert elsewhere == [], elsewhere


def push(board: Server, token: str, repo: Path, site: str) -> subprocess.Popen[str]:
    board.create_site(site)
    url = f"http://x:{token}@127.0.0.1:{board.port}/{site}.git"
    return subprocess.Popen(["git", "push", "-q", url, "main"], cwd=repo, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def pushed(board: Server, token: str, repo: Path, site: str) -> None:
    process = push(board, token, repo, site)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err


def test_counters_rise_while_it_runs_and_the_page_completes_itself(
        page: Page, board: Server, token: str, tmp_path: Path) -> None:
    process = push(board, token, many_files_repo(tmp_path / "big", 30000), "slow")
    try:
        rows = page.locator("table.deployments tbody tr")
        for _ in range(1200):
            page.goto("/sites/slow")
            if rows.count():
                break
            page.wait_for_timeout(50)
        rows.first.get_by_role("link").first.click()
        page.evaluate("window.stillTheSamePage = true")
        badge = page.get_by_role("status", name="Status")
        counter = page.locator("#files-read")
        seen: list[int] = []
        while badge.inner_text() in ("queued", "running") and len(set(seen)) < 3:
            seen.append(int(counter.inner_text()))
            page.wait_for_timeout(200)
        assert len({n for n in seen if n}) >= 2, seen  # rose at least twice before the end
        assert seen == sorted(seen)
        expect(badge).to_have_text("live", timeout=WAIT_MS)
        # completed in place: URLs, files, actions, without a reload
        expect(page.get_by_role("heading", name="Files")).to_be_visible()
        expect(page.get_by_text("Its own URL")).to_be_visible()
        expect(page.get_by_role("button", name="Redeploy")).to_be_visible()
        expect(page.locator("#production-badge")).to_have_text("production")
        assert page.evaluate("window.stillTheSamePage") is True
        expect(page.locator("table.files tbody tr")).to_have_count(100)  # a page, not all
        page.get_by_label("Find files").fill("pages/2999.html")
        page.get_by_role("button", name="Find").click()
        expect(page.locator("table.files tbody tr")).to_have_count(1)
    finally:
        _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err


def test_one_production_badge_after_a_promote(page: Page, board: Server, token: str,
                                              make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<h1>one</h1>"})
    pushed(board, token, repo, "promo")
    write_files(repo, {"index.html": "<h1>two</h1>"})
    git(repo, "commit", "-q", "-am", "two")
    pushed(board, token, repo, "promo")
    page.goto("/sites/promo")
    page.locator("table.deployments tbody tr").nth(1).get_by_role("link").first.click()
    page.once("dialog", lambda dialog: dialog.accept())  # rolling back asks first
    page.get_by_role("button", name="Roll back to this").click()
    expect(page.locator("#production-badge")).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_role("button", name="Roll back to this")).to_have_count(0)
    page.goto("/sites/promo")
    expect(page.locator("table.deployments .badge", has_text="production")).to_have_count(1)
    expect(page.locator("table.deployments .badge", has_text="live")).to_have_count(0)
    production_row = page.locator("tr.row-production")
    expect(production_row).to_have_count(1)
    expect(production_row.get_by_role("link", name="visit")).to_have_count(1)
    page.get_by_label("Branch").select_option("main")
    expect(page).to_have_url(f"{board.url}/sites/promo?branch=main")


def test_api_docs_render_without_any_other_host(page: Page) -> None:
    page.goto("/api/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("pushsite API")
    expect(page.locator(".opblock-tag", has_text="deployments").first).to_be_visible()
