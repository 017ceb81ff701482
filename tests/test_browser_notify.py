"""A site's notification endpoints from the dashboard, in a real browser (Playwright on
Debian's chromium, a real `pushsite serve`): added with the secret shown once, the delivery
log with every attempt, removed after the browser asks, enabled again once disabled. The
receiver is an HTTP server on 127.0.0.1 that verifies with the `standardwebhooks` package."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from standardwebhooks.webhooks import Webhook
from test_browser import WAIT_MS, browser, playwright, signed_in  # noqa: F401 - fixtures

from pushsite.state import open_state_store
from support.receivers import Receiver, receivers_fixture
from support.servers import Server, serving
from support.sites import write_files

receivers = pytest.fixture(receivers_fixture)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # a failed delivery is tried again after 0.1-0.2 s, not 15-30 s
    with serving(tmp_path_factory.mktemp("notify") / "home",
                 extra_env={"PUSHSITE_NOTIFY_RETRY": "0.2"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(board: Server) -> str:
    return board.new_token("--name", "boss", "--admin")




@pytest.fixture
def page(browser: Browser, board: Server, admin: str) -> Iterator[Page]:  # noqa: F811
    tab = signed_in(browser, board, admin)
    try:
        yield tab
    finally:
        tab.context.close()


def deploy(board: Server, tmp_path: Path, site: str, text: str) -> None:
    """A CLI deploy on the server's home: its events are queued there, and the server's
    worker delivers them (two processes, one state)."""
    folder = write_files(tmp_path / text, {"index.html": f"<h1>{text}</h1>"})
    done = board.cli("deploy", str(folder), "--site", site)
    assert done.returncode == 0, done.stderr


def api_endpoints(board: Server, admin: str, site: str) -> list[dict[str, object]]:
    answer = httpx.get(f"{board.url}/api/sites/{site}/notifications",
                       headers={"Authorization": f"Bearer {admin}"})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, object]] = answer.json()["endpoints"]
    return found


def test_an_endpoint_is_added_shown_once_logs_every_attempt_and_is_removed_when_confirmed(
        page: Page, board: Server, admin: str, receivers: Callable[..., Receiver],
        tmp_path: Path) -> None:
    board.create_site("notes")
    flaky = receivers(answer=lambda n: 500 if n <= 2 else 204)
    page.goto("/sites/notes")
    page.locator("#notifications-link").click()
    expect(page.get_by_role("heading", name="Notifications of notes")).to_be_visible()
    expect(page.locator("#no-endpoints")).to_be_visible()

    # no event ticked: refused, nothing added
    page.locator("#endpoint-url").fill(flaky.url)
    for box in page.locator("input[type=checkbox][name^='event:']").all():
        box.uncheck()
    page.locator("#add-endpoint-button").click()
    expect(page.get_by_text("tick at least one event")).to_be_visible()
    assert api_endpoints(board, admin, "notes") == []

    page.goto("/sites/notes/notifications")
    page.locator("#endpoint-url").fill(flaky.url)
    for box in page.locator("input[type=checkbox][name^='event:']").all():
        if box.get_attribute("name") != "event:deployment.succeeded":
            box.uncheck()
    page.locator("#add-endpoint-button").click()
    secret = page.locator("#endpoint-secret").input_value()
    assert secret.startswith("whsec_")
    [added] = api_endpoints(board, admin, "notes")
    assert added["url"] == flaky.url and added["events"] == ["deployment.succeeded"]
    page.goto("/sites/notes/notifications")
    expect(page.locator("#endpoint-secret")).to_have_count(0)  # shown once only
    assert secret not in page.content()
    row = page.get_by_role("row", name=flaky.url)
    expect(row).to_contain_text("deployment.succeeded")
    expect(row).to_contain_text("none yet")

    # a deploy: the receiver answers 500 twice, then 204; each attempt is signed with the
    # secret the page showed, and the log shows all three
    deploy(board, tmp_path, "notes", "one")
    flaky.wait_for(lambda: len(flaky.seen) == 3, "the third attempt")
    for request in flaky.seen:
        assert Webhook(secret).verify(request.body, request.headers)["type"] == (
            "deployment.succeeded")
    page.get_by_role("link", name=flaky.url).click()
    expect(page.get_by_role("heading", name=flaky.url)).to_be_visible()
    rows = page.locator("tr.delivery")
    expect(rows).to_have_count(3)
    expect(rows.locator("td.attempt")).to_have_text(["3", "2", "1"])
    expect(rows.locator("td.response")).to_have_text(["204", "500", "500"])
    expect(rows.nth(0)).to_contain_text("delivered")
    expect(rows.nth(1)).to_contain_text("retrying")
    expect(rows.nth(2)).to_contain_text("answered 500")
    message_ids = rows.locator("td.mono").all_inner_texts()
    assert len(set(message_ids)) == 1 and message_ids[0] == flaky.seen[0].headers["webhook-id"]
    expect(page.locator("#endpoint-state")).to_contain_text("enabled")

    # removing asks first: dismissed, it stays; accepted, it goes with its log
    asked: list[str] = []

    def answer(accept: bool) -> object:
        def handle(dialog: object) -> None:
            asked.append(dialog.message)  # type: ignore[attr-defined]
            (dialog.accept if accept else dialog.dismiss)()  # type: ignore[attr-defined]
        return handle

    page.once("dialog", answer(False))
    page.locator("#remove-endpoint").click()
    expect(page.get_by_role("heading", name=flaky.url)).to_be_visible()
    assert len(api_endpoints(board, admin, "notes")) == 1
    page.goto("/sites/notes/notifications")
    page.once("dialog", answer(True))
    page.get_by_role("button", name=f"Remove {flaky.url}").click()
    expect(page.locator("#no-endpoints")).to_be_visible()
    assert api_endpoints(board, admin, "notes") == []
    assert all(flaky.url in message and "notes" in message for message in asked)
    assert len(asked) == 2
    page.goto(f"/sites/notes/notifications/{added['id']}")
    expect(page.get_by_text(f"no notification endpoint '{added['id']}'")).to_be_visible()


def test_a_disabled_endpoint_is_enabled_again_and_a_deploy_token_only_looks(
        browser: Browser, page: Page, board: Server, admin: str,  # noqa: F811
        receivers: Callable[..., Receiver], tmp_path: Path) -> None:
    board.create_site("jots")
    receiver = receivers()
    page.goto("/sites/jots/notifications")
    page.locator("#endpoint-url").fill(receiver.url)
    page.locator("#add-endpoint-button").click()
    expect(page.locator("#endpoint-secret")).to_be_visible()
    # what the worker does after a day of failures, done here by a second process on the state
    state = open_state_store(f"sqlite:///{board.home}/state.db")
    try:
        [endpoint] = state.list_endpoints("jots")
        endpoint.disabled, endpoint.failing_since = True, 1.0
        assert state.update_endpoint(endpoint)
    finally:
        state.close()
    page.goto("/sites/jots/notifications")
    expect(page.get_by_role("row", name=receiver.url)).to_contain_text("disabled")
    deploy(board, tmp_path, "jots", "quiet")  # a disabled endpoint is told nothing

    looker = signed_in(browser, board, board.new_token("--name", "looker", "--site", "jots"))
    try:
        looker.goto("/sites/jots/notifications")
        expect(looker.get_by_role("row", name=receiver.url)).to_be_visible()
        expect(looker.locator("#add-endpoint")).to_have_count(0)
        expect(looker.get_by_role("button", name=f"Remove {receiver.url}")).to_have_count(0)
        csrf = looker.locator("input[name=csrf]").first.input_value()
        refused = looker.request.post(f"/sites/jots/notifications/{endpoint.id}/enable",
                                      form={"csrf": csrf})
        assert refused.status == 403 and "admin token" in refused.text()
        looker.goto(f"/sites/jots/notifications/{endpoint.id}")
        expect(looker.locator("#enable-endpoint")).to_have_count(0)
    finally:
        looker.context.close()

    page.goto(f"/sites/jots/notifications/{endpoint.id}")
    expect(page.locator("#endpoint-state")).to_contain_text("disabled")
    expect(page.locator("#no-deliveries")).to_be_visible()
    page.locator("#enable-endpoint").click()
    expect(page.locator("#endpoint-state")).to_contain_text("enabled")
    [again] = api_endpoints(board, admin, "jots")
    assert again["disabled"] is False and again["id"] == endpoint.id
    assert receiver.seen == []  # the deploy while it was disabled sent nothing
    deploy(board, tmp_path, "jots", "heard")
    receiver.wait_for(lambda: "deployment.succeeded" in receiver.events(), "succeeded")


def test_a_given_up_message_is_sent_again_from_its_log(
        page: Page, board: Server, receivers: Callable[..., Receiver]) -> None:
    import time

    from pushsite.model import Delivery

    board.create_site("memo")
    receiver = receivers()
    page.goto("/sites/memo/notifications")
    page.locator("#endpoint-url").fill(receiver.url)
    page.locator("#add-endpoint-button").click()
    secret = page.locator("#endpoint-secret").input_value()
    # a message given up after a day of failures, as the worker logs it (written here by a
    # second process on the same state); a retried attempt keeps no message to send again
    message = {"endpoint": "", "site": "memo", "id": "msg_01given0up0000000000000000",
               "event": "deployment.succeeded", "time": time.time() - 86400,
               "data": {"deployment": {"id": "d1", "site": "memo"}, "urls": {}}}
    state = open_state_store(f"sqlite:///{board.home}/state.db")
    try:
        [endpoint] = state.list_endpoints("memo")
        message["endpoint"] = endpoint.id
        state.append_delivery(Delivery(endpoint.id, message["id"], "deployment.succeeded", 37,
                                       "retrying", 503, 0.01, "answered 503",
                                       time.time() - 70))
        state.append_delivery(Delivery(endpoint.id, message["id"], "deployment.succeeded", 38,
                                       "gave_up", 503, 0.01, "answered 503", time.time() - 60,
                                       message))
    finally:
        state.close()
    page.goto(f"/sites/memo/notifications/{endpoint.id}")
    rows = page.locator("tr.delivery")
    expect(rows).to_have_count(2)
    expect(page.get_by_role("button", name=f"Send {message['id']} again")).to_have_count(1)
    page.get_by_role("button", name=f"Send {message['id']} again").click()
    expect(page.locator("#resent")).to_be_visible()
    receiver.wait_for(lambda: len(receiver.seen) == 1, "the message sent again")
    sent = receiver.seen[0]
    assert sent.headers["webhook-id"] == message["id"]
    assert Webhook(secret).verify(sent.body, sent.headers)["data"] == message["data"]
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:  # its attempt is logged just after the receiver answered
        page.reload()
        if rows.count() >= 3:
            break
        assert time.monotonic() < deadline, "the attempt sent again never showed in the log"
        time.sleep(0.1)
    expect(rows).to_have_count(3)
    expect(rows.nth(0).locator("td.attempt")).to_have_text("1")
    expect(rows.nth(0)).to_contain_text("delivered")
