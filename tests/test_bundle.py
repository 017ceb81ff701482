"""The bundle reader against real git archives, real tar, and hostile archives made here."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import struct
import subprocess
import tarfile
import tracemalloc
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from isal import isal_zlib

from pushsite.deploy.bundle import BundleReader, Member, MemberKind, _byte_sum
from pushsite.deploy.paths import common_top_folder
from pushsite.errors import BundleRejected, BundleTooLarge
from pushsite.limits import DEFAULT_LIMITS, Limits

MiB = 1 << 20


class OneWayStream(io.RawIOBase):
    """Bytes that can only be read forward, at most `step` at a time, as from a pipe."""

    def __init__(self, data: bytes | Iterable[bytes], step: int = 1 << 16) -> None:
        self._chunks: Iterator[bytes] = iter([data] if isinstance(data, bytes) else data)
        self._current = memoryview(b"")
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._current:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._current = memoryview(chunk)
        size = min(len(buffer), self._step, len(self._current))
        buffer[:size] = self._current[:size]
        self._current = self._current[size:]
        return size


def read_bundle(
    data: bytes | Iterable[bytes], limits: Limits = DEFAULT_LIMITS, step: int = 1 << 16
) -> tuple[list[tuple[Member, bytes]], BundleReader]:
    """Every member with its data (read in odd-sized chunks), and the reader for its totals."""
    reader = BundleReader(OneWayStream(data, step), limits)  # type: ignore[arg-type]
    out = []
    for member in reader.members():
        parts = []
        while chunk := reader.read(7919):
            parts.append(chunk)
        out.append((member, b"".join(parts)))
    return out, reader


def paths_of(data: bytes, **kwargs: object) -> list[str]:
    return [m.path for m, _ in read_bundle(data, **kwargs)[0]]  # type: ignore[arg-type]


def entry(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_of(
    entries: Iterable[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, encoding="utf-8") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return buffer.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def header(
    name: bytes,
    size: int = 0,
    kind: bytes = b"0",
    link: bytes = b"",
    size_field: bytes | None = None,
    magic: bytes = b"ustar\x0000",
    signed_checksum: bool = False,
) -> bytes:
    """One tar header block, written by hand so tests can say exactly what is in it."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:124] = b"0000000\x000000000\0"
    block[124:136] = size_field if size_field is not None else b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[157 : 157 + len(link)] = link
    block[257:265] = magic
    checksum = sum(block) - (256 * sum(b > 127 for b in block) if signed_checksum else 0)
    block[148:156] = b"%06o\0 " % checksum
    assert len(block) == 512, "a field was given the wrong width"
    return bytes(block)


def pax(key: bytes, value: bytes) -> bytes:
    """One pax record, `<length> key=value\\n`, where the length counts itself."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return b"%d" % length + body


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


END = bytes(1024)


def site_entries() -> list[tuple[tarfile.TarInfo, bytes]]:
    return [
        entry("x/", kind=tarfile.DIRTYPE, mode=0o755),
        entry("x/index.html", b"<h1>hello</h1>\n"),
        entry("x/css/site.css", b"body { color: red }\n" * 50),
    ]


# -- real archives -------------------------------------------------------------------------------

GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "PATH": os.environ["PATH"],
}
LONG_DIR = "d" * 90 + "/" + "e" * 90


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repo with the shapes a site has: nested folders, a long path, UTF-8, a link."""
    root = tmp_path / "repo"
    (root / "css").mkdir(parents=True)
    (root / LONG_DIR).mkdir(parents=True)
    (root / ".well-known").mkdir()
    (root / "index.html").write_bytes(b"<h1>home</h1>\n")
    (root / "css" / "site.css").write_bytes(b"body{}\n" * 1000)
    (root / "café.html").write_bytes(b"accent\n")
    (root / LONG_DIR / "page.html").write_bytes(b"deep\n")
    (root / ".well-known" / "security.txt").write_bytes(b"Contact: x\n")
    (root / ".env").write_bytes(b"SECRET=1\n")
    (root / "latest.html").symlink_to("index.html")
    (root / "css" / "up.html").symlink_to("../index.html")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "site"]):
        subprocess.run(["git", *args], cwd=root, env=GIT_ENV, check=True)
    return root


