"""A request body handed to a worker thread through a short queue, filled by the event loop.

Why: a PUT of 70 MB of blobs read through `anyio.from_thread.run` (one round trip through the
event loop per chunk, and uvicorn pauses the socket until each chunk is taken) ran at about
60 MB/s on loopback, a third of what storing the blobs costs. Here a task on the event loop
moves chunks into a queue as they come, so the socket keeps flowing while the thread works;
a full queue holds the task back (back-pressure), so memory stays at most DEPTH chunks.
"""

from __future__ import annotations

import io
import queue
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
from starlette.requests import ClientDisconnect

from pushsite.errors import BundleRejected, BundleTooLarge

DEPTH = 32  # chunks waiting for the thread (uvicorn hands over at most 256 KiB at a time)
_FULL_PAUSE = 0.002  # seconds the event loop's task waits for room in a full queue
_GONE_CHECK = 1.0  # seconds between the thread's looks at whether the pump is still there
T = TypeVar("T")


class BodyPipe(io.RawIOBase):
    """The body as a blocking file for one worker thread; `run` starts both sides."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(DEPTH)
        self._buffer = b""
        self._limit = limit
        self._total = 0
        self._done = False
        self._stopped = False  # the reader gave up: the pump stops filling
        self._pumped = False  # the pump ended (or was cancelled): nothing more will come

    async def run(self, chunks: AsyncIterator[bytes], work: Callable[[BodyPipe], T],
                  limiter: anyio.CapacityLimiter | None = None) -> T:
        """`work(self)` on a worker thread while the body is pumped in; its result, or what
        it raised (a body cut off reaches it as BundleRejected)."""
        outcome: list[Any] = []
        async with anyio.create_task_group() as group:
            group.start_soon(self._pump, chunks)
            try:
                outcome.append(await anyio.to_thread.run_sync(work, self, limiter=limiter))
            except BaseException as exc:  # noqa: BLE001 - raised below, outside the group
                outcome.append(exc)
            finally:
                self._stopped = True
                group.cancel_scope.cancel()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]  # type: ignore[no-any-return]

    async def _pump(self, chunks: AsyncIterator[bytes]) -> None:
        item: bytes | BaseException | None = None
        try:
            try:
                async for chunk in chunks:
                    if chunk and not await self._put(chunk):
                        return
            except ClientDisconnect:
                item = BundleRejected("the upload was cut off before its end; send it again")
            await self._put(item)
        finally:
            self._pumped = True

    async def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stopped:
            try:
                self._queue.put_nowait(item)
                return True
            except queue.Full:
                await anyio.sleep(_FULL_PAUSE)
        return False

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer and not self._done:
            try:
                item = self._queue.get(timeout=_GONE_CHECK)
            except queue.Empty:
                if self._pumped and self._queue.empty():  # cancelled before its end mark
                    item = BundleRejected("the upload stopped before its end; send it again")
                else:
                    continue
            if item is None:
                self._done = True
                break
            if isinstance(item, BaseException):
                self._done = True
                raise item
            self._total += len(item)
            if self._total > self._limit:
                raise BundleTooLarge(f"the upload is over {self._limit} bytes, more than any "
                                     "bundle this server accepts (see max_total_mb)")
            self._buffer = item
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size
