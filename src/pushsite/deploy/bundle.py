"""Read a bundle (tar.gz) from a stream, strictly, without seeking and in bounded memory.

A bundle is accepted only whole. gzip: every member's CRC32 and length are checked, several
concatenated members are valid, zero padding after the last member is tolerated (as gzip(1)
does) and anything else after it is rejected. tar: every header checksum is verified, ustar,
GNU (`L`/`K` long names) and pax (`x`, `g`) headers are understood, the end-of-archive marker
(two zero blocks) must be present, and only zeros may follow it. Limits are checked on the
declared sizes before any data is read, and the inflated/compressed ratio is watched all the
way so a gzip bomb stops after a bounded amount of work.

The tar parser is our own rather than `tarfile`: `tarfile` in stream mode can stop early
without an error, keeps every member in memory, and costs four to five times as much per
entry (measured on 40,000 and 100,000-file bundles: 56-64 against 12-13 microseconds).

Usage::

    reader = BundleReader(stream)
    for member in reader.members():
        if member.kind is MemberKind.FILE:
            while chunk := reader.read(1 << 20):
                ...
    reader.commit  # the commit id from git archive's pax global header, "" if none
"""

from __future__ import annotations

import enum
import re
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple, cast

from isal import igzip_lib

from pushsite.deploy.keyset import SeenPaths
from pushsite.deploy.paths import is_root_name, normalise_member_path, symlink_target
from pushsite.errors import BundleRejected, BundleTooLarge
from pushsite.limits import DEFAULT_LIMITS, KiB, Limits, MiB

# isal's stub declares IsalError as an instance (`IsalError: Exception`); the module holds the
# exception class, which is what `except` needs
_IsalError = cast("type[Exception]", igzip_lib.IsalError)
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_IN_CHUNK = 64 * KiB  # compressed bytes read from the stream at a time
_OUT_CHUNK = 256 * KiB  # most inflated bytes held from one decompress call
_MAX_EXT_BYTES = 1 * MiB  # one pax or GNU long-name header's data
_MAX_EXT_CHAIN = 16  # extended headers in a row before a real member
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_HEADER = 10  # fixed part of a gzip member header
_COMMIT = re.compile(rb"[0-9a-f]{40}|[0-9a-f]{64}")  # sha1 or sha256 object id
_EXTENDED = (b"x", b"g", b"L", b"K")  # pax per-file, pax global, GNU long name and link


class MemberKind(enum.StrEnum):
    FILE = "file"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    DIR = "dir"
    SPECIAL = "special"  # device, FIFO or an unknown type: the deployer warns and skips it


class Member(NamedTuple):
    """One entry of the bundle, its path normalised but its top-level folder not stripped.

    A NamedTuple: made once per member, at a third of a frozen dataclass's cost."""

    path: str
    kind: MemberKind
    size: int  # bytes of data; 0 for anything but files
    link_target: str | None  # links only: normalised path from the bundle root, None if outside
    mode: int


def _rejected(what: str) -> BundleRejected:
    return BundleRejected(f"the bundle is not a valid tar.gz: {what}")


