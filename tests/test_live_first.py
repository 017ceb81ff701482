"""Live first, optimise after (issue 20): a deployment goes live with identity and gzip, its
brotli variants are made after the alias moved, and the edge offers br only once they exist.

Real SQLite state, the real local store, the real edge (in process), and for the crash a
real `pushsite deploy` killed with SIGKILL while it optimises.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import brotli
import pytest
from isal import isal_zlib

from pushsite.deploy.encode import ASSET_GZIP_LEVEL, GZIP_LEVEL
from pushsite.deploy.optimise import is_pending
from pushsite.edge import respond as respond_module
from pushsite.edge.respond import Edge
from pushsite.model import Status, blob_key, fast_gzip_key, pending_key
from pushsite.service import Service
from pushsite.service.housekeeping import verify
from pushsite.service.worker import run_worker
from support.prose import words as _words
from support.service import accept, alias_of, log_text, open_service, wait_for


@pytest.fixture
def service() -> Iterator[Service]:
    with open_service() as svc:
        svc.create_site("blog")
        yield svc


def _site(tag: str, pages: int = 4, size: int = 8000) -> dict[str, bytes]:
    files = {f"p{i}.html": b"<p>" + tag.encode() + _words(i, size) for i in range(pages)}
    files["index.html"] = b"<h1>" + tag.encode() + b"</h1>" + _words(99, 2000)
    return files


def _run(service: Service, files: dict[str, bytes], *, optimise: bool) -> str:
    deployment = accept(service, "blog", files)
    return service.run(deployment.id, optimise=optimise).id


def _get(edge: Edge, path: str, accept_encoding: str = "br, gzip") -> tuple[int, dict, bytes]:
    answer = asyncio.run(edge.respond("GET", "blog.localhost", path.encode(), "",
                                      accept_encoding))
    headers = {k.decode(): v.decode() for k, v in answer.headers}
    return answer.status, headers, answer.body


def _decoded(headers: dict, body: bytes) -> bytes:
    coding = headers.get("content-encoding", "")
    if coding == "br":
        return bytes(brotli.decompress(body))
    if coding == "gzip":
        return gzip.decompress(body)
    return body


@pytest.mark.usefixtures("after_only")
def test_live_with_gzip_then_brotli_once_made(service: Service,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(respond_module, "PENDING_RECHECK", 0.0)
    files = _site("v1")
    deployment_id = _run(service, files, optimise=False)
    assert service.state.get_deployment(deployment_id).status == Status.LIVE
    manifest = service.manifest(deployment_id)
    assert manifest.pending == ["br"] and is_pending(service.store, deployment_id)
    entry = manifest.files["p0.html"]
    assert set(entry.encodings) == {"gzip"}
    assert not service.store.has([blob_key(entry.hash, "br")])  # nothing to offer yet
    edge = Edge(service.state, service.store)
    status, headers, body = _get(edge, "/p0.html")
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert _decoded(headers, body) == files["p0.html"]
    assert "optimising queued" in log_text(service, deployment_id)

    assert service.optimise_now(deployment_id)
    optimised = service.manifest(deployment_id)
    assert optimised.pending == [] and not is_pending(service.store, deployment_id)
    assert set(optimised.files["p0.html"].encodings) == {"gzip", "br"}
    status, headers, body = _get(edge, "/p0.html")  # the same edge, its answer was cached
    assert status == 200 and headers["content-encoding"] == "br"
    assert _decoded(headers, body) == files["p0.html"]
    log = log_text(service, deployment_id)
    assert "optimising: making brotli variants" in log and "optimised: " in log
    progress = service.state.get_deployment(deployment_id).progress
    # no server clock time ("at 16:02:11"): the log line has the time
    assert re.search(r"(^|; )optimised in \d+\.\d\ds$", progress), progress
    assert verify(service) == []


@pytest.mark.usefixtures("after_only")
def test_the_edge_never_offers_a_variant_before_it_exists(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests all through the optimising: every answer decodes to the file's bytes, and
    br shows up only once its manifest lists it (and then stays)."""
    monkeypatch.setattr(respond_module, "PENDING_RECHECK", 0.0)
    files = _site("v2", pages=60, size=30_000)
    deployment_id = _run(service, files, optimise=False)
    edge = Edge(service.state, service.store)
    stop = threading.Event()
    seen: list[str] = []
    problems: list[str] = []

    def hammer() -> None:
        while not stop.is_set():
            for i in range(0, 60, 7):
                path = f"/p{i}.html"
                status, headers, body = _get(edge, path)
                coding = headers.get("content-encoding", "")
                if status != 200 or _decoded(headers, body) != files[path[1:]]:
                    problems.append(f"{path}: {status} {coding}")
                seen.append(coding)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        wait_for("a few answers before optimising", lambda: len(seen) > 20)
        assert service.optimise_now(deployment_id)
        count = len(seen)
        wait_for("answers after optimising", lambda: len(seen) > count + 20)
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert seen[0] == "gzip" and seen[-1] == "br"
    first_br = seen.index("br")
    assert set(seen[first_br:]) == {"br"}  # once offered, never taken back


