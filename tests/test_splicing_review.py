"""An adversary's review of the small redeploy's fast path (service/splicing.py): uploads a
user or a second actor could send, each compared with what the normal path (queue message,
run, builder) does for the same list. Where the fast path declines, the normal path runs."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from pushsite.deploy.filelist import frame_header
from pushsite.model import FileEntry, Status, manifest_key
from pushsite.service.verbs import Service
from support.service import alias_of
from support.uploads import blob_frames, file_row, service_in, taken_messages

_TEXT = "<p>the same paragraph again, and again, so that it compresses</p>\n" * 30
BASE = {  # as tests/test_splicing.py's: pages, an asset of each kind, a first and a last
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


def _page(text: str) -> bytes:
    return f"<html>{text} {_TEXT}</html>".encode()


def _upload_rows(service: Service, site: str, rows: list[dict[str, Any]],
                 files: dict[str, bytes]) -> str:
    upload, missing = service.start_upload(site, rows, create=True)
    if missing:
        service.receive_blobs(site, upload, io.BytesIO(blob_frames(files, missing)))
    return upload


def _rows(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [file_row(p, d) for p, d in files.items()]


def _redeploy(service: Service, base_rows: list[dict[str, Any]], base: dict[str, bytes],
              rows: list[dict[str, Any]], files: dict[str, bytes], fast: bool
              ) -> tuple[str, bool]:
    """`base` live the normal way, then `rows`: by finish with `wait` (fast when planned) or
    the normal run. Returns the second deployment's id and whether it was spliced."""
    first = _upload_rows(service, "site", base_rows, base)
    service.finish_upload("site", first)
    assert service.run(first).status == Status.LIVE
    taken_messages(service)
    upload = _upload_rows(service, "site", rows, files)
    record = json.loads((service.config.staging / f"{upload}.upload/upload.json").read_text())
    spliced = "splice" in record
    if fast and spliced:
        done = service.finish_upload("site", upload, run_now=True)
        assert done.status == Status.LIVE, done.error
        assert taken_messages(service) == []
    else:
        service.finish_upload("site", upload)
        taken_messages(service)
        assert service.run(upload).status == Status.LIVE
    assert alias_of(service, "site") == upload
    return upload, spliced and fast


def _both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base: dict[str, bytes],
          rows: list[dict[str, Any]], files: dict[str, bytes],
          base_rows: list[dict[str, Any]] | None = None) -> tuple[bytes, bytes, bool]:
    """(the fast path's manifest from its files on, the normal path's, whether spliced)."""
    out = []
    spliced = False
    for fast in (True, False):
        with service_in(monkeypatch, tmp_path / ("fast" if fast else "normal")) as service:
            upload, took = _redeploy(service, base_rows or _rows(base), base, rows, files,
                                     fast)
            spliced = spliced or took
            raw = service.store.get(manifest_key(upload))
            out.append(raw[raw.index(b',"files":'):])
    return out[0], out[1], spliced


