"""A finished upload's staged folder is gone from its key at once (moved into
staging/.discarded) and removed on a thread, leftovers of an earlier process with it
(service/discarding.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pushsite.model import Status
from pushsite.service import discarding, uploads
from support.service import wait_for
from support.uploads import blob_frames, file_row, service_in

FILES = {"index.html": b"<p>home</p>", "a.css": b"p{}"}


def test_a_run_s_staged_folder_goes_at_once_and_is_removed_after(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with service_in(monkeypatch, tmp_path) as service:
        trash = service.config.staging / discarding.TRASH
        trash.mkdir(parents=True)
        leftover = trash / "from-a-killed-process"  # an earlier process's, never removed
        (leftover / "blobs").mkdir(parents=True)
        (leftover / "blobs" / "x.pack").write_bytes(b"x" * 1000)

        upload, missing = service.start_upload(
            "trash", [file_row(p, d) for p, d in FILES.items()], create=True)
        service.receive_blobs("trash", upload, io.BytesIO(blob_frames(FILES, missing)))
        service.finish_upload("trash", upload)
        staged = service.config.staging / (upload + uploads.STAGED)
        assert staged.is_dir()
        assert service.run(upload).status == Status.LIVE
        assert not staged.exists()  # at once, as before
        # and on the thread: this one's and the leftover
        wait_for("the trash to be emptied", lambda: not any(trash.iterdir()))
        assert sorted(p.name for p in service.config.staging.iterdir()) == [discarding.TRASH]


def test_a_folder_that_cannot_be_moved_aside_is_removed_in_place(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    folder = staging / "x.files"
    folder.mkdir(parents=True)
    (staging / discarding.TRASH).write_text("a file where the trash folder goes")
    discarding.discard_folder(folder)
    assert not folder.exists()
    discarding.discard_folder(staging / "gone.files")  # already gone: nothing to do
