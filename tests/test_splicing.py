"""The small redeploy's fast path (service/splicing.py): an upload changing a few rows of the
live manifest goes live inside its `finish` with `wait`, its manifest spliced from the live
one's bytes, and that manifest is byte for byte what the normal path (queue message, run,
builder) writes for the same list. Unusual uploads take the normal path."""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from pushsite.deploy import builder as builder_module
from pushsite.deploy.filelist import frame_header
from pushsite.model import Status, manifest_key
from pushsite.service.verbs import Service
from support.service import alias_of, open_service
from support.uploads import blob_frames, file_row, service_in, taken_messages

_TEXT = "<p>the same paragraph again, and again, so that it compresses</p>\n" * 30
BASE = {
    ".buildinfo": b"config 1",  # unpublished: stored and counted, never in a manifest
    "a-first.html": f"<html>first {_TEXT}</html>".encode(),
    "about/index.html": f"<html>about {_TEXT}</html>".encode(),
    "app.js": ("function f(x) { return x + 1; }\n" * 60).encode(),
    "docs/guide.html": f"<html>guide {_TEXT}</html>".encode(),
    "index.html": f"<html>home {_TEXT}</html>".encode(),
    "logo.png": bytes(range(256)) * 8,
    "style.css": ("body { margin: 0; padding: 0 }\n" * 50).encode(),
    "tiny.txt": b"tiny",
    "zz-last.html": f"<html>last {_TEXT}</html>".encode(),
}


def _upload(service: Service, site: str, files: dict[str, bytes]) -> str:
    upload, missing = service.start_upload(site, [file_row(p, d) for p, d in files.items()],
                                           create=True)
    if missing:
        service.receive_blobs(site, upload, io.BytesIO(blob_frames(files, missing)))
    return upload


_COUNTED = ("files", "bytes_in", "blobs_new", "blobs_reused", "carried", "status")


def _deployed(service: Service, site: str, files: dict[str, bytes], fast: bool,
              counted: list[dict[str, Any]] | None = None) -> bytes:
    """Deploy BASE to `site` the normal way, then `files` by the fast path or the normal
    one; the second deployment's manifest (and its counters into `counted`)."""
    first = _upload(service, site, BASE)
    service.finish_upload(site, first)
    service.run(first)
    taken_messages(service)
    upload = _upload(service, site, files)
    if fast:
        done = service.finish_upload(site, upload, run_now=True)
        assert done.status == Status.LIVE, done.error
        assert taken_messages(service) == []  # no queue message: it went live in the request
        lines = [x.message for x in service.state.get_logs(upload)]
        assert any("deploying it now" in line for line in lines), lines
    else:
        service.finish_upload(site, upload)
        assert service.run(upload).status == Status.LIVE
    assert alias_of(service, site) == upload
    if counted is not None:
        record = service.state.get_deployment(upload).to_dict()
        counted.append({k: record[k] for k in _COUNTED})
    return service.store.get(manifest_key(upload))


