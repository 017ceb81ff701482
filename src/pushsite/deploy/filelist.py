"""A deploy's file list: (path, sha256, size, mode) per file, for incremental uploads.

`pushsite deploy --server` sends the list first and uploads only the blobs the server lacks
(netlify-cli and wrangler work the same way). The client makes the list here, hashing files
on every core (sha256 releases the GIL on large updates); the server checks each row under
the bundle reader's rules and limits (`check_rows`) before a single blob is accepted.
"""

from __future__ import annotations

import os
import stat
from collections import namedtuple
from collections.abc import Iterator

from pushsite.deploy.paths import is_published, normalise_member_path, symlink_target
from pushsite.errors import BundleRejected, BundleTooLarge, ConfigError

TYPE_CHECKING = False  # typing is not imported at run time (the client's start, launch.py)
if TYPE_CHECKING:  # the client's folder listing imports neither (deploy DIR --server's start)
    from pathlib import Path
    from typing import Any, BinaryIO, NamedTuple

    from pushsite.deploy.bundle import BundleReader
    from pushsite.deploy.hashcache import HashCache
    from pushsite.limits import Limits

FILE, EXECUTABLE, LINK, DIR = "100644", "100755", "120000", "040000"
MODES = (FILE, EXECUTABLE, LINK, DIR)
_HEX = "0123456789abcdef"
_CHUNK = 1 << 20
SMALL_HASH = 256 << 10  # up to this many bytes sha256 is Python's own (sha256_hasher)


def sha256_hasher(size: int) -> Any:
    """A sha256 for `size` bytes. Python's own one for a few bytes: importing hashlib loads
    OpenSSL, ~2 ms of CPU at each start of a client that hashes one changed file (or only a
    folder's name); OpenSSL's for more (several times faster per byte, and it releases the
    GIL, so the client's threads hash on every core)."""
    if size <= SMALL_HASH:
        for builtin in ("_sha2", "_sha256"):  # CPython's own: _sha2 from 3.12, _sha256 before
            try:
                return __import__(builtin).sha256()
            except (ImportError, AttributeError):
                continue
    import hashlib  # OpenSSL's, or any Python without either module

    return hashlib.sha256()


if TYPE_CHECKING:
    class _RowFields(NamedTuple):
        path: str
        sha256: str = ""
        size: int = 0
        mode: str = FILE
        target: str = ""
else:  # the same tuple, without importing typing
    _RowFields = namedtuple("Row", "path sha256 size mode target", defaults=("", 0, FILE, ""))


class Row(_RowFields):
    """One entry of the list; a link has its target (a path from the site's root, as the
    bundle reader resolves it), a folder neither hash nor size. (Tuples, not dataclasses:
    importing dataclasses is ~10 ms of a `deploy --server` whose whole budget is ~80.)"""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"path": self.path, "mode": self.mode}
        if self.mode in (FILE, EXECUTABLE):
            row |= {"sha256": self.sha256, "size": self.size}
        elif self.mode == LINK:
            row["target"] = self.target
        return row

    @property
    def is_file(self) -> bool:
        return self.mode in (FILE, EXECUTABLE)


class Listing:
    """What the client sends: the rows, and whether a single top folder wraps the site."""

    def __init__(self, rows: list[Row], strip_top: bool) -> None:
        self.rows = rows
        self.strip_top = strip_top

    @property
    def total_bytes(self) -> int:
        return sum(r.size for r in self.rows if r.is_file)


def _published_early(path: str) -> bool:
    """The drivers' early dotfile filter: published, or once a top folder is stripped."""
    if is_published(path):
        return True
    _, _, rest = path.partition("/")
    return bool(rest) and is_published(rest)


def frame_header(sha256: str, size: int) -> bytes:
    """What precedes each blob in a PUT of blobs: its hash and size on one line."""
    return f"{sha256} {size}\n".encode()


# the client: listing a folder or a tar.gz --------------------------------------------------
_tuple = tuple.__new__  # a Row from its five fields, without namedtuple's __new__
class Scan:
    """A folder walked: the rows known without reading (links, files the cache knows), and
    the files still to hash as (path, full path). One lstat per entry, no read."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.rows: list[Row] = []
        self.pending: list[tuple[str, str]] = []

    @property
    def files(self) -> Iterator[tuple[str, str]]:
        """Every regular file to publish, as (path, full path), in the walk's order."""
        for row in self.rows:
            if row.is_file:
                yield row.path, os.path.join(self.folder, row.path)
        yield from self.pending


