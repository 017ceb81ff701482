"""Incremental uploads: a file list in, the hashes the server lacks out, those blobs in, then
one queued deployment built from the held and the uploaded (deploy/listed.py).

An upload waits in staging as `<id>.upload/` (its list in `list.json`, blobs in `blobs/`)
and becomes `<id>.files/`, the deployment's staged bundle, only when `finish` finds every
asked-for blob there. A client that lies (a blob it was not asked for, a size or a content
that does not match its list) has its whole upload discarded: nothing it sent can go live.
Uploads left unfinished for a day are removed when the next one starts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pushsite import ids, names
from pushsite.deploy.builder import ManifestBuilder
from pushsite.deploy.filelist import Row, check_rows
from pushsite.deploy.listed import Held, deploy_listed, reusable
from pushsite.errors import BundleRejected, DeploymentNotFound, NotFound
from pushsite.model import PRODUCTION, Deployment, branch_alias

if TYPE_CHECKING:
    from pushsite.deploy.builder import BundleOutcome
    from pushsite.service.running import Running
    from pushsite.service.verbs import Service

UPLOADING, STAGED = ".upload", ".files"
STALE_SECONDS = 86_400.0
_HEADER_MAX = 100  # "<64 hex> <size>\n"
_CHUNK = 1 << 20


def start(service: Service, site_name: str, files: Any, *, branch: str | None = None,
          message: str = "", strip_top: bool = False,
          create: bool = False) -> tuple[str, list[str]]:
    """Check a list and keep it; returns (upload id, the hashes whose content must come).
    The site must exist unless `create` (checked after the list: a bad list makes no site)."""
    rows = check_rows(files, service.config.limits())
    site = service.deploy_target(site_name, create)
    branch = names.check_branch_name(branch or site.production_branch)
    service._check_branch_label(site.name, branch)
    held = _held_blobs(service, site.name, branch)
    missing = sorted({r.sha256 for r in rows if r.is_file
                      and not reusable(held.get(r.sha256), r.path)})
    used = {r.sha256 for r in rows if r.is_file} - set(missing)
    _sweep_stale(service.config.staging)
    upload_id = ids.new_id()
    folder = service.config.staging / (upload_id + UPLOADING)
    (folder / "blobs").mkdir(parents=True)
    record = {"site": site.name, "branch": branch, "message": message,
              "strip_top": bool(strip_top), "created": time.time(),
              "files": [r.to_json() for r in rows], "missing": missing,
              "held": {h: list(held[h]) for h in sorted(used)}}
    (folder / "list.json").write_text(json.dumps(record))
    return upload_id, missing


def receive(service: Service, site_name: str, upload_id: str, body: BinaryIO) -> int:
    """Store a batch of asked-for blobs (each: frame_header, then its bytes); returns how
    many. Any lie discards the upload and raises BundleRejected (422)."""
    folder, record = _open(service, site_name, upload_id, UPLOADING)
    sizes = {r["sha256"]: r["size"] for r in record["files"] if "sha256" in r}
    asked = set(record["missing"])
    count = 0
    try:
        while header := _line(body):
            digest, size = _parse_header(header)
            if digest not in asked:
                raise BundleRejected(f"blob {digest[:12]}... was not asked for (it is not in "
                                     "the list, or the server holds it already)")
            if size != sizes[digest]:
                raise BundleRejected(f"blob {digest[:12]}... is sent as {size} bytes; the list "
                                     f"says {sizes[digest]}")
            _store(folder / "blobs", digest, size, body)
            count += 1
    except BundleRejected as exc:
        shutil.rmtree(folder, ignore_errors=True)
        exc.message += "; the upload is discarded, nothing went live: deploy again"
        exc.args = (exc.message,)
        raise
    return count


def finish(service: Service, site_name: str, upload_id: str) -> Deployment:
    """Queue the deployment once every asked-for blob is there."""
    folder, record = _open(service, site_name, upload_id, UPLOADING)
    absent = [h for h in record["missing"] if not (folder / "blobs" / h).is_file()]
    if absent:
        raise BundleRejected(f"{len(absent)} asked-for blobs were not uploaded (e.g. "
                             f"{absent[0]}); upload them, then finish again")
    staged = folder.with_name(upload_id + STAGED)
    folder.rename(staged)
    return service.accept(record["site"], None, branch=record["branch"],
                          message=record["message"], source="api", deployment_id=upload_id,
                          bundle_key=staged.name)


def deploy_uploaded(service: Running, deployment: Deployment,
                    builder: ManifestBuilder) -> BundleOutcome:
    """The run of a finished upload (running._run_pipeline)."""
    folder = service.config.staging / deployment.bundle_key
    try:
        record = json.loads((folder / "list.json").read_text())
    except FileNotFoundError:
        raise DeploymentNotFound(f"the upload of deployment {deployment.id} is no longer in "
                                 "staging; deploy again") from None
    rows = [Row(f["path"], f.get("sha256", ""), f.get("size", 0), f["mode"],
                f.get("target", "")) for f in record["files"]]
    held = {h: (v[0], v[1], v[2]) for h, v in record["held"].items()}
    builder.log.info("read", f"{len(record['missing'])} uploaded blobs to store, "
                     f"{len(held)} held already", uploaded=len(record["missing"]),
                     held=len(held))
    return deploy_listed(builder, rows, held, folder / "blobs", deployment.id,
                         deployment.site, deployment.created, record["strip_top"])


def is_staged_upload(bundle_key: str) -> bool:
    return bundle_key.endswith(STAGED) and "/" not in bundle_key


# ---------------------------------------------------------------------------------------------
def _held_blobs(service: Service, site: str, branch: str) -> dict[str, Held]:
    """The blobs of the manifests a deploy of `branch` most likely shares files with."""
    held: dict[str, Held] = {}
    for alias in (branch_alias(branch), PRODUCTION):
        current = service.state.get_alias(site, alias)
        if current is None:
            continue
        try:
            manifest = service.manifest(current.deployment_id)
        except NotFound:
            continue
        for entry in manifest.files.values():
            held.setdefault(entry.hash, (entry.type, dict(entry.encodings), entry.refs))
    return held


def _open(service: Service, site: str, upload_id: str, suffix: str) -> tuple[Path, Any]:
    if not ids.looks_like_id(upload_id):
        raise NotFound(f"no upload with id {upload_id!r}")
    folder = service.config.staging / (upload_id + suffix)
    try:
        record = json.loads((folder / "list.json").read_text())
    except FileNotFoundError:
        raise NotFound(f"no upload {upload_id} in progress (finished, discarded after an "
                       "error, or older than a day): start again with the file list") from None
    if record["site"] != site:
        raise NotFound(f"upload {upload_id} is for another site")
    return folder, record


def _line(body: BinaryIO) -> bytes:
    """The next frame header, b"" at the end of the body."""
    out = b""
    while not out.endswith(b"\n"):
        byte = body.read(1)
        if not byte:
            if out:
                raise BundleRejected(f"the body ends inside a blob header ({out[:80]!r})")
            return b""
        out += byte
        if len(out) > _HEADER_MAX:
            raise BundleRejected(f"a blob header is not '<sha256> <size>' ({out[:80]!r}...)")
    return out


def _parse_header(header: bytes) -> tuple[str, int]:
    parts = header.decode("ascii", "replace").split()
    if len(parts) != 2 or len(parts[0]) != 64 or not parts[1].isdigit():
        raise BundleRejected(f"a blob header is not '<sha256> <size>' ({header[:80]!r})")
    return parts[0].lower(), int(parts[1])


def _store(blobs: Path, digest: str, size: int, body: BinaryIO) -> None:
    """Write one blob, checking its bytes hash to what was claimed; atomically in place."""
    part = blobs / f".{digest}.{uuid.uuid4().hex}"
    sha = hashlib.sha256()
    left = size
    try:
        with open(part, "wb") as out:
            while left:
                chunk = body.read(min(left, _CHUNK))
                if not chunk:
                    raise BundleRejected(f"blob {digest[:12]}... was cut off: {size - left} of "
                                         f"{size} bytes came")
                sha.update(chunk)
                out.write(chunk)
                left -= len(chunk)
        if sha.hexdigest() != digest:
            raise BundleRejected(f"blob {digest[:12]}... does not hash to what the list says "
                                 f"(its content hashes to {sha.hexdigest()[:12]}...)")
        part.rename(blobs / digest)
    finally:
        part.unlink(missing_ok=True)


def _sweep_stale(staging: Path) -> None:
    if not staging.is_dir():
        return
    cutoff = time.time() - STALE_SECONDS
    for folder in staging.glob("*" + UPLOADING):
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:
            continue

