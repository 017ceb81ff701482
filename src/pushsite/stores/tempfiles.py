"""The local store's temporary files (large blobs being spooled), named after their writer so
that what a killed writer left behind can be told apart and removed.

Why: a deploy killed (kill -9, OOM, a power cut) while it spooled a large blob leaves its
temporary file behind; 22 kills left 18 files (11 MB) in `store/tmp`, on a disk that may be
the one that filled. A name `<pid>@<host>~<random>` says whose it is: opening the store (and a
prune) removes those of this host whose process is gone. A pid the kernel gave to another
process meanwhile keeps its file until a day has passed, the age past which no spool is in
use; files without an owner (made by older versions) go after an hour.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

_HOST = os.uname().nodename.replace("~", "-")
ORPHAN_AGE = 86_400.0  # seconds after which any temporary file is abandoned
UNOWNED_AGE = 3_600.0  # for a file whose name does not say its writer (older versions)


def create(folder: Path) -> tuple[BinaryIO, Path]:
    """An open temporary file in `folder`, named after this process."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=f"{os.getpid()}@{_HOST}~")
    return os.fdopen(fd, "w+b"), Path(name)


def _owner(name: str) -> tuple[int, str] | None:
    owner, tilde, _ = name.partition("~")
    pid, at, host = owner.partition("@")
    if not tilde or not at or not pid.isdigit():
        return None
    return int(pid), host


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep(folder: Path) -> int:
    """Remove the temporary files whose writer is gone; how many were removed."""
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue  # renamed into place meanwhile
        owner = _owner(entry.name)
        if owner is None:
            doomed = age > UNOWNED_AGE
        else:
            pid, host = owner
            doomed = age > ORPHAN_AGE or (host == _HOST and not _alive(pid))
        if doomed:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed += 1
    return removed
