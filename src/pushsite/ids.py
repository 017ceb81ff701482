"""Deployment ids: sort by time, fit in a DNS label, never contain "--".

26 characters of lowercase Crockford base32: 48 bits of milliseconds, then 80 bits that are
random for the first id of a millisecond and counted up after it, so ids made by one process
are strictly increasing even within one millisecond (a later accept always sorts later).
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(now: float | None = None) -> str:
    """A new id, larger than any this process made before."""
    global _last_ms, _last_rand
    ms = int((time.time() if now is None else now) * 1000)
    with _lock:
        if ms <= _last_ms:
            ms = _last_ms
            rand = _last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1  # leave room to count up
        _last_ms, _last_rand = ms, rand
    return _encode(ms, 10) + _encode(rand, 16)


def id_time(deployment_id: str) -> float:
    """The creation time (seconds since the epoch) an id carries."""
    ms = 0
    for char in deployment_id[:10]:
        ms = ms * 32 + _ALPHABET.index(char)
    return ms / 1000


def looks_like_id(text: str) -> bool:
    return len(text) == 26 and all(c in _ALPHABET for c in text)


MIN_PREFIX = 4  # characters a deployment's id may be shortened to when typed, as git allows
SHORT_ID = 7  # characters a listing shows at least, as git does


def could_prefix(text: str) -> bool:
    """Whether `text` could start a deployment's id."""
    return 0 < len(text) <= 26 and all(c in _ALPHABET for c in text)
