"""`uploads/basis` parses the manifests the upload's `start` will read, on a thread, while
the client walks its folder (service/uploads.py `_warm`): `start` then finds them parsed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pushsite.model import PRODUCTION, manifest_key
from pushsite.service import uploads
from support.service import wait_for
from support.uploads import blob_frames, file_row, service_in

FILES = {"index.html": b"<p>home</p>", "about.html": b"<p>about</p>", "a.css": b"p{}"}


def _parsed(deployment_id: str) -> bool:
    with uploads._PARSED_LOCK:
        return deployment_id in uploads._PARSED


def test_basis_parses_the_live_manifest_before_the_list_comes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with service_in(monkeypatch, tmp_path) as service:
        rows = [file_row(p, d) for p, d in FILES.items()]
        upload, missing = service.start_upload("warm", rows, create=True)
        service.receive_blobs("warm", upload, io.BytesIO(blob_frames(FILES, missing)))
        service.finish_upload("warm", upload)
        service.run(upload)
        live = service.state.get_alias("warm", PRODUCTION)
        assert live is not None and live.deployment_id == upload
        with uploads._PARSED_LOCK:
            uploads._PARSED.clear()

        assert service.upload_basis("warm") == {"exists": True, "held": True}
        wait_for("the live manifest parsed ahead of the list", lambda: _parsed(upload))
        raw = service.store.get(manifest_key(upload))
        assert uploads._PARSED[upload][0] == raw  # what `start` compares before it reuses

        # a site with nothing live warms nothing, and answers as before
        assert service.upload_basis("empty", create=True) == {"exists": False,
                                                              "held": False}


def test_a_run_elsewhere_reads_the_kept_list_or_an_older_version_s_list_json(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`start` keeps its list in LISTED (marshal) for a runner in another process; an upload
    an older version started has list.json instead, and runs the same."""
    import json

    from pushsite.model import Status

    with service_in(monkeypatch, tmp_path) as service:
        for round_, older in enumerate((False, True)):
            files = {**FILES, "index.html": f"<p>round {round_}</p>".encode()}
            upload, missing = service.start_upload("elsewhere", [file_row(p, d) for p, d in
                                                                 files.items()], create=True)
            assert uploads._Lists.take(upload) is not None  # as another process finds it
            folder = service.config.staging / (upload + uploads.UPLOADING)
            if older:
                rows, held = uploads._read_list(folder)
                (folder / uploads.LISTED).unlink()
                (folder / uploads.LISTED_JSON).write_text(json.dumps({"rows": rows,
                                                                      "held": held}))
            service.receive_blobs("elsewhere", upload, io.BytesIO(blob_frames(files,
                                                                              missing)))
            service.finish_upload("elsewhere", upload)
            assert service.run(upload).status == Status.LIVE
            manifest = service.manifest(upload).files
            assert sorted(manifest) == sorted(files)
