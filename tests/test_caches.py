"""caches.BoundedCache: least recently used entries go first, by count and by weight."""

from __future__ import annotations

import pytest

from pushsite.caches import BoundedCache


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: BoundedCache[str, int] = BoundedCache(3)
    for number, key in enumerate("abc"):
        cache.put(key, number)
    assert cache.get("a") == 0  # now the most recently used
    cache.put("d", 3)
    assert "b" not in cache and len(cache) == 3
    assert [cache.get(k) for k in "acd"] == [0, 2, 3]


def test_a_burst_of_new_keys_keeps_the_hot_one() -> None:
    cache: BoundedCache[int, str] = BoundedCache(100)
    cache.put(-1, "hot")
    for key in range(10_000):  # a crawler walking every path
        cache.put(key, "cold")
        assert cache.get(-1) == "hot"
    assert len(cache) == 100


def test_none_is_a_value_and_a_default_tells_a_miss() -> None:
    cache: BoundedCache[str, str | None] = BoundedCache(2)
    cache.put("no site", None)
    missing = object()
    assert cache.get("no site", missing) is None
    assert cache.get("other", missing) is missing
    assert cache.get("other") is None


def test_weight_is_bounded_and_replacing_a_key_returns_its_weight() -> None:
    cache: BoundedCache[str, bytes] = BoundedCache(100, max_weight=10)
    cache.put("a", b"aaaa", weight=4)
    cache.put("b", b"bbbb", weight=4)
    cache.put("a", b"aa", weight=2)  # replaced: 2 + 4
    assert cache.weight == 6
    cache.put("c", b"cccccc", weight=6)  # 12 > 10: the least recently used ("b") goes
    assert "b" not in cache and cache.weight == 8
    cache.put("huge", b"x" * 11, weight=11)  # heavier than the bound alone: not kept
    assert "huge" not in cache and cache.weight == 8
    cache.pop("a")
    cache.pop("absent")
    assert cache.weight == 6 and len(cache) == 1
    cache.clear()
    assert cache.weight == 0 and len(cache) == 0


def test_put_returns_the_value_it_keeps() -> None:
    cache: BoundedCache[str, list[int]] = BoundedCache(1)
    value = [1]
    assert cache.put("k", value) is value
    assert cache.get("k") is value


def test_an_empty_bound_is_refused() -> None:
    with pytest.raises(ValueError):
        BoundedCache(0)
