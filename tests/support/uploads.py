"""Driving an incremental upload in-process (service/uploads.py): a file list's rows, the
frames of the blobs the server asked for, the messages it queued, a Service in a home of its
own (tests/test_splicing*.py compare the fast path's and the normal path's in two homes)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pushsite.deploy.filelist import frame_header
from pushsite.service.verbs import Service
from support.service import open_service


def file_row(path: str, data: bytes) -> dict[str, object]:
    """A file list's row for `data` at `path`, as the client sends it."""
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
            "mode": "100644"}


def blob_frames(files: dict[str, bytes], missing: list[str]) -> bytes:
    """A batch's body: each asked-for blob (by sha256) framed as the client frames it."""
    by_hash = {hashlib.sha256(d).hexdigest(): d for d in files.values()}
    return b"".join(frame_header(h, len(by_hash[h])) + by_hash[h] for h in missing)


def taken_messages(service: Service) -> list[dict[str, Any]]:
    """Every message waiting in the home's queue, taken (acked)."""
    out = []
    while (item := service.queue.receive()) is not None:
        out.append(item.body)
        service.queue.ack(item)
    return out


@contextmanager
def service_in(monkeypatch: pytest.MonkeyPatch, home: Path) -> Iterator[Service]:
    """A Service whose home is `home`."""
    monkeypatch.setenv("PUSHSITE_HOME", str(home))
    with open_service() as service:
        yield service
