"""One process at a time opens a SQLite database for the first time.

Why: two processes switching a new database to WAL together, or creating its schema, can get
"database is locked" at once, without SQLite's busy wait: a fresh `pushsite serve` starting
several HTTP processes met this. An exclusive flock on a file beside the database, held only
while the pragmas and the schema run (milliseconds), makes them take turns.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def setting_up(database: Path) -> Iterator[None]:
    fd = os.open(database.with_name(database.name + ".setup-lock"), os.O_RDWR | os.O_CREAT,
                 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