def scan_folder(folder: Path | str, cache: HashCache | None = None) -> Scan:
    """Walk the folder (not `.git`, not dotfiles); a file the `cache` knows unchanged gets
    its row now, the rest wait in `pending` for `hash_pending`."""
    top = os.fspath(folder)
    if not os.path.isdir(top):
        raise ConfigError(f"no such folder: {folder}")
    scan = Scan(top)
    _walk(scan, top, "", cache)
    return scan


def _walk(scan: Scan, current: str, prefix: str, cache: HashCache | None) -> None:
    with os.scandir(current) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    # per entry, a few look-ups (a redeploy's whole walk of 1,000 files is ~7 ms of CPU)
    rows, pending = scan.rows, scan.pending
    lookup = cache.lookup if cache is not None else None
    for entry in entries:
        name = entry.name
        path = prefix + name
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            if (prefix or name != ".git") and _published_early(path + "/x"):
                _walk(scan, entry.path, path + "/", cache)
        # in a folder walked, only a dot name can be a path left out (_published_early
        # passed its folders)
        elif name.startswith(".") and not _published_early(path):
            continue
        elif stat.S_ISLNK(info.st_mode):
            target = symlink_target(path, os.readlink(entry.path))
            if target:  # a link out of the site is skipped, as a local deploy does
                rows.append(Row(path, mode=LINK, target=target))
        elif stat.S_ISREG(info.st_mode):
            known = lookup(entry.path, info) if lookup is not None else None
            if known is None:
                pending.append((path, entry.path))
            else:
                rows.append(_tuple(Row, (path, known[0], info.st_size, known[1], "")))


def hash_pending(scan: Scan, workers: int | None = None,
                 cache: HashCache | None = None) -> Listing:
    """The scan's listing, its pending files hashed (on `workers` threads when many) and
    remembered in `cache` (written by its `save`, which the caller chooses when to make)."""
    rows = list(scan.rows)
    if len(scan.pending) == 1:  # a redeploy's one changed file: no thread, maybe no OpenSSL
        hashed: Any = [_hash_file(scan.pending[0][1], alone=True)]
        rows += _hashed_rows(scan.pending, hashed, cache)
    elif workers == 1:
        hashed = map(_hash_file, [full for _, full in scan.pending])
        rows += _hashed_rows(scan.pending, hashed, cache)
    elif scan.pending:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(workers or os.cpu_count() or 1, 1)) as pool:
            hashed = pool.map(_hash_file, [full for _, full in scan.pending])
            rows += _hashed_rows(scan.pending, hashed, cache)
    rows.sort(key=lambda r: r.path)
    return Listing(rows, strip_top=False)


def _hashed_rows(pending: list[tuple[str, str]], hashed: Any,
                 cache: HashCache | None) -> Iterator[Row]:
    for (path, full), (digest, size, mode, opened) in zip(pending, hashed, strict=True):
        if cache is not None:
            cache.remember(full, opened, (digest, mode))
        yield Row(path, digest, size, mode)


def list_folder(folder: Path | str, workers: int | None = None,
                cache: HashCache | None = None) -> Listing:
    """The folder's files (not `.git`, not dotfiles), hashed on `workers` threads; a file
    the `cache` knows unchanged is not read."""
    listing = hash_pending(scan_folder(folder, cache), workers, cache)
    if cache is not None:
        cache.save()
    return listing


def _hash_file(full: str, alone: bool = False) -> tuple[str, int, str, os.stat_result]:
    """(sha256, size, mode, the file's stat when it was opened: what a cache keys it by; a
    change while it is read moves its timestamps past that). `alone`: the only file to
    hash (a small one then needs no OpenSSL)."""
    size = 0
    with open(full, "rb", buffering=0) as handle:
        opened = os.fstat(handle.fileno())
        digest = sha256_hasher(opened.st_size if alone else SMALL_HASH + 1)
        mode = EXECUTABLE if opened.st_mode & stat.S_IXUSR else FILE
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size, mode, opened


