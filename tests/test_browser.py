"""The dashboard in a real browser: Playwright driving Debian's chromium against a real
`pushsite serve`, with sites pushed by real git."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from support.servers import Server, serving
from support.sites import git, write_files

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WAIT_MS = 60_000  # the longest any one step may take on a busy machine


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module (one compression thread, so a big deploy runs for a while)."""
    with serving(tmp_path_factory.mktemp("browser") / "home",
                       extra_env={"PUSHSITE_WORKERS": "1"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def token(board: Server) -> str:
    return board.new_token("--name", "browser")


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                          args=CHROMIUM_ARGS)
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def page(browser: Browser, board: Server, token: str) -> Iterator[Page]:
    """A fresh browser context, signed in through the form."""
    context = browser.new_context(base_url=board.url)
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    try:
        tab.goto("/")
        expect(tab).to_have_url(f"{board.url}/login?next=%2F")
        tab.get_by_label("Token").fill(token)
        tab.get_by_role("button", name="Sign in").click()
        expect(tab.get_by_role("heading", name="Sites")).to_be_visible()
        yield tab
    finally:
        context.close()


def sign_in(tab: Page, token: str) -> Page:
    """Sign `tab` in through the login form; returns it once the Sites page shows."""
    tab.goto("/login")
    tab.get_by_label("Token").fill(token)
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.get_by_role("heading", name="Sites")).to_be_visible()
    return tab


def signed_in(browser: Browser, board: Server, token: str) -> Page:
    """A new browser context's tab, signed in with `token` (the caller's test ends it)."""
    context = browser.new_context(base_url=board.url)
    context.set_default_timeout(WAIT_MS)
    return sign_in(context.new_page(), token)


