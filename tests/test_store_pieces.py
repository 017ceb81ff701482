"""The local store's files hand the kernel at most 64 KiB per write (stores/pieces.py), and
what they hold is still every byte written, in order."""

from __future__ import annotations

import hashlib
import os
from array import array
from pathlib import Path

from pushsite.model import blob_key
from pushsite.stores import pieces, tempfiles
from pushsite.stores.local import LocalStore


def test_an_appended_file_holds_every_byte_written_through_short_writes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    big = os.urandom(3 * pieces.PIECE + 12345)
    words = array("Q", range(40_000))  # a buffer of 8-byte items, 320,000 bytes
    with pieces.append(path, 1 << 20) as handle:
        handle.write(b"ab")
        handle.write(big)
        handle.write(memoryview(big)[7:200_000])
        handle.write(words)
        handle.write(b"")
    assert path.read_bytes() == b"ab" + big + big[7:200_000] + words.tobytes()
    with pieces.append(path, 1 << 20) as handle:  # appends, as "ab" does
        handle.write(b"z")
    assert path.read_bytes()[-1:] == b"z"


def test_a_raw_write_takes_at_most_a_piece(tmp_path: Path) -> None:
    with pieces.append(tmp_path / "f", 1 << 20) as handle:
        raw = handle.raw  # type: ignore[attr-defined]
        assert raw.write(b"x" * (1 << 20)) == pieces.PIECE
        assert raw.write(b"y" * 100) == 100


def test_the_store_spools_large_files_in_pieces_and_reads_them_back(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    handle, spool = store.temp_file()
    assert handle.raw.write(b"x" * (1 << 20)) == pieces.PIECE  # type: ignore[attr-defined]
    handle.close()
    spool.unlink()
    fd_handle, other = tempfiles.create(tmp_path)  # read and write, from the start
    fd_handle.write(b"0123456789" * 20_000)
    fd_handle.seek(0)
    assert fd_handle.read(10) == b"0123456789"
    fd_handle.close()
    other.unlink()
    blobs = {}
    for i in range(6):  # each just under the 1 MiB pack limit: the data file's buffer size
        data = os.urandom(1000) * 1000 + bytes([i])
        blobs[blob_key(hashlib.sha256(data).hexdigest())] = data
    big = os.urandom(3 << 20)  # over the limit: a file of its own, spooled
    blobs[blob_key(hashlib.sha256(big).hexdigest())] = big
    for key, data in blobs.items():
        store.put(key, data)
    store.flush()
    store.close()
    store = LocalStore(tmp_path)
    assert store.get_many(blobs) == blobs
    store.close()