@pytest.mark.usefixtures("after_only")
def test_a_rollback_stops_the_optimising_and_a_promote_resumes_it(service: Service) -> None:
    first = _run(service, _site("v1"), optimise=True)
    assert service.manifest(first).pending == []
    second = _run(service, _site("v2"), optimise=False)
    service.rollback("blog", first)
    assert alias_of(service, "blog") == first
    assert not service.optimise_now(second)
    assert "no longer served" in log_text(service, second)
    assert service.manifest(second).pending == ["br"] and is_pending(service.store, second)

    service.promote(second)  # served again: its optimising is queued again
    assert run_worker(service, once=True, wait=0.1) >= 1
    assert service.manifest(second).pending == []
    assert not is_pending(service.store, second)
    assert verify(service) == []


@pytest.mark.usefixtures("after_only")
def test_a_rollback_while_optimising_stops_it_between_batches(service: Service) -> None:
    first = _run(service, _site("v1"), optimise=True)
    # many 4 MiB batches, so the rollback lands between two of them even on a fast machine
    second = _run(service, _site("v2", pages=2000, size=60_000), optimise=False)
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(service.optimise_now(second)))
    thread.start()
    wait_for("the optimising to start",
             lambda: "making brotli" in log_text(service, second))
    service.rollback("blog", first)
    thread.join(timeout=120)
    assert outcome == [False]
    assert "stopped: it is no longer served" in log_text(service, second)
    # the manifest stands as it was (120 MB of text: gzip past GZIP_NOW_BYTES after too)
    assert service.manifest(second).pending == ["br", "gzip"]
    assert verify(service) == []


