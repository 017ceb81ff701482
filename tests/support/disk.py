"""Full disks for real: a tmpfs of a given size mounted for one test (the tests run as root,
here and in CI), and a file that fills it to the last byte."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from pushsite.diskspace import free_bytes
from pushsite.model import blob_key


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """`mount` made a tmpfs of `size` (mount's syntax: 2m, 8m) until the block ends; a lazy
    unmount when a process the test started is still inside."""
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(folder: Path) -> Path:
    """Write a file until the disk refuses another byte, and again while anything frees room
    (a deploy's thread whose write failed removes its partial file); the file (remove it to
    free)."""
    filler = folder / "filler"
    with open(filler, "ab", buffering=0) as out:
        for _ in range(50):
            for size in (1 << 20, 4096, 1):
                try:
                    while True:
                        out.write(bytes(size))
                except OSError as exc:
                    assert exc.errno == 28, exc
            time.sleep(0.02)
            if free_bytes(folder) == 0:
                break
    assert free_bytes(folder) == 0
    return filler


def open_under(folder: Path) -> list[str]:
    """The files under `folder` this process holds open (what keeps a tmpfs busy)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"{folder}/"):
                held.append(target)
    return sorted(held)


def incompressible_blobs(tag: str, count: int, size: int) -> dict[str, bytes]:
    """`count` random blobs of `size` bytes under their keys, the same for the same `tag`:
    they take their whole size on a disk, compressed or not."""
    found = {}
    for n in range(count):
        data = random.Random(f"{tag}{n}").randbytes(size)
        found[blob_key(hashlib.sha256(data).hexdigest())] = data
    return found