CHANGES = {
    "one page": {**BASE, "index.html": b"<html>changed " + _TEXT.encode() + b"</html>",
                 ".buildinfo": b"config 2"},
    "assets, first and last": {
        **BASE, "app.js": b"function g(y) { return y * 2; }\n" * 70,
        "style.css": b"p { color: red }\n" * 80, "a-first.html": b"<html>x" + _TEXT.encode(),
        "zz-last.html": b"short"},
    "added and removed": {
        **{p: d for p, d in BASE.items() if p not in ("a-first.html", "docs/guide.html",
                                                      "zz-last.html")},
        "0-new.html": b"<html>a new first " + _TEXT.encode(),
        "b/new.html": b"<html>in between " + _TEXT.encode(),
        "zzz.html": b"<html>a new last " + _TEXT.encode(),
        "404.html": b"<html>not here " + _TEXT.encode(),
        "copy.txt": BASE["tiny.txt"]},  # a held blob at a new path
    "one new blob at two text paths": {**BASE, "x.html": b"<p>" + _TEXT.encode(),
                                       "x.txt": b"<p>" + _TEXT.encode(),
                                       "e.html": b"", "e.css": b""},
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_spliced_manifest_is_the_one_the_normal_path_writes(
        change: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = CHANGES[change]
    counted: list[dict[str, Any]] = []
    with service_in(monkeypatch, tmp_path / "fast") as service:
        fast = _deployed(service, "site", files, fast=True, counted=counted)
    with service_in(monkeypatch, tmp_path / "normal") as service:
        normal = _deployed(service, "site", files, fast=False, counted=counted)
    assert counted[0] == counted[1]  # the deployment's counters, as the builder counts
    cut, other_cut = fast.index(b',"files":'), normal.index(b',"files":')
    assert fast[cut:] == normal[other_cut:]
    head, other = json.loads(fast[:cut] + b"}"), json.loads(normal[:other_cut] + b"}")
    assert {**head, "deployment": "", "created": 0} == {**other, "deployment": "",
                                                        "created": 0}
    assert sorted(json.loads(fast)["files"]) == sorted(p for p in files if p[0] != ".")


def _page(text: str) -> bytes:
    return f"<html>{text} {_TEXT}</html>".encode()


def _live_base(service: Service, site: str = "site", optimise: bool = True,
               files: dict[str, bytes] = BASE) -> str:
    first = _upload(service, site, files)
    service.finish_upload(site, first)
    service.run(first, optimise=optimise)
    taken_messages(service)
    return first


def test_a_base_with_variants_pending_is_spliced_and_its_optimising_queued(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live manifest's brotli variants are still to be made: the spliced one carries
    its pending list and marker, and queues the optimising message after live, as a run
    of the builder does; the optimiser then finishes it."""
    from pushsite.model import pending_key

    big = {**BASE, "big.html": _page("big") * 600}  # past LATER_NOW_BYTES: br after live
    monkeypatch.setattr(builder_module, "GZIP_NOW_BYTES", 1 << 30)  # its gzip made first
    with service_in(monkeypatch, tmp_path) as service:
        base = _live_base(service, optimise=False, files=big)
        pending = json.loads(service.store.get(manifest_key(base)))["pending"]
        assert pending
        upload = _upload(service, "site", {**big, "index.html": _page("pending")})
        assert service.finish_upload("site", upload, run_now=True).status == Status.LIVE
        spliced = json.loads(service.store.get(manifest_key(upload)))
        assert spliced["pending"] == pending
        assert service.store.has([pending_key(upload)])
        assert {"optimise": upload} in taken_messages(service)
        assert "br" in spliced["files"]["index.html"][3]  # the changed page: made before
        carried = json.loads(service.store.get(manifest_key(base)))["files"]
        assert all(spliced["files"][p] == carried[p] for p in big
                   if p not in ("index.html", ".buildinfo"))
        assert service.optimise_now(upload)
        assert "pending" not in json.loads(service.store.get(manifest_key(upload)))


def test_a_base_whose_gzip_is_left_for_after_is_spliced_with_it_pending(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A base that went live with text identity only (past builder.GZIP_NOW_BYTES, its
    after pass not run) lists "gzip" pending: its rows without one are carried still
    wanting it (the spliced manifest keeps "gzip" pending and the marker), and the
    optimiser, reading the manifest (nothing handed over), makes them."""
    from pushsite.model import pending_key

    later_now = builder_module.LATER_NOW_BYTES
    monkeypatch.setattr(builder_module, "GZIP_NOW_BYTES", 2000)
    monkeypatch.setattr(builder_module, "LATER_NOW_BYTES", -1)  # the base: all after
    with service_in(monkeypatch, tmp_path) as service:
        base = _live_base(service, optimise=False)
        rows = json.loads(service.store.get(manifest_key(base)))["files"]
        assert rows["zz-last.html"][3] == {}  # past the bound, live identity only
        monkeypatch.setattr(builder_module, "LATER_NOW_BYTES", later_now)
        upload = _upload(service, "site", {**BASE, "index.html": _page("changed")})
        assert service.finish_upload("site", upload, run_now=True).status == Status.LIVE
        spliced = json.loads(service.store.get(manifest_key(upload)))
        assert spliced["pending"] == ["br", "gzip"] and service.store.has([pending_key(upload)])
        assert spliced["files"]["zz-last.html"] == rows["zz-last.html"]
        assert {"optimise": upload} in taken_messages(service)
        assert service.optimise_now(upload)
        done = json.loads(service.store.get(manifest_key(upload)))
        assert "pending" not in done
        assert set(done["files"]["zz-last.html"][3]) == {"gzip", "br"}
        assert done["files"]["tiny.txt"][3] == {}  # under MIN_COMPRESS_SIZE: never tried


@pytest.mark.parametrize("files", [
    {**BASE, "_headers": b"/*\n  X-Test: 1\n"},  # a site config file
    {**BASE, **{f"new/{n}.html": _page(str(n)) for n in range(65)}},  # past MAX_ROWS
    {**BASE, "big.html": b"<p>" + bytes(range(97, 123)) * 50_000},  # past LATER_NOW_BYTES
    {**BASE, "same.html": _page("same"), "same.png": _page("same")},  # kinds differ
], ids=["config file", "many paths", "many bytes", "one new blob, two kinds"])
def test_unusual_uploads_take_the_normal_path(
        files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with service_in(monkeypatch, tmp_path) as service:
        _live_base(service)
        upload = _upload(service, "site", files)
        record = json.loads((service.config.staging / f"{upload}.upload/upload.json")
                            .read_text())
        assert "splice" not in record and record["normal"]
        done = service.finish_upload("site", upload, run_now=True)
        assert done.status == Status.QUEUED  # the normal path: its message, its run
        assert {"deployment": upload} in taken_messages(service)
        for _ in range(6000):  # run by finish's own thread (uploads._run_now): bounded
            if any(x.stage in ("done", "failed") for x in service.state.get_logs(upload)):
                break
            time.sleep(0.01)
        assert service.state.get_deployment(upload).status == Status.LIVE


def test_the_later_of_two_fast_redeploys_wins_production_whatever_finishes_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with service_in(monkeypatch, tmp_path) as service:
        _live_base(service)
        older = _upload(service, "site", {**BASE, "index.html": _page("older")})
        newer = _upload(service, "site", {**BASE, "index.html": _page("newer")})
        assert service.finish_upload("site", newer, run_now=True).status == Status.LIVE
        assert service.finish_upload("site", older, run_now=True).status == Status.READY
        assert alias_of(service, "site") == newer
        served = json.loads(service.store.get(manifest_key(newer)))["files"]["index.html"]
        assert served[0] == hashlib.sha256(_page("newer")).hexdigest()


def test_a_fast_redeploy_and_a_normal_run_beside_it_the_later_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older deployment the worker runs the normal way after a newer fast one went live
    moves no alias; a newer normal one run after an older fast one takes production."""
    with service_in(monkeypatch, tmp_path) as service:
        _live_base(service)
        normal = _upload(service, "site", {**BASE, "index.html": _page("normal, older")})
        fast = _upload(service, "site", {**BASE, "index.html": _page("fast, newer")})
        service.finish_upload("site", normal)
        assert service.finish_upload("site", fast, run_now=True).status == Status.LIVE
        assert service.run(normal).status == Status.READY
        assert alias_of(service, "site") == fast
        fast = _upload(service, "site", {**BASE, "index.html": _page("fast, older")})
        normal = _upload(service, "site", {**BASE, "index.html": _page("normal, newer")})
        assert service.finish_upload("site", fast, run_now=True).status == Status.LIVE
        service.finish_upload("site", normal)
        assert service.run(normal).status == Status.LIVE
        assert alias_of(service, "site") == normal


def test_two_fast_redeploys_at_once_leave_the_newer_live_and_both_manifests_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two finishes on two threads released together (each in its own service, as two
    request threads of two server processes would be)."""
    import threading

    with service_in(monkeypatch, tmp_path) as service, open_service() as other:
        _live_base(service)
        ids = [_upload(service, "site", {**BASE, "index.html": _page(f"at once {n}")})
               for n in range(2)]
        gate = threading.Barrier(2)
        ended: dict[str, Any] = {}

        def finish(svc: Service, upload: str) -> None:
            gate.wait()
            ended[upload] = svc.finish_upload("site", upload, run_now=True).status

        threads = [threading.Thread(target=finish, args=pair)
                   for pair in zip((service, other), ids, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert alias_of(service, "site") == ids[1]
        assert ended[ids[1]] == Status.LIVE
        assert ended[ids[0]] in (Status.LIVE, Status.READY)
        for n, upload in enumerate(ids):
            files = json.loads(service.store.get(manifest_key(upload)))["files"]
            assert sorted(files) == sorted(p for p in BASE if p != ".buildinfo")
            assert files["index.html"][0] == hashlib.sha256(_page(f"at once {n}")).hexdigest()
        assert service.state.get_deployment(ids[0]).status == Status.READY


_CHILD = """
import sys
from pushsite.config import load_config
from pushsite.service import splicing
from pushsite.service.running import Running
from pushsite.service.verbs import Service
from pathlib import Path

marker = Path(sys.argv[2])
def held(*args, **kwargs):
    marker.write_text("there")
    sys.stdin.read()  # until killed
Running._complete = held
Service(load_config()).finish_upload("site", sys.argv[1], run_now=True)
"""


def test_a_server_killed_in_the_fast_path_leaves_the_alias_and_a_deployment_recovery_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real child runs the fast path up to its manifest, written and flushed, and is
    SIGKILLed there (before any alias moved): the live site is the old one, and once the
    child's lease ran out a recovery queues the deployment and a run finishes it the
    normal way, with the same manifest."""
    import os
    import signal
    import subprocess
    import sys

    monkeypatch.setenv("PUSHSITE_LEASE", "1")
    with service_in(monkeypatch, tmp_path) as service:
        base = _live_base(service)
        files = {**BASE, "index.html": _page("killed")}
        upload = _upload(service, "site", files)
        marker = tmp_path / "marker"
        child = subprocess.Popen([sys.executable, "-c", _CHILD, upload, str(marker)],
                                 stdin=subprocess.PIPE)
        try:
            for _ in range(6000):  # until the child is there (bounded in count)
                if marker.exists() or child.poll() is not None:
                    break
                time.sleep(0.01)
            assert marker.exists(), child.returncode
            spliced = service.store.get(manifest_key(upload))
            assert service.state.get_deployment(upload).status == Status.RUNNING
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        assert alias_of(service, "site") == base  # never a broken or half-moved alias
        for _ in range(6000):  # until its lease ran out and a recovery took it over
            if upload in service.recover():
                break
            time.sleep(0.01)
        assert service.state.get_deployment(upload).status == Status.QUEUED
        assert {"deployment": upload} in taken_messages(service)
        assert service.run(upload).status == Status.LIVE
        assert alias_of(service, "site") == upload
        again = service.store.get(manifest_key(upload))
        assert again[again.index(b',"files":'):] == spliced[spliced.index(b',"files":'):]


def test_finish_with_wait_answers_the_live_deployment_and_a_lie_puts_nothing_live(
        tmp_path: Path) -> None:
    """Over HTTP, as `deploy --server` sends it: the last blob as finish's body, `wait`.
    The answer is the live deployment (the client exits at once); a body whose blob does
    not hash to its claim is 422 and the old page stays."""
    from support.api import Api
    from support.servers import serving

    with serving(tmp_path / "home") as srv:
        srv.create_site("web")
        api = Api(srv, srv.new_token("--name", "ci"))

        def redeploy(page: bytes, sent: bytes) -> Any:
            files = {**BASE, "index.html": page}
            started = api.ok("POST", "/sites/web/uploads", 201,
                             json={"files": [file_row(p, d) for p, d in files.items()]})
            claimed = hashlib.sha256(page).hexdigest()
            others = [h for h in started["missing"] if h != claimed]
            body = blob_frames(files, others) + (frame_header(claimed, len(sent)) + sent)
            return started["upload"], api.call(
                "POST", f"/sites/web/uploads/{started['upload']}/finish?wait=30",
                content=body)

        first = api.ok("POST", "/sites/web/uploads", 201,
                       json={"files": [file_row(p, d) for p, d in BASE.items()]})
        api.ok("POST", f"/sites/web/uploads/{first['upload']}/finish?wait=30",
               content=blob_frames(BASE, first["missing"]))
        upload, answer = redeploy(_page("over http"), _page("over http"))
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "live" and answer.json()["id"] == upload
        lines = [x["message"] for x in api.ok("GET", f"/deployments/{upload}/log")["lines"]]
        assert any("deploying it now" in line for line in lines), lines
        assert srv.get("web.localhost", "/").content == _page("over http")
        liar, answer = redeploy(_page("claimed"), _page("sent inst"))  # same length
        assert answer.status_code == 422, answer.text
        assert api.ok("GET", f"/deployments/{liar}")["status"] == "failed"
        assert srv.get("web.localhost", "/").content == _page("over http")


def test_a_locked_production_keeps_its_deployment_through_a_fast_redeploy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path moves aliases through the run's own activation: a locked site's
    redeploy becomes ready, says why, and production stays."""
    with service_in(monkeypatch, tmp_path) as service:
        base = _live_base(service)
        service.lock("site")
        upload = _upload(service, "site", {**BASE, "index.html": _page("while locked")})
        assert service.finish_upload("site", upload, run_now=True).status == Status.READY
        assert alias_of(service, "site") == base
        lines = [x.message for x in service.state.get_logs(upload)]
        assert any("deploying it now" in x for x in lines)
        assert any("locked" in x for x in lines), lines


def test_a_file_that_became_a_folder_leaves_the_spliced_manifest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A list with a folder row (a tarball's members) where the live site had a file."""
    with service_in(monkeypatch, tmp_path) as service:
        _live_base(service, files={**BASE, "notes": b"a file"})
        files = {**BASE, "notes/today.html": _page("today")}
        rows = [*(file_row(p, d) for p, d in files.items()), {"path": "notes", "mode": "040000"}]
        upload, missing = service.start_upload("site", rows)
        service.receive_blobs("site", upload, io.BytesIO(blob_frames(files, missing)))
        assert service.finish_upload("site", upload, run_now=True).status == Status.LIVE
        assert taken_messages(service) == []
        spliced = json.loads(service.store.get(manifest_key(upload)))["files"]
        assert "notes" not in spliced and "notes/today.html" in spliced


def test_a_finish_whose_blobs_another_finish_took_meanwhile_takes_the_normal_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two finishes of one upload: the one that renamed the folder first has its blobs; the
    other, between reading where they were and opening them, gets a reason (and then the
    normal path's answer for an ended upload), not a FileNotFoundError (a 500)."""
    from pushsite.service import splicing, uploads

    with service_in(monkeypatch, tmp_path) as service:
        _live_base(service)
        upload = _upload(service, "site", CHANGES["one page"])
        folder, record = uploads._open(service, "site", upload, uploads.UPLOADING)
        present = uploads._stored(folder / "blobs")
        deployment = uploads._receiving(service, upload)
        folder.rename(folder.with_name(upload + uploads.STAGED))  # the other finish's rename
        reason = splicing.prepare(service, deployment, record["splice"], present)
        assert reason == "the upload's blobs are gone (finished by another request)"
