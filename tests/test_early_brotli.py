"""Brotli during the deploy (deploy/early.py): made from the bytes the deploy holds on a
low-priority thread, stored and recorded as the after pass would, and only the rest left to
the after pass (issue 20).

How much the thread makes before live depends on the machine, so the assertions hold for
any split: each text blob gets its br exactly once (made early, at the end, or after), every
br the manifest lists is stored whole, and the after pass takes exactly what is left.
Real SQLite state, the real local store and the real edge (in process).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import brotli
import pytest

from pushsite.deploy import builder as builder_module
from pushsite.deploy import early, entries, handover
from pushsite.deploy.builder import ManifestBuilder, Target
from pushsite.deploy.early import EarlyBrotli
from pushsite.deploy.later import Later
from pushsite.deploy.optimise import is_pending
from pushsite.edge import respond as respond_module
from pushsite.edge.respond import Edge
from pushsite.model import Manifest, blob_key
from pushsite.service import Service
from pushsite.service.housekeeping import verify
from pushsite.stores.local import LocalStore
from support.prose import words as _words
from support.service import accept, log_text, open_service


@pytest.fixture
def service() -> Iterator[Service]:
    with open_service() as svc:
        svc.create_site("blog")
        yield svc


class _Log:
    def info(self, stage: str, message: str, **fields: object) -> None: ...
    def warning(self, stage: str, message: str, **fields: object) -> None: ...


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _every_br_whole(service: Service, manifest: Manifest, files: dict[str, bytes]) -> None:
    """Every br the manifest lists is stored, its recorded size, decoding to the file."""
    for path, entry in manifest.files.items():
        if "br" in entry.encodings:
            stored = service.store.get(blob_key(entry.hash, "br"))
            assert len(stored) == entry.encodings["br"], path
            assert brotli.decompress(stored) == files[path], path


def test_a_small_site_goes_live_with_every_brotli_and_nothing_left_after(
        service: Service) -> None:
    files = {f"p{i}.html": b"<p>" + _words(i, 6000) for i in range(40)}
    files["copy.html"] = files["p3.html"]  # a duplicate shares its first copy's variants
    deployment = accept(service, "blog", files)
    deployment_id = service.run(deployment.id, optimise=False).id
    manifest = service.manifest(deployment_id)
    assert manifest.pending == [] and not is_pending(service.store, deployment_id)
    assert all(set(e.encodings) == {"gzip", "br"} for e in manifest.files.values())
    assert manifest.files["copy.html"] == manifest.files["p3.html"]
    _every_br_whole(service, manifest, files)
    log = log_text(service, deployment_id)
    assert "optimised: 40 brotli variants made before live" in log
    assert "optimising queued" not in log  # no marker, no message, no rewrite after
    assert handover.take(deployment_id) is None
    edge = Edge(service.state, service.store)
    answer = asyncio.run(edge.respond("GET", "blog.localhost", b"/p7.html", "", "br, gzip"))
    assert dict(answer.headers)[b"content-encoding"] == b"br"
    assert brotli.decompress(answer.body) == files["p7.html"]
    assert verify(service) == []


class _EveryOther(EarlyBrotli):
    """The early thread, offered every other blob only (the rest dropped, as when full)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._offers = itertools.count()

    def offer(self, sha: str, data: bytes, content_type: str, fresh: bool = False) -> bool:
        return next(self._offers) % 2 == 0 and super().offer(sha, data, content_type, fresh)


def test_what_the_deploy_made_early_is_listed_by_the_after_pass_with_the_rest(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big site (spilled table, index by path) with the rest left for after: nothing the
    early thread made is listed at live (that cost a flush of the store before live), the
    whole list and the thread are handed over, and the after pass lists every br, counting
    what the thread made as made after live.

    The thread is offered only every other blob, so the after pass has work however fast
    the thread runs (on an idle core it could keep up with the whole deploy, and under
    `nice -n 19` it once outranked it); how many of those it makes is the machine's
    business."""
    monkeypatch.setattr(builder_module, "LATER_NOW_BYTES", -1)  # nothing made at the end
    monkeypatch.setattr(builder_module, "GZIP_NOW_BYTES", 1 << 30)  # every gzip before live
    monkeypatch.setattr(early, "EarlyBrotli", _EveryOther)
    monkeypatch.setattr(entries, "SPILL_FILES", 500)
    monkeypatch.setattr(respond_module, "PENDING_RECHECK", 0.0)
    files = {f"d{i % 7}/p{i}.html": b"<p>" + _words(i, 900 + i % 500) for i in range(2100)}
    deployment = accept(service, "blog", files)
    deployment_id = service.run(deployment.id, optimise=False).id
    manifest = service.manifest(deployment_id)
    assert manifest.pending == ["br"] and is_pending(service.store, deployment_id)
    assert all(set(e.encodings) == {"gzip"} for e in manifest.files.values())
    left = handover.take(deployment_id)
    assert left is not None and left.early is not None
    handover.leave(deployment_id, left)  # put back for the optimiser
    assert {sha for sha, _, _, _ in left} == {_sha(data) for data in files.values()}

    assert service.optimise_now(deployment_id)
    log = log_text(service, deployment_id)
    assert f"optimised: {len(files)} brotli variants made (" in log
    optimised = service.manifest(deployment_id)
    assert optimised.pending == [] and not is_pending(service.store, deployment_id)
    assert all(set(e.encodings) == {"gzip", "br"} for e in optimised.files.values())
    _every_br_whole(service, optimised, files)
    assert verify(service) == []


class _Gated(EarlyBrotli):
    """The early thread, held in its first put (the store it asks for) until `gate` opens,
    or until it is stopped (then it finishes the blob in hand, as ever)."""

    gate = threading.Event()

    def __init__(self, store: Any, capacity: int = early.CAPACITY) -> None:
        def held_store() -> Any:
            _Gated.gate.wait()
            return store()

        super().__init__(held_store, capacity)

    def stop(self) -> tuple[dict[str, int], dict[str, bytes]]:
        _Gated.gate.set()
        return super().stop()


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Brotli left for after, and the deploy's early thread held in its first put (_Gated)
    until the test opens the gate; opened at the end whatever happened, so none waits on."""
    monkeypatch.setattr(builder_module, "LATER_NOW_BYTES", -1)
    monkeypatch.setattr(early, "EarlyBrotli", _Gated)
    _Gated.gate.clear()
    yield _Gated.gate
    _Gated.gate.set()


def _early_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "early-brotli"]


