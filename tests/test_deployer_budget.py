"""The deployer's in-flight budget: back-pressure on reading, and a longer read-ahead while a
slow store is still opening."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

from pushsite.deploy.builder import IN_FLIGHT_BYTES, InFlight, ManifestBuilder
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
    later: Future[tuple[dict, None]] = Future()
    builder = ManifestBuilder(store, _Log(), workers=2, later=later)  # type: ignore[arg-type]
    try:
        assert builder._budget._limit == 2 * IN_FLIGHT_BYTES
        later.set_result(({}, None))
        assert builder._budget._limit == IN_FLIGHT_BYTES
        opened = ManifestBuilder(store, _Log(), workers=2)  # type: ignore[arg-type]
        assert opened._budget._limit == IN_FLIGHT_BYTES
        opened.abort()
    finally:
        builder.abort()
        store.close()
