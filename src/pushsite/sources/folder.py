"""A folder or a file as a bundle stream, so every deploy takes the bundle path.

A folder is packed on the fly by a thread writing tar into a pipe through fast gzip (isal
level 0: the stream never touches the disk, and compressing harder would only cost CPU that
the reader then spends inflating). Links are stored as links, so the reader's rules apply.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tarfile
import threading
from pathlib import Path
from typing import BinaryIO

from isal import igzip

from pushsite.errors import ConfigError


class _PipeWriter:
    """The write end of an os.pipe as a file object for tarfile."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)

    def write(self, data: bytes) -> int:
        self._file.write(data)
        return len(data)

    def close(self) -> None:
        self._file.close()


def _pack(folder: Path, writer: _PipeWriter, prefix: str) -> None:
    try:
        with igzip.IGzipFile(fileobj=writer, mode="wb", compresslevel=0) as gz, tarfile.open(
            fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT
        ) as tar:
            for path in sorted(folder.rglob("*")):
                rel = path.relative_to(folder).as_posix()
                if rel == ".git" or rel.startswith(".git/"):
                    continue
                tar.add(path, arcname=f"{prefix}/{rel}", recursive=False)
    except BrokenPipeError:
        pass  # the reader stopped early (an error or a deadline); it reports why
    finally:
        with contextlib.suppress(BrokenPipeError):
            writer.close()


def open_folder(folder: Path) -> BinaryIO:
    """A tar.gz stream of a folder's contents under one top folder, made as it is read."""
    read_fd, write_fd = os.pipe()
    thread = threading.Thread(
        target=_pack, args=(folder, _PipeWriter(write_fd), "site"), daemon=True
    )
    thread.start()
    return os.fdopen(read_fd, "rb", buffering=1 << 20)


def open_source(source: str) -> BinaryIO:
    """SOURCE of `pushsite deploy`: a folder, a .tar.gz file, or '-' for stdin."""
    if source == "-":
        return sys.stdin.buffer
    path = Path(source)
    if path.is_dir():
        return open_folder(path)
    if path.is_file():
        return open(path, "rb")
    raise ConfigError(f"no such folder or file: {source} (give a folder, a .tar.gz, or - for "
                      "stdin)")