class _Gunzip:
    """Inflates a stream of one or more gzip members, checking each member's CRC and length."""

    def __init__(self, stream: BinaryIO, limits: Limits) -> None:
        self._stream = stream
        self._limits = limits
        self._inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
        self._pending = b""  # compressed bytes read but not yet given to the inflater
        self._begun = False
        self._done = False
        self.compressed = 0
        self.uncompressed = 0

    def _read_raw(self) -> bytes:
        data = self._stream.read(_IN_CHUNK) or b""
        self.compressed += len(data)
        return data

    def _start_member(self, first: bool) -> bool:
        """Begin the next gzip member, or verify the stream's end; False at the verified end."""
        data = self._pending or self._read_raw()
        self._pending = b""
        if not data:
            if first:
                raise BundleRejected("the bundle is empty (0 bytes); send a tar.gz file")
            return False
        while len(data) < _GZIP_HEADER and data[:1] == _GZIP_MAGIC[:1]:
            more = self._read_raw()
            if not more:
                break
            data += more
        if data.startswith(_GZIP_MAGIC):
            if len(data) < _GZIP_HEADER:
                raise _rejected("the gzip data ends early (truncated); upload the whole file again")
            if data[2] != 8 or data[3] & 0xE0:  # deflate is the only method; no reserved flags
                raise _rejected("a gzip member header is invalid (the file is damaged)")
            self._inflater = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
            self._pending = data
            return True
        if first:
            raise BundleRejected(_not_gzip_message(data))
        self._expect_zeros(data)
        return False

    def _expect_zeros(self, data: bytes) -> None:
        """Accept zero padding after the last gzip member (gzip(1) does); reject anything else."""
        while data:
            if data.count(0) != len(data):
                raise _rejected(
                    "there are bytes after the end of the gzip data; "
                    "the file may be two files joined or damaged"
                )
            data = self._read_raw()

    def read_chunk(self) -> bytes:
        """The next inflated bytes; b"" only once the whole stream has been read and verified."""
        if self._done:
            return b""
        if not self._begun:
            self._begun = True
            self._start_member(first=True)
        while True:
            inflater = self._inflater
            if inflater.eof:
                self._pending = inflater.unused_data
                if not self._start_member(first=False):
                    self._done = True
                    return b""
                continue
            data = b""
            if inflater.needs_input:
                data = self._pending or self._read_raw()
                self._pending = b""
                if not data:
                    raise _rejected(
                        "the gzip data ends early (truncated); upload the whole file again"
                    )
            try:
                out = inflater.decompress(data, _OUT_CHUNK)
            except _IsalError as error:
                raise _gzip_error(error) from None
            if out:
                self.uncompressed += len(out)
                self._check_ratio()
                return out

    def _check_ratio(self) -> None:
        limits = self._limits
        if (
            self.uncompressed >= limits.ratio_min_bytes
            and self.uncompressed > limits.max_ratio * self.compressed
        ):
            raise BundleTooLarge(
                f"the bundle inflates more than {limits.max_ratio} times "
                f"({self.compressed} compressed bytes gave {self.uncompressed} so far, "
                f"limit max_ratio={limits.max_ratio}); it looks like a gzip bomb"
            )


def _not_gzip_message(data: bytes) -> str:
    if data.startswith(b"PK\x03\x04"):
        hint = "it looks like a zip file; make a tar.gz with `git archive --format=tar.gz`"
    elif data[257:262] == b"ustar":
        hint = "it looks like a plain tar file; compress it with gzip"
    else:
        hint = f"it starts with {data[:8]!r}; make one with `git archive --format=tar.gz`"
    return f"the bundle is not gzip data: {hint}"


def _gzip_error(error: Exception) -> BundleRejected:
    text = str(error)
    if "checksum" in text:
        return _rejected("a gzip CRC32 or length check failed (the file is damaged)")
    if "wrapper" in text or "header" in text:
        return _rejected("a gzip member header is invalid (the file is damaged)")
    return _rejected(f"the compressed data is damaged ({text})")


def _number(field: bytes, what: str) -> int:
    """A tar numeric field: octal digits, or GNU base-256 when the high bit is set."""
    if field and field[0] & 0x80:
        if field[0] != 0x80:
            raise _rejected(f"a header has a negative or oversized {what}")
        return int.from_bytes(field[1:], "big")
    digits = field.strip(b" \0")
    if digits.translate(None, b"01234567"):  # int() alone would take "-1", "0o7" and "1_0"
        raise _rejected(f"a header has an unreadable {what} ({field!r})")
    return int(digits, 8) if digits else 0


_SIGNED = struct.Struct("148b8x356b")


def _byte_sum(block: bytes) -> int:
    """sum(block) of a 512-byte block, in C: adler32's low half is 1 + the byte sum modulo
    65521, exact for 256 bytes (at most 65,280); sum() walks 512 ints, ~6 times as long."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _check_header(block: bytes, offset: int) -> None:
    stored = _number(block[148:156], "checksum")
    unsigned = _byte_sum(block) - sum(block[148:156]) + 8 * 32
    if stored != unsigned and stored != sum(_SIGNED.unpack(block)) + 8 * 32:
        raise _rejected(f"the tar header at offset {offset} has a wrong checksum (it is corrupt)")


def _cstring(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Records `<length> <key>=<value>\\n`; strict, since they decide paths and sizes."""
    records: dict[bytes, bytes] = {}
    pos = 0
    data = data.rstrip(b"\0")
    while pos < len(data):
        space = data.find(b" ", pos, pos + 20)
        if space < 0 or not data[pos:space].isdigit():
            raise _rejected("a pax extended header is malformed")
        length = int(data[pos:space])
        record = data[pos : pos + length]
        if length <= space - pos + 1 or len(record) != length or not record.endswith(b"\n"):
            raise _rejected("a pax extended header is malformed")
        key, eq, value = record[space - pos + 1 : -1].partition(b"=")
        if not eq or not key:
            raise _rejected("a pax extended header is malformed")
        records[key] = value
        pos += length
    return records


