"""What issue 17's audit found on the dashboard, over a real `pushsite serve`: a deployment
page follows a live deployment's optimisation to its end ("optimising", then how and when it
ended, in the browser's own time, without a reload), and a webhook secret is shown to admins
of every site only (never to a token limited to one site).

The optimisation's states are written into the server's state by the test (as the
optimiser's `_progress` writes them), so nothing depends on how fast a real one runs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect
from test_browser import WAIT_MS, browser, playwright  # noqa: F401 - fixtures
from test_browser import sign_in as sign_in_tab
from test_dashboard import sign_in

from pushsite.model import LogLine, Status
from pushsite.state import StateStore, open_state_store
from support.servers import Server, serving
from support.sites import write_files

_DEPLOYMENT = re.compile(r"deployment ([0-9a-z]{26})")


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("optimising") / "home") as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(board: Server) -> str:
    return board.new_token("--name", "boss", "--admin")


@pytest.fixture
def state(board: Server) -> StateStore:
    return open_state_store(f"sqlite:///{board.home}/state.db")


def _deployed(board: Server, site: str, tmp_path: Path) -> str:
    """A small site deployed and live (it has nothing left to optimise)."""
    folder = tmp_path / site
    write_files(folder, {"index.html": f"<h1>{site}</h1>"})
    board.create_site(site)
    done = board.cli("deploy", str(folder), "--site", site)
    assert done.returncode == 0, done.stderr
    found = _DEPLOYMENT.search(done.stdout.decode() + done.stderr.decode())
    assert found, done.stdout
    return found.group(1)


def _optimise(state: StateStore, deployment_id: str, text: str, when: float | None = None
              ) -> None:
    """What service/optimising.py writes: a log line, then the progress line's state."""
    current = state.get_deployment(deployment_id)
    if when is not None:
        state.append_logs([LogLine(deployment_id, when, "info", "optimise",
                                   "optimised: 3 brotli variants made")])
    counted = current.progress.split("; optimis")[0]
    current.progress = f"{counted}; {text}"
    state.update_deployment(current, expect_status=Status.LIVE)


def _events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


def test_the_page_and_its_stream_follow_the_optimising_until_it_ends(
        board: Server, admin: str, state: StateStore, tmp_path: Path) -> None:
    deployment = _deployed(board, "streamed", tmp_path)
    _optimise(state, deployment, "optimising")
    client = sign_in(board, admin)
    page = client.get(f"/deployments/{deployment}").text
    assert 'id="optimise-state">optimising<' in page
    assert f'data-events="/deployments/{deployment}/events' in page  # it goes on following
    seen: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", f"/deployments/{deployment}/events") as response:
        for name, data in _events(response):
            seen.append((name, data))
            if name == "status" and data["optimise"] == "optimising":
                _optimise(state, deployment, "optimised in 1.25s at 23:59:59", 1_800_000_000.5)
            if name == "end":
                break
    statuses = [data["optimise"] for name, data in seen if name == "status"]
    assert statuses == ["optimising", "optimised in 1.25s"], seen  # no server clock time
    assert seen[-1][0] == "end"
    ended = client.get(f"/deployments/{deployment}").text
    assert "data-events" not in ended  # nothing more to follow
    assert ('<span id="optimise-state">optimised in 1.25s</span> at <time '
            'datetime="2027-01-15T08:00:00.500+00:00" data-local') in ended


def test_the_open_page_shows_when_the_optimising_ended_in_local_time_without_a_reload(
        browser: Browser, board: Server, admin: str, state: StateStore,  # noqa: F811
        tmp_path: Path) -> None:
    deployment = _deployed(board, "watched", tmp_path)
    _optimise(state, deployment, "optimising")
    context = browser.new_context(base_url=board.url, timezone_id="Asia/Tokyo")
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    try:
        sign_in_tab(tab, admin)
        tab.goto(f"/deployments/{deployment}")
        expect(tab.locator("#optimising")).to_have_text("optimising")
        # 2027-01-15 08:00:00.5 UTC is 17:00:00.500 in Tokyo (UTC+9, no summer time)
        _optimise(state, deployment, "optimised in 1.25s at 08:00:00", 1_800_000_000.5)
        expect(tab.locator("#optimising")).to_have_text("optimised in 1.25s at 17:00:00.500")
        expect(tab.locator("#optimising time")).to_have_attribute(
            "title", "2027-01-15 08:00:00.500 UTC")
        expect(tab.locator("#log li").last).to_contain_text("optimised: 3 brotli variants")
    finally:
        context.close()


def test_the_webhook_secret_is_shown_to_admins_of_every_site_only(
        board: Server, admin: str) -> None:
    board.create_site("hooked")
    shown = board.cli("hooks", "hooked").stdout.decode()
    secret = re.search(r"^secret\s+(\S+)", shown, re.M)
    assert secret, shown
    tokens = {"admin of every site": admin,
              "deploy, every site": board.new_token("--name", "deployer"),
              "admin of the site": board.new_token("--name", "siteadm", "--site", "hooked",
                                                   "--admin"),
              "deploy, the site": board.new_token("--name", "sitedep", "--site", "hooked")}
    seen = {}
    for who, token in tokens.items():
        page = sign_in(board, token).get("/sites/hooked")
        assert page.status_code == 200, page.text
        seen[who] = secret.group(1) in page.text
    assert seen == {"admin of every site": True, "deploy, every site": False,
                    "admin of the site": False, "deploy, the site": False}