def test_git_archive_read_from_a_pipe(repo: Path) -> None:
    commit = (
        subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, env=GIT_ENV, check=True, capture_output=True
        )
        .stdout.decode()
        .strip()
    )
    process = subprocess.Popen(
        ["git", "archive", "--format=tar.gz", "--prefix=site/", "HEAD"],
        cwd=repo,
        env=GIT_ENV,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        reader = BundleReader(process.stdout)
        found = {}
        for member in reader.members():
            found[member.path] = (member, reader.read())
    finally:
        process.wait()
    assert reader.commit == commit
    assert not reader.root_listed
    assert found["site/index.html"][1] == b"<h1>home</h1>\n"
    assert found["site/css/site.css"][1] == b"body{}\n" * 1000
    assert found["site/café.html"][1] == b"accent\n"
    assert found[f"site/{LONG_DIR}/page.html"][1] == b"deep\n"  # a pax path record
    assert found["site/.env"][0].kind is MemberKind.FILE  # publishing is the deployer's call
    assert found["site/css"][0].kind is MemberKind.DIR
    link = found["site/latest.html"][0]
    assert (link.kind, link.link_target) == (MemberKind.SYMLINK, "site/index.html")
    assert found["site/css/up.html"][0].link_target == "site/index.html"
    assert common_top_folder(found, {p for p, (m, _) in found.items() if m.kind == "dir"}) == "site"
    assert reader.compressed_bytes > 0 and reader.uncompressed_bytes % 512 == 0


def test_tar_czf_with_gnu_long_names_and_a_root_folder(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / LONG_DIR).mkdir(parents=True)
    (site / LONG_DIR / "page.html").write_bytes(b"deep\n")
    (site / "link.html").symlink_to(f"{LONG_DIR}/page.html")  # target > 100 bytes: GNU 'K'
    bundle = tmp_path / "site.tgz"
    subprocess.run(["tar", "--format=gnu", "-czf", str(bundle), "-C", str(site), "."], check=True)
    members, reader = read_bundle(bundle.read_bytes())
    found = {m.path: (m, data) for m, data in members}
    assert "." not in found and "" not in found  # "./" is the root: not a member
    assert reader.root_listed  # so the deployer knows there is no wrapping folder
    assert found[f"{LONG_DIR}/page.html"][1] == b"deep\n"
    assert found["link.html"][0].link_target == f"{LONG_DIR}/page.html"


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_tar_format_reads_like_tarfile_reads_it(fmt: int) -> None:
    long_path = "x/" + "p" * 80 + "/" + "q" * 60 + ".html"  # ustar prefix, GNU 'L' or pax path
    entries = [
        *site_entries(),
        entry(long_path, b"long\n"),
        entry("x/l", kind=tarfile.SYMTYPE, link="index.html"),
    ]
    data = tar_of(entries, fmt)
    ours = [(m.path, m.size, content) for m, content in read_bundle(gz(data))[0]]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        theirs = [
            (t.name.rstrip("/"), t.size, tar.extractfile(t).read() if t.isfile() else b"")  # type: ignore[union-attr]
            for t in tar
        ]
    assert ours == theirs


component = st.text(
    st.characters(
        max_codepoint=0x2FF, blacklist_categories=("Cc", "Cs"), blacklist_characters="/\\."
    ),
    min_size=1,
    max_size=60,
)
random_entry = st.tuples(
    st.lists(component, min_size=1, max_size=4).map("/".join),
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE]),
    st.binary(max_size=700),
)


