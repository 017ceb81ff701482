"""What one bundle may hold: a value the settings (config.py) build and the readers check.

Vocabulary, below the deployer, so that config.py can make one without importing deploy/.
"""

from __future__ import annotations

from dataclasses import dataclass

from pushsite.errors import BundleTooLarge

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class Limits:
    """What one bundle may hold; every limit is checked on declared sizes before data is read.

    `max_files` counts every entry (files, folders, links), since each costs work.
    `max_ratio` stops gzip bombs: once `ratio_min_bytes` have been inflated, inflated bytes may
    be at most `max_ratio` times the compressed bytes read. HTML, CSS and JS inflate 3-10
    times; a tar of 100,000 tiny files, being mostly zero-padded headers, 63 times at gzip -6
    (git archive's level) and 81 at -9, and of identical 1-byte files up to 97. A bomb of
    zeros reaches deflate's ceiling, about 1030. So 250 leaves room on both sides, and a bomb
    is stopped after at most `max(ratio_min_bytes, max_ratio * compressed bytes)` inflated.
    """

    max_files: int = 200_000
    max_file_bytes: int = 4 * GiB
    max_total_bytes: int = 16 * GiB
    max_path_length: int = 1024
    max_ratio: int = 250
    ratio_min_bytes: int = 64 * MiB

    def count_file(self, path: str, size: int, total: int, whole: str = "bundle") -> int:
        """The running total with one more file; refuses a file or a `whole` too large."""
        if size > self.max_file_bytes:
            raise BundleTooLarge(
                f"the file {path!r} is {size} bytes (limit max_file_bytes={self.max_file_bytes})"
            )
        total += size
        if total > self.max_total_bytes:
            raise BundleTooLarge(
                f"the {whole}'s files add up to more than {self.max_total_bytes} bytes "
                f"(at {path!r}: {total}; limit max_total_bytes={self.max_total_bytes})"
            )
        return total


DEFAULT_LIMITS = Limits()


def human_size(size: float | None) -> str:
    """Bytes for people, in IEC units (KiB, MiB, GiB: powers of 1024) wherever pushsite shows
    a size (dashboard, log lines, CLI), so one count never reads as two different numbers."""
    if size is None:
        return ""
    value = float(size)
    if abs(value) < KiB:
        return f"{value:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"
