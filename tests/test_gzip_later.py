"""Live first on a big deploy: past builder.GZIP_NOW_BYTES of new text a blob goes live
identity only, and its gzip (then brotli) is made after the alias moved (issue 20).

Real SQLite state, the real local store, a real `pushsite serve` answering over HTTP on
127.0.0.1 (with a queue of its own, so its worker leaves the after pass to the test), and
for the crash a real `pushsite deploy` killed with SIGKILL once it printed the live line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import brotli
import httpx
import pytest
from isal import isal_zlib

from pushsite.deploy import builder, handover
from pushsite.deploy.builder import ManifestBuilder, Target
from pushsite.deploy.encode import ASSET_GZIP_LEVEL, GZIP_LEVEL
from pushsite.deploy.later import Later
from pushsite.deploy.optimise import is_pending
from pushsite.model import FileEntry, Manifest, Status, blob_key
from pushsite.service import Service
from pushsite.service.housekeeping import verify
from pushsite.service.worker import run_worker
from pushsite.stores.local import LocalStore
from support.prose import words as _words
from support.servers import Server, start_server
from support.service import accept, log_text, open_service, wait_for


@pytest.fixture
def service() -> Iterator[Service]:
    with open_service() as svc:
        svc.create_site("blog")
        yield svc


@pytest.fixture
def edge(service: Service, tmp_path: Path) -> Iterator[Server]:
    """`pushsite serve` on the test's home; its worker reads another queue, so the
    optimising messages the test's deploys send stay for the test to run."""
    server = start_server(Path(os.environ["PUSHSITE_HOME"]),
                          args=("--queue", f"local://{tmp_path / 'edge-queue'}"))
    try:
        yield server
    finally:
        server.stop()


def _big_site(tag: str, pages: int = 40, size: int = 60_000) -> dict[str, bytes]:
    """~2.4 MB of text (past GZIP_NOW_BYTES), a script, an image, and last a text file
    whose gzip is not worth keeping (random bytes)."""
    files = {f"p{i:02}.html": b"<p>" + tag.encode() + _words(i, size) for i in range(pages)}
    files["app.js"] = b"".join(b"function f%d(a) { return a * %d + '%s'; }\n"
                               % (n, n, tag.encode()) for n in range(3000))
    files["logo.png"] = os.urandom(5000)
    files["zz-noise.txt"] = os.urandom(20_000)
    return files


def _get(server: Server, path: str, accept_encoding: str) -> httpx.Response:
    return server.get("blog.localhost", path, headers={"Accept-Encoding": accept_encoding})


def _rows(manifest: Manifest) -> dict[str, tuple]:
    return {path: (e.hash, e.size, e.type, e.encodings, e.refs)
            for path, e in manifest.files.items()}


def test_a_big_deploy_goes_live_with_identity_and_gets_gzip_after(
        service: Service, edge: Server) -> None:
    files = _big_site("v1")
    deployment = accept(service, "blog", files)
    deployment_id = service.run(deployment.id, optimise=False).id
    assert service.state.get_deployment(deployment_id).status == Status.LIVE
    live = service.manifest(deployment_id)
    assert live.pending == ["br", "gzip"] and is_pending(service.store, deployment_id)
    plain = [p for p, e in live.files.items() if p.endswith(".html") and not e.encodings]
    zipped = [p for p, e in live.files.items() if p.endswith(".html") and e.encodings]
    assert plain and zipped  # the first MiB or so got its gzip in the pool, the rest none
    assert sum(len(files[p]) for p in zipped) <= builder.GZIP_NOW_BYTES
    assert all(set(live.files[p].encodings) == {"gzip"} for p in zipped)  # br: after
    for path in (*plain, "app.js", "zz-noise.txt"):  # (the early thread may have made
        entry = live.files[path]  # some meanwhile: the after pass lists them)
        assert entry.encodings == {} and entry.refs is None
    assert "optimising queued" in log_text(service, deployment_id)

    path = plain[0]
    answer = _get(edge, "/" + path, "gzip")  # identity: its gzip does not exist yet
    assert answer.status_code == 200 and "content-encoding" not in answer.headers
    assert answer.content == files[path]
    answer = _get(edge, "/" + zipped[0], "gzip")
    assert answer.headers["content-encoding"] == "gzip" and answer.content == files[zipped[0]]

    assert service.optimise_now(deployment_id)
    done = service.manifest(deployment_id)
    assert done.pending == [] and not is_pending(service.store, deployment_id)
    for name, entry in done.files.items():
        if name.endswith((".html", ".js")):
            assert set(entry.encodings) == {"gzip", "br"} and entry.refs is None, name
            gz = service.store.get(blob_key(entry.hash, "gzip"))
            assert len(gz) == entry.encodings["gzip"] and gzip.decompress(gz) == files[name]
            br = service.store.get(blob_key(entry.hash, "br"))
            assert brotli.decompress(br) == files[name]
    # the levels a deploy with every variant first stores: isal 2, zlib 6 for a script
    page = done.files[path]
    assert service.store.get(blob_key(page.hash, "gzip")) == isal_zlib.compress(
        files[path], GZIP_LEVEL, wbits=31)
    assert service.store.get(blob_key(done.files["app.js"].hash, "gzip")) == zlib.compress(
        files["app.js"], ASSET_GZIP_LEVEL, wbits=31)
    assert done.files["zz-noise.txt"].encodings == {}  # tried, not worth keeping
    assert done.files["logo.png"].encodings == {}
    assert "optimised: " in log_text(service, deployment_id)

    wait_for("the edge to offer gzip once made",  # it looks again every PENDING_RECHECK
             lambda: _get(edge, "/" + path, "gzip").headers.get("content-encoding") == "gzip")
    answer = _get(edge, "/" + path, "gzip")
    assert answer.content == files[path]  # httpx decoded it
    answer = _get(edge, "/" + path, "br, gzip")
    assert answer.headers["content-encoding"] == "br" and answer.content == files[path]
    answer = _get(edge, "/zz-noise.txt", "br, gzip")
    assert "content-encoding" not in answer.headers and answer.content == files["zz-noise.txt"]
    assert verify(service) == []