@settings(max_examples=60, deadline=None)
@given(
    # one entry per path: a path named twice is refused (test_bundle_ambiguous.py)
    st.lists(random_entry, max_size=6, unique_by=lambda spec: spec[0]),
    st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    st.sampled_from([1, 511, 1 << 16]),
)
def test_random_archives_read_like_tarfile_reads_them(
    specs: list[tuple[str, bytes, bytes]], fmt: int, step: int
) -> None:
    entries = [  # links get a name with a dot, which no other path can lie under
        entry(f"x/{name}.lnk", kind=kind, link="a")
        if kind == tarfile.SYMTYPE
        else entry("x/" + name, body if kind == tarfile.REGTYPE else b"", kind)
        for name, kind, body in specs
    ]
    data = tar_of(entries, fmt)
    ours = [(m.path, m.kind.value, m.size, c) for m, c in read_bundle(gz(data), step=step)[0]]
    kinds = {tarfile.REGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink"}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        theirs = [
            (t.name, kinds[t.type], t.size, tar.extractfile(t).read() if t.isfile() else b"")  # type: ignore[union-attr]
            for t in tar
        ]
    assert ours == theirs


# -- paths and links ------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "../evil.html",
    "x/../../evil.html",
    "x/./../evil.html",
    "/etc/passwd",
    "C:/evil.html",
    "x\\..\\evil.html",
    "x/a\x01b.html",
    "x/a\x00b.html" + "c" * 120,  # a NUL, which only a long-name or pax record can carry
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_unsafe_member_names_reject_the_bundle(name: str, fmt: int) -> None:
    data = gz(tar_of([*site_entries(), entry(name, b"owned")], fmt))
    with pytest.raises(BundleRejected, match="path"):
        read_bundle(data)


@pytest.mark.parametrize(
    "name", [b"../evil", b"/abs", b"C:evil", b"a\\b", b"a\x1bb", b"caf\xe9.html", b"x/\xff"]
)
def test_unsafe_names_in_a_plain_ustar_header_reject_the_bundle(name: bytes) -> None:
    with pytest.raises(BundleRejected):
        read_bundle(gz(header(name) + END))


@pytest.mark.parametrize("kind", [b"x", b"L"])
def test_a_nul_inside_a_long_name_rejects_the_bundle(kind: bytes) -> None:
    name = b"x/index.html\0../../evil"
    data = pax(b"path", name) if kind == b"x" else name + b"\0"
    bundle = header(b"././@LongLink", len(data), kind) + padded(data) + header(b"ok") + END
    with pytest.raises(BundleRejected, match="control character"):
        read_bundle(gz(bundle))


def test_pax_path_overrides_a_harmless_header_name() -> None:
    records = pax(b"path", b"../../../etc/passwd")
    data = header(b"PaxHeader", len(records), b"x") + padded(records) + header(b"ok.html") + END
    with pytest.raises(BundleRejected, match=r"'\.\.'"):
        read_bundle(gz(data))


@pytest.mark.parametrize(
    ("link", "target", "expected"),
    [
        ("x/a.html", "index.html", "x/index.html"),
        ("x/css/a.html", "../index.html", "x/index.html"),
        ("x/a.html", "../../etc/passwd", None),
        ("x/a.html", "/etc/passwd", None),
    ],
)
def test_symlink_targets_are_resolved_never_followed(
    link: str, target: str, expected: str | None
) -> None:
    data = gz(tar_of([*site_entries(), entry(link, kind=tarfile.SYMTYPE, link=target)]))
    member = read_bundle(data)[0][-1][0]
    assert (member.path, member.kind, member.link_target) == (link, "symlink", expected)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
@pytest.mark.parametrize("under", ["x/d/evil.html", "x/d/a/b/evil.html"])
def test_writing_through_an_earlier_link_rejects_the_bundle(kind: bytes, under: str) -> None:
    target = "/tmp" if kind == tarfile.SYMTYPE else "x/index.html"
    data = gz(tar_of([*site_entries(), entry("x/d", kind=kind, link=target), entry(under, b"!")]))
    with pytest.raises(BundleRejected, match="through a link"):
        read_bundle(data)


