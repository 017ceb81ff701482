"""`pushsite deploy DIR|TGZ --server`: the list first, then only the blobs the server lacks.

Bytes are counted on the wire by a TCP proxy between the real CLI and a real `pushsite serve`;
lying clients are played over real HTTP against the API.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_remote import run_cli

from bench.wire import counting_proxy
from pushsite.deploy.filelist import check_rows, frame_header, list_folder
from pushsite.errors import ConfigError
from pushsite.limits import DEFAULT_LIMITS
from support.api import Api
from support.servers import Server, serving


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("incremental") / "home") as srv:
        yield srv


@pytest.fixture(scope="module")
def token(remote: Server) -> str:
    return remote.new_token("--name", "ci")


def _site(root: Path, count: int = 200, size: int = 8192) -> Path:
    root.mkdir(parents=True)
    for i in range(count):
        path = root / f"assets/{i // 50}/file{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    (root / "index.html").write_text("<h1>version one</h1>")
    return root


def _list_bytes(folder: Path) -> int:
    listing = list_folder(folder)
    return len(json.dumps({"files": [r.to_json() for r in listing.rows]}))


def test_a_redeploy_sends_only_the_changed_file(remote: Server, token: str,
                                                tmp_path: Path) -> None:
    remote.create_site("inc")
    folder = _site(tmp_path / "site")
    with counting_proxy(remote.port) as (port, counts):
        server = f"http://127.0.0.1:{port}"
        first = run_cli(tmp_path / "h", "deploy", str(folder), "--site", "inc", "--server",
                        server, "--token", token, "--json")
        assert first.returncode == 0, first.stderr
        first_up = counts.up
        assert first_up > 200 * 8192  # every blob went the first time
        changed = folder / "assets/1/file60.bin"
        changed.write_bytes(os.urandom(8192))
        counts.reset()
        again = run_cli(tmp_path / "h", "deploy", str(folder), "--site", "inc", "--server",
                        server, "--token", token, "--json")
        assert again.returncode == 0, again.stderr
        up = counts.up
    data = json.loads(again.stdout)
    assert (data["status"], data["files"], data["blobs_new"]) == ("live", 201, 1)
    assert up <= 8192 + 2 * _list_bytes(folder), (up, _list_bytes(folder))
    assert up < first_up / 10
    served = remote.get("inc.localhost", "/assets/1/file60.bin").content
    assert served == changed.read_bytes()


def test_a_tarball_redeploys_incrementally_with_its_top_folder_stripped(
        remote: Server, token: str, tmp_path: Path) -> None:
    remote.create_site("inc-tgz")
    folder = _site(tmp_path / "site", count=40)

    def bundle(marker: str) -> Path:
        (folder / "index.html").write_text(f"<h1>{marker}</h1>")
        path = tmp_path / f"{marker}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(folder, arcname="public")
        return path

    with counting_proxy(remote.port) as (port, counts):
        server = f"http://127.0.0.1:{port}"
        done = run_cli(tmp_path / "h", "deploy", str(bundle("one")), "--site", "inc-tgz",
                       "--server", server, "--token", token)
        assert done.returncode == 0, done.stderr
        counts.reset()
        done = run_cli(tmp_path / "h", "deploy", str(bundle("two")), "--site", "inc-tgz",
                       "--server", server, "--token", token, "--json")
        assert done.returncode == 0, done.stderr
        assert counts.up < 40 * 8192 / 4  # the list and one small file, not the blobs
    assert json.loads(done.stdout)["blobs_new"] == 1
    assert remote.get("inc-tgz.localhost", "/").text == "<h1>two</h1>"
    assert remote.get("inc-tgz.localhost", "/assets/0/file3.bin").content == \
        (folder / "assets/0/file3.bin").read_bytes()


def _row(path: str, data: bytes) -> dict[str, object]:
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
            "mode": "100644"}


def _frame(data: bytes, size: int | None = None, digest: str | None = None) -> bytes:
    return frame_header(digest or hashlib.sha256(data).hexdigest(),
                        len(data) if size is None else size) + data


@pytest.mark.parametrize("lie", ["wrong hash", "wrong size", "not asked for", "cut off"])
def test_a_lying_client_gets_422_and_nothing_goes_live(remote: Server, token: str,
                                                       lie: str) -> None:
    api = Api(remote, token)
    remote.create_site("liar")
    live_before = remote.get("liar.localhost", "/").status_code
    page, other = b"<h1>honest</h1>", b"a file the list never named"
    started = api.ok("POST", "/sites/liar/uploads", 201, json={"files": [_row("index.html", page)]})
    assert started["missing"] == [hashlib.sha256(page).hexdigest()]
    body = {"wrong hash": _frame(b"<h1>evil!!</h1>", digest=started["missing"][0]),
            "wrong size": _frame(page, size=len(page) + 1) + b"x",
            "not asked for": _frame(other),
            "cut off": _frame(page)[:-3]}[lie]
    answer = api.call("PUT", f"/sites/liar/uploads/{started['upload']}/blobs", content=body)
    assert answer.status_code == 422, answer.text
    message = answer.json()["error"]
    expected = {"wrong hash": "does not hash to what the list says",
                "wrong size": "the list says", "not asked for": "was not asked for",
                "cut off": "was cut off"}[lie]
    assert expected in message and "nothing went live" in message
    finish = api.call("POST", f"/sites/liar/uploads/{started['upload']}/finish")
    assert finish.status_code == 404  # the upload was discarded whole
    assert remote.get("liar.localhost", "/").status_code == live_before
    failed = api.ok("GET", f"/deployments/{started['upload']}")  # receiving since the list
    assert (failed["status"], failed["error_kind"]) == ("failed", "BundleRejected")
    assert expected in failed["error"]
    assert not list((remote.home / "staging").glob(f"{started['upload']}*"))


@pytest.mark.parametrize(("files", "status", "words"), [
    ([{"path": "../etc/passwd", "sha256": "0" * 64, "size": 1}], 422, ".."),
    ([{"path": "/abs.html", "sha256": "0" * 64, "size": 1}], 422, "absolute"),
    ([{"path": "a.html", "sha256": "XYZ", "size": 1}], 400, "sha256 must be"),
    ([{"path": "a.html", "sha256": "0" * 64, "size": -1}], 400, "size must be"),
    ([{"path": "a.html", "sha256": "0" * 64, "size": 1, "mode": "160000"}], 400, "mode"),
    ([{"path": "a.html", "sha256": "0" * 64, "size": 1}] * 2, 422, "twice"),
    ([{"path": "big.bin", "sha256": "0" * 64, "size": 1 << 50}], 413, "max_file_bytes"),
])
def test_a_bad_list_is_refused_before_any_blob(remote: Server, token: str,
                                               files: list[dict[str, object]], status: int,
                                               words: str) -> None:
    remote.create_site("badlist")
    answer = Api(remote, token).call("POST", "/sites/badlist/uploads", json={"files": files})
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]


@pytest.mark.parametrize(("digest", "good"), [
    ("0123456789abcdef" * 4, True),
    ("0123456789ABCDEF" * 4, False),  # lowercase only
    ("a" * 63, False), ("a" * 65, False), ("a" * 63 + "\n", False), ("\n" + "a" * 63, False),
    ("a" * 63 + "g", False), ("g" + "a" * 63, False), ("a" * 31 + "-" + "a" * 32, False),
    ("\uff10" * 64, False),  # fullwidth digits are not hex digits here
    (64, False),
])
def test_a_row_s_sha256_is_64_lowercase_hex_digits(digest: object, good: bool) -> None:
    files = [{"path": "a.html", "sha256": digest, "size": 1}]
    if good:
        assert check_rows(files, DEFAULT_LIMITS)[0].sha256 == digest
    else:
        with pytest.raises(ConfigError, match="sha256 must be 64 lowercase hex digits"):
            check_rows(files, DEFAULT_LIMITS)


def test_finish_needs_every_asked_for_blob_and_a_site_token_cannot_reach_others(
        remote: Server, token: str) -> None:
    api = Api(remote, token)
    remote.create_site("partial")
    remote.create_site("elsewhere")
    a, b = b"first file", b"second file"
    started = api.ok("POST", "/sites/partial/uploads", 201,
                     json={"files": [_row("a.html", a), _row("b.html", b)]})
    upload = started["upload"]
    assert api.ok("PUT", f"/sites/partial/uploads/{upload}/blobs", content=_frame(a)) == \
        {"received": 1}
    early = api.call("POST", f"/sites/partial/uploads/{upload}/finish")
    assert early.status_code == 422 and "1 asked-for blobs were not uploaded" in \
        early.json()["error"]
    narrow = remote.new_token("--name", "narrow", "--site", "elsewhere")
    assert api.call("PUT", f"/sites/partial/uploads/{upload}/blobs", token=narrow,
                    content=_frame(b)).status_code == 403
    assert api.call("PUT", f"/sites/elsewhere/uploads/{upload}/blobs", token=narrow,
                    content=_frame(b)).status_code == 404  # the upload is another site's
    api.ok("PUT", f"/sites/partial/uploads/{upload}/blobs", content=_frame(b))
    deployment = api.ok("POST", f"/sites/partial/uploads/{upload}/finish", 202)
    assert deployment["id"] == upload
    final = api.finished(deployment["id"])
    assert final["status"] == "live"
    assert remote.get("partial.localhost", "/b.html").content == b
