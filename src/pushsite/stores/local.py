"""The local object store: small blobs in append-only data files indexed by SQLite, other
small objects in SQLite, large ones as plain files.

Why this layout: on this machine creating tens of thousands of small files costs most of a
deploy's time in the kernel (see MEASUREMENTS.md and `make bench`). Blobs up to `PACK_LIMIT`
are appended, a batch at a time, to the writing process's data file (datafiles.py), and one
SQLite database (WAL mode, large transactions) records where each is: 40,000 files become a
few dozen appends and commits, and the edge reads a blob with one indexed query and a pread.
Objects above the limit (images, video, archives) are files under `large/`, written to a
temporary name, fdatasync-ed there, renamed, and their folder fsync-ed; then the `large` rows
naming them commit, on a connection of their own (`adopt_file`). A large blob's syncs, rename
and row are the store's adopting thread's (`_adopt_held`), not the deploy's pool thread's: in
this process it is read from where it is meanwhile, and `flush` (a deploy's drain, before its
manifest) waits until its row committed. So a reader never sees half an object, after a power
cut no row (and no manifest) names a file left empty or missing, another actor sees a big file
moments after it was stored, and a deploy killed mid-way finds them when it resumes.

Blob keys (`blobs/<2 hex>/<sha256>[.gz|.br]`) live in the leveled index of `levels.py`, so a
put costs the same in a store of 10,000 blobs as in one of millions (figure 7). Other keys
(manifests, packs) stay in the `objects` table keyed by text.

Only this layout is read (`PRAGMA user_version` = LAYOUT). A store written by a development
version before it (blobs in `objects` before the leveled index, inline in `blob_data` before
data files, rows without write times) is refused at open with one line naming its folder:
nothing was released in those layouts, and reading them cost a branch on every lookup.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from pushsite.diskspace import Reserve, is_full, opened_with_room, translating
from pushsite.errors import BackendUnavailable, ConfigError, DiskFull, NotFound
from pushsite.sqlite_setup import setting_up, write_transaction
from pushsite.stores import datafiles, levels, tempfiles

PACK_LIMIT = 1 << 20  # 1 MiB
# a batch is appended and fdatasync-ed at once; while one is written the next fills, so
# twice this is held (4 MiB each was ~4 MB more of large's peak RSS; 8 MiB held more)
_BATCH_BYTES = 2 << 20
_BATCH_COUNT = 2000
# appended batches wait for one fdatasync and one commit until this much is appended (or a
# flush, or a manifest): on this machine's disk an fdatasync costs ~13 ms however little it
# writes (dd: 2 MiB appends synced each 129 MB/s, 16 MiB each 856 MB/s, under load); one per
# 2 MiB batch was 324 of them on large, 6.6 s of the writer thread's time, which the pool
# waited for. The rows wait in memory (~300 bytes a blob, hence the count), the bytes in the
# page cache
_SYNC_BYTES = 32 << 20
_SYNC_BLOBS = 8192
_PAGE_SIZE = 16384
# each connection's page cache (SQLite's default is 2,000 KiB, so up to ~4 MB for the two
# during a big deploy): the index's pages stay in the OS cache anyway
_CACHE_KIB = 512
_CHUNK = 1 << 20
_RESERVE_BYTES = 2 << 20  # diskspace.py; deleting a 1,000-blob batch commits ~0.5 MiB of WAL
_logger = logging.getLogger("pushsite.store")
LAYOUT = 1  # objects.db's user_version: data files, the leveled index, write times


class LocalStore:
    """An ObjectStore in a folder: `objects.db` plus `large/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._large = root / "large"
        self._tmp = root / "tmp"
        # room for a prune's commits on a full disk (diskspace.py)
        self._reserve = Reserve(root / "objects.db-reserve", _RESERVE_BYTES)
        try:
            self._large.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(parents=True, exist_ok=True)
            tempfiles.sweep(self._tmp)  # what killed writers left
            opened_with_room(self._reserve, root, lambda: self._open_locked(root))
        except (OSError, sqlite3.Error) as exc:
            if is_full(exc, root):
                raise DiskFull.holding(root) from exc
            raise BackendUnavailable(f"cannot open the local store at {root}: {exc}") from exc
        self._reserve.restore()
        self._lock = threading.Lock()  # guards _pending, _writing, _appended (held briefly)
        # guards the reading connection: a has() or get() query never holds up a put()
        self._read_lock = threading.Lock()
        # one batch written at a time; a full batch's writer thread holds it (_write_behind)
        self._write_lock = threading.Lock()
        self._pending: dict[str, bytes] = {}
        self._writing: dict[str, bytes] = {}
        # blobs appended to the held data file whose rows wait for the next sync and commit
        # (_write): key -> (packed key, file, offset, length); read from the file meanwhile
        self._appended: dict[str, tuple[bytes, int, int, int]] = {}
        self._appended_bytes = 0
        # the connection that commits `large` rows (adopt_file): a pool thread never waits
        # for the writer's batch in hand and its group fdatasync, only for its short commit
        self._ldb: sqlite3.Connection | None = None
        self._large_lock = threading.Lock()  # guards _ldb
        # folders under large/ whose own entry is known durable (fsynced once after made)
        self._durable_folders: set[Path] = set()
        # large blobs handed to the adopting thread (adopt_file): key -> its file, under
        # tmp/ until renamed into large/, read from there meanwhile; leaves once its row
        # committed. Counted, so a flush waits for those handed before it only
        self._adopting_cond = threading.Condition()  # guards the six below
        self._adopting: dict[str, Path] = {}
        self._adopt_queue: list[tuple[str, Path]] = []
        # those whose adoption failed: handed again by the next flush (as a failed batch's
        # blobs go back to pending), so no flush returns with one of them not durable
        self._adopt_retry: list[tuple[str, Path]] = []
        self._adopts_handed = 0
        self._adopts_done = 0
        self._adopter: threading.Thread | None = None
        self._adopt_failed: BaseException | None = None  # raised by the next flush
        self._pending_bytes = 0
        self._failed: BaseException | None = None  # a writer thread's error, raised once
        self._files = datafiles.DataFiles(root / "data")

    def _open_locked(self, root: Path) -> None:
        with setting_up(root / "objects.db"):
            self._open_databases(root)

    def _open_databases(self, root: Path) -> None:
        """The two connections, the pragmas and the schema (idempotent)."""
        # Two connections: batches are written on one while readers (the edge, has())
        # keep going on the other; WAL lets them overlap.
        self._wdb = self._connect(root / "objects.db")
        # 16 KiB pages for a new store (an existing one keeps its size): each page is one
        # WAL frame, and manifests (MBs for a big site) still go through SQLite. Measured
        # when blobs did too: 4 KiB pages made commits cost 1.6 times as much (64 KiB:
        # 0.6 times, but +30 MB peak RSS)
        self._wdb.execute(f"PRAGMA page_size={_PAGE_SIZE}")
        self._wdb.execute("PRAGMA journal_mode=WAL")
        (layout,) = self._wdb.execute("PRAGMA user_version").fetchone()
        if layout != LAYOUT:
            older = _older_layout(self._wdb) if layout == 0 else f"layout {layout}"
            if older is not None:
                raise ConfigError(f"the local store at {root} was written by an older "
                                  f"development version of pushsite ({older}), which this "
                                  "one does not read: deploy into a new store folder")
            self._wdb.execute(
                "CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, data BLOB NOT NULL)"
            )
            # the keys of large objects (files under large/): has() answers from the database
            # alone, for every process, without a stat per missing key
            self._wdb.execute("CREATE TABLE IF NOT EXISTS large (key TEXT PRIMARY KEY)")
            levels.create(self._wdb)
            for statement in datafiles.SCHEMA:
                self._wdb.execute(statement)
            self._wdb.execute(f"PRAGMA user_version={LAYOUT}")
        self._db = self._connect(root / "objects.db")

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        return db

    @classmethod
    def from_url(cls, url: str) -> LocalStore:
        parts = urlsplit(url)
        if parts.scheme != "file" or not parts.path:
            raise ConfigError(f"invalid local store URL {url!r}: expected file:///absolute/path")
        return cls(Path(unquote(parts.path)))

    # writing -------------------------------------------------------------------------------
    def put(self, key: str, data: bytes, meta: dict[str, str] | None = None) -> None:
        if (self._adopts_done != self._adopts_handed or self._adopt_retry) \
                and levels.pack(key) is None:
            self._wait_adopted()  # a manifest commits after the rows of the blobs before it
        if len(data) > PACK_LIMIT:
            self._write_file(key, io.BytesIO(data))
            return
        with self._lock:
            self._raise_failed()
            self._pending_bytes += len(data) - len(self._pending.get(key, b""))
            self._pending[key] = data
            full = self._pending_bytes >= _BATCH_BYTES or len(self._pending) >= _BATCH_COUNT
        if full:
            self._write_behind()

    def put_stream(
        self, key: str, source: BinaryIO, size: int, meta: dict[str, str] | None = None
    ) -> None:
        if size <= PACK_LIMIT:
            self.put(key, source.read(), meta)
        else:
            self._write_file(key, source)

    def adopt_file(self, key: str, path: Path) -> None:
        """Move a finished temporary file (made by `temp_file`) into place under `key`, and
        commit its row once the bytes and the name are durable (fdatasync before the
        rename, the folder's fsync after): then every actor sees it (`has`), and a deploy
        killed after that reuses it. A blob is handed to the adopting thread: on large a
        deploy's pool threads spent ~0.9 s waiting in 132 adopts' syncs (4.5 ms median,
        12 ms p90), the pool being what the reader waits for; this process reads it from
        its file meanwhile and `flush` waits for its row. A manifest is adopted here, under
        the write lock (after any small copy in hand)."""
        if levels.pack(key) is not None:
            self._hand_over(key, path)
            return
        self._wait_adopted()  # a manifest: after the rows of the blobs handed before it
        try:
            with translating(self.root):
                self._place([(key, path)])
                with self._write_lock:
                    self._commit_large([key])
        except sqlite3.Error as exc:  # the file stays, with no row: written again next time
            raise BackendUnavailable(f"cannot record {key} in the local store: {exc}") from exc

    def _place(self, files: list[tuple[str, Path]]) -> None:
        """fdatasync each file, rename it into large/, then fsync each folder once."""
        for _, path in files:
            _sync_path(path, os.O_RDONLY, os.fdatasync)
        folders: dict[Path, None] = {}
        for key, path in files:
            target = self._large_path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            folders[target.parent] = None
        for folder in folders:
            self._sync_folders(folder)

    def _hand_over(self, key: str, path: Path) -> None:
        """Queue a blob's file for the adopting thread, under a name of its own in tmp/
        (the caller may unlink the name it gave once this returns; a killed writer's file
        is still swept by its owner's name)."""
        self._large_path(key)  # refuse a bad key here, not on the thread
        held = path.with_name(path.name + ".adopt")
        with translating(self.root):
            os.rename(path, held)
        with self._adopting_cond:
            self._adopting[key] = held
            self._queue_adopt([(key, held)])

    def _queue_adopt(self, files: list[tuple[str, Path]]) -> None:
        """Queue files for the adopting thread, starting it if none runs (call with
        `_adopting_cond` held)."""
        self._adopt_queue.extend(files)
        self._adopts_handed += len(files)
        if self._adopter is None:
            self._adopter = threading.Thread(target=self._adopt_held, name="store-adopter",
                                             daemon=True)
            self._adopter.start()

    def _adopt_held(self) -> None:
        """The adopting thread: what was handed over, a batch at a time (each file synced,
        renamed, each folder synced once, one transaction for the rows); ends when none is
        left. An error is kept for the next flush, and that batch's files for the flush
        after it to hand over again (one gone meanwhile is dropped)."""
        while True:
            with self._adopting_cond:
                batch, self._adopt_queue = self._adopt_queue, []
                if not batch:
                    self._adopter = None
                    return
            failed: BaseException | None = None
            try:
                with translating(self.root):
                    self._place(batch)
                    self._commit_large([key for key, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - raised by the next flush
                failed = exc
                if isinstance(exc, (sqlite3.Error, OSError)) and not isinstance(exc, DiskFull):
                    failed = BackendUnavailable(f"cannot store {len(batch)} large objects in "
                                                f"the local store: {exc}")
                    failed.__cause__ = exc
            with self._adopting_cond:
                for key, held in batch:
                    where = None if failed is None else next(
                        (p for p in (held, self._large_path(key)) if p.exists()), None)
                    if where is not None:  # renamed already, or not
                        self._adopting[key] = where
                        self._adopt_retry.append((key, where))
                    elif self._adopting.get(key) == held:
                        del self._adopting[key]
                self._adopts_done += len(batch)
                if failed is not None and self._adopt_failed is None:
                    self._adopt_failed = failed
                self._adopting_cond.notify_all()

    def _wait_adopted(self) -> None:
        """Wait until every blob handed over before this call has its row committed (those
        that failed before are handed again), and raise what the adopting thread met."""
        with self._adopting_cond:
            if self._adopt_retry:
                retry, self._adopt_retry = self._adopt_retry, []
                self._queue_adopt(retry)
            handed = self._adopts_handed
            while self._adopts_done < handed:
                self._adopting_cond.wait()
            failed, self._adopt_failed = self._adopt_failed, None
        if failed is not None:
            raise failed

    def _sync_folders(self, folder: Path) -> None:
        """fsync the folder a file was renamed into, and once each folder above it up to
        `large/` this process has not yet seen durable (adopt_file may have made them): on
        ext4 the file's fdatasync already committed the journal holding them (a folder's
        fsync after it cost 0.09 ms), on other file systems this is what makes them
        durable. A folder is marked only after its parent's fsync returned, so a thread that
        finds it unmarked syncs it too."""
        _sync_path(folder, os.O_RDONLY | os.O_DIRECTORY, os.fsync)
        while folder != self._large and self._large in folder.parents:
            if folder in self._durable_folders:
                return
            _sync_path(folder.parent, os.O_RDONLY | os.O_DIRECTORY, os.fsync)
            self._durable_folders.add(folder)
            folder = folder.parent

    def _commit_large(self, keys: list[str]) -> None:
        """The `large` rows of files just made durable in place; a manifest that grew past
        PACK_LIMIT loses its small copy, in memory and in `objects` (the caller holds
        `_write_lock` then, so no batch in hand commits the small copy after this)."""
        manifests = [(key,) for key in keys if levels.pack(key) is None]
        with self._large_lock:
            if self._ldb is None:
                self._ldb = self._connect(self.root / "objects.db")
            with write_transaction(self._ldb) as db:
                db.executemany("INSERT OR IGNORE INTO large VALUES (?)", [(k,) for k in keys])
                db.executemany("DELETE FROM objects WHERE key = ?", manifests)
        with self._lock:  # a small copy written before would be read first: it goes
            for key in keys:
                self._pending.pop(key, None)

    def temp_file(self) -> tuple[BinaryIO, Path]:
        """A temporary file on the store's own file system, for streaming large blobs."""
        return tempfiles.create(self._tmp)  # named after this process (tempfiles.py)

    def _write_file(self, key: str, source: BinaryIO) -> None:
        handle, tmp = self.temp_file()
        try:
            with handle:
                while chunk := source.read(_CHUNK):
                    handle.write(chunk)
            self.adopt_file(key, tmp)
        except (OSError, sqlite3.Error) as exc:
            tmp.unlink(missing_ok=True)
            if is_full(exc, self.root):
                raise DiskFull.holding(self.root) from exc
            raise BackendUnavailable(f"cannot write {key} to the local store: {exc}") from exc

    def flush(self) -> None:
        """Write what is pending in one transaction; puts go on meanwhile (a new batch).
        Waits for a batch a writer thread has in hand and for the large blobs handed to the
        adopting thread, and raises what they met."""
        self._wait_adopted()
        with self._write_lock:
            with self._lock:
                self._raise_failed()
                if not self._pending and not self._appended:
                    return
                batch = self._take_pending()
            self._write_batch(batch, final=True)
            with self._lock:
                self._raise_failed()

    def _write_behind(self) -> None:
        """Hand a full batch to a thread of its own that writes it (append, fdatasync,
        commit) while the putting thread goes on: a deploy's pool thread used to write it,
        and the other one, once its next batch filled, waited for that; on medium a third
        of the pool's time. Waits only while the batch before is still being written, so
        at most two are held, as before."""
        self._write_lock.acquire()  # released by the writer thread, or here
        handed = False
        try:
            with self._lock:
                full = (self._pending_bytes >= _BATCH_BYTES
                        or len(self._pending) >= _BATCH_COUNT)
                if not full or self._failed is not None:  # written meanwhile; or raise
                    self._raise_failed()
                    return
                batch = self._take_pending()
            writer = threading.Thread(target=self._write_held, args=(batch,),
                                      name="store-writer")
            writer.start()
            handed = True
        finally:
            if not handed:
                self._write_lock.release()

    def _write_held(self, batch: dict[str, bytes]) -> None:
        """A writer thread's batch, written with `_write_lock` (taken by _write_behind)."""
        try:
            self._write_batch(batch, final=False)
        except BaseException as exc:  # noqa: BLE001 - raised by the next put or flush
            with self._lock:
                self._failed = exc
        finally:
            self._write_lock.release()

    def _take_pending(self) -> dict[str, bytes]:
        """The pending batch, moved to `_writing` (call with `_lock` held)."""
        self._writing, self._pending = self._pending, {}
        self._pending_bytes = 0
        return self._writing

    def _write_batch(self, batch: dict[str, bytes], final: bool) -> None:
        """Write `_writing` (call with `_write_lock` held); on an error its keys go back
        to pending (newer puts of them win), to be written by the next flush, and so do
        those appended before and not committed yet (read back from the data file, which
        is then given up)."""
        try:
            self._write(batch, final)
        except (sqlite3.Error, OSError) as exc:
            earlier = self._take_back_appended()
            with self._lock:
                self._pending = earlier | batch | self._pending
                self._appended = {}
                self._pending_bytes = sum(map(len, self._pending.values()))
                self._writing = {}
            # cut back only now: a get() that found their spans in _appended read past the
            # file's new end ("ends before"), while the bytes waited to go back to pending
            self._files.drop()
            if is_full(exc, self.root):
                raise DiskFull.holding(self.root) from exc
            raise BackendUnavailable(f"cannot write to the local store: {exc}") from exc
        with self._lock:
            self._writing = {}

    def _raise_failed(self) -> None:
        """Raise a writer thread's error once (call with `_lock` held)."""
        failed, self._failed = self._failed, None
        if failed is not None:
            raise failed

    def _flush_unless_full(self) -> None:
        """Flush before a listing or a deletion; a batch the full disk refuses stays pending
        for the next flush (its writer already got DiskFull), and the listing or deletion
        goes on without it: it is newer than anything a prune would delete, and a prune is
        what frees the space it waits for."""
        try:
            self.flush()
        except DiskFull:
            _logger.info("a batch of writes to %s waits for space; listing and deleting go "
                         "on without it", self.root)

    def _write(self, batch: dict[str, bytes], final: bool) -> None:
        """One batch: blob bytes appended to this process's data file, held locked, and
        read from there until committed. Once `_SYNC_BYTES` or `_SYNC_BLOBS` are appended, at
        a flush (`final`), or with another object (a manifest), one fdatasync makes every
        appended batch durable and one transaction commits their rows and the other objects;
        then the file is unlocked. So a committed row never names bytes a crash can still
        lose, as with a sync per batch."""
        texts: list[tuple[str, bytes]] = []
        blobs: list[tuple[str, bytes, bytes]] = []
        for key, data in batch.items():
            packed = levels.pack(key)
            if packed is None:
                texts.append((key, data))
            else:
                blobs.append((key, packed, data))
        if blobs:
            out = self._files.held(self._wdb)
            spans = {key: (packed, *out.add(data)) for key, packed, data in blobs}
            out.flush()  # readable by pread (get) from here on
            with self._lock:
                self._appended.update(spans)
            self._appended_bytes += sum(span[3] for span in spans.values())
        appended = self._appended
        if not (final or texts or self._appended_bytes >= _SYNC_BYTES
                or len(appended) >= _SYNC_BLOBS):
            return
        if appended:
            self._files.held(self._wdb).sync()
        self._commit([(p, (b"", no, offset, n)) for p, no, offset, n in appended.values()],
                     texts)
        self._files.release()
        with self._lock:
            self._appended = {}
        self._appended_bytes = 0

    def _commit_appended(self) -> None:
        """Sync and commit what writer threads appended since the flush before (call with
        `_write_lock`): a deletion's compaction appends to this process's file and unlocks
        it, and deleting a key must not leave its appended row to commit after."""
        with self._lock:
            if not self._appended:
                return
        try:
            self._write_batch({}, final=True)
        except DiskFull:  # pending again; the deletion goes on, as in _flush_unless_full
            _logger.info("a batch of writes to %s waits for space; deleting goes on "
                         "without it", self.root)

    def _take_back_appended(self) -> dict[str, bytes]:
        """After a failed write: the bytes of the blobs appended and not committed, read
        back from the data file (a failed write left nothing after them that they need),
        which the caller then gives up (`drop`: the next batch starts a new one), once they
        are back in pending. Call with `_write_lock`."""
        found: dict[str, bytes] = {}
        try:
            for key, (_, no, offset, length) in self._appended.items():
                found[key] = self._files.read(no, offset, length)
        except OSError as exc:  # their bytes are lost: a deploy that put them fails
            _logger.warning("%d blobs appended to %s and not yet committed are lost: %s",
                            len(self._appended) - len(found), self.root, exc)
        self._appended_bytes = 0
        return found

    def _commit(self, blobs: list[tuple[bytes, levels.Row]],
                texts: list[tuple[str, bytes]]) -> None:
        with write_transaction(self._wdb) as db:
            levels.insert(db, blobs)
            db.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?)", texts)

    # reading -------------------------------------------------------------------------------
    def has(self, keys: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(keys))
        found: set[str] = set()
        # a key leaves _writing only once appended, and _appended only after its row
        # committed, so checking these first and the database after never misses a key
        # put before this call
        with self._lock:
            found.update(k for k in wanted if k in self._pending or k in self._writing
                         or k in self._appended)
        with self._adopting_cond:  # leaves only once its row committed
            found.update(k for k in wanted if k in self._adopting)
        packed = {k: p for k in wanted if k not in found and (p := levels.pack(k)) is not None}
        with self._read_lock:
            held = levels.present(self._db, list(packed.values()))
            found.update(k for k, p in packed.items() if p in held)
            rest = [k for k in wanted if k not in found and k not in packed]
            found.update(self._present_in("objects", rest))
            rest = [k for k in wanted if k not in found]
            found.update(self._present_in("large", rest))
        return found

    def _present_in(self, table: str, keys: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key FROM {table} WHERE key IN ({marks})", chunk)
            found.update(row[0] for row in rows)
        return found

    def _small(self, what: str, key: str, **args: int) -> tuple[Any, ...] | None:
        """One row about a small object other than a blob (a manifest; `what`: SQL over its
        `data` with :named args), or None; call with `_read_lock` held."""
        if levels.pack(key) is not None:  # a blob: in a data file (a span) or under large/
            return None
        row: tuple[Any, ...] | None = self._db.execute(
            f"SELECT {what} FROM objects WHERE key = :k", {**args, "k": key}
        ).fetchone()
        return row

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        with self._lock:
            data = self._pending.get(key)
            if data is None:
                data = self._writing.get(key)
            appended = self._appended.get(key)  # its span, until its row commits
        if data is not None:
            return data[start:end]
        for _ in range(3):  # a span can move (compaction) between its lookup and its read
            if appended is not None:  # committed and moved meanwhile: looked up next time
                span: tuple[int, int, int] | None = appended[1:]
                appended = None
            else:
                with self._read_lock:
                    span = self._span(key)
            if span is None:
                break
            no, offset, length = span
            first = min(start, length)
            last = length if end is None else max(first, min(end, length))
            try:
                return self._files.read(no, offset + first, last - first)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise BackendUnavailable(f"cannot read {key} from the local store: {exc}") \
                    from exc
        else:
            raise BackendUnavailable(f"cannot read {key} from the local store: its data file "
                                     "keeps moving or is missing (run `pushsite verify`)")
        with self._read_lock:
            if end is None:
                row = self._small("substr(data, :start)", key, start=start + 1)
            else:
                row = self._small("substr(data, :start, :n)", key, start=start + 1,
                                  n=max(end - start, 0))
        if row is not None:
            return bytes(row[0])
        return self._read_large(key, start, end)

    def _read_large(self, key: str, start: int, end: int | None) -> bytes:
        try:
            with self._open_large(key) as handle:
                handle.seek(start)
                return handle.read(-1 if end is None else max(end - start, 0))
        except FileNotFoundError:
            raise NotFound(f"object {key} is not in the store") from None

    def _open_large(self, key: str) -> BinaryIO:
        """A large object's file: in large/, or in tmp/ while the adopting thread holds it
        (renamed meanwhile: in large/ then, as the thread renames before it lets go)."""
        target = self._large_path(key)
        for _ in range(2):
            try:
                return open(target, "rb")
            except FileNotFoundError:
                with self._adopting_cond:
                    held = self._adopting.get(key)
                if held is not None:
                    with contextlib.suppress(FileNotFoundError):
                        return open(held, "rb")
        return open(target, "rb")

    def open(self, key: str) -> BinaryIO:
        try:
            return self._open_large(key)
        except FileNotFoundError:
            return io.BytesIO(self.get(key))

    # every span of a chunk of packed blob keys (levels.ID_OF per key: the newest level's id)
    _SPANS_CHUNK = 500
    _SPANS = ("WITH w(k) AS (VALUES {values}) SELECT w.k, d.file, d.offset, d.length FROM w "
              "JOIN blob_data d ON d.id = " + levels.ID_OF.replace(":k", "w.k"))

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """key -> whole bytes of each of these objects the store holds (a missing one is
        left out). For a reader of many small blobs (the optimiser after live): get() costs
        a span lookup, an open and a close per blob (50-75 µs, most of it in Python), here
        one statement finds every span and each data file is opened once. What one call
        holds is what the caller asks for: it bounds the batch by bytes."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, bytes] = {}
        by_file: dict[int, list[tuple[int, int, str]]] = {}
        appended: set[str] = set()
        with self._lock:  # the buffers first, as in get(), and spans not committed yet
            for key in wanted:
                data = self._pending.get(key)
                if data is None:
                    data = self._writing.get(key)
                if data is not None:
                    found[key] = data
                elif (span := self._appended.get(key)) is not None:
                    by_file.setdefault(span[1], []).append((span[2], span[3], key))
                    appended.add(key)
        packed = {p: k for k in wanted if k not in found and k not in appended
                  and (p := levels.pack(k)) is not None}
        chunks = list(packed)
        with self._read_lock:
            for start in range(0, len(chunks), self._SPANS_CHUNK):
                chunk = chunks[start:start + self._SPANS_CHUNK]
                values = ",".join(["(?)"] * len(chunk))
                rows = self._db.execute(self._SPANS.format(values=values), chunk)
                for k, no, offset, length in rows:
                    if no is not None:
                        by_file.setdefault(int(no), []).append(
                            (int(offset), int(length), packed[bytes(k)]))
        for no, spans in by_file.items():
            try:
                fd = os.open(self._files.path(no), os.O_RDONLY)
            except FileNotFoundError:  # compacted meanwhile: get() looks again
                continue
            except OSError as exc:
                raise BackendUnavailable(f"cannot read data file {no} of the local store: "
                                         f"{exc}") from exc
            try:
                for offset, length, key in sorted(spans):
                    data = os.pread(fd, length, offset)
                    if len(data) != length:
                        raise BackendUnavailable(f"cannot read {key} from the local store: "
                                                 f"data file {no} ends before it")
                    found[key] = data
            except OSError as exc:
                raise BackendUnavailable(f"cannot read from data file {no} of the local "
                                         f"store: {exc}") from exc
            finally:
                os.close(fd)
        for key in wanted:  # not in a data file (other objects, large ones, moved spans)
            if key not in found:
                try:
                    found[key] = self.get(key)
                except NotFound:  # left out
                    continue
        return found

    def _span(self, key: str) -> tuple[int, int, int] | None:
        """(data file, offset, length) of a blob kept in a data file; call with `_read_lock`."""
        packed = levels.pack(key)
        if packed is None:
            return None
        row = self._db.execute(
            f"SELECT file, offset, length FROM blob_data WHERE id = {levels.ID_OF}", {"k": packed}
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return int(row[0]), int(row[1]), int(row[2])

    def size(self, key: str) -> int:
        # the buffers first, as in has(): a key has() found there is sized there, never missed
        # while its batch is being written (a deploy's duplicate files ask has, then size)
        with self._lock:
            data = self._pending.get(key)
            if data is None:
                data = self._writing.get(key)
            appended = self._appended.get(key)
        if data is not None:
            return len(data)
        if appended is not None:
            return appended[3]
        with self._read_lock:
            span = self._span(key)
            if span is not None:
                return span[2]
            row = self._small("length(data)", key)
        if row is not None:
            return int(row[0])
        return self._large_size(key)

    def _large_size(self, key: str) -> int:
        try:
            with self._open_large(key) as handle:
                return os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            raise NotFound(f"object {key} is not in the store") from None

    def keys(self, prefix: str = "") -> Iterator[str]:
        self._flush_unless_full()
        with self._read_lock:
            blobs = []
            if prefix.startswith("blobs/") or "blobs/".startswith(prefix):
                blobs = levels.all_keys(self._db)
            rows = self._db.execute(
                "SELECT key FROM objects WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, prefix + "\U0010ffff"),
            ).fetchall()
        yield from (key for key in map(levels.unpack, blobs) if key.startswith(prefix))
        yield from (row[0] for row in rows)
        for path in sorted(self._large.rglob("*")):
            if path.is_file():
                key = path.relative_to(self._large).as_posix()
                if key.startswith(prefix):
                    yield key

    def stamps(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """Every key under a prefix with when it was written (seconds since the epoch), for
        prune's grace period. Blobs carry their commit time, large objects their file's mtime;
        other objects in SQLite (manifests) carry none and answer 0."""
        self._flush_unless_full()
        with self._read_lock:
            blobs: dict[bytes, float] = {}
            if prefix.startswith("blobs/") or "blobs/".startswith(prefix):
                blobs = levels.stamps(self._db)
            rows = self._db.execute(
                "SELECT key FROM objects WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, prefix + "\U0010ffff"),
            ).fetchall()
        for packed, written in blobs.items():
            key = levels.unpack(packed)
            if key.startswith(prefix):
                yield key, written
        yield from ((row[0], 0.0) for row in rows)
        for path in sorted(self._large.rglob("*")):
            key = path.relative_to(self._large).as_posix()
            if key.startswith(prefix):
                try:
                    if path.is_file():
                        yield key, path.stat().st_mtime
                except FileNotFoundError:  # deleted meanwhile
                    continue

    def delete(self, keys: Iterable[str]) -> None:
        doomed = list(keys)
        self._flush_unless_full()
        packed = [p for k in doomed if (p := levels.pack(k)) is not None]
        with self._write_lock:
            self._commit_appended()
            # a prune's deletions commit on a full disk with the reserve's room (diskspace.py)
            with self._reserve.room(), translating(self.root), \
                    write_transaction(self._wdb) as db:
                levels.delete(db, packed)
                db.executemany("DELETE FROM objects WHERE key = ?", [(k,) for k in doomed])
                db.executemany("DELETE FROM large WHERE key = ?", [(k,) for k in doomed])
            if packed:
                try:
                    # the commit that lets an unused data file go needs room too: without
                    # it a full disk kept every deleted blob's bytes (the reserve had taken
                    # back the room the deletion's commit left)
                    with self._reserve.room():
                        self._files.compact(self._wdb)
                except (sqlite3.Error, OSError) as exc:
                    if not is_full(exc, self.root):
                        raise BackendUnavailable(f"cannot compact the local store's data files "
                                                 f"(the deleted blobs are gone already): {exc}"
                                                 ) from exc
                    # files no row uses went first; the rest is compacted by a later prune
                    _logger.info("compacting the data files of %s stopped: the disk is "
                                    "full; a later prune finishes it", self.root)
        for key in doomed:
            self._large_path(key).unlink(missing_ok=True)
        tempfiles.sweep(self._tmp)
        self._reserve.restore()  # what a prune freed refills the reserve first

    def detach(self) -> None:
        """Write what is pending, for a process about to end without teardown (`os._exit`):
        the committed WAL is as durable as after close (synchronous=NORMAL) and the next
        connection checkpoints it."""
        self.flush()

    def close(self) -> None:
        """Write what is pending, then let go of every file and connection, also when that
        write fails (DiskFull): what it could not write is lost as at the process's end,
        and the disk is not held busy until then."""
        try:
            self.flush()
        finally:
            # under the write lock: a flush or writer thread of another thread (a deploy
            # the service's close did not wait for) still on the writing connection would
            # crash the interpreter when it closes under it (sqlite3 with
            # check_same_thread=False); after, its next write fails with a clean error
            with self._write_lock:
                self._files.close()
                self._wdb.close()
            with self._read_lock:
                self._db.close()
            with self._large_lock:
                if self._ldb is not None:
                    self._ldb.close()

    def _large_path(self, key: str) -> Path:
        if ".." in key.split("/") or key.startswith("/"):
            raise ConfigError(f"invalid object key {key!r}")
        return self._large / key


def _sync_path(path: Path, flags: int, sync: Any) -> None:
    """Open `path` with `flags` and `sync` it (os.fdatasync or os.fsync; a read-only fd is
    enough on Linux)."""
    fd = os.open(path, flags)
    try:
        sync(fd)
    finally:
        os.close(fd)


def _older_layout(db: sqlite3.Connection) -> str | None:
    """What marks an unversioned objects.db as an older layout, or None when it is new (no
    tables yet) or already this one (made before the layout was versioned)."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "objects" in tables and db.execute(
        "SELECT 1 FROM objects WHERE key >= 'blobs/' AND key < 'blobs0' LIMIT 1"
    ).fetchone():
        return "blobs in the objects table, before the leveled index"
    if "blob_data" not in tables:
        return None
    columns = {row[1] for row in db.execute("PRAGMA table_info(blob_data)")}
    if not {"file", "offset", "length"} <= columns:
        return "blobs inline in SQLite, before data files"
    if "written" not in columns:
        return "blobs without write times"
    if db.execute("SELECT 1 FROM blob_data WHERE file IS NULL LIMIT 1").fetchone():
        return "blobs inline in SQLite, before data files"
    return None

