"""A small bounded memo for the request path: host parsing, routing plans, encodings, answers.

Least recently used entries go first, so a burst of new keys (a crawler walking every path)
evicts what is cold and keeps what every request hits; a cache that cleared itself when full
dropped the hot entries with the cold. An optional weight per entry (an answer's bytes) is
bounded too. No lock: each use is one event loop's or one thread's, and the single dict
operations it makes stay consistent under the GIL; a race costs a miss, never a wrong value.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar, overload

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")


class BoundedCache(Generic[K, V]):
    """At most `limit` entries, and at most `max_weight` total weight when that is given."""

    __slots__ = ("limit", "max_weight", "weight", "_items")

    def __init__(self, limit: int, max_weight: int | None = None) -> None:
        if limit < 1:
            raise ValueError("a bounded cache holds at least one entry")
        self.limit = limit
        self.max_weight = max_weight
        self.weight = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: K) -> bool:
        return key in self._items

    @overload
    def get(self, key: K) -> V | None: ...

    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: object = None) -> object:
        """The value (now the most recently used), or `default`."""
        try:
            value = self._items[key][0]
            self._items.move_to_end(key)
        except KeyError:
            return default
        return value

    def put(self, key: K, value: V, weight: int = 0) -> V:
        """Keep a value (returned), evicting the least recently used beyond the bounds.

        A value heavier than `max_weight` on its own is not kept."""
        items = self._items
        old = items.pop(key, None)
        if old is not None:
            self.weight -= old[1]
        if self.max_weight is not None and weight > self.max_weight:
            return value
        items[key] = (value, weight)
        self.weight += weight
        while len(items) > self.limit or (
            self.max_weight is not None and self.weight > self.max_weight
        ):
            try:
                _, (_, evicted) = items.popitem(last=False)
            except KeyError:
                break
            self.weight -= evicted
        return value

    def pop(self, key: K) -> None:
        """Forget one key (absent: nothing happens)."""
        old = self._items.pop(key, None)
        if old is not None:
            self.weight -= old[1]

    def clear(self) -> None:
        self._items.clear()
        self.weight = 0
