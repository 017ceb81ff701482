"""Baselines done with the C tools, run in the same invocation as the subject they compare to.

- naive: the pipeline the original authors first tried: `tar xzf` to a temp dir, then
  `gzip -6 -k` on every compressible file, two at a time (`xargs -P2`).
- floor: `gzip -dc bundle > /dev/null`, the least any reader of the bundle must pay.
- read_once: `tar -xzOf bundle > /dev/null`, reading and parsing the whole bundle once.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
from pathlib import Path

from bench import measure
from bench.corpora import scratch_dir
from bench.errors import BenchError

# What the naive pipeline compresses: the text types a static host gzips.
COMPRESSIBLE = (
    "html", "htm", "css", "js", "mjs", "json", "map", "svg", "txt", "xml", "csv", "md",
    "ttf", "otf", "eot", "ico", "wasm",
)  # fmt: skip


def _find_compressible(root: Path) -> str:
    names = " -o ".join(f"-iname '*.{ext}'" for ext in COMPRESSIBLE)
    return f"find {shlex.quote(str(root))} -type f \\( {names} \\) -print0"


def naive_command(bundle: Path, dest: Path) -> str:
    """The naive pipeline as one shell command (so its whole process tree is measured)."""
    d = shlex.quote(str(dest))
    return (
        f"tar xzf {shlex.quote(str(bundle))} -C {d} && "
        f"{_find_compressible(dest)} | xargs -0 -r -P2 -n 200 gzip -6 -k"
    )


def naive(bundle: Path) -> measure.Run:
    """Run the naive pipeline into a fresh temp dir on the cache's disk, then remove it."""
    dest = Path(tempfile.mkdtemp(prefix="naive-", dir=scratch_dir()))
    try:
        result = measure.run(naive_command(bundle, dest))
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    _check(result, "naive pipeline")
    return result


def floor(bundle: Path) -> measure.Run:
    """`gzip -dc` to /dev/null: inflating the bundle and nothing else."""
    result = measure.run(f"gzip -dc {shlex.quote(str(bundle))} > /dev/null")
    _check(result, "gzip -dc")
    return result


def read_once(bundle: Path) -> measure.Run:
    """`tar -xzOf` to /dev/null: inflating and walking every member once, writing nothing."""
    result = measure.run(f"tar -xzOf {shlex.quote(str(bundle))} > /dev/null")
    _check(result, "tar -xzOf")
    return result


def _check(result: measure.Run, what: str) -> None:
    if result.returncode != 0:
        raise BenchError(
            f"The {what} baseline failed with exit {result.returncode}: "
            f"{result.stderr.strip()[-300:]}; check the bundle and the disk space."
        )
