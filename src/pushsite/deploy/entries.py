"""A deploy's table of files (path -> FileEntry) that keeps memory flat in the number of files.

A FileEntry with its hash, encodings and path costs ~500 bytes as Python objects: 100 MB for a
site of 200,000 files (the file limit). Up to SPILL_FILES entries stay in a dict; past that
they go, a batch at a time, to a temporary SQLite table on disk (deleted when closed), which
hands them back sorted by path for the manifest and its index (Python's str order is UTF-8's
byte order, SQLite's BINARY collation).
"""

from __future__ import annotations

import bisect
import json
import sqlite3
import struct
from collections.abc import Iterable, Iterator, Mapping

from pushsite.model import FileEntry

SPILL_FILES = 10_000
# the spill's page cache at most (it was 4 MiB): its pages are in the OS cache anyway
SPILL_CACHE_KIB = 1024
_ENCODER = json.JSONEncoder(separators=(",", ":"))


class Entries:
    """path -> FileEntry; `spill` False keeps every entry in memory (a deploy into a pack
    rewrites refs in place after the end, see builder._rename_refs)."""

    def __init__(self, spill_at: int | None = None) -> None:
        self._mem: dict[str, FileEntry] = {}
        self._db: sqlite3.Connection | None = None
        self._spill_at = SPILL_FILES if spill_at is None else spill_at
        self.spill = True

    @property
    def spilled(self) -> bool:
        return self._db is not None

    def __setitem__(self, path: str, entry: FileEntry) -> None:
        self._mem[path] = entry
        if self.spill and len(self._mem) >= self._spill_at:
            self._flush()

    def get(self, path: str) -> FileEntry | None:
        entry = self._mem.get(path)
        if entry is None and self._db is not None:
            row = self._db.execute("SELECT row FROM e WHERE path = ?", (path,)).fetchone()
            entry = FileEntry.from_json(json.loads(row[0])) if row else None
        return entry

    def __len__(self) -> int:
        if self._db is None:
            return len(self._mem)
        self._flush()
        (count,) = self._db.execute("SELECT count(*) FROM e").fetchone()
        return int(count)

    def paths(self) -> Iterator[str]:
        """Every path, in no particular order."""
        yield from list(self._mem)
        if self._db is not None:
            for (path,) in self._db.execute("SELECT path FROM e"):
                if path not in self._mem:
                    yield path

    def in_memory(self) -> dict[str, FileEntry]:
        """The dict itself, for a table that never spilled (refs rewritten in place)."""
        if self._db is not None:
            raise RuntimeError("the table spilled to disk: it has no dict")
        return self._mem

    def sorted_items(self) -> Iterator[tuple[str, FileEntry]]:
        """Every (path, entry), sorted by path; reads a spilled table a row at a time."""
        if self._db is None:
            mem = self._mem
            for path in sorted(mem):
                yield path, mem[path]
            return
        self._flush()
        for path, row in self._db.execute("SELECT path, row FROM e ORDER BY path"):
            yield path, FileEntry.from_json(json.loads(row))

    def sorted_rows(self) -> Iterator[tuple[str, str]]:
        """Every (path, entry row as compact JSON), sorted by path; a spilled table's text
        as stored (no parse)."""
        if self._db is None:
            encode = _ENCODER.encode
            for path, entry in self.sorted_items():
                yield path, encode(entry.to_json())
            return
        self._flush()
        yield from self._db.execute("SELECT path, row FROM e ORDER BY path")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._mem = {}

    def _flush(self) -> None:
        if not self._mem:
            return
        if self._db is None:
            # "": a private database in a temporary file SQLite deletes on close
            self._db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=OFF")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute(f"PRAGMA cache_size=-{SPILL_CACHE_KIB}")
            self._db.execute("CREATE TABLE e (path TEXT PRIMARY KEY, row TEXT) WITHOUT ROWID")
        encode = _ENCODER.encode
        rows = [(path, encode(entry.to_json())) for path, entry in self._mem.items()]
        self._mem = {}
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO e VALUES (?, ?)", rows)
        self._db.execute("COMMIT")


class StoredBlobs(Mapping[str, tuple[dict[str, int], None]]):
    """hash -> the variants' sizes of the blobs a previous deployment names, for a loose
    store (no pack refs): one sorted list of 40-byte records (raw digest, gzip size, brotli
    size; bisect in C), ~90 bytes a blob instead of ~500 as a dict of tuples and dicts."""

    def __init__(self, rows: Iterable[tuple[str, dict[str, int]]]) -> None:
        pack = _SIZES.pack
        records = sorted({bytes.fromhex(sha) + pack(encodings.get("gzip", -1),
                                                     encodings.get("br", -1))
                          for sha, encodings in rows})
        self._records = records

    def _find(self, sha: str) -> bytes | None:
        try:
            digest = bytes.fromhex(sha)
        except ValueError:
            return None
        records = self._records
        i = bisect.bisect_left(records, digest)
        if i < len(records) and records[i][:32] == digest:
            return records[i]
        return None

    def __contains__(self, sha: object) -> bool:
        return isinstance(sha, str) and self._find(sha) is not None

    def __getitem__(self, sha: str) -> tuple[dict[str, int], None]:
        record = self._find(sha)
        if record is None:
            raise KeyError(sha)
        gzip, br = _SIZES.unpack(record[32:])
        encodings = {}
        if gzip >= 0:
            encodings["gzip"] = gzip
        if br >= 0:
            encodings["br"] = br
        return encodings, None

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[str]:
        return (record[:32].hex() for record in self._records)


_SIZES = struct.Struct(">ii")
