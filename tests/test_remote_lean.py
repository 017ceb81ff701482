"""The quick path of `pushsite deploy DIR --server --json` (launch.py, remote.py, httplite.py)
against a real `pushsite serve`: no CLI imported, one question before the list, a first
deploy sent as one bundle, `finish?wait=` answering when live, and the same refusals."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_cli_remote import errors_of, run_cli
from test_incremental_upload import _frame, _row

from pushsite.config import load_config
from pushsite.deploy.filelist import SMALL_HASH, hash_pending, scan_folder
from pushsite.deploy.hashcache import RACY_SECONDS
from pushsite.httplite import Connection
from pushsite.launch import plain_remote_deploy
from pushsite.service import Service
from support.api import Api
from support.servers import Server, free_port, serving
from support.tlsparts import Authority, client_context, wait_until


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("lean") / "home") as srv:
        yield srv


@pytest.fixture(scope="module")
def token(remote: Server) -> str:
    return remote.new_token("--name", "ci")


def _site(root: Path, marker: str, count: int = 30) -> Path:
    (root / "assets").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = root / f"assets/{i}.txt"
        if not path.exists():
            path.write_bytes(os.urandom(4096))
    (root / "index.html").write_text(f"<h1>{marker}</h1>")
    return root


def _lean(home: Path, folder: Path, site: str, remote: Server, token: str,
          *extra: str) -> subprocess.CompletedProcess[str]:
    """`python -X importtime -m pushsite deploy ... --json`: stderr lists every import."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSITE_")}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pushsite", "deploy",
                           str(folder), "--site", site, "--server", remote.url, "--token",
                           token, "--json", *extra],
                          env={**base, "PUSHSITE_HOME": str(home),
                               "XDG_CACHE_HOME": str(home / "cache")},
                          capture_output=True, text=True, timeout=120, check=False)
    return done


def _past_racy_window(folder: Path) -> None:
    """Wait until the folder's files are older than the hash cache's racy window: a file
    changed within it is hashed again at each deploy (deploy/hashcache.py)."""
    newest = max(max(p.stat().st_mtime, p.stat().st_ctime) for p in folder.rglob("*"))
    time.sleep(max(0.0, newest + RACY_SECONDS + 0.1 - time.time()))


def _imported(stderr: str) -> set[str]:
    return {line.split("|")[-1].strip() for line in stderr.splitlines()
            if line.startswith("import time:")}


def _accept_line(api: Api, deployment_id: str) -> str:
    lines = api.ok("GET", f"/deployments/{deployment_id}/log")["lines"]
    return str(next(x["message"] for x in lines if x["stage"] == "accept"))


def test_a_plain_json_deploy_runs_without_the_cli_first_as_a_bundle_then_incrementally(
        remote: Server, token: str, tmp_path: Path) -> None:
    api = Api(remote, token)
    remote.create_site("lean")
    folder = _site(tmp_path / "site", "one")
    _past_racy_window(folder)  # so the first deploy's hashes are remembered, as a CI's are
    first = _lean(tmp_path / "ci", folder, "lean", remote, token)
    assert first.returncode == 0, first.stderr[-2000:]
    data = json.loads(first.stdout)
    assert (data["status"], data["context"], data["files"]) == ("live", "production", 31)
    assert data["urls"]["log"] == f"{remote.url}/deployments/{data['id']}"
    assert "accepted a bundle" in _accept_line(api, data["id"])  # nothing to reuse yet
    loaded = _imported(first.stderr)
    assert {"click", "httpx", "rich", "pushsite.cli", "pushsite.service"} & loaded == set()

    (folder / "index.html").write_text("<h1>two</h1>")
    again = _lean(tmp_path / "ci", folder, "lean", remote, token)
    assert again.returncode == 0, again.stderr[-2000:]
    data = json.loads(again.stdout)
    assert (data["status"], data["blobs_new"], data["blobs_reused"]) == ("live", 1, 30)
    assert "receiving an upload of 31 paths" in _accept_line(api, data["id"])
    # nor typing, socket's or signal's enums, OpenSSL for one small changed file, threads
    assert {"click", "httpx", "rich", "dataclasses", "encodings.idna", "sqlite3", "typing",
            "socket", "signal", "hashlib", "_hashlib", "urllib.parse", "ipaddress", "re",
            "enum", "json"} & \
        _imported(again.stderr) == set()
    assert remote.get("lean.localhost", "/").text == "<h1>two</h1>"
    assert remote.get("lean.localhost", "/assets/7.txt").content == \
        (folder / "assets/7.txt").read_bytes()