def test_a_kill_while_optimising_resumes_from_the_queue(service: Service, tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(500):
        (folder / f"p{i}.html").write_bytes(_words(i, 80_000))
    process = subprocess.Popen([sys.executable, "-m", "pushsite", "deploy", str(folder),
                                "--site", "blog", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        deployment_id = ""
        while time.monotonic() < deadline and process.poll() is None:
            live = service.state.list_deployments("blog", limit=1)
            if live and "making brotli" in log_text(service, live[0].id):
                deployment_id = live[0].id
                break
            time.sleep(0.02)
        assert deployment_id, "the deploy never started optimising"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert process.stdout is not None
        printed = json.loads(process.stdout.read())  # printed once live, before brotli
        assert printed["id"] == deployment_id and printed["status"] == "live"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert service.state.get_deployment(deployment_id).status == Status.LIVE
    assert is_pending(service.store, deployment_id)  # killed before the end
    # 40 MB of text: past builder.GZIP_NOW_BYTES its gzip is left for after too
    assert service.manifest(deployment_id).pending == ["br", "gzip"]
    assert verify(service) == []  # what was live stays whole

    assert run_worker(service, once=True, wait=0.1) >= 1  # the queued message resumes it
    manifest = service.manifest(deployment_id)
    assert manifest.pending == [] and not service.store.has([pending_key(deployment_id)])
    assert all({"gzip", "br"} <= set(entry.encodings) for entry in manifest.files.values())
    assert verify(service) == []


@pytest.mark.parametrize("handed_over", [True, False], ids=["same-process", "resumed"])
@pytest.mark.usefixtures("after_only")
def test_a_big_site_is_optimised_through_its_index(service: Service, handed_over: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """2,100 pages (a manifest with an index by path, spilled past a low threshold): the
    optimiser rewrites manifest and index a row at a time; the list the deploy handed over
    and the long way (another process: nothing handed over) give the same manifest."""
    from pushsite import pathindex
    from pushsite.deploy import entries, handover

    monkeypatch.setattr(entries, "SPILL_FILES", 500)
    monkeypatch.setattr(respond_module, "PENDING_RECHECK", 0.0)
    files = {f"d{i % 9}/p{i}.html": b"<p>" + _words(i, 700 + i % 300) for i in range(2100)}
    files["same.html"] = files["d0/p0.html"]  # a duplicate shares its first copy's variants
    deployment_id = _run(service, files, optimise=False)
    live = service.manifest(deployment_id)
    # 2 MB of text: past builder.GZIP_NOW_BYTES the rest went live identity only
    assert live.pending == ["br", "gzip"]
    assert {"gzip"} in [set(e.encodings) for e in live.files.values()]
    assert {} in [e.encodings for e in live.files.values()]
    if not handed_over:
        assert handover.take(deployment_id) is not None  # as if another process resumed it
    edge = Edge(service.state, service.store)
    coding = _get(edge, "/d5/p5.html")[1].get("content-encoding")
    assert coding == ("gzip" if live.files["d5/p5.html"].encodings else None)

    assert service.optimise_now(deployment_id)
    assert "0 already stored" in log_text(service, deployment_id)
    optimised = service.manifest(deployment_id)
    assert optimised.pending == [] and not is_pending(service.store, deployment_id)
    assert len(optimised.files) == len(files)
    assert all(set(entry.encodings) == {"gzip", "br"} for entry in optimised.files.values())
    assert optimised.files["same.html"] == optimised.files["d0/p0.html"]
    stored = pathindex.PathIndex(lambda s, e: service.store.get(
        pathindex.index_key(deployment_id), s, e))
    assert stored.head["pending"] == [] and len(stored) == len(files)
    assert dict(stored.rows()) == {p: e.to_json() for p, e in optimised.files.items()}
    status, headers, body = _get(edge, "/d5/p5.html")
    assert status == 200 and headers["content-encoding"] == "br"
    assert _decoded(headers, body) == files["d5/p5.html"]
    assert verify(service) == []


def test_a_one_file_change_to_a_big_site_goes_live_with_its_brotli(service: Service) -> None:
    """Little new text on a big site: its brotli is made before live, so the manifest and
    its index are written once, with nothing pending (no rewrite after)."""
    files = {f"d{i % 9}/p{i}.html": b"<p>" + _words(i, 700 + i % 300) for i in range(2100)}
    first = _run(service, files, optimise=True)
    assert service.manifest(first).pending == []
    files["d3/p3.html"] = b"<p>changed " + _words(7777, 5000)
    second = _run(service, files, optimise=False)
    manifest = service.manifest(second)
    assert manifest.pending == [] and not is_pending(service.store, second)
    changed = manifest.files["d3/p3.html"]
    assert set(changed.encodings) == {"gzip", "br"}
    stored = service.store.get(blob_key(changed.hash, "br"))
    assert len(stored) == changed.encodings["br"]
    assert brotli.decompress(stored) == files["d3/p3.html"]
    assert "optimising queued" not in log_text(service, second)
    assert verify(service) == []


@pytest.mark.usefixtures("after_only")
def test_files_above_the_stream_limit_get_their_brotli_beside_the_small_ones(
        service: Service) -> None:
    """Blobs above optimise.LARGE are streamed through brotli, one at a time, while the
    small ones go on in the other workers: every one ends up whole. (Past
    builder.GZIP_NOW_BYTES their gzip is made after live too, in the same stream.)"""
    from pushsite.deploy import optimise as optimise_module

    big = optimise_module.LARGE + 300_000
    files = {f"big{i}.html": b"<p>" + _words(50 + i, big) for i in range(3)}
    files.update({f"p{i}.html": b"<p>" + _words(i, 5000) for i in range(20)})
    files["big-copy.html"] = files["big1.html"]  # waits for its first copy, in the pool
    deployment_id = _run(service, files, optimise=False)
    live = service.manifest(deployment_id)
    assert live.pending == ["br", "gzip"]
    assert all(live.files[f"big{i}.html"].encodings == {} for i in range(3))
    assert service.optimise_now(deployment_id)
    manifest = service.manifest(deployment_id)
    assert manifest.pending == [] and "23 brotli variants made" in log_text(service,
                                                                          deployment_id)
    assert manifest.files["big-copy.html"] == manifest.files["big1.html"]
    for path, entry in manifest.files.items():
        stored = service.store.get(blob_key(entry.hash, "br"))
        assert len(stored) == entry.encodings["br"]
        assert brotli.decompress(stored) == files[path]
        assert gzip.decompress(service.store.get(blob_key(entry.hash, "gzip"))) == files[path]
    assert verify(service) == []


def _with_assets(tag: str) -> dict[str, bytes]:
    files = _site(tag)
    files["app.js"] = b"".join(b"function f%d(a) { return a * %d + '%s'; }\n" % (n, n, tag.encode())
                               for n in range(3000))
    files["site.css"] = b"".join(b".c%d { margin: %dpx; color: #%06x; }\n" % (n, n % 40, n)
                                 for n in range(2000))
    return files


@pytest.mark.usefixtures("after_only")
def test_javascript_is_served_a_quick_gzip_at_once_and_its_harder_one_once_made(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """Live first, a JS or CSS file goes live with isal's gzip (at its own key, named by its
    entry); the optimiser stores zlib's level 6 at the usual key and rewrites the entry, so
    after it the bytes served are those of a deploy with every variant made first. Requests
    all through: every answer is whole (its length as said, its bytes decoding to the file)."""
    monkeypatch.setattr(respond_module, "PENDING_RECHECK", 0.0)
    files = _with_assets("v1")
    deployment_id = _run(service, files, optimise=False)
    manifest = service.manifest(deployment_id)
    assert manifest.pending == ["br", "gzip"] and is_pending(service.store, deployment_id)
    quick: dict[str, bytes] = {}
    final: dict[str, bytes] = {}
    for path in ("app.js", "site.css"):
        entry = manifest.files[path]
        assert entry.refs == {"gzip": fast_gzip_key(entry.hash)}
        quick[path] = isal_zlib.compress(files[path], GZIP_LEVEL, wbits=31)
        final[path] = zlib.compress(files[path], ASSET_GZIP_LEVEL, wbits=31)
        assert entry.encodings == {"gzip": len(quick[path])} and len(final[path]) < len(quick[path])
        assert not service.store.has([blob_key(entry.hash, "gzip")])
    assert manifest.files["p0.html"].refs is None  # other text: isal's gzip is its final one
    edge = Edge(service.state, service.store)
    status, headers, body = _get(edge, "/app.js", "gzip")
    assert status == 200 and headers["content-encoding"] == "gzip" and body == quick["app.js"]
    quick_etag = headers["etag"]  # other bytes than the final gzip's: another strong tag

    stop = threading.Event()
    seen: list[bytes] = []
    problems: list[str] = []

    def hammer() -> None:
        while not stop.is_set():
            for path in ("app.js", "site.css"):
                status, headers, body = _get(edge, "/" + path, "gzip")
                if (status != 200 or int(headers["content-length"]) != len(body)
                        or body not in (quick[path], final[path])
                        or gzip.decompress(body) != files[path]):
                    problems.append(f"{path}: {status} {len(body)}")
                if path == "app.js":
                    seen.append(body)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        wait_for("answers before optimising", lambda: len(seen) > 10)
        assert service.optimise_now(deployment_id)
        wait_for("the final gzip served", lambda: seen[-1] == final["app.js"])
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert set(seen[seen.index(final["app.js"]):]) == {final["app.js"]}  # never taken back
    status, headers, body = _get(edge, "/app.js", "gzip")
    assert body == final["app.js"] and headers["etag"] != quick_etag

    optimised = service.manifest(deployment_id)
    assert optimised.pending == [] and not is_pending(service.store, deployment_id)
    for path in ("app.js", "site.css"):
        entry = optimised.files[path]
        assert entry.refs is None and entry.encodings["gzip"] == len(final[path])
        assert service.store.get(blob_key(entry.hash, "gzip")) == final[path]
        assert "br" in entry.encodings
    assert "2 final gzip variants" in log_text(service, deployment_id)
    status, headers, body = _get(edge, "/site.css", "br, gzip")
    assert headers["content-encoding"] == "br" and _decoded(headers, body) == files["site.css"]
    assert verify(service) == []


@pytest.mark.parametrize("big", [False, True], ids=["small", "indexed"])
@pytest.mark.usefixtures("after_only")
def test_a_redeploy_before_the_optimiser_ran_takes_the_quick_gzip_and_finishes_it(
        service: Service, big: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same script in the next deployment while the first still waits: the second names
    the quick gzip too (from the previous manifest, or the store when a big one's table has
    no refs: entries.StoredBlobs), and its own optimising makes the final one."""
    from pushsite import pathindex
    from pushsite.deploy import entries

    files = _with_assets("v1")
    if big:  # a manifest with an index by path, spilled while built
        monkeypatch.setattr(entries, "SPILL_FILES", 500)
        monkeypatch.setattr(pathindex, "INDEX_MIN_FILES", 500)
        files.update({f"d/p{i}.html": b"<p>" + _words(i, 400) for i in range(600)})
    first = _run(service, files, optimise=False)
    files["index.html"] = b"<h1>changed</h1>" + _words(5, 3000)
    second = _run(service, files, optimise=False)
    manifest = service.manifest(second)
    entry = manifest.files["app.js"]
    assert entry == service.manifest(first).files["app.js"]
    assert entry.refs == {"gzip": fast_gzip_key(entry.hash)}
    assert "gzip" in manifest.pending
    edge = Edge(service.state, service.store)
    status, headers, body = _get(edge, "/app.js", "gzip")
    assert status == 200 and gzip.decompress(body) == files["app.js"]
    assert service.optimise_now(second)
    done = service.manifest(second).files["app.js"]
    assert done.refs is None
    assert service.store.get(blob_key(done.hash, "gzip")) == zlib.compress(
        files["app.js"], ASSET_GZIP_LEVEL, wbits=31)
    assert verify(service) == []


def test_a_little_javascript_goes_live_with_its_final_gzip(service: Service) -> None:
    """Under builder.LATER_NOW_BYTES of text left (a small site, a one-file change) the
    final gzip is made before live like the brotli: nothing pending, no rewrite after."""
    files = _with_assets("v1")
    deployment_id = _run(service, files, optimise=False)
    manifest = service.manifest(deployment_id)
    assert manifest.pending == [] and not is_pending(service.store, deployment_id)
    entry = manifest.files["app.js"]
    assert entry.refs is None and set(entry.encodings) == {"gzip", "br"}
    final = zlib.compress(files["app.js"], ASSET_GZIP_LEVEL, wbits=31)
    assert entry.encodings["gzip"] == len(final)
    assert service.store.get(blob_key(entry.hash, "gzip")) == final
    assert "optimising queued" not in log_text(service, deployment_id)
    assert verify(service) == []
