"""A value another thread is still making: a deploy reads and hashes its first files while
the store opens (an S3 client takes ~0.2 s to start), and waits for the store only where it
first needs it, by calling `get()` there."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class Later(Generic[T]):
    """A value being made (`Later.start`) or already made (`Later.now`)."""

    def __init__(self, future: Future[T]) -> None:
        self._future = future

    @classmethod
    def now(cls, value: T) -> Later[T]:
        """A value that is already there: `get()` never waits."""
        future: Future[T] = Future()
        future.set_result(value)
        return cls(future)

    @classmethod
    def start(cls, make: Callable[[], T], name: str) -> Later[T]:
        """Run `make` on a thread of its own; `get()` returns its result or raises its error."""
        future: Future[T] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = make()
            except BaseException as exc:  # handed to whoever calls get()
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=run, name=name).start()
        return cls(future)

    def done(self) -> bool:
        return self._future.done()

    def get(self) -> T:
        """The value, once made (waits for it); raises what making it raised."""
        return self._future.result()

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the value is made (at once when it already is)."""
        self._future.add_done_callback(lambda _: callback())