def test_help_and_errors_stay_the_cli_s(remote: Server, token: str, tmp_path: Path) -> None:
    folder = _site(tmp_path / "site", "x", count=1)
    helped = run_cli(tmp_path / "h", "deploy", "--help")
    assert helped.returncode == 0 and "pushsite deploy [OPTIONS] [SOURCE]" in helped.stdout
    bad = run_cli(tmp_path / "h", "deploy", str(folder), "--site", "Bad Name", "--server",
                  remote.url, "--token", token, "--json")
    assert bad.returncode == 2 and "invalid site name 'Bad Name'" in errors_of(bad.stderr)[0]
    missing = run_cli(tmp_path / "h", "deploy", str(folder), "--site", "no-such-site",
                      "--server", remote.url, "--token", token, "--json")
    assert missing.returncode == 4, missing.stderr
    assert errors_of(missing.stderr)[0].startswith("no site named 'no-such-site'")
    assert missing.stdout == ""


@pytest.mark.parametrize(("argv", "plain"), [
    (["deploy", "d", "--site", "s", "--json"], True),
    (["deploy", "d", "--site=s", "--json", "-m", "note", "--branch", "b", "--create"], True),
    (["deploy", "d", "--site", "s"], False),  # output for people: the CLI prints it
    (["deploy", "d", "--site", "s", "--json", "--draft"], False),
    (["deploy", "--site", "s", "--json"], False),  # SOURCE from a linked folder
    (["deploy", "d", "--site", "s", "--json", "--branch", " "], False),
    (["deploy", "d", "--site", "s", "--json", "--timeout", "soon"], False),
    (["deploy", "d", "--site", "s", "--site", "t", "--json"], False),
    (["deploy", "d", "--json", "--help"], False),
    (["sites", "list"], False),
])
def test_only_a_plain_remote_json_deploy_takes_the_quick_path(argv: list[str],
                                                             plain: bool) -> None:
    env = {"PUSHSITE_SERVER": "http://127.0.0.1:1", "PUSHSITE_TOKEN": "t"}
    assert (plain_remote_deploy(argv, env) is not None) == plain
    assert plain_remote_deploy(argv, {}) is None  # no server, no token: the CLI says so


def test_finish_wait_answers_once_live_and_a_lie_still_fails_whole(remote: Server, token: str,
                                                                   ) -> None:
    api = Api(remote, token)
    remote.create_site("waited")
    assert api.ok("GET", "/sites/waited/uploads/basis") == {
        "exists": True, "held": False, "features": ["finish-blobs", "list-gzip"]}
    page = b"<h1>waited for</h1>"
    started = api.ok("POST", "/sites/waited/uploads", 201,
                     json={"files": [_row("index.html", page)]})
    api.ok("PUT", f"/sites/waited/uploads/{started['upload']}/blobs", content=_frame(page))
    done = api.ok("POST", f"/sites/waited/uploads/{started['upload']}/finish", 200,
                  params={"wait": 30})
    assert (done["id"], done["status"], done["exit_code"]) == (started["upload"], "live", 0)
    assert remote.get("waited.localhost", "/").content == page
    assert api.ok("GET", "/sites/waited/uploads/basis")["held"] is True

    lie = api.ok("POST", "/sites/waited/uploads", 201,
                 json={"files": [_row("index.html", b"<h1>honest</h1>")]})
    put = api.call("PUT", f"/sites/waited/uploads/{lie['upload']}/blobs",
                   content=_frame(b"<h1>evil!!</h1>", digest=lie["missing"][0]))
    assert put.status_code == 422 and "does not hash" in put.json()["error"]
    finish = api.call("POST", f"/sites/waited/uploads/{lie['upload']}/finish",
                      params={"wait": 30})
    assert finish.status_code == 404 and "failed" in finish.json()["error"]
    assert remote.get("waited.localhost", "/").content == page


