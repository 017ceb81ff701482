"""A least-recently-used cache bounded by bytes, for manifests and blobs the edge serves.

Only immutable things go in (a manifest by deployment id, a blob by hash and coding), so an
entry never goes stale and there is nothing to invalidate; eviction is by size alone.
A lock guards it: the event loop reads it, and the deploy worker thread warms it with the
manifests it builds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """Keeps the most recently used values whose sizes add up to at most `capacity` bytes."""

    def __init__(self, capacity: int, max_item: int | None = None) -> None:
        self.capacity = capacity
        # One value may not crowd out everything else: by default at most an eighth.
        self.max_item = capacity // 8 if max_item is None else max_item
        self.used = 0
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, value: V, size: int) -> bool:
        """Insert or refresh a value; False (and nothing kept) when it is over `max_item`."""
        if size > self.max_item:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= old[1]
            self._items[key] = (value, size)
            self.used += size
            while self.used > self.capacity:
                _, (_, evicted) = self._items.popitem(last=False)
                self.used -= evicted
        return True

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0
