"""Text that compresses like prose, for tests of the compressed variants."""

from __future__ import annotations

import random


def words(seed: int, size: int) -> bytes:
    """`size` bytes of random words from a vocabulary: compresses, but not trivially."""
    rng = random.Random(seed)
    vocabulary = [f"w{rng.randrange(10**6)}" for _ in range(800)]
    out: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(vocabulary)
        out.append(word)
        length += len(word) + 1
    return (" ".join(out)).encode()[:size]