def test_finish_takes_the_last_batch_as_its_body_under_the_put_s_rules(remote: Server,
                                                                        token: str) -> None:
    """A one-file redeploy sends its blob with `finish` (one request less); a lie there is
    refused as a PUT's is, and nothing goes live."""
    api = Api(remote, token)
    remote.create_site("at-finish")
    pages = [b"<h1>one %s</h1>" % os.urandom(8).hex().encode(), b"<h1>two</h1>" + os.urandom(64)]
    started = api.ok("POST", "/sites/at-finish/uploads", 201,
                     json={"files": [_row("index.html", pages[0]), _row("b.html", pages[1])]})
    api.ok("PUT", f"/sites/at-finish/uploads/{started['upload']}/blobs",
           content=_frame(pages[0]))
    done = api.ok("POST", f"/sites/at-finish/uploads/{started['upload']}/finish", 200,
                  params={"wait": 30}, content=_frame(pages[1]))
    assert (done["status"], done["files"], done["blobs_new"]) == ("live", 2, 2)
    assert remote.get("at-finish.localhost", "/b.html").content == pages[1]

    lie = api.ok("POST", "/sites/at-finish/uploads", 201,
                 json={"files": [_row("index.html", b"<h1>honest</h1>")]})
    refused = api.call("POST", f"/sites/at-finish/uploads/{lie['upload']}/finish",
                       params={"wait": 30},
                       content=_frame(b"<h1>evil!!</h1>", digest=lie["missing"][0]))
    assert refused.status_code == 422 and "does not hash" in refused.json()["error"]
    assert api.ok("GET", f"/deployments/{lie['upload']}")["status"] == "failed"
    assert remote.get("at-finish.localhost", "/").content == pages[0]


def test_a_list_may_come_gzipped_and_a_bad_or_huge_one_is_refused(remote: Server,
                                                                  token: str) -> None:
    import gzip

    api = Api(remote, token)
    remote.create_site("zipped")
    page = b"<h1>zipped list</h1>" + os.urandom(16)
    listed = json.dumps({"files": [_row("index.html", page)]}).encode()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    started = api.ok("POST", "/sites/zipped/uploads", 201, content=gzip.compress(listed),
                     headers=headers)
    assert started["missing"] == [hashlib.sha256(page).hexdigest()]
    done = api.ok("POST", f"/sites/zipped/uploads/{started['upload']}/finish", 200,
                  params={"wait": 30}, content=_frame(page))
    assert done["status"] == "live" and remote.get("zipped.localhost", "/").content == page
    cut = api.call("POST", "/sites/zipped/uploads", content=gzip.compress(listed)[:-9],
                   headers=headers)
    assert cut.status_code == 400 and "gzip" in cut.json()["error"]
    other = api.call("POST", "/sites/zipped/uploads", content=listed,
                     headers={**headers, "Content-Encoding": "br"})
    assert other.status_code == 415
    assert [d["status"] for d in api.ok("GET", "/sites/zipped/deploys")["deployments"]] == \
        ["live"]  # a refused list made no deployment


