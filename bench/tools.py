"""Outside tools the benchmark needs, installed from Debian on first use (wrk, nginx)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.errors import BenchError

_PACKAGES = {"wrk": "wrk", "nginx": "nginx"}


def _find(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/bin", "/sbin"):
        if (Path(folder) / name).exists():
            return str(Path(folder) / name)
    return None


def require(name: str) -> str:
    """The path of a tool, installing its Debian package if it is missing."""
    found = _find(name)
    if found:
        return found
    package = _PACKAGES.get(name, name)
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BenchError(
                f"Could not install {package} for {name}: {proc.stderr.strip()[-300:]}; "
                f"install it with `apt-get install {package}`."
            )
    found = _find(name)
    if not found:
        raise BenchError(f"Package {package} installed but {name} is still not found.")
    return found