def test_hard_link_to_an_earlier_file_names_it() -> None:
    data = gz(
        tar_of([*site_entries(), entry("x/copy.html", kind=tarfile.LNKTYPE, link="x/index.html")])
    )
    member = read_bundle(data)[0][-1][0]
    assert (member.kind, member.link_target, member.size) == ("hardlink", "x/index.html", 0)


def test_hard_link_to_a_hard_link_names_the_first_copy() -> None:
    entries = [
        *site_entries(),
        entry("x/a.html", kind=tarfile.LNKTYPE, link="x/index.html"),
        entry("x/b.html", kind=tarfile.LNKTYPE, link="x/a.html"),
    ]
    assert read_bundle(gz(tar_of(entries)))[0][-1][0].link_target == "x/index.html"


@pytest.mark.parametrize("target", ["x/missing.html", "x/css", "../x/index.html", "/etc/passwd"])
def test_hard_link_to_anything_but_an_earlier_file_has_no_target(target: str) -> None:
    data = gz(tar_of([*site_entries(), entry("x/h.html", kind=tarfile.LNKTYPE, link=target)]))
    member = read_bundle(data)[0][-1][0]
    assert (member.path, member.kind, member.link_target) == ("x/h.html", "hardlink", None)


def test_hard_link_to_a_later_file_has_no_target() -> None:
    """tar names the first copy in full and links later ones to it: forward links are bogus."""
    entries = [
        entry("x/h.html", kind=tarfile.LNKTYPE, link="x/later.html"),
        entry("x/later.html", b"1"),
    ]
    assert read_bundle(gz(tar_of(entries)))[0][0][0].link_target is None


def test_devices_fifos_and_unknown_types_are_special() -> None:
    data = (
        header(b"x/fifo", kind=b"6")
        + header(b"x/tty", kind=b"3")
        + header(b"x/disk", kind=b"4")
        + header(b"x/odd", 5, b"Z")  # an unknown type: its data is skipped, not served
        + padded(b"12345")
        + header(b"x/last.html", 4)
        + padded(b"last")
        + END
    )
    found = {m.path: (m, content) for m, content in read_bundle(gz(data))[0]}
    assert [found[p][0].kind for p in ("x/fifo", "x/tty", "x/disk", "x/odd")] == ["special"] * 4
    assert found["x/odd"][0].size == 0 and found["x/odd"][1] == b""
    assert found["x/last.html"][1] == b"last"


def test_old_style_folder_is_a_dir_and_base256_size_is_read() -> None:
    size_field = b"\x80" + (5).to_bytes(11, "big")
    data = (
        header(b"x/old/", kind=b"\0", magic=bytes(8))
        + header(b"x/big.bin", size_field=size_field)
        + padded(b"12345")
        + END
    )
    (old, _), (big, content) = read_bundle(gz(data))[0]
    assert (old.path, old.kind) == ("x/old", "dir")
    assert (big.size, content) == (5, b"12345")


@pytest.mark.parametrize(
    "field", [b"-0000000001\0", b"0o000000017\0", b"00000_00017\0", b"0000000001x\0"]
)
def test_size_fields_must_be_plain_octal(field: bytes) -> None:
    with pytest.raises(BundleRejected, match="unreadable size"):
        read_bundle(gz(header(b"a.html", size_field=field) + padded(b"x") + END))


def test_signed_header_checksums_are_accepted() -> None:
    data = header("x/é.html".encode(), 2, signed_checksum=True) + padded(b"ok") + END
    assert paths_of(gz(data)) == ["x/é.html"]


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_files_from_gnu_tar_reject_the_bundle(tmp_path: Path, fmt: str) -> None:
    site = tmp_path / "site"
    site.mkdir()
    with open(site / "holes.bin", "wb") as handle:
        handle.truncate(4 * MiB)
        handle.seek(2 * MiB)
        handle.write(b"data")
    bundle = tmp_path / "site.tgz"
    subprocess.run(
        ["tar", f"--format={fmt}", "--sparse", "-czf", str(bundle), "-C", str(tmp_path), "site"],
        check=True,
    )
    with pytest.raises(BundleRejected, match="sparse"):
        read_bundle(bundle.read_bytes())