def test_a_gzipped_list_inflating_past_max_files_rows_is_refused(tmp_path: Path) -> None:
    import gzip

    with serving(tmp_path / "home", extra_env={"PUSHSITE_MAX_FILES": "100"}) as small:
        small.create_site("bombed")
        api = Api(small, small.new_token("--name", "ci"))
        bomb = gzip.compress(b" " * (100 * 2048 + (1 << 20) + 1), 9)
        refused = api.call("POST", "/sites/bombed/uploads", content=bomb, headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert refused.status_code == 413 and "inflates to more than" in refused.json()["error"]


@pytest.mark.parametrize("sizes", [[0], [SMALL_HASH], [SMALL_HASH + 1], [5, SMALL_HASH + 7]])
def test_a_folder_s_files_hash_to_their_sha256_whichever_sha256_takes_them(
        sizes: list[int], tmp_path: Path) -> None:
    """One small changed file is hashed without OpenSSL (sha256_hasher), more by OpenSSL's:
    both give sha256."""
    files = {f"f{i}.bin": os.urandom(size) for i, size in enumerate(sizes)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    rows = hash_pending(scan_folder(tmp_path, None)).rows
    assert {r.path: (r.sha256, r.size) for r in rows} == \
        {name: (hashlib.sha256(data).hexdigest(), len(data)) for name, data in files.items()}


@pytest.mark.parametrize("missing", [["_sha256"], ["_sha2"], ["_sha2", "_sha256"]])
def test_a_small_file_hashes_on_a_python_without_the_builtin_sha256_it_looks_for(
        missing: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython's own sha256 is `_sha256` up to 3.11 and `_sha2` from 3.12 (pyproject allows
    both); where one is missing the other, or hashlib's, is used."""
    from pushsite.deploy.filelist import sha256_hasher

    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    hasher = sha256_hasher(3)
    hasher.update(b"abc")
    assert hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000", "https://deploy.example.com/api/", "http://u:p@[::1]:99/x?q=1#f",
    "HTTP://Host.Example:80/a", "https://h", "http://h?x", "http://h#f", "ftp://x", "d.example",
    "http://", "http:///x", "http://h:/p", "http://h.com/a%20b", "http://h:99999",
    "http://h:abc", "http://h:-1", "http://[::1]"])
def test_the_client_splits_a_url_as_urlsplit_does(url: str) -> None:
    from urllib.parse import urlsplit

    from pushsite.httplite import split_url

    def port(parts: Any) -> int | str | None:
        try:
            return cast(int | None, parts.port)
        except ValueError:
            return "refused"

    theirs, ours = urlsplit(url), split_url(url)
    assert (ours.scheme, ours.netloc, ours.path, ours.hostname, port(ours)) == \
        (theirs.scheme, theirs.netloc, theirs.path, theirs.hostname or "", port(theirs))


@given(st.text(), st.sampled_from(["", "/:@-._~!$&'()*+,;="]))
def test_the_client_quotes_as_urllib_does(text: str, safe: str) -> None:
    from urllib.parse import quote as theirs

    from pushsite.httplite import _PATH_SAFE, _UNRESERVED, quote

    with contextlib.suppress(UnicodeEncodeError):  # a lone surrogate: both refuse it
        expected = theirs(text, safe=safe)
        assert quote(text, _PATH_SAFE if safe else _UNRESERVED) == expected


@pytest.mark.parametrize("branch", [None, "feature/ü"])
def test_a_start_s_body_is_the_json_of_its_rows_dicts(branch: str | None) -> None:
    from pushsite.deploy.filelist import DIR, EXECUTABLE, LINK, Listing, Row
    from pushsite.remote import start_body

    rows = [Row("a \"quoted\" é/\u2603.html", "ab" * 32, 12), Row("bin/run", "cd" * 32, 0,
                                                                      EXECUTABLE),
            Row("docs", mode=DIR), Row("latest", mode=LINK, target="docs/ü \\x")]
    for strip_top, create in ((False, False), (True, True)):
        listing = Listing(rows, strip_top)
        expected = {"files": [r.to_json() for r in rows], "branch": branch,
                    "message": "m \"1\"\n", "strip_top": strip_top, "create": create}
        body = start_body(listing, branch, "m \"1\"\n", create)
        assert body == json.dumps(expected, separators=(",", ":"))


