"""Random secrets kept in files of the data directory, the same for every process of one home.

Why a module: `pushsite serve` runs several HTTP processes that start together, and each needs
the same secret (the session signing key, the git hook's secret). Whichever process comes first
writes the secret whole under a temporary name and links it into place; the others find the
file complete or lose the link race and read the winner's. Creating it in place with O_EXCL
let a process read a file another had created but not yet written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path


def shared_secret(path: Path, nbytes: int) -> str:
    """The hex secret in `path` (mode 0600), made from `nbytes` random bytes if absent."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(nbytes))
            # another process may link its own first: then everyone reads that one
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
        text = path.read_text().strip()
    if not text:
        raise RuntimeError(f"the secret file {path} is empty; delete it and restart")
    return text