def test_the_early_thread_goes_on_after_live_and_the_after_pass_takes_what_it_made_and_held(
        service: Service, gated: threading.Event) -> None:
    """With brotli left for after, the deploy does not stop its early thread before live: it
    goes on with its queue and is handed to the after pass with the list, which stops it,
    counts what it made as made after live and compresses what it still held. Here the
    thread is held in its first blob's put until after live, so every br is made after."""
    files = {f"p{i}.html": b"<p>" + _words(i, 8000 + i) for i in range(20)}
    deployment_id = service.run(accept(service, "blog", files).id, optimise=False).id
    assert _early_threads()  # live, and still going
    manifest = service.manifest(deployment_id)
    assert manifest.pending == ["br"]
    assert all(set(e.encodings) == {"gzip"} for e in manifest.files.values())
    left = handover.take(deployment_id)
    assert left is not None and left.early is not None and len(left) == len(files)
    handover.leave(deployment_id, left)
    gated.set()
    assert service.optimise_now(deployment_id)
    assert not _early_threads()
    assert f"optimised: {len(files)} brotli variants made (" in log_text(service, deployment_id)
    optimised = service.manifest(deployment_id)
    assert all(set(e.encodings) == {"gzip", "br"} for e in optimised.files.values())
    _every_br_whole(service, optimised, files)
    assert verify(service) == []


def test_an_early_thread_nobody_takes_ends_once_its_queue_is_made(
        service: Service, gated: threading.Event) -> None:
    """A deploy whose after pass runs elsewhere (a server takes the queued message): the
    thread handed over makes what it holds and ends; the manifest is untouched."""
    files = {f"p{i}.html": b"<p>" + _words(i, 8000 + i) for i in range(6)}
    deployment_id = service.run(accept(service, "blog", files).id, optimise=False).id
    (thread,) = _early_threads()  # live, and still going
    gated.set()
    thread.join()
    assert service.manifest(deployment_id).pending == ["br"]
    service.store.flush()
    assert service.store.has(blob_key(_sha(data), "br") for data in files.values()) == {
        blob_key(_sha(data), "br") for data in files.values()}


@pytest.mark.usefixtures("gated")
def test_closing_the_service_stops_an_early_thread_left_for_an_after_pass() -> None:
    """A CLI deploy whose after pass a running server takes closes its service with the
    thread still going: it is stopped first, so nothing writes into a closed store."""
    files = {f"p{i}.html": b"<p>" + _words(i, 8000 + i) for i in range(6)}
    with open_service() as svc:
        svc.create_site("blog")
        svc.run(accept(svc, "blog", files).id, optimise=False)
        assert _early_threads()  # live, and still going
    assert not _early_threads()