def test_the_batches_are_planned_from_the_sizes_so_the_last_is_known() -> None:
    from pushsite import remote as lean

    assert lean._batch_plan([]) == []
    assert lean._batch_plan([10]) == [1]
    big = lean.BATCH_BYTES
    assert lean._batch_plan([big - 1, 1, 5, big, 3]) == [2, 2, 1]
    assert lean._batch_plan([1] * (lean.BATCH_BLOBS + 1)) == [lean.BATCH_BLOBS, 1]


def test_a_small_chunked_body_goes_in_one_send_with_its_head() -> None:
    """Head, framing and a small body in one send (a relay with Nagle's algorithm on held a
    second small segment for the first one's delayed ACK); a large chunk is not copied."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        peer, _ = listener.accept()
        with peer:
            data = b""
            for _ in range(2):
                while not data.endswith(b"0\r\n\r\n"):
                    data += peer.recv(1 << 20)
                got.append(data)
                data = b""
                peer.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")

    class Counted(Connection):
        sends: list[int] = []

        def _ready(self) -> socket.socket:
            sock = super()._ready()
            sends = self.sends

            class Spy:
                def sendall(self, data: bytes) -> None:
                    sends.append(len(data))
                    sock.sendall(data)

            return Spy()  # type: ignore[return-value]

    server = threading.Thread(target=serve)
    server.start()
    with Counted(f"http://127.0.0.1:{listener.getsockname()[1]}", {}) as connection:
        small = connection.request("PUT", "/blobs", body=iter([b"h" * 80, b"x" * 54_000]))
        small_sends = list(Counted.sends)
        Counted.sends.clear()
        large = connection.request("PUT", "/blobs", body=iter([b"h" * 80, b"y" * (1 << 20)]))
    server.join(10)
    listener.close()
    assert small.status_code == large.status_code == 200
    assert len(small_sends) == 1 and got[0].endswith(b"x" * 54_000 + b"\r\n0\r\n\r\n")
    assert Counted.sends[1] == 1 << 20 and len(Counted.sends) == 3  # head+framing, chunk, end
    assert got[1].endswith(b"y" * (1 << 20) + b"\r\n0\r\n\r\n")


def test_basis_checks_the_token_and_the_site_like_an_upload(remote: Server,
                                                           token: str) -> None:
    api = Api(remote, token)
    assert api.call("GET", "/sites/nowhere/uploads/basis").status_code == 404
    assert api.ok("GET", "/sites/nowhere/uploads/basis", params={"create": "true"}) == \
        {"exists": False, "held": False, "features": ["finish-blobs", "list-gzip"]}
    assert api.call("GET", "/sites/waited/uploads/basis", token="nope").status_code == 401
    other = remote.new_token("--name", "other", "--site", "elsewhere")
    refused = api.call("GET", "/sites/waited/uploads/basis", token=other)
    assert refused.status_code == 403 and "limited to site 'elsewhere'" in refused.json()["error"]


def test_two_quick_deploys_at_once_end_with_the_newer_live(remote: Server, token: str,
                                                         tmp_path: Path) -> None:
    remote.create_site("twice")
    base = _site(tmp_path / "base", "base")
    first = _lean(tmp_path / "ci0", base, "twice", remote, token)
    assert first.returncode == 0, first.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSITE_")}
    clients = []
    for name in ("left", "right"):
        folder = _site(tmp_path / name, name)
        clients.append((name, subprocess.Popen(
            [sys.executable, "-m", "pushsite", "deploy", str(folder), "--site", "twice",
             "--server", remote.url, "--token", token, "--json"],
            env={**env, "PUSHSITE_HOME": str(tmp_path / f"ci-{name}")},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    ended = {}
    for name, client in clients:
        out, err = client.communicate(timeout=120)
        ended[name] = (client.returncode, json.loads(out), err)
    newer = max(ended, key=lambda name: ended[name][1]["id"])
    older = ({"left", "right"} - {newer}).pop()
    assert ended[newer][:2] == (0, {**ended[newer][1], "status": "live"}), ended[newer][2]
    # the older: live first and replaced, ready once the newer had moved the alias (an older
    # one never moves it back), or superseded before it ran
    code, data, err = ended[older]
    assert (code, data["status"]) in ((0, "live"), (0, "ready")) or (
        code == 6 and data["status"] == "cancelled" and "superseded" in err), err
    assert remote.get("twice.localhost", "/").text == f"<h1>{newer}</h1>"


def test_a_client_gone_while_it_waits_leaves_the_deployment_to_finish(remote: Server,
                                                                       token: str) -> None:
    api = Api(remote, token)
    remote.create_site("gone")
    page = b"<h1>finished without its client</h1>"
    started = api.ok("POST", "/sites/gone/uploads", 201,
                     json={"files": [_row("index.html", page)]})
    api.ok("PUT", f"/sites/gone/uploads/{started['upload']}/blobs", content=_frame(page))
    with socket.create_connection(("127.0.0.1", remote.port)) as sock:
        sock.sendall(f"POST /api/sites/gone/uploads/{started['upload']}/finish?wait=30 "
                     f"HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        for _ in range(600):  # bounded in count: until finish has queued it
            if api.ok("GET", f"/deployments/{started['upload']}")["status"] != "receiving":
                break
            time.sleep(0.02)
    final = api.finished(started["upload"])  # its client went before any answer
    assert final["status"] == "live"
    assert remote.get("gone.localhost", "/").content == page
    assert hashlib.sha256(page).hexdigest() in started["missing"]


def test_the_quick_path_speaks_https_trusting_ssl_cert_file(tmp_path: Path) -> None:
    """Over `serve --tls-cert`, with the CA in SSL_CERT_FILE as httpx honoured it; a client
    that does not trust the certificate fails in one line (exit 7), nothing sent."""
    authority = Authority(tmp_path / "ca")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    authority.issue(["localhost", "127.0.0.1"], cert, key)
    port = free_port()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PUSHSITE_", "SSL_CERT"))}
    server = subprocess.Popen(
        [sys.executable, "-m", "pushsite", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--tls-cert", str(cert), "--tls-key", str(key)],
        env={**env, "PUSHSITE_HOME": str(home)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        context = client_context(authority.pem)
        wait_until("https answers", lambda: httpx.get(
            f"https://127.0.0.1:{port}/api/health", verify=context, timeout=2).status_code == 200)
        local = {**env, "PUSHSITE_HOME": str(home)}
        subprocess.run([sys.executable, "-m", "pushsite", "sites", "create", "secure"],
                       env=local, check=True, capture_output=True)
        token = subprocess.run([sys.executable, "-m", "pushsite", "tokens", "create"], env=local,
                               check=True, capture_output=True, text=True).stdout.strip()
        folder = _site(tmp_path / "site", "over tls", count=2)
        argv = [sys.executable, "-m", "pushsite", "deploy", str(folder), "--site", "secure",
                "--server", f"https://127.0.0.1:{port}", "--token", token, "--json"]
        client = {**env, "PUSHSITE_HOME": str(tmp_path / "ci"),
                  "XDG_CACHE_HOME": str(tmp_path / "cache")}
        untrusted = subprocess.run(argv, env=client, capture_output=True, text=True, timeout=120)
        assert untrusted.returncode == 7, untrusted.stderr
        assert "CERTIFICATE_VERIFY_FAILED" in errors_of(untrusted.stderr)[0]
        for marker in ("over tls", "again"):  # a first deploy (a bundle), then incremental
            (folder / "index.html").write_text(f"<h1>{marker}</h1>")
            done = subprocess.run(argv, env={**client, "SSL_CERT_FILE": str(authority.pem)},
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["status"] == "live"
        page = httpx.get(f"https://127.0.0.1:{port}/", headers={"Host": "secure.localhost"},
                         verify=context, timeout=10)
        assert page.text == "<h1>again</h1>"
    finally:
        server.terminate()
        server.wait(20)


def test_a_first_deploy_over_the_server_s_limit_is_refused_with_its_words(
        tmp_path: Path) -> None:
    """The packed folder is over the server's max_total_mb: exit 3 and the server's reason."""
    with serving(tmp_path / "home", extra_env={"PUSHSITE_MAX_TOTAL_MB": "1"}) as small:
        small.create_site("big")
        token = small.new_token("--name", "ci")
        folder = tmp_path / "site"
        (folder / "assets").mkdir(parents=True)
        for i in range(24):
            (folder / f"assets/{i}.bin").write_bytes(os.urandom(1 << 20))
        done = _lean(tmp_path / "ci", folder, "big", small, token)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "max_total" in errors_of(done.stderr)[-1], done.stderr[-2000:]


def test_an_answer_sent_before_the_body_ended_is_read_not_a_broken_pipe() -> None:
    """A server that answers 413 and closes while the client still sends (as a proxy or a
    limit may): httplite returns that answer instead of the write error."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer_early() -> None:
        peer, _ = listener.accept()
        with peer:
            peer.recv(65536)
            peer.sendall(b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json"
                         b"\r\ncontent-length: 27\r\n\r\n{\"error\": \"too big for us\"}")
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    server = threading.Thread(target=answer_early)
    server.start()
    with Connection(f"http://127.0.0.1:{listener.getsockname()[1]}", {}) as connection:
        got = connection.request("PUT", "/blobs", body=iter([b"x" * (1 << 20)] * 64))
    server.join(10)
    listener.close()
    assert (got.status_code, got.json()) == (413, {"error": "too big for us"})


