"""The benchmark's one error: a step failed (a download, a build, a server that never started)."""

from __future__ import annotations

from pushsite.errors import PushsiteError


class BenchError(PushsiteError):
    """A benchmark step could not run; the message says which and what to do."""