def push(board: Server, token: str, repo: Path, site: str) -> subprocess.Popen[str]:
    """Start `git push` (it returns when the deploy has finished)."""
    board.create_site(site)
    url = f"http://x:{token}@127.0.0.1:{board.port}/{site}.git"
    return subprocess.Popen(["git", "push", "-q", url, "main"], cwd=repo, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def pushed(board: Server, token: str, repo: Path, site: str) -> str:
    process = push(board, token, repo, site)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return err


def commit(repo: Path, files: dict[str, str | bytes], message: str) -> None:
    write_files(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def test_sign_in_then_out(page: Page) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.goto("/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def many_files_repo(root: Path, count: int) -> Path:
    """A repository whose one commit holds `count` pages, built by `git fast-import` (no work
    tree, so it takes a second, not the minute `git add` of that many files would)."""
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    parts = []
    for n in range(count):
        data = f"<p>page {n} of the big site</p>\n".encode() * 40
        parts.append(b"blob\nmark :%d\ndata %d\n%s\n" % (n + 1, len(data), data))
    parts.append(b"commit refs/heads/main\ncommitter Test <t@example.com> 1700000000 +0000\n"
                 b"data 10\nmany pages\n")
    parts.extend(b"M 100644 :%d pages/%d.html\n" % (n + 1, n) for n in range(count))
    subprocess.run(["git", "fast-import", "--quiet"], cwd=root, input=b"".join(parts) + b"\n",
                   check=True, capture_output=True)
    return root


def wait_for_row(page: Page, site: str) -> None:
    """Reload the site's page until its first deployment is listed."""
    rows = page.locator("table.deployments tbody tr")
    for _ in range(1200):
        page.goto(f"/sites/{site}")
        if rows.count():
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"no deployment of {site} appeared")


def test_a_deployment_goes_from_running_to_live_on_its_page_without_reloading(
        page: Page, board: Server, token: str, tmp_path: Path) -> None:
    # Enough files that, with one compression thread, the deploy runs for seconds.
    process = push(board, token, many_files_repo(tmp_path / "big", 30000), "big")
    try:
        wait_for_row(page, "big")
        page.locator("table.deployments tbody tr").first.locator("a.mono").click()
        badge = page.get_by_role("status", name="Status")
        assert badge.inner_text() in ("queued", "running")
        page.evaluate("window.stillTheSamePage = true")
        expect(badge).to_have_text("live", timeout=WAIT_MS)
        expect(page.get_by_role("log")).to_contain_text("production now serves")
        assert page.evaluate("window.stillTheSamePage") is True  # no reload happened
        expect(page.locator("#finished-note")).to_be_visible()
    finally:
        _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    page.goto(f"http://big.localhost:{board.port}/pages/7.html")
    expect(page.locator("p").first).to_have_text("page 7 of the big site")


def test_roll_back_serves_the_first_version_again(
        page: Page, board: Server, token: str, make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<h1>Version one</h1>"})
    pushed(board, token, repo, "shop")
    commit(repo, {"index.html": "<h1>Version two</h1>"}, "second version")
    pushed(board, token, repo, "shop")

    page.goto("/")
    page.get_by_role("link", name="shop", exact=True).click()
    page.get_by_role("link", name=f"http://shop.localhost:{board.port}/").first.click()
    expect(page.get_by_role("heading", name="Version two")).to_be_visible()

    page.goto("/sites/shop")
    page.locator("table.deployments tbody tr").nth(1).locator("a.mono").click()
    page.once("dialog", lambda dialog: dialog.accept())  # rolling back asks first
    page.get_by_role("button", name="Roll back to this").click()
    # the aliases pointing here (not the titled one saying what it was deployed as)
    expect(page.locator(".alias:not([title])", has_text="production")).to_be_visible()
    page.goto(f"http://shop.localhost:{board.port}/")
    expect(page.get_by_role("heading", name="Version one")).to_be_visible()


def test_search_the_logs_for_a_line(page: Page, board: Server, token: str,
                                    make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>docs</p>", "guide.html": "<p>guide</p>"})
    pushed(board, token, repo, "docs")
    page.goto("/sites/docs")
    page.get_by_role("searchbox", name="Words to find in every deployment's log").fill(
        "carried over")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("status")).to_contain_text("1 line found")
    result = page.locator("ol.results li").first
    expect(result).to_contain_text("2 changed files to read, 0 carried over unchanged")
    result.get_by_role("link").click()
    expect(page.locator("li:target")).to_contain_text("carried over")


def test_a_failing_deploy_shows_its_error(page: Page, board: Server, token: str,
                                          make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>fine</p>"})
    pushed(board, token, repo, "oops")
    commit(repo, {"_redirects": "/old /new 999\n"}, "a bad redirect")
    process = push(board, token, repo, "oops")  # the deploy fails, so git refuses the push
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0 and "_redirects line 1" in err, err
    page.goto("/sites/oops")
    first_row = page.locator("table.deployments tbody tr").first
    expect(first_row.locator(".badge")).to_have_text("failed")
    first_row.locator("a.mono").click()
    expect(page.get_by_role("alert")).to_contain_text("_redirects line 1")
    expect(page.get_by_role("log")).to_contain_text("_redirects line 1")
    page.get_by_label("Filter lines").fill("status 999")
    expect(page.locator("#log li:visible")).to_have_count(1)
    expect(page.locator("#log li:visible")).to_contain_text("_redirects line 1")
    expect(page.get_by_role("button", name="Redeploy")).to_have_count(0)


def test_copy_button_puts_the_git_remote_on_the_clipboard_at_phone_width(
        browser: Browser, board: Server, token: str, make_repo: Callable[..., Path]) -> None:
    pushed(board, token, make_repo({"index.html": "<p>m</p>"}), "phone")
    context = browser.new_context(base_url=board.url, viewport={"width": 375, "height": 740},
                                  permissions=["clipboard-read", "clipboard-write"])
    try:
        tab = context.new_page()
        tab.goto("/login")
        tab.get_by_label("Token").fill(token)
        tab.get_by_role("button", name="Sign in").click()
        tab.goto("/sites/phone")
        overflow = tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0  # nothing wider than the phone
        tab.get_by_role("button", name="Copy Git remote URL").click()
        expect(tab.get_by_role("button", name="Copy Git remote URL")).to_have_text("Copied")
        copied = tab.evaluate("navigator.clipboard.readText()")
        assert copied == f"http://127.0.0.1:{board.port}/phone.git"
    finally:
        context.close()