def test_finish_with_wait_runs_a_small_upload_while_the_worker_is_busy(tmp_path: Path) -> None:
    """The worker is held on a bundle that never arrives (a FIFO); a one-file redeploy whose
    client waits still goes live, run by its finish, and its queued message is a no-op."""
    with serving(tmp_path / "home") as srv:
        token = srv.new_token("--name", "ci")
        srv.create_site("busy")
        folder = _site(tmp_path / "site", "first", count=3)
        assert _lean(tmp_path / "ci", folder, "busy", srv, token).returncode == 0
        api = Api(srv, token)
        service = Service(load_config(home=str(srv.home)))
        fifo: Path | None = None
        try:
            srv.create_site("blocker")
            blocker = service.accept("blocker", None, enqueue=False)
            fifo = service.config.staging / f"{blocker.id}.tar.gz"
            os.mkfifo(fifo)
            blocker.bundle_key = fifo.name
            service.state.update_deployment(blocker)
            service.queue.send({"deployment": blocker.id})
            for _ in range(400):  # bounded in count: until the worker holds it
                if api.ok("GET", f"/deployments/{blocker.id}")["status"] == "running":
                    break
                time.sleep(0.05)
            assert api.ok("GET", f"/deployments/{blocker.id}")["status"] == "running"
            (folder / "index.html").write_text("<h1>second</h1>")
            done = _lean(tmp_path / "ci", folder, "busy", srv, token)
            assert done.returncode == 0, done.stderr[-2000:]
            assert json.loads(done.stdout)["status"] == "live"
            assert srv.get("busy.localhost", "/").text == "<h1>second</h1>"
            assert api.ok("GET", f"/deployments/{blocker.id}")["status"] == "running"
        finally:
            if fifo is not None and fifo.exists():
                with contextlib.suppress(OSError):  # ENXIO: the worker never opened it
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            service.close()