def test_a_small_deploy_makes_every_variant_before_live(service: Service) -> None:
    """Under GZIP_NOW_BYTES of text (most sites' redeploys, every small site): gzip in the
    pool and brotli at the end, as before; nothing pending."""
    files = {f"p{i}.html": b"<p>" + _words(i, 40_000) for i in range(12)}  # ~480 KB
    deployment = accept(service, "blog", files)
    deployment_id = service.run(deployment.id, optimise=False).id
    manifest = service.manifest(deployment_id)
    assert manifest.pending == [] and not is_pending(service.store, deployment_id)
    assert all(set(e.encodings) == {"gzip", "br"} for e in manifest.files.values())
    assert "optimising queued" not in log_text(service, deployment_id)


def test_a_redeploy_over_a_base_still_pending_makes_its_gzip(service: Service) -> None:
    """The rows a redeploy takes from a base whose gzip is still to be made (its after pass
    not run: rolled back, or not yet) have none and cannot say whether it was tried: they
    stay wanting it, and the redeploy's own after pass makes it."""
    files = _big_site("v1")
    first = service.run(accept(service, "blog", files).id, optimise=False).id
    plain = [p for p, e in service.manifest(first).files.items()
             if p.endswith(".html") and not e.encodings]
    assert plain
    files["index.html"] = b"<h1>v2</h1>" + _words(5, 3000)
    second = service.run(accept(service, "blog", files).id, optimise=False).id
    manifest = service.manifest(second)
    assert manifest.pending == ["br", "gzip"]
    assert manifest.files[plain[0]].encodings == {}  # carried as it was
    assert not service.optimise_now(first)  # no longer served: stopped, kept pending
    assert service.optimise_now(second)
    done = service.manifest(second)
    assert all(set(done.files[p].encodings) == {"gzip", "br"} for p in plain)
    assert done.pending == [] and verify(service) == []


