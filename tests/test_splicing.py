"""The small redeploy's fast path (service/splicing.py): an upload changing a few rows of the
live manifest goes live inside its `finish` with `wait`, its manifest spliced from the live
one's bytes, and that manifest is byte for byte what the normal path (queue message, run,
builder) writes for the same list. Unusual uploads take the normal path."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pushsite.deploy.filelist import frame_header
from pushsite.model import Status, manifest_key
from pushsite.service.verbs import Service
from support.service import alias_of, open_service

_TEXT = "<p>the same paragraph again, and again, so that it compresses</p>\n" * 30
BASE = {
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


def _row(path: str, data: bytes) -> dict[str, object]:
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
            "mode": "100644"}


def _frames(files: dict[str, bytes], missing: list[str]) -> bytes:
    by_hash = {hashlib.sha256(d).hexdigest(): d for d in files.values()}
    return b"".join(frame_header(h, len(by_hash[h])) + by_hash[h] for h in missing)


def _upload(service: Service, site: str, files: dict[str, bytes]) -> str:
    upload, missing = service.start_upload(site, [_row(p, d) for p, d in files.items()],
                                           create=True)
    if missing:
        service.receive_blobs(site, upload, io.BytesIO(_frames(files, missing)))
    return upload


def _messages(service: Service) -> list[dict[str, Any]]:
    """Every message waiting in the home's queue (taken: the test ends after)."""
    out = []
    while (item := service.queue.receive()) is not None:
        out.append(item.body)
        service.queue.ack(item)
    return out


@contextmanager
def _home(monkeypatch: pytest.MonkeyPatch, home: Path) -> Iterator[Service]:
    monkeypatch.setenv("PUSHSITE_HOME", str(home))
    with open_service() as service:
        yield service


def _deployed(service: Service, site: str, files: dict[str, bytes], fast: bool) -> bytes:
    """Deploy BASE to `site` the normal way, then `files` by the fast path or the normal
    one; the second deployment's manifest."""
    first = _upload(service, site, BASE)
    service.finish_upload(site, first)
    service.run(first)
    _messages(service)
    upload = _upload(service, site, files)
    if fast:
        done = service.finish_upload(site, upload, run_now=True)
        assert done.status == Status.LIVE, done.error
        assert _messages(service) == []  # no queue message: it went live in the request
        lines = [x.message for x in service.state.get_logs(upload)]
        assert any("deploying it now" in line for line in lines), lines
    else:
        service.finish_upload(site, upload)
        assert service.run(upload).status == Status.LIVE
    assert alias_of(service, site) == upload
    return service.store.get(manifest_key(upload))


CHANGES = {
    "one page": {**BASE, "index.html": b"<html>changed " + _TEXT.encode() + b"</html>"},
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
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_spliced_manifest_is_the_one_the_normal_path_writes(
        change: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = CHANGES[change]
    with _home(monkeypatch, tmp_path / "fast") as service:
        fast = _deployed(service, "site", files, fast=True)
    with _home(monkeypatch, tmp_path / "normal") as service:
        normal = _deployed(service, "site", files, fast=False)
    cut, other_cut = fast.index(b',"files":'), normal.index(b',"files":')
    assert fast[cut:] == normal[other_cut:]
    head, other = json.loads(fast[:cut] + b"}"), json.loads(normal[:other_cut] + b"}")
    assert {**head, "deployment": "", "created": 0} == {**other, "deployment": "",
                                                        "created": 0}
    assert sorted(json.loads(fast)["files"]) == sorted(p for p in files)