class _Link:
    """A clock for packed_folder that moves only when the reader says a send took time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seconds_per_send", [0.0, 0.5])
def test_a_packed_first_deploy_goes_stored_on_a_fast_link_compressed_on_a_slow_one(
        remote: Server, token: str, tmp_path: Path, seconds_per_send: float) -> None:
    """packing.py chooses per chunk: sends that take no time keep it stored (more bytes
    than the files: only the probes are compressed), slow ones turn it compressed; either
    way the mixed gzip members deploy whole over real HTTP, every byte as in the folder."""
    from pushsite.deploy.filelist import scan_folder
    from pushsite.deploy.packing import packed_folder

    folder = tmp_path / "site"
    (folder / "docs").mkdir(parents=True)
    for i in range(40):  # ~4 MiB of text: several chunks, each ~5:1 compressible
        words = " ".join(f"page {i} line {n} of the manual" for n in range(3500))
        (folder / f"docs/{i}.html").write_text(words)
    (folder / "index.html").write_text(f"<h1>{seconds_per_send}</h1>")
    files = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    link = _Link()
    chunks = []
    for chunk in packed_folder(scan_folder(str(folder), None), clock=link):
        chunks.append(chunk)
        link.now += seconds_per_send
    body = b"".join(chunks)
    assert len(chunks) > 2
    if seconds_per_send:
        assert len(body) < files // 3  # compressed from the first chunk sent on
    else:
        assert len(body) > files * 3 // 4  # stored but for the one-in-16 probes
    site = f"packed{int(seconds_per_send * 10)}"
    remote.create_site(site)
    api = Api(remote, token)
    data = api.deploy(body, site, create="false")
    assert (data["status"], data["files"]) == ("live", 41), data
    host = f"{site}.localhost"
    assert remote.get(host, "/").text == f"<h1>{seconds_per_send}</h1>"
    for i in (0, 17, 39):
        assert remote.get(host, f"/docs/{i}.html").content == \
            (folder / f"docs/{i}.html").read_bytes()


def test_an_uploaded_bundle_answers_when_its_deployment_ended_within_wait(
        remote: Server, token: str, tmp_path: Path) -> None:
    """POST .../deploys?wait=S answers 200 with the ended deployment (no polling), a bad
    bundle included (failed, nothing live); without `wait` it is 202 at once, as before;
    `deploy - --server --json` takes the answer as it comes."""
    from support.service import bundle

    api = Api(remote, token)
    remote.create_site("waits")
    good = bundle({"index.html": b"<h1>waited</h1>"})
    ended = api.ok("POST", "/sites/waits/deploys", 200, content=good, params={"wait": "30"},
                   headers={"Content-Type": "application/gzip"})
    assert (ended["status"], ended["exit_code"], ended["production"]) == ("live", 0, True)
    assert remote.get("waits.localhost", "/").text == "<h1>waited</h1>"

    bad = bundle({"index.html": b"<h1>never</h1>", "_redirects": b"/a /b 999\n"})
    failed = api.ok("POST", "/sites/waits/deploys", 200, content=bad, params={"wait": "30"},
                    headers={"Content-Type": "application/gzip"})
    assert failed["status"] == "failed" and failed["exit_code"] != 0, failed
    assert remote.get("waits.localhost", "/").text == "<h1>waited</h1>"

    queued = api.ok("POST", "/sites/waits/deploys", 202, content=good,
                    headers={"Content-Type": "application/gzip"})
    assert api.finished(queued["id"])["status"] == "live"

    source = tmp_path / "b.tar.gz"
    source.write_bytes(bundle({"index.html": b"<h1>piped</h1>"}))
    with open(source, "rb") as stdin:
        done = subprocess.run([sys.executable, "-m", "pushsite", "deploy", "-", "--site",
                               "waits", "--server", remote.url, "--token", token, "--json"],
                              stdin=stdin, capture_output=True, text=True, timeout=120,
                              check=False, env={**os.environ, "PUSHSITE_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["status"] == "live"
    assert remote.get("waits.localhost", "/").text == "<h1>piped</h1>"