@pytest.mark.parametrize("kind", [b"S", b"M", b"N"])
def test_sparse_and_multivolume_entries_reject_the_bundle(kind: bytes) -> None:
    with pytest.raises(BundleRejected, match="does not read"):
        read_bundle(gz(header(b"x/a", kind=kind) + END))


def test_links_with_data_reject_the_bundle() -> None:
    data = header(b"x/l", 3, b"2", b"a") + padded(b"abc") + END
    with pytest.raises(BundleRejected, match="declares 3 bytes"):
        read_bundle(gz(data))


def test_a_global_header_keeps_the_commit_and_may_not_set_paths() -> None:
    comment = pax(b"comment", b"a" * 40)
    data = header(b"pax_global_header", len(comment), b"g") + padded(comment) + END
    assert read_bundle(gz(data))[1].commit == "a" * 40
    prose = pax(b"comment", b"made by hand <script>")
    data = header(b"pax_global_header", len(prose), b"g") + padded(prose) + END
    assert read_bundle(gz(data))[1].commit == ""  # only an object id counts as a commit
    records = pax(b"path", b"x/a.txt")
    data = header(b"pax_global_header", len(records), b"g") + padded(records) + END
    with pytest.raises(BundleRejected, match="global"):
        read_bundle(gz(data))


@pytest.mark.parametrize(
    "records",
    [b"8 path=a\n", b"x path=a\n", b"12 path=a\n", b"5 pa\n", b"7 =abc\n", b"9 path=a\nzz"],
)
def test_malformed_pax_records_reject_the_bundle(records: bytes) -> None:
    data = header(b"PaxHeader", len(records), b"x") + padded(records) + header(b"a") + END
    with pytest.raises(BundleRejected, match="pax"):
        read_bundle(gz(data))


def test_a_duplicate_path_is_refused() -> None:
    """More cases in test_bundle_ambiguous.py."""
    data = gz(tar_of([*site_entries(), entry("x/index.html", b"second")]))
    with pytest.raises(BundleRejected, match="'x/index.html' twice"):
        read_bundle(data)


def test_unread_data_is_skipped_when_iteration_advances() -> None:
    reader = BundleReader(OneWayStream(gz(tar_of(site_entries()))))  # type: ignore[arg-type]
    seen = []
    for member in reader.members():
        seen.append(member.path)
        if member.path == "x/css/site.css":
            assert reader.read(4) == b"body"  # then leave the rest
        else:
            assert reader.read(0) == b""
    assert seen == ["x", "x/index.html", "x/css/site.css"]
    with pytest.raises(RuntimeError):
        next(iter(reader.members()))


# -- gzip ------------------------------------------------------------------------------------------


def small_bundle() -> bytes:
    return gz(tar_of(site_entries()))


@pytest.mark.parametrize("keep", [2, 5, 10, 30, 100, -9, -8, -5, -1])
def test_truncated_gzip_is_rejected(keep: int) -> None:
    data = small_bundle()
    with pytest.raises(BundleRejected, match="truncated|ends"):
        read_bundle(data[:keep])


def test_every_changed_bit_after_the_gzip_header_is_rejected_or_harmless() -> None:
    """A flip either fails a check or lands where deflate ignores it (same bytes out)."""
    data = small_bundle()
    expected = [(m, c) for m, c in read_bundle(data)[0]]
    harmless = 0
    for position in range(10, len(data)):
        for bit in (0x01, 0x10, 0x80):
            damaged = bytearray(data)
            damaged[position] ^= bit
            try:
                members = read_bundle(bytes(damaged))[0]
            except BundleRejected:
                continue
            assert members == expected, f"byte {position} bit {bit:#x} changed the content"
            harmless += 1
    assert harmless < 5


@pytest.mark.parametrize(("offset", "what"), [(-8, "CRC32"), (-1, "length")])
def test_a_flipped_trailer_byte_fails_the_check(offset: int, what: str) -> None:
    damaged = bytearray(small_bundle())
    damaged[offset] ^= 0xFF
    with pytest.raises(BundleRejected, match="CRC32 or length"):
        read_bundle(bytes(damaged))


