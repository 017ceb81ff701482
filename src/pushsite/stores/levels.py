"""Blob keys in a leveled SQLite index, so a put costs the same however many blobs are stored.

Why: blob keys are sha256 digests, so each new key lands on a random page of any index over
them. Once that index is much larger than a write batch, every key dirties a page of its own
(4 KiB through the WAL and back at checkpoint): deploy time per file grew with the store
(figure 7). Here a blob's bytes are appended to `blob_data` in arrival order (sequential pages)
and its key (32-byte digest plus one variant byte) goes into the small level 0. A level that
outgrows its cap is merged, in key order, into the next one, `GROWTH` times larger; a merge
rewrites each page of the bigger level about once for every page's worth of keys it brings,
so a key costs a small constant number of page writes per level, and levels grow in number
only with the logarithm of the store. Lookups ask every level in one statement; small levels
stay in the page cache. The newest level holding a key wins; merges drop the older copy.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable

LEVELS = 6  # caps 16 Ki, 128 Ki, 1 Mi, 8 Mi, 64 Mi keys; the last level has none
FIRST_CAP = 16384
GROWTH = 8
_CHUNK = 500  # keys per statement (SQLite's default limit on variables is 32766)

# variant byte = position: binary order = text order (".gzf": model.fast_gzip_key)
_SUFFIXES = ("", ".br", ".gz", ".gzf")
_CODES = {suffix: bytes([code]) for code, suffix in enumerate(_SUFFIXES)}
_TABLES = [f"blob_keys_{level}" for level in range(LEVELS)]

SCHEMA = (
    # where a blob's bytes are: `length` bytes at `offset` of data file `file` (datafiles.py;
    # `data` is always empty); `written` is when it was put (seconds since the epoch), which
    # prune's grace period reads (stamps below)
    "CREATE TABLE IF NOT EXISTS blob_data (id INTEGER PRIMARY KEY, data BLOB NOT NULL, "
    "file INTEGER, offset INTEGER, length INTEGER, written REAL)",
    "CREATE TABLE IF NOT EXISTS blob_levels (level INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
    *(
        f"CREATE TABLE IF NOT EXISTS {t} (k BLOB PRIMARY KEY, id INTEGER NOT NULL) WITHOUT ROWID"
        for t in _TABLES
    ),
)

# the id of the newest copy of key :k (coalesce stops at the first level that has it)
ID_OF = "coalesce(" + ", ".join(f"(SELECT id FROM {t} WHERE k = :k)" for t in _TABLES) + ")"


def create(db: sqlite3.Connection) -> None:
    """Make the tables (idempotent; LocalStore refuses a store in an older layout first)."""
    for statement in SCHEMA:
        db.execute(statement)
    (rows,) = db.execute("SELECT count(*) FROM blob_levels").fetchone()
    if rows < LEVELS:  # only then: opening must not wait for the write lock (a long merge)
        db.executemany(
            "INSERT OR IGNORE INTO blob_levels VALUES (?, 0)", [(n,) for n in range(LEVELS)]
        )


def pack(key: str) -> bytes | None:
    """The 33-byte index key of a blob key, or None for any other key (kept as text).

    Only the canonical spelling (lower-case hex, folder = first two digits) is packed, so
    unpack(pack(key)) == key always; this runs for every key a deploy asks about, hence
    slicing rather than a regular expression."""
    if len(key) not in (73, 76, 77) or not key.startswith("blobs/") or key[8] != "/":
        return None
    digest, suffix = key[9:73], key[73:]
    if key[6:8] != digest[:2] or suffix not in _SUFFIXES:
        return None
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        return None
    if raw.hex() != digest:  # upper case or spaces: not the canonical key
        return None
    return raw + _CODES[suffix]


def unpack(packed: bytes) -> str:
    digest = packed[:32].hex()
    return f"blobs/{digest[:2]}/{digest}{_SUFFIXES[packed[32]]}"


def present(db: sqlite3.Connection, packed: list[bytes]) -> set[bytes]:
    """Which of these keys some level holds: one statement per chunk of keys."""
    found: set[bytes] = set()
    for start in range(0, len(packed), _CHUNK):
        chunk = packed[start : start + _CHUNK]
        values = ",".join(["(?)"] * len(chunk))
        held = " OR ".join(f"EXISTS (SELECT 1 FROM {t} WHERE k = w.k)" for t in _TABLES)
        rows = db.execute(f"WITH w(k) AS (VALUES {values}) SELECT k FROM w WHERE {held}", chunk)
        found.update(bytes(row[0]) for row in rows)
    return found


Row = tuple[bytes, int | None, int | None, int | None]  # blob_data's data, file, offset, length


def insert(db: sqlite3.Connection, items: Iterable[tuple[bytes, Row]]) -> None:
    """Store (packed key, row) pairs; call inside a write transaction (BEGIN IMMEDIATE)."""
    batch = sorted(items, key=lambda item: item[0])
    if not batch:
        return
    keys = [k for k, _ in batch]
    replaced = _ids_in(db, _TABLES[0], keys)  # a key put again: its older bytes go
    db.executemany("DELETE FROM blob_data WHERE id = ?", [(i,) for i in replaced])
    (top,) = db.execute("SELECT coalesce(max(id), 0) FROM blob_data").fetchone()
    ids = range(top + 1, top + 1 + len(batch))
    now = time.time()
    rows = [(i, *row, now) for i, (_, row) in zip(ids, batch, strict=True)]
    db.executemany("INSERT INTO blob_data (id, data, file, offset, length, written) "
                   "VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.executemany(f"INSERT OR REPLACE INTO {_TABLES[0]} VALUES (?, ?)",
                   zip(keys, ids, strict=True))
    _count(db, 0, len(batch) - len(replaced))
    _merge_full_levels(db)


def delete(db: sqlite3.Connection, packed: list[bytes]) -> None:
    """Remove keys from every level and their bytes; call inside a write transaction."""
    for level, table in enumerate(_TABLES):
        ids = _ids_in(db, table, packed)
        if not ids:
            continue
        db.executemany("DELETE FROM blob_data WHERE id = ?", [(i,) for i in ids])
        db.executemany(f"DELETE FROM {table} WHERE k = ?", [(k,) for k in packed])
        _count(db, level, -len(ids))


def all_keys(db: sqlite3.Connection) -> list[bytes]:
    """Every stored packed key once, in order."""
    union = " UNION ".join(f"SELECT k FROM {t}" for t in _TABLES)
    return [bytes(row[0]) for row in db.execute(f"{union} ORDER BY 1")]


def stamps(db: sqlite3.Connection) -> dict[bytes, float]:
    """Every stored packed key with when its newest copy was written."""
    found: dict[bytes, float] = {}
    for table in reversed(_TABLES):  # the newest level last: its copy wins
        rows = db.execute(f"SELECT t.k, coalesce(d.written, 0) FROM {table} t "
                          "JOIN blob_data d ON d.id = t.id")
        found.update((bytes(k), float(w)) for k, w in rows)
    return found


def level_sizes(db: sqlite3.Connection) -> list[int]:
    """Keys per level (for tests and diagnostics)."""
    return [int(n) for (n,) in db.execute("SELECT n FROM blob_levels ORDER BY level")]


def _ids_in(db: sqlite3.Connection, table: str, packed: list[bytes]) -> list[int]:
    ids: list[int] = []
    for start in range(0, len(packed), _CHUNK):
        chunk = packed[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        ids += [row[0] for row in db.execute(f"SELECT id FROM {table} WHERE k IN ({marks})",
                                             chunk)]
    return ids


def _count(db: sqlite3.Connection, level: int, delta: int) -> None:
    db.execute("UPDATE blob_levels SET n = max(n + ?, 0) WHERE level = ?", (delta, level))


def _merge_full_levels(db: sqlite3.Connection) -> None:
    """Merge each level over its cap into the next, in key order (the cascade stops early)."""
    sizes = level_sizes(db)
    for level in range(LEVELS - 1):
        if sizes[level] <= FIRST_CAP * GROWTH**level:
            return
        upper, lower = _TABLES[level], _TABLES[level + 1]
        stale = db.execute(
            f"DELETE FROM blob_data WHERE id IN "
            f"(SELECT b.id FROM {upper} a CROSS JOIN {lower} b ON a.k = b.k)"  # a drives
        ).rowcount
        db.execute(f"INSERT OR REPLACE INTO {lower} SELECT k, id FROM {upper} ORDER BY k")
        db.execute(f"DELETE FROM {upper}")
        _count(db, level, -sizes[level])
        _count(db, level + 1, sizes[level] - stale)
        sizes[level + 1] += sizes[level] - stale