def test_rows_met_again_without_gzip_are_tried_before_live_when_little(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """A base left its gzip for after (here a low GZIP_NOW_BYTES and nothing made at the
    end); a redeploy carrying those rows, with them under LATER_NOW_BYTES, tries them
    before live: its manifest is final at once (a gzip not worth keeping stays none)."""
    shipped = builder.GZIP_NOW_BYTES, builder.LATER_NOW_BYTES
    monkeypatch.setattr(builder, "GZIP_NOW_BYTES", 50_000)
    monkeypatch.setattr(builder, "LATER_NOW_BYTES", -1)
    files = {f"p{i}.html": b"<p>" + _words(i, 20_000) for i in range(8)}
    files["noise.txt"] = os.urandom(3000)
    first = service.run(accept(service, "blog", files).id, optimise=False).id
    base = service.manifest(first)
    assert base.pending == ["br", "gzip"]
    assert {} in [e.encodings for p, e in base.files.items() if p.endswith(".html")]
    monkeypatch.setattr(builder, "GZIP_NOW_BYTES", shipped[0])  # the bounds as shipped
    monkeypatch.setattr(builder, "LATER_NOW_BYTES", shipped[1])
    files["p0.html"] = b"<p>changed " + _words(3, 2000)
    second = service.run(accept(service, "blog", files).id, optimise=False).id
    manifest = service.manifest(second)
    assert manifest.pending == [] and not is_pending(service.store, second)
    assert all(set(e.encodings) == {"gzip", "br"} for p, e in manifest.files.items()
               if p.endswith(".html"))
    assert manifest.files["noise.txt"].encodings == {}
    assert "optimising queued" not in log_text(service, second)
    assert verify(service) == []


def _deploy_cli(folder: Path, home: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pushsite", "deploy", str(folder),
                             "--site", "blog", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PUSHSITE_HOME": str(home)})


def _live_line(process: subprocess.Popen[bytes]) -> dict:
    """The deployment the CLI prints once live (as JSON, maybe over several lines)."""
    assert process.stdout is not None
    text = b""
    while line := process.stdout.readline():
        text += line
        try:
            return dict(json.loads(text))
        except ValueError:
            continue
    raise AssertionError(f"no live line: {text!r}")


def test_a_kill_between_live_and_the_after_pass_resumes_to_the_same_manifest(
        service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(300):
        (folder / f"p{i}.html").write_bytes(b"<p>" + _words(i, 60_000))
    (folder / "app.js").write_bytes(b"".join(b"var v%d = %d * 7;\n" % (n, n)
                                             for n in range(40_000)))
    (folder / "noise.txt").write_bytes(os.urandom(30_000))

    other = tmp_path / "uninterrupted"  # the same deploy, left to end, in a home of its own
    with monkeypatch.context() as env:
        env.setenv("PUSHSITE_HOME", str(other))
        with open_service() as elsewhere:
            elsewhere.create_site("blog")
    process = _deploy_cli(folder, other)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    with monkeypatch.context() as env:
        env.setenv("PUSHSITE_HOME", str(other))
        with open_service() as elsewhere:
            whole = elsewhere.manifest(json.loads(out)["id"])
    assert whole.pending == []

    process = _deploy_cli(folder, Path(os.environ["PUSHSITE_HOME"]))
    try:
        assert process.stdout is not None
        printed = _live_line(process)
        os.kill(process.pid, signal.SIGKILL)  # its after pass has 18 MB of text to do
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    deployment_id = printed["id"]
    assert printed["status"] == "live"
    assert service.state.get_deployment(deployment_id).status == Status.LIVE
    assert is_pending(service.store, deployment_id)  # killed before the end
    live = service.manifest(deployment_id)
    assert live.pending == ["br", "gzip"]
    assert {} in [e.encodings for p, e in live.files.items() if p.endswith(".html")]
    assert verify(service) == []  # what was live stays whole

    assert run_worker(service, once=True, wait=0.1) >= 1  # the queued message resumes it
    resumed = service.manifest(deployment_id)
    assert resumed.pending == [] and not is_pending(service.store, deployment_id)
    assert _rows(resumed) == _rows(whole)
    assert verify(service) == []


def test_a_carried_row_without_gzip_stays_wanting_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A push or an upload carries an unchanged file's row unread (add_existing): one with
    no gzip, from a base whose after pass has not run, is handed to the after pass as
    wanting it, never carried as final."""
    class _Log:
        def info(self, stage: str, message: str, **fields: object) -> None: ...

        def warning(self, stage: str, message: str, **fields: object) -> None: ...

    monkeypatch.setattr(builder, "LATER_NOW_BYTES", -1)  # everything left for after
    page = b"<p>" + _words(1, 30_000)
    sha = hashlib.sha256(page).hexdigest()
    store = LocalStore(tmp_path / "store")
    try:
        store.put(blob_key(sha), page, {"content-type": "text/html; charset=utf-8"})
        made = ManifestBuilder(Later.now(Target(store)), _Log(), later=True)
        made.add_existing("old.html", FileEntry(sha, len(page), "text/html; charset=utf-8",
                                                {}, "", None))
        made.add_small("new.html", b"<p>" + _words(2, 3000))
        manifest = made.finish("d1", "blog", "", 0.0, strip_top=False)
        assert manifest.pending == ["br", "gzip"] and is_pending(store, "d1")
        assert manifest.files["old.html"].encodings == {}
        left = handover.take("d1")
        assert left is not None
        assert (sha, len(page), "text/html; charset=utf-8", True) in list(left)
    finally:
        store.close()