@pytest.mark.parametrize("extra", [b"garbage", b"\x1f", b"\x1f\x8b", b"\0\0\0x", b"PK\x03\x04"])
def test_bytes_after_the_last_gzip_member_reject_the_bundle(extra: bytes) -> None:
    with pytest.raises(BundleRejected):
        read_bundle(small_bundle() + extra)


def test_zero_padding_after_the_last_gzip_member_is_accepted() -> None:
    assert paths_of(small_bundle() + bytes(5000)) == ["x", "x/index.html", "x/css/site.css"]


@pytest.mark.parametrize("step", [1, 3, 1 << 16])
def test_concatenated_gzip_members_are_one_bundle(step: int) -> None:
    tar = tar_of(site_entries())
    cut1, cut2 = 700, 1500  # inside a header and inside file data
    data = gz(tar[:cut1]) + gz(b"") + gz(tar[cut1:cut2]) + gz(tar[cut2:])
    members, reader = read_bundle(data, step=step)
    assert [(m.path, c) for m, c in members] == [(m.path, c) for m, c in read_bundle(gz(tar))[0]]
    assert reader.compressed_bytes == len(data)
    assert reader.uncompressed_bytes == len(tar)


def gzip_member(data: bytes, flags: int = 0, method: int = 8, fields: bytes = b"") -> bytes:
    """One gzip member written by hand, with optional header fields (FEXTRA, FNAME, ...)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = compressor.compress(data) + compressor.flush()
    head = bytes([0x1F, 0x8B, method, flags, 0, 0, 0, 0, 0, 255]) + fields
    if flags & 0x02:
        head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    return head + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


@pytest.mark.parametrize(
    ("flags", "fields"),
    [
        (0x08, b"site.tar\0"),  # FNAME, as gzip(1) writes
        (0x04, b"\x06\x00AB\x02\x00hi"),  # FEXTRA
        (0x10, b"a comment\0"),  # FCOMMENT
        (0x02, b""),  # FHCRC
        (0x1E, b"\x02\x00xyname\0comment\0"),
    ],
)
def test_gzip_header_fields_are_understood(flags: int, fields: bytes) -> None:
    assert len(read_bundle(gzip_member(tar_of(site_entries()), flags, fields=fields))[0]) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flags": 0x20}, "header is invalid"),  # a reserved flag
        ({"method": 7}, "header is invalid"),
    ],
)
def test_unknown_gzip_methods_and_flags_are_rejected(change: dict[str, int], message: str) -> None:
    with pytest.raises(BundleRejected, match=message):
        read_bundle(gzip_member(tar_of(site_entries()), **change))


def test_a_wrong_gzip_header_crc_is_rejected() -> None:
    damaged = bytearray(gzip_member(tar_of(site_entries()), 0x02))
    damaged[10] ^= 1
    with pytest.raises(BundleRejected, match="CRC32"):
        read_bundle(bytes(damaged))


def test_gzip_cli_output_is_read_and_two_joined_bundles_are_not(tmp_path: Path) -> None:
    (tmp_path / "site.tar").write_bytes(tar_of(site_entries()))
    subprocess.run(["gzip", "-k", str(tmp_path / "site.tar")], check=True)
    data = (tmp_path / "site.tar.gz").read_bytes()
    assert len(read_bundle(data)[0]) == 3
    with pytest.raises(BundleRejected, match="after the tar end-of-archive marker"):
        read_bundle(data + data)  # valid gzip, but a second archive hides behind the first


def test_a_zip_renamed_tar_gz_is_rejected() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.html", "<h1>hi</h1>")
    with pytest.raises(BundleRejected, match="zip file"):
        read_bundle(buffer.getvalue())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"<html>not a bundle</html>\n", "not gzip"),
        (b"\x1f", "not gzip"),
        (tar_of(site_entries()), "plain tar"),
    ],
)
def test_things_that_are_not_gzip_are_rejected(data: bytes, message: str) -> None:
    with pytest.raises(BundleRejected, match=message):
        read_bundle(data)


# -- tar structure ---------------------------------------------------------------------------------


def test_a_tar_without_its_end_marker_is_rejected() -> None:
    with pytest.raises(BundleRejected, match="truncated"):
        read_bundle(gz(header(b"a.html", 2) + padded(b"hi")))


def test_a_lone_zero_block_is_rejected() -> None:
    with pytest.raises(BundleRejected, match="truncated"):
        read_bundle(gz(header(b"a.html", 2) + padded(b"hi") + bytes(512)))
    with pytest.raises(BundleRejected, match="zero block"):
        read_bundle(gz(bytes(512) + header(b"a.html") + END))


def test_data_after_the_end_marker_is_rejected() -> None:
    with pytest.raises(BundleRejected, match="after the tar end"):
        read_bundle(gz(header(b"a.html") + END + header(b"hidden.html")))


def test_a_corrupt_header_checksum_is_rejected() -> None:
    good = header(b"a.html", 2)
    bad = good[:5] + b"X" + good[6:]
    with pytest.raises(BundleRejected, match="checksum"):
        read_bundle(gz(bad + padded(b"hi") + END))
    unreadable = good[:148] + b"zzzzzz\0 " + good[156:]
    with pytest.raises(BundleRejected, match="checksum"):
        read_bundle(gz(unreadable + padded(b"hi") + END))


@given(st.binary(min_size=512, max_size=512))
@example(b"\xff" * 512)  # the largest sum: 130,560, past adler32's modulus 65,521
@example(b"\xff" * 256 + bytes(256))
@example(bytes(512))
def test_the_header_byte_sum_is_exact(block: bytes) -> None:
    """The checksum's byte sum is taken with adler32 in two halves (bundle._byte_sum)."""
    assert _byte_sum(block) == sum(block)


