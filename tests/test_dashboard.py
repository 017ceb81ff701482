"""The dashboard over real HTTP: a `pushsite serve` subprocess, real git pushes, httpx as the
browser (cookies, forms with their CSRF values, redirects, the event stream)."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from pushsite.web.dashboard import human_age, human_bytes, human_duration
from pushsite.web.session import COOKIE, Session, SessionSigner, load_secret
from support.servers import Server, serving
from support.sites import git, write_files

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_DEPLOYMENT = re.compile(r'href="/deployments/([0-9a-z]{26})"')


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module; each test uses its own site names."""
    with serving(tmp_path_factory.mktemp("dashboard") / "home") as srv:
        yield srv



@pytest.fixture(scope="module")
def token(board: Server) -> str:
    return board.new_token("--name", "dash")


def client(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)


def csrf_of(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


def sign_in(server: Server, token: str) -> httpx.Client:
    browser = client(server)
    form = browser.get("/login")
    done = browser.post("/login", data={"csrf": csrf_of(form), "token": token, "next": "/"})
    assert done.status_code == 303 and done.headers["location"] == "/", done.text
    return browser


def push(server: Server, token: str, repo: Path, site: str, ref: str = "main",
         fails: bool = False) -> str:
    """`git push`; with `fails`, one whose deploy fails, so git refuses it (exit non-zero)."""
    server.create_site(site)
    url = f"http://x:{token}@127.0.0.1:{server.port}/{site}.git"
    done = subprocess.run(["git", "push", "-q", url, ref], cwd=repo, capture_output=True,
                          text=True, timeout=120)
    assert (done.returncode != 0) == fails, done.stderr
    return done.stderr


def commit(repo: Path, files: dict[str, str | bytes], message: str) -> None:
    write_files(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def deployment_ids(browser: httpx.Client, site: str, query: str = "") -> list[str]:
    page = browser.get(f"/sites/{site}{query}")
    assert page.status_code == 200, page.text
    table = page.text.split('<table class="deployments">', 1)[-1]
    return list(dict.fromkeys(_DEPLOYMENT.findall(table)))


def post_action(browser: httpx.Client, deployment: str, action: str) -> httpx.Response:
    page = browser.get(f"/deployments/{deployment}")
    return browser.post(f"/deployments/{deployment}/{action}", data={"csrf": csrf_of(page)})


def wait_for(check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the condition never became true"
        time.sleep(0.1)


# signing in -------------------------------------------------------------------------------------
def test_pages_send_a_signed_out_visitor_to_sign_in(board: Server) -> None:
    browser = client(board)
    answer = browser.get("/sites/blog?limit=5")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=%2Fsites%2Fblog%3Flimit%3D5"
    assert "csrf" in browser.get(answer.headers["location"]).text


def test_a_wrong_token_is_refused_with_a_message(board: Server) -> None:
    browser = client(board)
    form = browser.get("/login")
    done = browser.post("/login", data={"csrf": csrf_of(form), "token": "psk_wrong"})
    assert done.status_code == 401
    assert "a valid deploy token is required" in done.text
    assert browser.get("/").status_code == 303


def test_sign_in_without_the_forms_csrf_value_is_refused(board: Server, token: str) -> None:
    browser = client(board)
    browser.get("/login")
    done = browser.post("/login", data={"csrf": "forged", "token": token})
    assert done.status_code == 403 and "CSRF" in done.text
    assert browser.get("/").status_code == 303


def test_sign_in_goes_back_to_the_page_asked_for_but_never_off_site(board: Server,
                                                                     token: str) -> None:
    browser = client(board)
    csrf = csrf_of(browser.get("/login?next=/sites/x"))
    done = browser.post("/login", data={"csrf": csrf, "token": token, "next": "/sites/x"})
    assert done.headers["location"] == "/sites/x"
    other = client(board)
    csrf = csrf_of(other.get("/login"))
    done = other.post("/login", data={"csrf": csrf, "token": token, "next": "//evil.example/"})
    assert done.headers["location"] == "/"


def test_a_tampered_cookie_is_a_signed_out_visitor(board: Server, token: str) -> None:
    browser = sign_in(board, token)
    value = browser.cookies[COOKIE]
    payload, _, mac = value.partition(".")
    browser.cookies.set(COOKIE, payload + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB"))
    assert browser.get("/").status_code == 303


def test_sign_out_needs_the_csrf_value_and_ends_the_session(board: Server, token: str) -> None:
    browser = sign_in(board, token)
    assert browser.post("/logout", data={"csrf": "nope"}).status_code == 403
    assert browser.get("/").status_code == 200
    done = browser.post("/logout", data={"csrf": csrf_of(browser.get("/"))})
    assert done.status_code == 303 and done.headers["location"] == "/login"
    assert browser.get("/").status_code == 303


def test_a_copy_of_the_cookie_taken_before_sign_out_is_refused_after(
        board: Server, token: str) -> None:
    """Signing out ends the session server-side, not only in the browser that signed out."""
    browser = sign_in(board, token)
    stolen = browser.cookies.get(COOKIE)
    other = sign_in(board, token)  # another session of the same token stays signed in
    done = browser.post("/logout", data={"csrf": csrf_of(browser.get("/"))})
    assert done.status_code == 303
    replay = httpx.Client(base_url=board.url, follow_redirects=False)
    replay.cookies.set(COOKIE, stolen)
    assert replay.get("/").status_code == 303
    assert other.get("/").status_code == 200


def test_a_signed_in_cookie_without_a_session_id_is_refused(board: Server, token: str) -> None:
    """A cookie from before session ids (or forged without one) could never be ended."""
    signer = SessionSigner(load_secret(board.home))
    browser = sign_in(board, token)
    session = signer.loads(browser.cookies.get(COOKIE))
    assert session is not None and session.sid
    legacy = signer.dumps(Session(token_id=session.token_id, csrf=session.csrf))
    replay = httpx.Client(base_url=board.url, follow_redirects=False)
    replay.cookies.set(COOKIE, legacy)
    assert replay.get("/").status_code == 303


def test_deleting_the_token_signs_its_sessions_out(board: Server) -> None:
    browser = sign_in(board, board.new_token("--name", "doomed"))
    assert browser.get("/").status_code == 200
    listing = board.cli("tokens", "list").stdout.decode()
    row = next(line for line in listing.splitlines() if "doomed" in line)
    token_id = re.findall(r"[0-9a-z]{26}", row)[0]
    assert board.cli("tokens", "delete", token_id).returncode == 0
    assert browser.get("/").status_code == 303


def test_session_secret_is_private_and_cookies_signed_with_another_key_fail(
        board: Server, tmp_path: Path) -> None:
    mode = stat.S_IMODE((board.home / "secret").stat().st_mode)
    assert mode == 0o600
    stranger = SessionSigner(load_secret(tmp_path / "elsewhere"))
    browser = client(board)
    browser.cookies.set(COOKIE, stranger.dumps(Session(token_id="0" * 26)))
    assert browser.get("/").status_code == 303


def test_signer_refuses_stale_forged_and_garbled_values(tmp_path: Path) -> None:
    signer = SessionSigner(load_secret(tmp_path), max_age=60)
    session = Session(token_id="abc", sid="s1")
    value = signer.dumps(session)
    assert signer.loads(value) == session
    assert signer.loads(value, now=session.issued + 120) is None
    assert signer.loads(value.replace(".", "x.", 1)) is None
    assert signer.loads("garbage") is None and signer.loads(".") is None
    assert load_secret(tmp_path) == load_secret(tmp_path)  # created once, then reused


# pages ----------------------------------------------------------------------------------------
def test_sites_page_shows_live_url_commit_message_and_newest_status(
        board: Server, token: str, make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>one</p>"})
    commit(repo, {"index.html": "<p>two</p>"}, "Ship the <b>second</b> page")
    push(board, token, repo, "listed")
    browser = sign_in(board, token)
    page = browser.get("/").text
    row = page.split('href="/sites/listed"', 1)[1].split("</tr>", 1)[0]
    assert f"http://listed.localhost:{board.port}/" in row
    assert git(repo, "rev-parse", "HEAD")[:10] in row
    assert "Ship the &lt;b&gt;second&lt;/b&gt; page" in row  # escaped, never raw HTML
    assert "badge-live" in row and " ago" in row


def test_site_page_has_urls_remote_hooks_and_pages_of_deployments(
        board: Server, token: str, make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>1</p>"})
    push(board, token, repo, "paged")
    for n in (2, 3):
        commit(repo, {"index.html": f"<p>{n}</p>"}, f"version {n}")
        push(board, token, repo, "paged")
    git(repo, "checkout", "-q", "-b", "Feature/Try_This")
    commit(repo, {"index.html": "<p>preview</p>"}, "preview")
    push(board, token, repo, "paged", "Feature/Try_This")
    browser = sign_in(board, token)
    page = browser.get("/sites/paged").text
    assert f'value="http://127.0.0.1:{board.port}/paged.git"' in page
    assert f'value="http://127.0.0.1:{board.port}/hooks/github/paged"' in page
    assert f"http://feature-try-this--paged.localhost:{board.port}/" in page
    assert 'data-copy="git-remote"' in page and 'aria-label="Copy Git remote URL"' in page
    every = deployment_ids(browser, "paged")
    assert len(every) == 4
    first = deployment_ids(browser, "paged", "?limit=3")
    assert first == every[:3]
    older = browser.get("/sites/paged?limit=3").text
    assert f'href="/sites/paged?before={first[-1]}&amp;limit=3"' in older
    assert deployment_ids(browser, "paged", f"?before={first[-1]}&limit=3") == every[3:]
    assert browser.get("/sites/paged?limit=0").status_code == 400
    assert browser.get("/sites/nosuchsite").status_code == 404


def test_deployment_page_shows_log_files_encodings_and_diff(
        board: Server, token: str, make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>a</p>", "gone.txt": "bye", "same.css": "b{}" * 300})
    push(board, token, repo, "diffs")
    git(repo, "rm", "-q", "gone.txt")
    commit(repo, {"index.html": "<p>b</p>", "new.js": "let x = 1;"}, "second")
    push(board, token, repo, "diffs")
    browser = sign_in(board, token)
    newest, first = deployment_ids(browser, "diffs")
    page = browser.get(f"/deployments/{newest}").text
    assert "1 added, 1 changed, 1 removed" in page and "1 unchanged" in page
    assert f'href="/deployments/{first}"' in page
    assert "<code>new.js</code>" in page and "<code>gone.txt</code>" in page
    css_row = page.split("<code>same.css</code>", 1)[1].split("</tr>", 1)[0]
    assert "900 B" in css_row and "gzip" in css_row and "br" in css_row
    assert "wrote the manifest" in page  # the log
    assert 'id="activate"' not in page  # already live
    assert "Roll back to this" in browser.get(f"/deployments/{first}").text


def test_rollback_redeploy_and_cancel_by_form(board: Server, token: str,
                                               make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>first</p>"})
    push(board, token, repo, "flip")
    commit(repo, {"index.html": "<p>second</p>"}, "second")
    push(board, token, repo, "flip")
    browser = sign_in(board, token)
    second, first = deployment_ids(browser, "flip")
    assert board.get("flip.localhost").text == "<p>second</p>"

    refused = browser.post(f"/deployments/{first}/activate", data={"csrf": "bad"})
    assert refused.status_code == 403
    assert board.get("flip.localhost").text == "<p>second</p>"

    done = post_action(browser, first, "activate")
    assert done.status_code == 303 and done.headers["location"] == f"/deployments/{first}"
    assert board.get("flip.localhost").text == "<p>first</p>"

    done = post_action(browser, second, "redeploy")
    assert done.status_code == 303
    again = done.headers["location"].rsplit("/", 1)[1]
    assert again not in (first, second)
    wait_for(lambda: "badge-live" in browser.get(f"/deployments/{again}").text.split("</p>")[0])
    assert board.get("flip.localhost").text == "<p>second</p>"
    assert "redeploying the 1 files of" in browser.get(f"/deployments/{again}").text

    finished = post_action(browser, first, "cancel")
    assert finished.status_code == 400 and "only a queued or running" in finished.text


def test_events_stream_the_log_and_status_then_end(board: Server, token: str,
                                                    make_repo: Callable[..., Path]) -> None:
    push(board, token, make_repo({"index.html": "<p>s</p>"}), "stream")
    browser = sign_in(board, token)
    [deployment] = deployment_ids(browser, "stream")
    events = read_events(browser, f"/deployments/{deployment}/events")
    kinds = [name for name, _ in events]
    assert kinds[-1] == "end" and "status" in kinds
    seqs = [data["seq"] for name, data in events if name == "log"]
    assert seqs == sorted(seqs) and seqs[0] == 1
    assert dict(events)["status"]["status"] == "live"
    resumed = read_events(browser, f"/deployments/{deployment}/events?after={seqs[-2]}")
    assert [d["seq"] for n, d in resumed if n == "log"] == [seqs[-1]]
    only = read_events(browser, f"/deployments/{deployment}/events?status=1")
    assert [name for name, _ in only] == ["status", "end"]
    assert client(board).get(f"/deployments/{deployment}/events").status_code == 401


def read_events(browser: httpx.Client, path: str) -> list[tuple[str, dict[str, object]]]:
    events: list[tuple[str, dict[str, object]]] = []
    with browser.stream("GET", path) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in answer.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def test_log_search_finds_lines_across_deployments(board: Server, token: str,
                                                   make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>1</p>"})
    push(board, token, repo, "findme")
    commit(repo, {"_redirects": "/a /b 999\n"}, "break it")
    push(board, token, repo, "findme", fails=True)
    browser = sign_in(board, token)
    failed = deployment_ids(browser, "findme")[0]
    found = browser.get("/sites/findme/search", params={"q": "_redirects line"}).text
    assert "1 line found" in found and f'href="/deployments/{failed}#L' in found
    assert "2 lines found" in browser.get("/sites/findme/search?q=main queued").text
    assert "No line found for <q>zebra</q>" in browser.get("/sites/findme/search?q=zebra").text


def test_a_failed_deploy_shows_its_error(board: Server, token: str,
                                         make_repo: Callable[..., Path]) -> None:
    repo = make_repo({"index.html": "<p>ok</p>"})
    push(board, token, repo, "broken")
    commit(repo, {"_redirects": "/a /b 999\n"}, "bad redirects")
    push(board, token, repo, "broken", fails=True)
    browser = sign_in(board, token)
    failed = deployment_ids(browser, "broken")[0]
    page = browser.get(f"/deployments/{failed}").text
    assert "badge-failed" in page
    error = page.split('id="error"', 1)[1].split("</p>", 1)[0]
    assert "hidden" not in error.split(">", 1)[0] and "_redirects line 1" in error
    assert 'id="redeploy"' not in page and 'id="activate"' not in page


def test_a_site_token_sees_only_its_site(board: Server, token: str,
                                         make_repo: Callable[..., Path]) -> None:
    push(board, token, make_repo({"index.html": "mine"}), "mine")
    push(board, token, make_repo({"index.html": "theirs"}), "theirs")
    browser = sign_in(board, board.new_token("--name", "mine", "--site", "mine"))
    listing = browser.get("/").text
    assert 'href="/sites/mine"' in listing and 'href="/sites/theirs"' not in listing
    assert browser.get("/sites/theirs").status_code == 403
    admin = sign_in(board, token)
    [theirs] = deployment_ids(admin, "theirs")
    assert browser.get(f"/deployments/{theirs}").status_code == 403
    page = browser.get("/sites/mine")
    csrf = csrf_of(page)
    refused = browser.post(f"/deployments/{theirs}/redeploy", data={"csrf": csrf})
    assert refused.status_code == 403
    assert deployment_ids(admin, "theirs") == [theirs]


def test_pages_use_only_local_assets_and_strict_headers(board: Server, token: str) -> None:
    browser = sign_in(board, token)
    page = browser.get("/")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r'src="(https?:)?//', page.text)  # scripts, images: all ours
    assert re.findall(r'<link [^>]*href="([^"]+)"', page.text) == ["/static/dashboard.css"]
    assert '<meta name="viewport"' in page.text
    for asset in ("/static/dashboard.css", "/static/dashboard.js"):
        answer = browser.get(asset)
        assert answer.status_code == 200 and len(answer.content) > 500
        assert "http://" not in answer.text and "https://" not in answer.text
    assert browser.get("/deployments/notanid").status_code == 404


@pytest.mark.parametrize(("value", "text"), [(0, "0 B"), (1536, "1.5 KiB"),
                                              (5 << 20, "5.0 MiB"), (3 << 30, "3.0 GiB"),
                                              (None, "")])
def test_sizes_read_as_people_write_them(value: int | None, text: str) -> None:
    assert human_bytes(value) == text


def test_durations_and_ages_read_as_people_write_them() -> None:
    assert human_duration(2.345) == "2.3 s" and human_duration(125) == "2 min 5 s"
    assert human_age(100, now=145) == "45 s ago" and human_age(0, now=7200) == "2 h ago"
