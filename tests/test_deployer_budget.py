"""The deployer's in-flight budget: back-pressure on reading, and a longer read-ahead while a
slow store is still opening."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pushsite.deploy.builder import IN_FLIGHT_BYTES, InFlight, ManifestBuilder, Target
from pushsite.deploy.later import Later
from pushsite.errors import BackendUnavailable
from pushsite.stores.local import LocalStore


class _Log:
    def info(self, stage: str, message: str, **fields: object) -> None: ...
    def warning(self, stage: str, message: str, **fields: object) -> None: ...


def test_a_lower_limit_holds_later_acquires_until_bytes_come_back() -> None:
    budget = InFlight(10)
    budget.acquire(8)
    budget.set_limit(5)
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (budget.acquire(2), got.set()))
    waiter.start()
    assert not got.wait(0.2)  # 8 + 2 > 5: waits
    budget.release(8)
    assert got.wait(5)
    waiter.join()


def test_reading_runs_twice_as_far_ahead_while_the_store_opens(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    opened = threading.Event()

    def open_store() -> Target:
        assert opened.wait(5)
        return Target(store)

    builder = ManifestBuilder(Later.start(open_store, name="store-open"), _Log(), workers=2)
    try:
        assert builder._budget._limit == 2 * IN_FLIGHT_BYTES
        opened.set()
        builder.target.get()
        deadline = time.monotonic() + 5  # the callback may run just after get() returns
        while builder._budget._limit != IN_FLIGHT_BYTES and time.monotonic() < deadline:
            time.sleep(0.01)
        assert builder._budget._limit == IN_FLIGHT_BYTES
        ready = ManifestBuilder(Later.now(Target(store)), _Log(), workers=2)
        assert ready._budget._limit == IN_FLIGHT_BYTES
        ready.abort()
    finally:
        builder.abort()
        store.close()


def test_files_are_read_while_the_store_opens_and_stored_once_it_is(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    opened = threading.Event()

    def open_store() -> Target:
        assert opened.wait(5)
        return Target(store)

    builder = ManifestBuilder(Later.start(open_store, name="store-open"), _Log(), workers=2)
    try:
        builder.add_small("site/index.html", b"<p>hello</p>" * 100)
        builder.add_small("site/index2.html", b"<p>hello</p>" * 100)  # the same blob
        assert not builder.target.done()  # reading went on without the store
        opened.set()
        manifest = builder.finish("d1", "blog", "", 0.0)
    finally:
        store.close()
    assert set(manifest.files) == {"index.html", "index2.html"}
    assert builder.counters.blobs_new == 1 and builder.counters.blobs_reused == 1


def test_a_store_that_fails_to_open_fails_the_deploy_with_its_error(tmp_path: Path) -> None:
    def open_store() -> Target:
        raise BackendUnavailable("the store is down")

    builder = ManifestBuilder(Later.start(open_store, name="store-open"), _Log(), workers=2)
    builder.add_small("site/index.html", b"<p>hello</p>")
    with pytest.raises(BackendUnavailable, match="the store is down"):
        builder.finish("d1", "blog", "", 0.0)