def test_a_header_of_high_bytes_checks_out() -> None:
    name = ("é" * 50).encode()  # 100 bytes of 0xc3 and 0xa9
    data = header(name, 2)
    members, _ = read_bundle(gz(data + padded(b"ok") + END))
    assert members[0][1] == b"ok"
    bad = data[:100] + bytes([data[100] ^ 1]) + data[101:]  # one bit of the mode flipped
    with pytest.raises(BundleRejected, match="checksum"):
        read_bundle(gz(bad + padded(b"ok") + END))


def test_a_file_cut_short_inside_the_tar_is_rejected() -> None:
    with pytest.raises(BundleRejected, match="truncated"):
        read_bundle(gz(header(b"a.html", 5000) + b"x" * 100))


# -- limits ----------------------------------------------------------------------------------------


def test_too_many_entries() -> None:
    with pytest.raises(BundleTooLarge, match="max_files=2"):
        read_bundle(small_bundle(), Limits(max_files=2))
    assert len(paths_of(small_bundle(), limits=Limits(max_files=3))) == 3


@pytest.mark.parametrize(
    ("limits", "error", "match"),
    [
        (Limits(), BundleTooLarge, "max_file_bytes=4294967296"),
        (
            Limits(max_file_bytes=8 * 2**30, max_total_bytes=2**32),
            BundleTooLarge,
            "max_total_bytes",
        ),
        (Limits(max_file_bytes=8 * 2**30, max_total_bytes=8 * 2**30), BundleRejected, "truncated"),
    ],
)
def test_sizes_are_checked_before_any_data_is_read(
    limits: Limits, error: type[Exception], match: str
) -> None:
    """The stream stops right after the header: only a check on the declared size can fire."""
    records = pax(b"size", b"5000000000")
    data = header(b"PaxHeader", len(records), b"x") + padded(records) + header(b"big.bin")
    with pytest.raises(error, match=match):
        read_bundle(gz(data), limits)