def test_the_queue_drops_rather_than_waits_and_hands_back_what_it_did_not_make(
        tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    try:
        queue = EarlyBrotli(lambda: store, capacity=300_000)
        assert not queue.offer("f" * 64, b"x" * 300_001, "text/html")  # over: dropped
        blobs = {_sha(data): data for data in (_words(i, 50_000) for i in range(5))}
        assert all(queue.offer(sha, data, "text/html") for sha, data in blobs.items())
        made, left = queue.stop()
        assert not queue.offer("e" * 64, b"<p>late</p>" * 100, "text/html")  # stopped
        assert set(made) | set(left) == set(blobs) and not set(made) & set(left)
        assert all(left[sha] == blobs[sha] for sha in left)
        store.flush()
        for sha, size in made.items():
            stored = store.get(blob_key(sha, "br"))
            assert len(stored) == size and brotli.decompress(stored) == blobs[sha]
        assert not store.has(blob_key(sha, "br") for sha in left)
    finally:
        store.close()


def test_the_thread_takes_the_largest_first_and_a_larger_offer_displaces_the_smallest(
        tmp_path: Path) -> None:
    """Getting the GIL back after each blob is what limits the thread, so it makes the
    largest it holds first, and a full queue drops its smallest for a larger offer; a blob
    above EARLY_MAX, or one no smaller blob can make room for, is dropped. The thread is
    held in its first put (the store it asks for) while the queue is filled."""
    store = LocalStore(tmp_path)
    asked, gate = threading.Event(), threading.Event()

    def held_store() -> LocalStore:
        asked.set()
        gate.wait()
        return store

    blobs = {name: _words(n, size) for n, (name, size) in enumerate(
        [("first", 3_000), ("small", 20_000), ("smaller", 15_000), ("mid", 40_000),
         ("big", 45_000), ("late", 20_000), ("huge", early.EARLY_MAX + 1)])}
    sha = {name: _sha(data) for name, data in blobs.items()}
    try:
        queue = EarlyBrotli(held_store, capacity=100_000)
        assert queue.offer(sha["first"], blobs["first"], "text/html")
        assert asked.wait(30)  # the thread holds "first": the queue is empty
        for name in ("small", "smaller", "mid"):  # 75,000 bytes: all fit
            assert queue.offer(sha[name], blobs[name], "text/html")
        assert queue.offer(sha["big"], blobs["big"], "text/html")  # smaller, then small go
        assert not queue.offer(sha["late"], blobs["late"], "text/html")  # mid, big stay
        assert not queue.offer(sha["huge"], blobs["huge"], "text/html")
        gate.set()
        while not store.has([blob_key(sha["mid"], "br")]):  # made last
            time.sleep(0.01)
        made, left = queue.stop()
        assert list(made) == [sha["first"], sha["big"], sha["mid"]] and left == {}
        assert not store.has(blob_key(sha[name], "br") for name in ("small", "smaller"))
    finally:
        gate.set()
        store.close()


def _nice_of(tid: int) -> int:
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def test_the_early_thread_never_outranks_the_deploy(tmp_path: Path) -> None:
    """Started by a deploy already at nice 15 (a suite or a CI job run under `nice`), the
    thread stays at 15: at nice 10 it outranked the deploy and made every brotli before
    live (root may lower a nice). At nice 0 it goes to early.NICE."""
    store = LocalStore(tmp_path)
    seen: dict[int, int] = {}
    try:
        for start in (0, early.NICE + 5):
            queue = EarlyBrotli(lambda: store)
            data = _words(start, 5000)

            def offer(queue: EarlyBrotli = queue, data: bytes = data,
                      start: int = start) -> None:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), start)  # root
                assert queue.offer(_sha(data), data, "text/html")

            thread = threading.Thread(target=offer)
            thread.start()
            thread.join()
            while not store.has([blob_key(_sha(data), "br")]):  # made: the thread waits on
                time.sleep(0.01)
            (worker,) = [t for t in threading.enumerate() if t.name == "early-brotli"]
            assert worker.native_id is not None
            seen[start] = _nice_of(worker.native_id)
            queue.stop()
    finally:
        store.close()
    assert seen == {0: early.NICE, early.NICE + 5: early.NICE + 5}


def test_a_deploy_that_stops_midway_stops_the_early_thread(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    try:
        builder = ManifestBuilder(Later.now(Target(store)), _Log(), later=True)
        for i in range(30):
            builder.add_small(f"site/p{i}.html", _words(i, 20_000))
        builder.drain()  # every batch stored: their text was offered, the thread started
        assert any(t.name == "early-brotli" for t in threading.enumerate())
        builder.abort()  # as a deadline, a cancel or a bad bundle does
        assert not any(t.name == "early-brotli" for t in threading.enumerate())
    finally:
        store.close()


def test_every_variant_first_has_no_early_thread(tmp_path: Path) -> None:
    """Without `later` (PUSHSITE_LIVE_FIRST=0) brotli is made in the pool, as before."""
    store = LocalStore(tmp_path)
    try:
        builder = ManifestBuilder(Later.now(Target(store)), _Log(), later=False)
        assert builder._early is None
        builder.add_small("site/p.html", _words(1, 20_000))
        manifest = builder.finish("d1", "blog", "", 0.0)
        assert set(manifest.files["p.html"].encodings) == {"gzip", "br"}
    finally:
        store.close()


def test_capacity_zero_leaves_everything_to_the_after_pass(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(early, "CAPACITY", 0)
    monkeypatch.setattr(builder_module, "LATER_NOW_BYTES", -1)
    files = {f"p{i}.html": b"<p>" + _words(i, 6000) for i in range(10)}
    deployment_id = service.run(accept(service, "blog", files).id, optimise=False).id
    manifest = service.manifest(deployment_id)
    assert manifest.pending == ["br"]
    assert all(set(e.encodings) == {"gzip"} for e in manifest.files.values())
    assert "before live" not in log_text(service, deployment_id)