class BundleReader:
    """Yields a bundle's members from a non-seekable stream; see the module docstring."""

    def __init__(self, stream: BinaryIO, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.commit = ""
        # True once the archive listed its root folder ("./"), as `tar czf x.tgz -C site .`
        # does: then its members are not wrapped in a top folder, even if all share one.
        self.root_listed = False
        self._gz = _Gunzip(stream, limits)
        self._buf = b""
        self._pos = 0
        self._remaining = 0  # readable data left in the current FILE member
        self._skip = 0  # bytes after that (padding, unreadable data) before the next header
        self._started = False
        self._count = 0
        self._total = 0
        self._links: set[str] = set()
        # the folder of the last member checked against _links: its neighbours share it
        self._clean_folder: str | None = None
        # earlier non-folder members a hard link may name: ~20 bytes a path, not ~110 (keyset.py)
        self._linkable = SeenPaths()
        self._folders: set[str] = set()  # earlier folder members (one may be listed twice)
        self._hard_targets: dict[str, str | None] = {}
        self._offset = 0  # tar bytes consumed, for messages

    @property
    def compressed_bytes(self) -> int:
        return self._gz.compressed

    @property
    def uncompressed_bytes(self) -> int:
        return self._gz.uncompressed

    # -- the inflated byte stream ------------------------------------------------------------

    def _fill(self) -> bool:
        chunk = self._gz.read_chunk()
        if not chunk:
            return False
        if self._pos >= len(self._buf):
            self._buf = chunk
        else:
            self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    def _take(self, size: int, what: str) -> bytes:
        while len(self._buf) - self._pos < size:
            if not self._fill():
                raise _rejected(f"the tar data ends in the middle of {what} (truncated)")
        start = self._pos
        self._pos = start + size
        self._offset += size
        return self._buf[start : self._pos]

    def _drop(self, size: int) -> None:
        while size:
            available = len(self._buf) - self._pos
            if not available:
                if not self._fill():
                    raise _rejected("the tar data ends in the middle of a file (truncated)")
                continue
            step = min(size, available)
            self._pos += step
            self._offset += step
            size -= step

    # -- the public reading interface ----------------------------------------------------------

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes of the current FILE member's data (all of it if size < 0).

        Returns b"" at the member's end. Data left unread is skipped when iteration advances.
        """
        if size < 0 or size > self._remaining:
            size = self._remaining
        if not size:
            return b""
        available = len(self._buf) - self._pos
        if not available:
            if not self._fill():
                raise _rejected("the tar data ends in the middle of a file (truncated)")
            available = len(self._buf) - self._pos
        if size <= available:
            data = self._take(size, "a file")
        else:
            parts = [self._take(available, "a file")]
            got = available
            while got < size:
                if not self._fill():
                    raise _rejected("the tar data ends in the middle of a file (truncated)")
                part = self._take(min(size - got, len(self._buf)), "a file")
                parts.append(part)
                got += len(part)
            data = b"".join(parts)
        self._remaining -= len(data)
        return data

    def members(self) -> Iterator[Member]:
        """Each member once. When the loop ends, the end marker and the gzip end are verified."""
        if self._started:
            raise RuntimeError("BundleReader.members() can be iterated only once")
        self._started = True
        while True:
            self._drop(self._remaining)
            self._remaining = 0
            member = self._next_member()
            if member is None:
                break
            yield member
        self._finish()

    # -- tar headers ---------------------------------------------------------------------------

    def _next_member(self) -> Member | None:
        """The next member, None at the end marker; skips headers that are not members."""
        pax: dict[bytes, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        extended = 0
        while True:
            self._drop(self._skip)
            self._skip = 0
            offset = self._offset
            block = self._take(_BLOCK, "a tar header")
            if block == _ZERO_BLOCK:
                if extended:
                    raise _rejected("an extended header is followed by the end of the archive")
                if self._take(_BLOCK, "the tar end marker") != _ZERO_BLOCK:
                    raise _rejected(
                        f"a single zero block at tar offset {offset} is followed by more data"
                    )
                return None
            _check_header(block, offset)
            kind = block[156:157]
            size = _number(block[124:136], "size")
            if kind in _EXTENDED:
                if size > _MAX_EXT_BYTES:
                    raise BundleTooLarge(
                        f"the bundle has an extended tar header of {size} bytes "
                        f"(limit {_MAX_EXT_BYTES})"
                    )
                if kind != b"g":
                    extended += 1
                if extended > _MAX_EXT_CHAIN:
                    raise _rejected(f"more than {_MAX_EXT_CHAIN} extended headers in a row")
                data = self._take(size, "an extended header")
                self._skip = -size % _BLOCK
                if kind == b"x":
                    pax.update(_parse_pax(data))
                elif kind == b"g":
                    self._global(_parse_pax(data))
                elif kind == b"L":
                    long_name = data.rstrip(b"\0")
                else:
                    long_link = data.rstrip(b"\0")
                continue
            self._count += 1
            if self._count > self.limits.max_files:
                raise BundleTooLarge(
                    f"the bundle has more than {self.limits.max_files} entries (files, folders "
                    f"and links; limit max_files={self.limits.max_files})"
                )
            member = self._member(block, kind, size, pax, long_name, long_link)
            if member is not None:
                return member
            pax, long_name, long_link, extended = {}, None, None, 0

    def _global(self, records: dict[bytes, bytes]) -> None:
        if records.keys() & {b"path", b"linkpath", b"size"}:
            raise _rejected("a pax global header sets a path or size for every member")
        comment = records.get(b"comment", b"").strip()
        if _COMMIT.fullmatch(comment):  # git writes the commit id; other comments are prose
            self.commit = comment.decode("ascii")

    def _member(
        self,
        block: bytes,
        kind: bytes,
        size: int,
        pax: dict[bytes, bytes],
        long_name: bytes | None,
        long_link: bytes | None,
    ) -> Member | None:
        """The member this header describes, or None for one to skip (the root, a label)."""
        if (pax and any(key.startswith(b"GNU.sparse") for key in pax)) or kind in _GNU_OLD:
            raise _rejected(
                f"it holds a sparse, multi-volume or old-style GNU entry (type {kind!r}), which "
                "pushsite does not read; make the bundle with `git archive` or plain `tar czf`"
            )
        name = (pax.get(b"path") if pax else None) or long_name
        if not name:
            end = block.find(b"\0", 0, 100)
            name = block[0:end if end >= 0 else 100]
            if block[345] and block[257:265] == b"ustar\x0000":  # a prefix: its first byte
                end = block.find(b"\0", 345, 500)
                name = block[345:end if end >= 0 else 500] + b"/" + name
        if pax and b"size" in pax:
            value = pax[b"size"]
            if not value.isdigit():
                raise _rejected(f"a pax header has an unreadable size ({value[:40]!r})")
            size = int(value)
        linkname = ((pax.get(b"linkpath") if pax else None) or long_link
                    or (_cstring(block[157:257]) if kind in _LINKS else b""))  # links' only

        member_kind, has_data = _KINDS.get(kind, _UNKNOWN)
        if member_kind is _FILE and kind == b"\0" and name.endswith(b"/"):
            member_kind, has_data = _DIR, False  # old tar: a folder as "name/"
        if kind == b"V":  # a GNU volume label: not a member at all
            self._skip = size + (-size % _BLOCK)
            return None
        if not has_data and size:
            raise _rejected(f"the {member_kind} entry {name[:200]!r} declares {size} bytes of data")
        if member_kind is _DIR and is_root_name(name):
            self.root_listed = True  # "./" from `tar czf x.tgz -C site .`: the root itself
            return None

        path = normalise_member_path(name)
        self._check_limits(path, size)
        self._check_not_through_link(path)
        target: str | None = None
        if member_kind is _HARDLINK:  # before this path counts as one it may name
            target = self._hardlink_target(linkname)
        self._check_named_once(path, member_kind)
        if member_kind is _SYMLINK:
            target = symlink_target(path, linkname)
            self._links.add(path)
            self._clean_folder = None
        elif member_kind is _HARDLINK:
            self._hard_targets[path] = target
            self._links.add(path)
            self._clean_folder = None

        if member_kind is _FILE:
            self._remaining, self._skip = size, -size % _BLOCK
        else:
            self._skip = size + (-size % _BLOCK)
            size = 0
        field = block[100:108]
        mode = _MODES.get(field)
        if mode is None:
            mode = _number(field, "mode") & 0o7777
            if len(_MODES) < 64:
                _MODES[field] = mode
        return Member(path, member_kind, size, target, mode)

    def _check_limits(self, path: str, size: int) -> None:
        limits = self.limits
        length = len(path) if path.isascii() else len(path.encode("utf-8"))
        if length > limits.max_path_length:
            raise BundleTooLarge(
                f"the path {path[:80]!r}... is {length} bytes long "
                f"(limit max_path_length={limits.max_path_length})"
            )
        self._total = limits.count_file(path, size, self._total)

    def _check_named_once(self, path: str, kind: MemberKind) -> None:
        """A path named twice (a link then a file, two files) is ambiguous: tools disagree
        about which entry wins, so a reviewer's listing and the live site could differ."""
        if kind is _DIR:
            twice = path in self._linkable
            self._folders.add(path)
        else:  # added here: the one look-up per member
            twice = self._linkable.add(path) or path in self._folders
        if twice:
            raise BundleRejected(f"the bundle names {path!r} twice; which entry is meant is "
                                 "ambiguous, so the bundle is refused")

    def _check_not_through_link(self, path: str) -> None:
        """A member under an earlier link's path would be written through that link: reject."""
        if not self._links:
            return
        folder = path[:path.rfind("/") + 1]  # "" at the top
        if folder == self._clean_folder:  # checked, and no link was added since
            return
        slash = path.find("/")
        while slash >= 0:
            if path[:slash] in self._links:
                raise BundleRejected(
                    f"the bundle holds {path!r} inside {path[:slash]!r}, which is a link; "
                    "a member may not be written through a link"
                )
            slash = path.find("/", slash + 1)
        self._clean_folder = folder

    def _hardlink_target(self, linkname: bytes) -> str | None:
        """Hard-link targets are relative to the archive root and name an earlier member.

        Anything else (missing, later, a folder, outside) gives None: the deployer skips the
        link with a warning, as it does for every link whose target is not a file it has.
        """
        try:
            target = normalise_member_path(linkname)
        except BundleRejected:
            return None
        if target in self._hard_targets:  # a link to a link: both name the first copy
            return self._hard_targets[target]
        # a key's "maybe" is enough: the deployer looks the target up exactly (a file it has)
        return target if self._linkable.maybe(target) else None

    def _finish(self) -> None:
        """After the end marker: only zeros may follow, and the gzip stream must end cleanly."""
        while True:
            rest = self._buf[self._pos :] if self._pos else self._buf
            if rest.count(0) != len(rest):
                raise _rejected("there is data after the tar end-of-archive marker")
            self._linkable.close()
            self._buf, self._pos = b"", 0
            if not self._fill():
                return


# the kinds as module constants: an enum member read from its class costs ~0.1 us, and the
# reader read them half a dozen times a member
_FILE, _DIR, _SYMLINK, _HARDLINK = (MemberKind.FILE, MemberKind.DIR, MemberKind.SYMLINK,
                                    MemberKind.HARDLINK)
_UNKNOWN = (MemberKind.SPECIAL, True)  # a type flag not in _KINDS
_MODES: dict[bytes, int] = {}  # mode field -> mode: a bundle's members share a few
_GNU_OLD = (b"S", b"M", b"N")  # GNU sparse, multi-volume continuation, old long names
_LINKS = (b"1", b"2")  # hard and symbolic links: the only members whose link name is read

# typeflag -> (kind, whether data blocks follow the header)
_KINDS: dict[bytes, tuple[MemberKind, bool]] = {
    b"0": (MemberKind.FILE, True),
    b"\0": (MemberKind.FILE, True),
    b"7": (MemberKind.FILE, True),
    b"1": (MemberKind.HARDLINK, False),
    b"2": (MemberKind.SYMLINK, False),
    b"3": (MemberKind.SPECIAL, False),
    b"4": (MemberKind.SPECIAL, False),
    b"5": (MemberKind.DIR, False),
    b"6": (MemberKind.SPECIAL, False),
    b"D": (MemberKind.DIR, True),  # GNU dumpdir: a folder with a listing we do not need
}
