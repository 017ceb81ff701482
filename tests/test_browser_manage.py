"""Managing from the dashboard in a real browser (Playwright on Debian's chromium, a real
`pushsite serve`): a site deleted after typing its name, a token revoked; both ask first."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from test_browser import WAIT_MS, browser, playwright, sign_in  # noqa: F401 - fixtures

from support.servers import Server, serving


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("manage") / "home") as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(board: Server) -> str:
    return board.new_token("--name", "boss", "--admin")


@pytest.fixture
def page(browser: Browser, board: Server, admin: str) -> Iterator[Page]:  # noqa: F811
    context = browser.new_context(base_url=board.url)
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    try:
        sign_in(tab, admin)
        yield tab
    finally:
        context.close()


def _site_status(board: Server, admin: str, site: str) -> int:
    return httpx.get(f"{board.url}/api/sites/{site}",
                     headers={"Authorization": f"Bearer {admin}"}).status_code


def test_a_site_is_created_and_deleted_once_its_name_is_typed(page: Page, board: Server,
                                                             admin: str) -> None:
    page.get_by_label("Name").fill("doomed")
    page.locator("#create-site").click()
    expect(page.get_by_role("heading", name="doomed")).to_be_visible()
    asked: list[str] = []

    def answer(dialog: object) -> None:
        asked.append(dialog.message)  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]

    page.on("dialog", answer)
    page.locator("#delete-confirm").fill("doome")  # a typo: nothing is deleted
    page.locator("#delete-site").click()
    expect(page.get_by_text("type the site's name (doomed) to confirm")).to_be_visible()
    assert _site_status(board, admin, "doomed") == 200
    page.goto("/sites/doomed")
    page.locator("#delete-confirm").fill("doomed")
    page.locator("#delete-site").click()
    expect(page.get_by_role("heading", name="Sites")).to_be_visible()
    assert any("Delete site doomed" in message for message in asked)
    assert _site_status(board, admin, "doomed") == 404


def test_a_token_is_created_shown_once_and_revoked(page: Page, board: Server) -> None:
    page.goto("/tokens")
    page.get_by_label("Name").fill("ci-robot")
    page.locator("#create-token").click()
    secret = page.locator("#new-secret").input_value()
    api = f"{board.url}/api/whoami"
    assert httpx.get(api, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    page.goto("/tokens")
    expect(page.locator("#new-secret")).to_have_count(0)  # shown once only
    assert secret not in page.content()
    page.once("dialog", lambda dialog: dialog.dismiss())  # asked, and said no: kept
    page.get_by_role("button", name="Revoke ci-robot").click()
    expect(page.get_by_role("row", name="ci-robot")).to_be_visible()
    assert httpx.get(api, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke ci-robot").click()
    expect(page.get_by_role("row", name="ci-robot")).to_have_count(0)
    assert httpx.get(api, headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_a_site_token_sees_its_site_only_and_no_webhook_secret(
        browser: Browser, board: Server) -> None:  # noqa: F811
    board.create_site("mine")
    board.create_site("theirs")
    narrow = board.new_token("--name", "narrow", "--site", "mine", "--admin")
    context = browser.new_context(base_url=board.url)
    tab = context.new_page()
    try:
        tab.goto("/login")
        tab.get_by_label("Token").fill(narrow)
        tab.get_by_role("button", name="Sign in").click()
        expect(tab.get_by_role("link", name="mine", exact=True)).to_be_visible()
        expect(tab.get_by_role("link", name="theirs")).to_have_count(0)
        tab.goto("/sites/mine")
        expect(tab.locator("#delete-site")).to_be_visible()
        expect(tab.locator("#rotate-secret")).to_have_count(0)
        csrf = tab.locator("input[name=csrf]").first.input_value()
        answer = tab.request.post("/sites/mine/webhook-secret", form={"csrf": csrf})
        assert answer.status == 403
        tab.goto("/tokens")
        expect(tab.get_by_role("row", name="boss")).to_have_count(0)  # an every-site token
    finally:
        context.close()
