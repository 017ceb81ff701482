"""SQLite habits shared by the local store, state and queue: opening a database for the first
time one process at a time, and write transactions that never stay open after an error.

Why the first: two processes switching a new database to WAL together, or creating its
schema, can get "database is locked" at once, without SQLite's busy wait: a fresh
`pushsite serve` starting several HTTP processes met this. An exclusive flock on a file beside
the database, held only while the pragmas and the schema run (milliseconds), makes them take
turns.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
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


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT on a connection in autocommit mode; ROLLBACK on any error,
    so the connection is usable again. SQLite may have rolled back already (SQLITE_FULL, an
    I/O error): then there is nothing to roll back, and the original error is what is raised,
    not "cannot rollback - no transaction is active"."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
