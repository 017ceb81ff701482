"""A site's build variables and secrets, and what a failed push does, managed from the
dashboard (issue 17: "the site's build variables and secrets"; "a site setting restores
today's behaviour"), in a real browser (Playwright on Debian's chromium, a real `pushsite
serve`): a secret's value never reaches the page, removing asks first, and a token limited to
the site without the admin scope neither sees nor changes them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect
from test_browser import WAIT_MS, browser, playwright, signed_in  # noqa: F401 - fixtures

from support.servers import Server, serving

SECRET_VALUE = "s3cr3t-value-never-shown"


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("variables") / "home") as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(board: Server) -> str:
    return board.new_token("--name", "boss", "--admin")




def _api(board: Server, token: str, path: str) -> Any:
    answer = httpx.get(f"{board.url}/api{path}", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_variables_and_secrets_are_set_shown_hidden_and_removed(
        browser: Browser, board: Server, admin: str) -> None:  # noqa: F811
    board.create_site("built")
    tab = signed_in(browser, board, admin)
    try:
        tab.goto("/sites/built")
        expect(tab.get_by_text("No build variables.")).to_be_visible()
        tab.locator("#variable-name").fill("HUGO_ENV")
        tab.locator("#variable-value").fill("production")
        tab.locator("#set-variable-button").click()
        expect(tab.locator("#variable-HUGO_ENV")).to_contain_text("production")
        tab.locator("#variable-name").fill("DEPLOY_KEY")
        tab.locator("#variable-value").fill(SECRET_VALUE)
        tab.locator("#variable-secret").check()
        tab.locator("#set-variable-button").click()
        expect(tab.locator("#variable-DEPLOY_KEY")).to_contain_text("secret")
        assert SECRET_VALUE not in tab.content()
        shown = {v["name"]: v for v in _api(board, admin, "/sites/built/env")["variables"]}
        assert shown["HUGO_ENV"]["value"] == "production" and not shown["HUGO_ENV"]["secret"]
        assert shown["DEPLOY_KEY"]["secret"] and shown["DEPLOY_KEY"]["value"] != SECRET_VALUE
        tab.locator("#variable-name").fill("1BAD NAME")
        tab.locator("#set-variable-button").click()
        expect(tab.get_by_role("alert")).to_contain_text("is not a variable name")
        assert "1BAD NAME" not in str(_api(board, admin, "/sites/built/env"))
        tab.goto("/sites/built")
        tab.once("dialog", lambda dialog: dialog.dismiss())  # asked, and said no: kept
        tab.get_by_role("button", name="Remove HUGO_ENV").click()
        expect(tab.locator("#variable-HUGO_ENV")).to_be_visible()
        asked: list[str] = []
        tab.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
        tab.get_by_role("button", name="Remove HUGO_ENV").click()
        expect(tab.locator("#variable-HUGO_ENV")).to_have_count(0)
        assert asked == ["Remove HUGO_ENV from the builds of built?"]
        names = [v["name"] for v in _api(board, admin, "/sites/built/env")["variables"]]
        assert names == ["DEPLOY_KEY"]
    finally:
        tab.context.close()


def test_what_a_failed_push_does_is_chosen_on_the_site_page(
        browser: Browser, board: Server, admin: str) -> None:  # noqa: F811
    board.create_site("pushy")
    assert _api(board, admin, "/sites/pushy")["settings"]["reject_failed_pushes"] is True
    tab = signed_in(browser, board, admin)
    try:
        tab.goto("/sites/pushy")
        expect(tab.locator("#failed-pushes-state")).to_contain_text("refused")
        tab.locator("#failed-pushes-toggle").click()
        expect(tab.locator("#failed-pushes-state")).to_contain_text("keeps its commits")
        assert _api(board, admin, "/sites/pushy")["settings"]["reject_failed_pushes"] is False
        tab.locator("#failed-pushes-toggle").click()
        expect(tab.locator("#failed-pushes-state")).to_contain_text("refused")
        assert _api(board, admin, "/sites/pushy")["settings"]["reject_failed_pushes"] is True
    finally:
        tab.context.close()


def test_a_deploy_token_for_the_site_neither_sees_nor_changes_them(
        browser: Browser, board: Server, admin: str) -> None:  # noqa: F811
    board.create_site("guarded")
    answer = httpx.put(f"{board.url}/api/sites/guarded/env/TOKEN",
                       headers={"Authorization": f"Bearer {admin}"},
                       json={"value": "plain-but-private"})
    assert answer.status_code == 200, answer.text
    deployer = board.new_token("--name", "deployer", "--site", "guarded")
    tab = signed_in(browser, board, deployer)
    try:
        tab.goto("/sites/guarded")
        expect(tab.get_by_role("heading", name="guarded")).to_be_visible()
        expect(tab.locator("#variables-h")).to_have_count(0)
        assert "plain-but-private" not in tab.content()
        csrf = tab.locator("input[name=csrf]").first.input_value()
        for path, form in (("/sites/guarded/variables", {"name": "X", "value": "1"}),
                           ("/sites/guarded/variables/TOKEN/unset", {}),
                           ("/sites/guarded/failed-pushes", {"reject": "0"})):
            assert tab.request.post(path, form={"csrf": csrf, **form}).status == 403, path
        names = [v["name"] for v in _api(board, admin, "/sites/guarded/env")["variables"]]
        assert names == ["TOKEN"]
        assert _api(board, admin, "/sites/guarded")["settings"]["reject_failed_pushes"] is True
    finally:
        tab.context.close()


def test_an_admin_rotates_the_webhook_secret_after_confirming_and_sees_it_once(
        browser: Browser, board: Server, admin: str) -> None:  # noqa: F811
    board.create_site("rotated")

    def secret() -> str:
        shown = board.cli("hooks", "rotated").stdout.decode()
        found = re.search(r"^secret\s+(\S+)", shown, re.M)
        assert found, shown
        return found.group(1)

    old = secret()
    tab = signed_in(browser, board, admin)
    try:
        tab.goto("/sites/rotated")
        tab.once("dialog", lambda dialog: dialog.dismiss())  # asked, and said no: kept
        tab.locator("#rotate-secret").click()
        expect(tab.get_by_role("heading", name="rotated")).to_be_visible()
        assert secret() == old
        asked: list[str] = []
        tab.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
        tab.locator("#rotate-secret").click()
        new = tab.locator("#webhook-secret").input_value()
        assert new == secret() != old
        assert asked == ["Make a new webhook secret? The old one stops working at once."]
        tab.goto("/sites/rotated")
        expect(tab.locator("#hook-secret")).to_have_value(new)  # an admin of every site
    finally:
        tab.context.close()
