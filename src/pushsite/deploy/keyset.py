"""Compact sets for a deploy of up to the file limit (issue 20: memory flat in files).

A Python set of 200,000 paths costs ~22 MB (a str of ~70 bytes each, plus the table), and a
dict of 200,000 raw digests about as much. These hold a 64-bit key per member in one flat
array instead (~16 bytes a member at most, the table at most half full): a key found says
"maybe", and the caller confirms exactly where the truth is kept (`SeenPaths` in a spool of
the paths' text, the builder in the store). Different members share a key about once in
2**64 / n tries; a confirmation then costs a little time, never a wrong answer.
"""

from __future__ import annotations

import tempfile
from array import array
from collections.abc import Callable
from typing import BinaryIO

_START = 1 << 12  # slots at first; doubled whenever the table would be half full
_MASK64 = (1 << 64) - 1
_SPOOL_AFTER = 1 << 20  # bytes of path text kept in memory before they go to a temp file
_SCAN = 1 << 20  # bytes of spooled text read at a time when confirming a path
_SET_UPTO = 8192  # paths held in a plain set (faster) before they move to keys and text


class KeySet:
    """A set of 64-bit keys: open addressing with linear probing in an array('Q').

    0 marks a free slot, so the key 0 is stored as 1 (one more shared key, as likely as any)."""

    def __init__(self) -> None:
        self._table = array("Q", bytes(8 * _START))
        self._mask = _START - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: int) -> bool:
        key = (key & _MASK64) or 1
        table, mask = self._table, self._mask
        i = key & mask
        while True:
            found = table[i]
            if found == key:
                return True
            if not found:
                return False
            i = (i + 1) & mask

    def add(self, key: int) -> bool:
        """Add a key; True when it was there already (added before, or shared)."""
        key = (key & _MASK64) or 1
        table, mask = self._table, self._mask
        i = key & mask
        while True:
            found = table[i]
            if found == key:
                return True
            if not found:
                break
            i = (i + 1) & mask
        table[i] = key
        self._count += 1
        if self._count * 2 > mask:
            self._grow()
        return False

    def _grow(self) -> None:
        old = self._table
        size = len(old) * 2
        table = self._table = array("Q", bytes(8 * size))
        mask = self._mask = size - 1
        for key in old:
            if key:
                i = key & mask
                while table[i]:
                    i = (i + 1) & mask
                table[i] = key


class SeenPaths:
    """The paths a bundle named so far, exact: keys in memory, the text in a spool.

    The first `_SET_UPTO` paths are a plain set (a set costs ~0.3 us a path, this ~1.5).
    A path's key is Python's own string hash (SipHash, keyed per process), which the str
    caches. Only a key already seen sends a look-up to the spool: a path named twice (the
    bundle is then refused) or, once in 2**64 / n, two paths sharing a key."""

    def __init__(self, set_upto: int = _SET_UPTO, spool_after: int = _SPOOL_AFTER,
                 key: Callable[[str], int] = hash) -> None:
        self._key = key  # tests give one that shares keys often, to prove the look-ups exact
        self._keys = KeySet()
        self._text = bytearray(b"\0")  # "\0path\0path\0...": paths hold no NUL (paths.py)
        self._spool: BinaryIO | None = None
        self._set: set[str] | None = set()
        self._set_upto = set_upto
        self._count = 0
        self._spool_after = spool_after

    def __len__(self) -> int:
        return self._count if self._set is None else len(self._set)

    def maybe(self, path: str) -> bool:
        """Whether the path may have been added: never False for one that was."""
        if self._set is not None:
            return path in self._set
        return self._key(path) in self._keys

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        if self._set is not None:
            return path in self._set
        return self.maybe(path) and self._spooled(path)

    def add(self, path: str) -> bool:
        """Add a path; True when it was added before (exact)."""
        small = self._set
        if small is not None:
            if path in small:
                return True
            small.add(path)
            if len(small) >= self._set_upto:
                self._set = None
                for earlier in small:
                    self._add(earlier)
            return False
        if self._keys.add(self._key(path)) and self._spooled(path):
            return True
        self._append(path)
        return False

    def _add(self, path: str) -> None:
        self._keys.add(self._key(path))
        self._append(path)

    def _append(self, path: str) -> None:
        self._count += 1
        self._text += path.encode("utf-8", "surrogatepass") + b"\0"
        if len(self._text) >= self._spool_after:
            if self._spool is None:
                self._spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
            self._spool.write(self._text[:-1])  # the last NUL starts the next chunk
            self._text = bytearray(b"\0")

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _spooled(self, path: str) -> bool:
        """Whether the path's text was added, read back a chunk at a time (rare, see above)."""
        needle = b"\0" + path.encode("utf-8", "surrogatepass") + b"\0"
        if needle in self._text:
            return True
        spool = self._spool
        if spool is None:
            return False
        end = spool.tell()
        spool.seek(0)
        try:
            carry = b""
            while chunk := spool.read(_SCAN):
                # the spool ends without its last NUL: that one begins self._text
                window = carry + chunk
                if needle in window or (spool.tell() == end
                                        and (window + b"\0").endswith(needle)):
                    return True
                carry = window[-len(needle) + 1:] if len(needle) > 1 else b""
            return False
        finally:
            spool.seek(end)