def test_total_size_counts_every_file() -> None:
    data = b"".join(header(b"f%d" % i, 600) + padded(b"x" * 600) for i in range(3)) + END
    assert len(paths_of(gz(data), limits=Limits(max_total_bytes=1800))) == 3
    with pytest.raises(BundleTooLarge, match="max_total_bytes=1799"):
        read_bundle(gz(data), Limits(max_total_bytes=1799))


def test_path_length_is_measured_in_bytes_of_the_normalised_path() -> None:
    ok = "x/" + "é" * 511  # 2 + 1022 bytes
    assert paths_of(gz(tar_of([entry("./" + ok + "/")]))) == [ok]
    with pytest.raises(BundleTooLarge, match="max_path_length=1024"):
        read_bundle(gz(tar_of([entry(ok + "e")])))


def zero_deflate(mib: int) -> Iterator[bytes]:
    """Raw deflate of `mib` MiB of zeros, made fast by repeating one fully flushed block."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    for _ in range(mib):
        yield block


def test_a_gzip_bomb_stops_after_bounded_work() -> None:
    """3 GiB of zeros declared as one file; the reader must give up long before the end."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = compressor.compress(header(b"bomb.bin", 3 * 2**30)) + compressor.flush(
        zlib.Z_FULL_FLUSH
    )
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    stream = [gzip_header, start, *zero_deflate(3 * 1024)]  # no end: it must never get there
    limits = Limits()
    reader = BundleReader(OneWayStream(stream), limits)  # type: ignore[arg-type]
    with pytest.raises(BundleTooLarge, match="max_ratio=250"):
        for _member in reader.members():
            while reader.read(MiB):
                pass
    assert reader.uncompressed_bytes < limits.ratio_min_bytes + 2 * MiB
    assert reader.compressed_bytes < 200 * 1024


def test_a_hundred_thousand_tiny_files_pass_the_ratio_check() -> None:
    """Tiny files make a tar that is mostly zero padding: 63 times smaller at gzip -6."""

    def chunks() -> Iterator[bytes]:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # git archive's level
        for batch in range(100):
            blocks = []
            for i in range(batch * 1000, batch * 1000 + 1000):
                body = b"<p>%d</p>" % i
                blocks.append(header(b"site/d%d/page%d.html" % (i % 97, i), len(body)))
                blocks.append(padded(body))
            yield compressor.compress(b"".join(blocks))
        yield compressor.compress(END) + compressor.flush()

    reader = BundleReader(OneWayStream(chunks()))  # type: ignore[arg-type]
    count = 0
    for member in reader.members():
        assert reader.read() == b"<p>%d</p>" % count, member.path
        count += 1
    assert count == 100_000
    assert reader.uncompressed_bytes > Limits().ratio_min_bytes  # so the ratio was checked
    assert reader.uncompressed_bytes > 50 * reader.compressed_bytes


def test_a_large_file_reads_in_flat_memory() -> None:
    size = 96 * MiB

    def chunks() -> Iterator[bytes]:
        compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
        yield compressor.compress(header(b"big.bin", size))
        for _ in range(size // MiB):
            yield compressor.compress(bytes(MiB))
        yield compressor.compress(END) + compressor.flush()

    reader = BundleReader(OneWayStream(chunks()), Limits(max_ratio=2000))  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        total = 0
        for _member in reader.members():
            while chunk := reader.read(MiB):
                total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert peak < 8 * MiB, f"peak {peak} bytes while reading a {size}-byte file"


# -- anything at all -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_are_rejected_cleanly(data: bytes) -> None:
    with pytest.raises(BundleRejected):
        read_bundle(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_tar_inside_good_gzip_fails_only_with_bundle_rejected(data: st.DataObject) -> None:
    tar = bytearray(
        tar_of(
            [
                *site_entries(),
                entry("x/" + "n" * 120, b"long"),
                entry("x/l", kind=tarfile.SYMTYPE, link="index.html"),
            ]
        )
    )
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(tar) - 1))
        tar[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(tar)))
    with contextlib.suppress(BundleRejected):
        read_bundle(gz(bytes(tar[:cut])), Limits(max_file_bytes=MiB, max_total_bytes=2 * MiB))