_UNICODE = {
    "café.html": _page("café"), "日本/index.html": _page("japan"),
    "😀.html": _page("emoji"), "\uff5e.html": _page("fullwidth"),
    'quote"d.html': _page("quote"), "Zed.html": _page("capital"), "a b.html": _page("space"),
    "tab\u2028line.html": _page("line separator"),
}
CHANGES: dict[str, dict[str, bytes]] = {
    "unicode and escaped paths added": {**BASE, **_UNICODE},
    "first and last removed": {p: d for p, d in BASE.items()
                               if p not in ("a-first.html", "zz-last.html")},
    "all but one removed": {"index.html": _page("only")},
    "all but one kept unchanged": {"tiny.txt": BASE["tiny.txt"]},
    "an empty file added": {**BASE, "empty.html": b"", "empty.css": b""},
    "one new blob at two paths": {**BASE, "same.html": _page("same"),
                                  "same.txt": _page("same")},
    "a new path that prefixes another": {**BASE, "index.htm": _page("prefix"),
                                          "about/index.htm": _page("prefix2")},
    "inserted before the first path": {**BASE, "0.html": _page("zero"), "-.html": b"-"},
    "404 page added, last replaced": {**BASE, "404.html": _page("nf"), "zz-last.html": b"x"},
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_spliced_manifest_is_the_normal_one_for_unusual_changes(
        change: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = CHANGES[change]
    fast, normal, spliced = _both(tmp_path, monkeypatch, BASE, _rows(files), files)
    assert fast == normal
    assert spliced, "the fast path was not taken: this case guards nothing"


def test_a_base_with_unicode_paths_and_404_is_spliced_as_the_normal_path_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = {**BASE, **_UNICODE, "404.html": _page("nf")}
    files = {p: d for p, d in base.items() if p not in ("404.html", "café.html")}
    files |= {"caff.html": _page("between"), "日本/a.html": _page("ja"), "😀.html": b"e"}
    fast, normal, spliced = _both(tmp_path, monkeypatch, base, _rows(files), files)
    assert spliced
    assert fast == normal


def _settle(service: Service, upload: str) -> Status:
    """The deployment's status once finish's own thread (uploads._run_now) ended it, or,
    when no thread took it (two run already in this process), once its message ran it."""
    import time

    for _ in range(6000):  # bounded in count, not in time
        if any(x.stage in ("done", "failed") for x in service.state.get_logs(upload)):
            break
        time.sleep(0.01)
    status = service.state.get_deployment(upload).status
    return service.run(upload).status if status == Status.QUEUED else status


def test_a_prune_that_deleted_the_base_before_finish_puts_nothing_broken_live(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upload's base went out of every alias (another deploy) and a prune deleted it
    and the blob a carried row needs, between start and finish: nothing broken goes live."""
    with service_in(monkeypatch, tmp_path) as service:
        first = _upload_rows(service, "site", _rows(BASE), BASE)
        service.finish_upload("site", first)
        service.run(first)
        upload = _upload_rows(service, "site", _rows({**BASE, "index.html": _page("late")}),
                              {**BASE, "index.html": _page("late")})
        other = {"index.html": _page("other")}
        beside = _upload_rows(service, "site", _rows(other), other)
        service.finish_upload("site", beside)
        assert service.run(beside).status == Status.LIVE
        service.prune("site", keep=1, grace=0)
        assert not service.store.has([manifest_key(first)])
        done = service.finish_upload("site", upload, run_now=True)
        status = done.status if done.status != Status.QUEUED else _settle(service, upload)
        assert status == Status.FAILED
        assert alias_of(service, "site") == beside


def test_a_base_the_optimiser_rewrote_after_start_takes_the_normal_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = {**BASE, "big.html": _page("big") * 600}  # past LATER_NOW_BYTES: br after live
    files = {**big, "index.html": _page("after the optimiser")}
    with service_in(monkeypatch, tmp_path) as service:
        first = _upload_rows(service, "site", _rows(big), big)
        service.finish_upload("site", first)
        service.run(first, optimise=False)
        taken_messages(service)
        upload = _upload_rows(service, "site", _rows(files), files)
        assert service.optimise_now(first)
        done = service.finish_upload("site", upload, run_now=True)
        assert done.status == Status.QUEUED  # the bytes it was planned on changed
        assert _settle(service, upload) == Status.LIVE, [
            (x.stage, x.message) for x in service.state.get_logs(upload)]
        written = json.loads(service.store.get(manifest_key(upload)))
        assert sorted(written["files"]) == sorted(files)


def test_a_file_that_became_a_folder_is_gone_from_the_spliced_manifest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A list with folders (mode 040000: `deploy site.tar.gz --server` lists a tarball's
    folder members, remote.py): the file `notes` of the live site is a folder now. The
    normal path publishes no `notes`; a spliced manifest must not keep it."""
    base = {**BASE, "notes": b"a file without an extension"}
    files = {**BASE, "notes/today.html": _page("today")}
    rows = [*_rows(files), {"path": "notes", "mode": "040000"}]
    fast, normal, spliced = _both(tmp_path, monkeypatch, base, rows, files)
    assert b'"notes":' not in normal
    assert fast == normal


def _record(service: Service, upload: str) -> dict[str, Any]:
    done = service.state.get_deployment(upload).to_dict()
    # bytes_stored is left out: the normal path counts a changed file's quick gzip, not the
    # brotli and final gzip its builder makes before live (_later_now); the fast path counts
    # what it stored
    return {k: done[k] for k in ("status", "files", "bytes_in", "blobs_new", "blobs_reused",
                                 "carried", "error", "stage")}


def test_the_fast_path_records_what_the_normal_path_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same change both ways: the deployment's counters and the stages of its log."""
    files = {**BASE, "index.html": _page("counted"), "new.css": b"p { color: blue }\n" * 40,
             "same.html": _page("twice"), "same.txt": _page("twice")}
    del files["tiny.txt"]
    records, stages = [], []
    for fast in (True, False):
        with service_in(monkeypatch, tmp_path / str(fast)) as service:
            link = {"path": "home.html", "mode": "120000", "target": "about/index.html"}
            upload, took = _redeploy(service, [*_rows(BASE), link], BASE,
                                     [*_rows(files), link], files, fast)
            assert took == fast
            records.append(_record(service, upload))
            stages.append(sorted({x.stage for x in service.state.get_logs(upload)}))
    assert stages[0] == stages[1]
    assert records[0] == records[1]


def test_the_fast_path_counts_the_metrics_and_tells_the_endpoints_the_normal_path_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same change both ways, on a site with a notification endpoint for every event:
    the events its endpoint is told, and the metrics counted (stage timings by count)."""
    from pushsite.state.counters import CounterFile

    files = {**BASE, "index.html": _page("told")}
    events, metrics = [], []
    for fast in (True, False):
        home = tmp_path / str(fast)
        with service_in(monkeypatch, home) as service:
            first = _upload_rows(service, "site", _rows(BASE), BASE)
            service.finish_upload("site", first)
            service.run(first)
            service.add_endpoint("site", "https://hooks.example.com/deploys")
            taken_messages(service)
            upload = _upload_rows(service, "site", _rows(files), files)
            if fast:
                assert service.finish_upload("site", upload, run_now=True).status == \
                    Status.LIVE
            else:
                service.finish_upload("site", upload)
                assert service.run(upload).status == Status.LIVE
            events.append([m["notify"]["event"] for m in taken_messages(service) if "notify" in m])
        counts = CounterFile(home / "metrics.db").read()
        metrics.append({k: v for k, v in counts.items()  # bytes stored: see _record
                        if ("_seconds_" not in str(k) or "_count" in str(k))
                        and "bytes_stored" not in str(k)})
    # it never waited in the queue: `started` is its first event, as a redeploy's (verbs.py)
    assert events == [["deployment.started", "deployment.succeeded"],
                      ["deployment.queued", "deployment.started", "deployment.succeeded"]]
    assert metrics[0] == metrics[1]


def test_lying_clients_over_http_put_nothing_live_in_the_fast_path(tmp_path: Path) -> None:
    """Each lie as finish's body with `wait` (what reaches the fast path) or in the list:
    a blob not asked for, a size other than the list's, a cut-off blob, a path out of the
    site, a folder's path named as a file too. Each is refused (4xx) and the page stays."""
    from support.api import Api
    from support.servers import serving

    with serving(tmp_path / "home") as srv:
        srv.create_site("web")
        api = Api(srv, srv.new_token("--name", "ci"))
        first = api.ok("POST", "/sites/web/uploads", 201, json={"files": _rows(BASE)})
        api.ok("POST", f"/sites/web/uploads/{first['upload']}/finish?wait=30",
               content=blob_frames(BASE, first["missing"]))
        page = _page("a lie")

        def finish(body: Any) -> tuple[str, Any]:
            started = api.ok("POST", "/sites/web/uploads", 201,
                             json={"files": _rows({**BASE, "index.html": page})})
            sha = started["missing"][0]
            return started["upload"], api.call(
                "POST", f"/sites/web/uploads/{started['upload']}/finish?wait=30",
                content=body(sha))

        other = _page("not asked for")
        lies = {
            "not asked for": lambda sha: (blob_frames({"i": page}, [sha]) + blob_frames(
                {"o": other}, [hashlib.sha256(other).hexdigest()])),
            "another size": lambda sha: frame_header(sha, len(page) + 1) + page + b"x",
            "cut off": lambda sha: frame_header(sha, len(page)) + page[:-10],
        }
        for lie, body in lies.items():
            upload, answer = finish(body)
            assert answer.status_code == 422, (lie, answer.text)
            assert api.ok("GET", f"/deployments/{upload}")["status"] == "failed", lie
            assert srv.get("web.localhost", "/").content == BASE["index.html"], lie
        for rows in ([*_rows(BASE), file_row("../out.html", page)],
                     [*_rows(BASE), file_row("about", page)] + [{"path": "about",
                                                              "mode": "040000"}]):
            answer = api.call("POST", "/sites/web/uploads", json={"files": rows})
            assert 400 <= answer.status_code < 500, answer.text
        assert srv.get("web.localhost", "/").content == BASE["index.html"]


@pytest.mark.parametrize("between", ["rollback", "promote", "lock", "unlock"])
def test_an_alias_move_between_start_and_finish_ends_as_on_the_normal_path(
        between: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollback, a promote or a lock lands after the upload's list (the live manifest it
    was planned on is no longer production's, or production is locked): the deployment's
    status, production's alias and the manifest end as the normal path's do."""
    older = {**BASE, "index.html": _page("older")}
    files = {**BASE, "index.html": _page("after"), "new.html": _page("new")}
    ends = []
    for fast in (True, False):
        with service_in(monkeypatch, tmp_path / str(fast)) as service:
            ids = []
            for live in (older, BASE):
                ids.append(_upload_rows(service, "site", _rows(live), live))
                service.finish_upload("site", ids[-1])
                assert service.run(ids[-1]).status == Status.LIVE
            if between == "unlock":
                service.lock("site")
            upload = _upload_rows(service, "site", _rows(files), files)
            if between == "rollback":
                service.rollback("site", ids[0])
            elif between == "promote":
                service.promote(ids[0])
            else:
                service.lock("site", between == "lock")
            taken_messages(service)
            if fast:
                status = service.finish_upload("site", upload, run_now=True).status
                assert taken_messages(service) == []  # spliced all the same
            else:
                service.finish_upload("site", upload)
                status = service.run(upload).status
            raw = service.store.get(manifest_key(upload))
            on = ["older", "base", "upload"][[*ids, upload].index(alias_of(service, "site"))]
            ends.append((status, on, raw[raw.index(b',"files":'):]))
    assert ends[0] == ends[1]


def test_a_changed_script_of_600_kb_is_spliced_as_the_normal_path_writes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundled app.js of 600 KB changed (a CI redeploy's usual change): the builder counts
    a JS or CSS file twice against LATER_NOW_BYTES (its brotli and its final gzip), so it
    leaves both for after live; the spliced manifest must be what it writes."""
    script = b"".join(b"function f%d(x) { return x + %d; }\n" % (n, n * 7919 % 100003)
                      for n in range(18_000))
    assert 500_000 < len(script) < 1 << 20
    files = {**BASE, "app.js": script}
    fast, normal, spliced = _both(tmp_path, monkeypatch, BASE, _rows(files), files)
    assert spliced
    assert fast == normal


def test_a_base_with_links_is_spliced_as_the_normal_path_writes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Links kept (to a page kept, one before and one after it in order) and one removed,
    beside a changed page and an added one."""
    links = [{"path": p, "mode": "120000", "target": "about/index.html"}
             for p in ("0-link.html", "about/alias.html", "zzz-link.html")]
    files = {**BASE, "index.html": _page("linked"), "b-new.html": _page("b")}
    fast, normal, spliced = _both(tmp_path, monkeypatch, BASE, [*_rows(files), *links[:2]],
                                  files, base_rows=[*_rows(BASE), *links])
    assert spliced
    assert b'"zzz-link.html"' not in fast and b'"0-link.html"' in fast
    assert fast == normal


_CHILD = """
import sys
from pathlib import Path

from pushsite.config import load_config
from pushsite.service import splicing
from pushsite.service.verbs import Service

upload, marker = sys.argv[1], Path(sys.argv[2])
key = splicing.manifest_key


def held(deployment_id):  # its blobs are stored: stop before its manifest
    if deployment_id == upload:
        marker.write_text("there")
        sys.stdin.read()  # until killed
    return key(deployment_id)


splicing.manifest_key = held
Service(load_config()).finish_upload("site", upload, run_now=True)
"""


def test_a_server_killed_between_the_blobs_and_the_manifest_leaves_a_whole_site(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real child puts the changed blobs (unflushed) and is SIGKILLed before the spliced
    manifest: production stays, and once the lease ran out recovery runs it the normal
    way to a whole live site."""
    import os
    import signal
    import subprocess
    import sys
    import time

    monkeypatch.setenv("PUSHSITE_LEASE", "1")
    files = {**BASE, "index.html": _page("killed early"), "app.js": b"var a = 1;\n" * 300}
    with service_in(monkeypatch, tmp_path) as service:
        first = _upload_rows(service, "site", _rows(BASE), BASE)
        service.finish_upload("site", first)
        service.run(first)
        taken_messages(service)
        upload = _upload_rows(service, "site", _rows(files), files)
        marker = tmp_path / "marker"
        child = subprocess.Popen([sys.executable, "-c", _CHILD, upload, str(marker)],
                                 stdin=subprocess.PIPE)
        try:
            for _ in range(6000):  # until the child is there (bounded in count)
                if marker.exists() or child.poll() is not None:
                    break
                time.sleep(0.01)
            assert marker.exists(), child.returncode
            assert not service.store.has([manifest_key(upload)])
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        assert alias_of(service, "site") == first
        for _ in range(6000):  # until its lease ran out and a recovery took it over
            if upload in service.recover():
                break
            time.sleep(0.01)
        assert {"deployment": upload} in taken_messages(service)
        assert service.run(upload).status == Status.LIVE
        assert alias_of(service, "site") == upload
        written = json.loads(service.store.get(manifest_key(upload)))["files"]
        assert sorted(written) == sorted(files)
        for path, data in files.items():  # each variant it names is stored
            entry = FileEntry.from_json(written[path])
            assert entry.hash == hashlib.sha256(data).hexdigest()
            keys = [entry.key(enc) for enc in ("", *entry.encodings)]
            assert service.store.has(keys) == set(keys), path


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "normal"])
def test_a_held_blob_listed_with_another_size_is_refused(
        fast: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A list naming a blob the server holds, with a size other than its own: no blob is
    sent, so only the list can be checked. Nothing with that size may go live (the edge
    would send a Content-Length its bytes do not have)."""
    from pushsite.errors import PushsiteError

    with service_in(monkeypatch, tmp_path) as service:
        first = _upload_rows(service, "site", _rows(BASE), BASE)
        service.finish_upload("site", first)
        service.run(first)
        taken_messages(service)
        rows = _rows({**BASE, "about/index.html": _page("changed")})
        lie = next(r for r in rows if r["path"] == "index.html")
        lie["size"] = int(str(lie["size"])) + 1000
        try:
            upload = _upload_rows(service, "site", rows, {"about/index.html": _page("changed")})
            done = service.finish_upload("site", upload, run_now=fast)
            status = done.status if fast else service.run(upload).status
        except PushsiteError:
            status = Status.FAILED
        assert status == Status.FAILED
        assert alias_of(service, "site") == first
