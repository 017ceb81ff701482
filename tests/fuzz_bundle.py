"""Fuzz the bundle reader with atheris: any input may be rejected, nothing else may happen.

Not collected by pytest. Run for a while, e.g.::

    .venv/bin/python tests/fuzz_bundle.py -max_total_time=300

A first byte of `t` wraps the rest in valid gzip, so the fuzzer can reach the tar parser
without having to forge CRCs; any other first byte feeds the input as the raw bundle. With no
corpus folder given, one is made in a temporary folder and seeded with small real bundles.
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from pushsite.deploy.bundle import BundleReader
    from pushsite.errors import BundleRejected
    from pushsite.limits import Limits

LIMITS = Limits(
    max_files=1000,
    max_file_bytes=1 << 20,
    max_total_bytes=4 << 20,
    max_path_length=300,
    ratio_min_bytes=1 << 20,
)


def fuzz_one(data: bytes) -> None:
    payload = gzip.compress(data[1:], mtime=0) if data[:1] == b"t" else data
    reader = BundleReader(io.BytesIO(payload), LIMITS)
    try:
        for _member in reader.members():
            while reader.read(1000):
                pass
    except BundleRejected:
        pass


LONG_NAME = "x/" + "p" * 80 + "/" + "q" * 40  # a ustar prefix, a GNU 'L' or a pax path


def _seed_tars() -> list[bytes]:
    tars = []
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
            for name, body in (("x/index.html", b"<h1>hi</h1>"), (LONG_NAME, b"long")):
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
            link = tarfile.TarInfo("x/link")
            link.type, link.linkname = tarfile.SYMTYPE, "index.html"
            tar.addfile(link)
        tars.append(buffer.getvalue().rstrip(b"\0") + bytes(1024))
    return tars


def _corpus(argv: list[str]) -> list[str]:
    if any(not arg.startswith("-") for arg in argv[1:]):
        return argv
    folder = Path(tempfile.mkdtemp(prefix="fuzz-bundle-"))
    for index, tar in enumerate(_seed_tars()):
        (folder / f"tar{index}").write_bytes(b"t" + tar)
        (folder / f"gz{index}").write_bytes(gzip.compress(tar, mtime=0))
    print(f"corpus: {folder}", file=sys.stderr)
    return [*argv, str(folder)]


if __name__ == "__main__":
    atheris.Setup(_corpus(sys.argv), fuzz_one)
    atheris.Fuzz()