def list_tarball(stream: BinaryIO, limits: Limits | None = None) -> Listing:
    """A tar.gz's members, hashed as they stream past (the server's own reader and rules)."""
    from pushsite.deploy.bundle import BundleReader, MemberKind
    from pushsite.limits import DEFAULT_LIMITS

    reader = BundleReader(stream, limits or DEFAULT_LIMITS)
    rows: list[Row] = []
    for member in reader.members():
        if member.kind == MemberKind.DIR:
            rows.append(Row(member.path, mode=DIR))
        elif member.kind == MemberKind.FILE and _published_early(member.path):
            digest = sha256_hasher(SMALL_HASH + 1)  # many members, one after another
            size = 0
            while chunk := reader.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
            rows.append(Row(member.path, digest.hexdigest(), size))
        elif member.kind in (MemberKind.SYMLINK, MemberKind.HARDLINK) and member.link_target:
            rows.append(Row(member.path, mode=LINK, target=member.link_target))
    return Listing(rows, strip_top=not reader.root_listed)


def tarball_files(stream: BinaryIO) -> Iterator[tuple[str, int, BundleReader]]:
    """(path, size, the reader at its content) for each file `list_tarball` listed."""
    from pushsite.deploy.bundle import BundleReader, MemberKind

    reader = BundleReader(stream)
    for member in reader.members():
        if member.kind != MemberKind.FILE or not _published_early(member.path):
            continue
        yield member.path, member.size, reader


# the server: checking a list it was sent ---------------------------------------------------


def check_rows(raw: list[Any], limits: Limits) -> list[Row]:
    """The rows of a client's list, each checked as a bundle's member would be, or the error
    (ConfigError 400 for a malformed row, BundleRejected 422 for an unsafe path,
    BundleTooLarge 413 over a limit) naming the first bad row."""
    if not isinstance(raw, list):
        raise ConfigError("`files` must be a list of {path, sha256, size, mode}")
    if len(raw) > limits.max_files:
        raise BundleTooLarge(f"the list names {len(raw)} entries (limit "
                             f"max_files={limits.max_files})")
    rows: list[Row] = []
    seen: set[str] = set()
    total = 0
    # the limits read once, a file's row made as a tuple, and the limits' own checks (and
    # words) only past a bound: ~5 µs a row was a third of a 1,000-file start
    longest, biggest, most = limits.max_path_length, limits.max_file_bytes, \
        limits.max_total_bytes
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise ConfigError(f"files[{index}] is not an object with a string `path`")
        mode = item.get("mode") or FILE
        if mode.__class__ is not str:
            mode = str(mode)
        if mode not in MODES:
            raise ConfigError(f"files[{index}] ({item['path']!r}): mode {mode!r} is not one of "
                              f"{', '.join(MODES)}")
        path = normalise_member_path(item["path"]).rstrip("/")
        if not path:
            raise BundleRejected(f"files[{index}] has an empty path")
        if len(path) > longest // 4 and len(path.encode()) > longest:  # UTF-8: <= 4 a char
            raise BundleTooLarge(f"the path {path[:80]!r}... is longer than "
                                 f"{longest} bytes")
        if path in seen:
            raise BundleRejected(f"the list names {path!r} twice")
        seen.add(path)
        if mode == DIR:
            rows.append(Row(path, mode=DIR))
        elif mode == LINK:
            target = item.get("target")
            if not isinstance(target, str) or not target:
                raise ConfigError(f"files[{index}] ({path!r}) is a link without a `target` "
                                  "(a path from the site's root)")
            rows.append(Row(path, mode=LINK, target=normalise_member_path(target)))
        else:
            digest, size = item.get("sha256"), item.get("size")
            # 64 lowercase hex digits (str methods: a third of a regex's time, per row)
            if not isinstance(digest, str) or len(digest) != 64 or digest.strip(_HEX):
                raise ConfigError(f"files[{index}] ({path!r}): sha256 must be 64 lowercase "
                                  "hex digits")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ConfigError(f"files[{index}] ({path!r}): size must be a whole number "
                                  "of bytes")
            total += size
            if size > biggest or total > most:
                limits.count_file(path, size, total - size, whole="upload")  # raises
            rows.append(_tuple(Row, (path, digest, size, mode, "")))
    if not any(r.is_file for r in rows):
        raise BundleRejected("the list names no file to publish")
    return rows
