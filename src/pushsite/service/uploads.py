"""Incremental uploads: a file list in, the hashes the server lacks out, those blobs in, then
one queued deployment built from the held and the uploaded (deploy/listed.py).

The deployment exists from the list on: `start` records it `receiving` (its id is the
upload's) before it looks any blob up, each batch of blobs renews its lease and counts its
bytes (service/receiving.py), and `finish` makes it `queued`. A client that dies between two
batches stops renewing the lease, and recovery fails the deployment (receiving.expire);
cancelling it, or any lie, fails it at once. Either way its folder goes with it.

An upload waits in staging as `<id>.upload/` (its list in `list.marshal`, what the batches and
`finish` check in `upload.json`, blobs in `blobs/`) and becomes `<id>.files/`, the
deployment's staged bundle, only when `finish` finds every asked-for blob there. A client
that lies (a blob it was not asked for, a size or a content that does not match its list)
has its whole upload discarded: nothing it sent can go live.
Folders left behind for a day (a machine that stopped) are removed when the next one starts.

Prune: the held blobs are looked up at `start`, possibly long before the deployment runs, so
the sweeps seen then are kept in the list and checked before the build (`_check_held`): a
prune that deleted a held blob meanwhile fails the deployment instead of breaking a site.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import marshal
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from pushsite import ids, names
from pushsite.deploy.builder import ManifestBuilder
from pushsite.deploy.filelist import Row, check_rows
from pushsite.deploy.listed import Held, deploy_listed, reusable
from pushsite.errors import (
    BundleRejected,
    DeploymentFailed,
    DeploymentNotFound,
    NotFound,
    PushsiteError,
    SiteNotFound,
)
from pushsite.limits import human_size
from pushsite.model import (
    PRODUCTION,
    Deployment,
    FileEntry,
    Status,
    branch_alias,
    manifest_key,
)
from pushsite.service import splicing, sweeps
from pushsite.service.receiving import Received
from pushsite.stores.packs import parse_ref
from pushsite.words import plural

if TYPE_CHECKING:
    from pushsite.deploy.builder import BundleOutcome
    from pushsite.service.running import Running
    from pushsite.service.verbs import Service

_logger = logging.getLogger("pushsite.uploads")
UPLOADING, STAGED = ".upload", ".files"
# an upload's folder: what receiving and finishing read (small: the asked-for blobs), and
# the list with the held blobs' records, read once by the run (a 1,000-file list was parsed
# by every batch and by finish too). The list is marshal's, of plain tuples, dicts and
# strings this server wrote into its own staging: 1.1 ms to write for medium's 1,062 rows
# where JSON took 2.9, the largest part of a start; a folder an older version started has
# list.json (_read_list reads either)
RECORD, LISTED, LISTED_JSON = "upload.json", "list.marshal", "list.json"
STALE_SECONDS = 86_400.0
_HEADER_MAX = 100  # "<64 hex> <size>\n"
_CHUNK = 1 << 20


def basis(service: Service, site_name: str, *, branch: str | None = None,
          create: bool = False) -> dict[str, bool]:
    """What an upload to the site could build on, asked before the client hashes anything:
    whether the site exists, and whether it has a production or `branch` deployment whose
    blobs an incremental upload reuses. Without one every blob would come, and the client
    sends its folder as one tar.gz instead (15 MB where the raw blobs were 68 MB on the
    bench's medium site, and the server hashes them once). An unknown site is SiteNotFound
    unless `create`; nothing is created here."""
    try:
        site = service.site(site_name)
    except SiteNotFound:
        if not create:
            raise
        return {"exists": False, "held": False}
    branch = names.check_branch_name(branch or site.production_branch)
    held = any(service.state.get_alias(site.name, alias) is not None
               for alias in (branch_alias(branch), PRODUCTION))
    if held:
        _warm(service, site.name, branch)
    return {"exists": True, "held": held}


_WARMING = threading.Semaphore(1)  # one at a time, per process: basis is asked freely


def _warm(service: Service, site: str, branch: str) -> None:
    """Parse the manifests the upload's `start` will read (_manifest_blobs keeps them),
    on a thread, while the client walks its folder: ~2 ms of a 1,000-file start, and the
    bench's redeploys meet a manifest no start parsed yet (the first deploy's). Best
    effort: a warming already under way, or a failure, leaves it to `start`."""
    if not _WARMING.acquire(blocking=False):
        return

    def warm() -> None:
        try:
            _held_blobs(service, site, branch)
        except Exception as exc:  # noqa: BLE001 - start reads them again and says why
            _logger.debug("warming the manifests of %s failed: %s", site, exc)
        finally:
            _WARMING.release()

    threading.Thread(target=warm, name="pushsite-upload-warm", daemon=True).start()


def start(service: Service, site_name: str, files: Any, *, branch: str | None = None,
          message: str = "", strip_top: bool = False,
          create: bool = False) -> tuple[str, list[str]]:
    """Check a list, record its deployment `receiving` and keep the list; returns (upload
    id, the hashes whose content must come). The site must exist unless `create` (checked
    after the list: a bad list makes no site)."""
    rows = check_rows(files, service.config.limits())
    site = service.deploy_target(site_name, create)
    branch = names.check_branch_name(branch or site.production_branch)
    service._check_branch_label(site.name, branch)
    _sweep_stale(service.config.staging)
    upload_id = ids.new_id()
    deployment = Deployment(upload_id, site.name, branch, Status.RECEIVING, message=message,
                            source="api", bundle_key=upload_id + UPLOADING,
                            lease_until=time.time() + service.lease)
    service.state.create_deployment(deployment)  # before the first look-up (housekeeping.py)
    try:
        seen = sweeps.snapshot(service.state)
        held, base, held_sizes = _held_blobs(service, site.name, branch)
        _check_sizes(rows, held_sizes)
        sizes = {r.sha256: r.size for r in rows if r.is_file}
        missing = sorted({r.sha256 for r in rows if r.is_file
                          and not reusable(held.get(r.sha256), r.path)})
        splice = splicing.plan(rows, held, base, set(missing), strip_top)
        used = {h: held[h] for h in sizes.keys() - set(missing)}
        folder = service.config.staging / (upload_id + UPLOADING)
        (folder / "blobs").mkdir(parents=True)
        record = {"site": site.name, "branch": branch, "message": message,
                  "strip_top": bool(strip_top), "created": time.time(),
                  "missing": {h: sizes[h] for h in missing}, "seen": seen}
        if isinstance(splice, dict):  # finish with `wait` may splice it (splicing.py)
            record["splice"] = splice
        else:
            record["normal"] = splice  # why not: kept for whoever reads the folder
        (folder / LISTED).write_bytes(marshal.dumps(([tuple(r) for r in rows], used)))
        (folder / RECORD).write_text(json.dumps(record))  # last: an upload has both
        _Lists.keep(upload_id, rows, used)
    except BaseException as exc:
        _fail(service, deployment, f"the upload could not start: {exc}", exc)
        raise
    service._note(deployment, "info", "accept", (
        f"receiving an upload of {plural(len(rows), 'path')} for {site.name} ({branch}) from "
        f"api: {plural(len(missing), 'blob')} to come "
        f"({human_size(sum(sizes[h] for h in missing))}), {len(used)} held already"),
        missing=len(missing), held=len(used))
    return upload_id, missing


def receive(service: Service, site_name: str, upload_id: str, body: BinaryIO) -> int:
    """Store a batch of asked-for blobs (each: frame_header, then its bytes); returns how
    many. The batch renews the deployment's lease and counts its bytes as they come. Any lie
    fails the deployment, discards the upload and raises BundleRejected (422)."""
    folder, record = _open(service, site_name, upload_id, UPLOADING)
    deployment = _receiving(service, upload_id)
    sizes = asked = record["missing"]  # sha256 -> size
    counted = Received(body, service.state, deployment, service.lease,
                       already=deployment.bytes_in, idle=service.config.upload_idle)
    counted.renew()  # a batch that starts proves the client alive
    reader = io.BufferedReader(counted, _CHUNK)
    batch = _Batch(folder / "blobs")
    try:
        while header := _line(reader):
            digest, size = _parse_header(header)
            if digest not in asked:
                raise BundleRejected(f"blob {digest[:12]}... was not asked for (it is not in "
                                     "the list, or the server holds it already)")
            if size != sizes[digest]:
                raise BundleRejected(f"blob {digest[:12]}... is sent as {size} bytes; the list "
                                     f"says {sizes[digest]}")
            batch.add(digest, size, reader)
            if counted.lost:
                break
        if not counted.lost:
            batch.close()
    except BundleRejected as exc:
        batch.drop()
        exc.message += "; the upload is discarded, nothing went live: deploy again"
        exc.args = (exc.message,)
        _fail(service, deployment, exc.message, exc)
        raise
    except BaseException:
        batch.drop()
        _receiving(service, upload_id)  # cancelled or expired meanwhile: say so
        raise
    if counted.lost or not counted.renew():
        shutil.rmtree(folder, ignore_errors=True)
        raise _ended(service, upload_id)
    return len(batch.index)


def finish(service: Service, site_name: str, upload_id: str, *,
           run_now: bool = False) -> Deployment:
    """Queue the deployment once every asked-for blob is there (receiving -> queued).

    With `run_now` (a client waits for the outcome) a small one is also started at once on
    a thread of its own, as the worker would run its message: the worker may be busy for
    seconds (another deploy, the brotli pass after a live one), and a one-file redeploy
    takes a few hundredths. The message stays queued all the same: a run that dies is
    retried from it (or taken over by recovery once its lease ran out), and a run that
    ended leaves it nothing to do.

    Smaller still (`start` planned a splice: service/splicing.py), `run_now` takes it from
    receiving to running and live here, in the caller's thread, with no message: its
    manifest is the live one's bytes with the changed rows put in. Anything `prepare` finds
    changed since `start` leaves it to the path above."""
    folder, record = _open(service, site_name, upload_id, UPLOADING)
    deployment = _receiving(service, upload_id)
    present = _stored(folder / "blobs")
    absent = [h for h in record["missing"] if h not in present]
    if absent:
        raise BundleRejected(f"{len(absent)} asked-for blobs were not uploaded (e.g. "
                             f"{absent[0]}); upload them, then finish again")
    prepared: splicing.Prepared | str = "no `wait`"
    if run_now and "splice" in record:  # a small change: live in this request
        prepared = splicing.prepare(service, deployment, record["splice"], present)
        if isinstance(prepared, str):
            _logger.debug("deployment %s takes the normal path: %s", upload_id, prepared)
    staged = folder.with_name(upload_id + STAGED)
    try:
        folder.rename(staged)
    except FileNotFoundError:  # cancelled meanwhile
        raise _ended(service, upload_id) from None
    received = deployment.bytes_in
    if not isinstance(prepared, str):
        deployment.bundle_key = staged.name  # what a recovery runs again, the normal way
        _Lists.take(upload_id)  # no run here needs it; one elsewhere reads LISTED
        try:
            return splicing.run(service, deployment, prepared, record, received)
        except NotFound:
            shutil.rmtree(staged, ignore_errors=True)
            raise _ended(service, upload_id) from None
    deployment.status, deployment.lease_until = Status.QUEUED, 0.0
    deployment.bundle_key, deployment.progress, deployment.bytes_in = staged.name, "", 0
    if not service.state.update_deployment(deployment, expect_status=Status.RECEIVING):
        shutil.rmtree(staged, ignore_errors=True)
        raise _ended(service, upload_id)
    service._note(deployment, "info", "accept",
                  f"received {plural(len(record['missing']), 'blob')} ({human_size(received)}"
                  "); queued", bytes=received)
    service._announce(deployment)
    service.queue.send({"deployment": deployment.id})
    if run_now and received <= RUN_NOW_BYTES and _RUNNING_NOW.acquire(blocking=False):
        threading.Thread(target=_run_now, args=(service, deployment.id), daemon=True,
                         name=f"pushsite-run-{deployment.id}").start()
    return deployment


RUN_NOW_BYTES = 16 << 20  # uploaded bytes up to which `finish` starts the deployment itself
_RUNNING_NOW = threading.BoundedSemaphore(2)  # at most so many beside the worker, per process


def _run_now(service: Service, deployment_id: str) -> None:
    """Run the queued deployment as its queue message would be (superseded, handed to a
    builder, or run); its brotli pass is left to the worker's queued message, as a CLI
    deploy leaves it (one pass at a time, not one per waiting client). An outage leaves
    the deployment to its own message's retry."""
    from pushsite.queues import QueueItem

    try:
        service.process(QueueItem({"deployment": deployment_id}, receipt=""), optimise=False)
    except Exception as exc:  # noqa: BLE001 - the queued message runs it again
        _logger.warning("deployment %s: running it at finish failed (%s: %s); its queued "
                        "message will", deployment_id, type(exc).__name__, exc)
    finally:
        _RUNNING_NOW.release()


def deploy_uploaded(service: Running, deployment: Deployment,
                    builder: ManifestBuilder) -> BundleOutcome:
    """The run of a finished upload (running._run_pipeline)."""
    folder = service.config.staging / deployment.bundle_key
    try:
        record = json.loads((folder / RECORD).read_text())
        rows, held = _Lists.take(deployment.id) or _read_list(folder)
    except FileNotFoundError:
        raise DeploymentNotFound(f"the upload of deployment {deployment.id} is no longer in "
                                 "staging; deploy again") from None
    _check_held(service, held, record.get("seen", {}))
    builder.log.info("read", f"{len(record['missing'])} uploaded blobs to store, "
                     f"{len(held)} held already", uploaded=len(record["missing"]),
                     held=len(held))
    stored = _stored(folder / "blobs")

    def open_blob(digest: str) -> BinaryIO:
        if digest not in stored:
            raise FileNotFoundError(digest)
        pack, offset, size = stored[digest]
        return cast(BinaryIO, _Slice(pack, offset, size))

    return deploy_listed(builder, rows, held, open_blob, deployment.id,
                         deployment.site, deployment.created, record["strip_top"])


def _read_list(folder: Path) -> tuple[list[Row], dict[str, Held]]:
    """The list `start` kept (LISTED), or an older version's list.json: rows as arrays (a
    list written before them had objects)."""
    try:
        rows, held = marshal.loads((folder / LISTED).read_bytes())
        return [Row(*f) for f in rows], held
    except FileNotFoundError:
        if not (folder / LISTED_JSON).exists():
            raise
    listed = json.loads((folder / LISTED_JSON).read_text())
    if "rows" in listed:
        rows = [Row(*f) for f in listed["rows"]]
    else:
        rows = [Row(f["path"], f.get("sha256", ""), f.get("size", 0), f["mode"],
                    f.get("target", "")) for f in listed["files"]]
    return rows, {h: (v[0], v[1], v[2]) for h, v in listed["held"].items()}


class _Lists:
    """The lists `start` checked and kept, for a run in this process (its finish most
    often starts it here): the run takes its own, and reads LISTED only when another
    process started the upload, or this one restarted. Writing the file stays: any runner
    may take the deployment. Bounded: a list whose upload is never finished is dropped."""

    KEPT = 8
    _lists: dict[str, tuple[list[Row], dict[str, Held]]] = {}
    _lock = threading.Lock()

    @classmethod
    def keep(cls, upload_id: str, rows: list[Row], held: dict[str, Held]) -> None:
        with cls._lock:
            cls._lists[upload_id] = (rows, held)
            while len(cls._lists) > cls.KEPT:
                del cls._lists[next(iter(cls._lists))]

    @classmethod
    def take(cls, upload_id: str) -> tuple[list[Row], dict[str, Held]] | None:
        with cls._lock:
            return cls._lists.pop(upload_id, None)


def _check_held(service: Running, held: dict[str, Held], seen: sweeps.Seen) -> None:
    """Fail the run when a prune deleted a held blob after `start` looked it up (a deletion
    after this check is the running deployment's own sweep check, running.py)."""
    def missing() -> set[str]:
        wanted = set()
        for digest, (kind, encodings, refs) in held.items():
            entry = FileEntry(digest, 0, kind, encodings, "", refs)
            for key in (entry.key(enc) for enc in ("", *encodings)):
                ref = parse_ref(key)
                wanted.add(key if ref is None else ref[0])
        return wanted - service.store.has(wanted)

    lost = sweeps.settle(service.state, {k: (v[0], v[1]) for k, v in seen.items()},
                         missing)
    if lost:
        raise DeploymentFailed(f"a prune deleted {plural(len(lost), 'stored object')} this "
                               f"upload's list relied on (e.g. {min(lost)}) before it ran; "
                               "nothing went live: deploy again (the client re-sends them)")


def is_staged_upload(bundle_key: str) -> bool:
    return bundle_key.endswith(STAGED) and "/" not in bundle_key


# ---------------------------------------------------------------------------------------------
def _held_blobs(service: Service, site: str, branch: str
                ) -> tuple[dict[str, Held], splicing.Base | None, dict[str, int]]:
    """The blobs of the manifests a deploy of `branch` most likely shares files with, and
    the first of them (the branch's, else production's): what a small change is spliced
    into (service/splicing.py); and each held blob's size."""
    held: dict[str, Held] = {}
    sizes: dict[str, int] = {}
    base: splicing.Base | None = None
    read: set[str] = set()
    for alias in (branch_alias(branch), PRODUCTION):
        current = service.state.get_alias(site, alias)
        if current is None or current.deployment_id in read:  # production is main's too
            continue
        read.add(current.deployment_id)
        try:
            raw = service.store.get(manifest_key(current.deployment_id))
        except NotFound:
            continue
        blobs, files = _manifest_blobs(current.deployment_id, raw)
        if base is None:
            base = (current.deployment_id, raw, files)
        for digest, found in blobs.items():
            held.setdefault(digest, found)
        sizes |= {row[0]: row[1] for row in files.values()}
    return held, base, sizes


def _check_sizes(rows: list[Row], sizes: dict[str, int]) -> None:
    """A held blob is never sent, so its listed size is all the server is told of it: a size
    other than its own would be served as the file's Content-Length (the edge's)."""
    for row in rows:  # a folder's or a link's row has no hash: never held
        if sizes.get(row.sha256, row.size) != row.size:
            raise BundleRejected(f"{row.path}: the list says {row.size} bytes; the server holds "
                                 f"its content ({row.sha256[:12]}...) as {sizes[row.sha256]}")


# deployment id -> (manifest, blobs, path -> row)
_PARSED: dict[str, tuple[bytes, dict[str, Held], dict[str, list[Any]]]] = {}
_PARSED_MAX, _PARSED_BYTES = 4, 8 << 20
_PARSED_LOCK = threading.Lock()


def _manifest_blobs(deployment_id: str, raw: bytes
                    ) -> tuple[dict[str, Held], dict[str, list[Any]]]:
    """A manifest's blobs and rows by path, parsed once while its bytes stay the same: each
    redeploy of a site reads the same live manifest (parsing a 1,000-file one was ~8 ms of
    a ~100 ms redeploy). Keyed by the bytes themselves, so a manifest the optimiser rewrote
    with new variants is parsed again. Callers do not change what they get."""
    with _PARSED_LOCK:
        kept = _PARSED.get(deployment_id)
    if kept is not None and kept[0] == raw:
        return kept[1], kept[2]
    blobs: dict[str, Held] = {}
    # the rows as they are (model.FileEntry.from_json's order), not a Manifest of FileEntry
    # objects: 1.2 against 1.9 ms for medium's 1,062 files; each parse's dicts are its own
    files: dict[str, list[Any]] = json.loads(raw)["files"]
    for row in files.values():
        if row[0] not in blobs:
            blobs[row[0]] = (row[2], row[3], row[5] if len(row) > 5 else None)
    if len(raw) <= _PARSED_BYTES:
        with _PARSED_LOCK:
            _PARSED.pop(deployment_id, None)
            _PARSED[deployment_id] = (raw, blobs, files)
            while len(_PARSED) > _PARSED_MAX:
                del _PARSED[next(iter(_PARSED))]
    return blobs, files


def _open(service: Service, site: str, upload_id: str, suffix: str) -> tuple[Path, Any]:
    if not ids.looks_like_id(upload_id):
        raise NotFound(f"no upload with id {upload_id!r}")
    folder = service.config.staging / (upload_id + suffix)
    try:
        record = json.loads((folder / RECORD).read_text())
    except FileNotFoundError:
        raise _ended(service, upload_id) from None
    if record["site"] != site:
        raise NotFound(f"upload {upload_id} is for another site")
    return folder, record


def _receiving(service: Service, upload_id: str) -> Deployment:
    """The upload's deployment while it is `receiving`; else NotFound saying how it ended."""
    try:
        deployment = service.state.get_deployment(upload_id)
    except DeploymentNotFound:
        raise _ended(service, upload_id) from None
    if deployment.status != Status.RECEIVING:
        raise _ended(service, upload_id)
    return deployment


def _ended(service: Service, upload_id: str) -> NotFound:
    """Why an upload can take no more blobs: its deployment's status and error."""
    try:
        deployment = service.state.get_deployment(upload_id)
    except DeploymentNotFound:
        return NotFound(f"no upload {upload_id} in progress (discarded after an error, or "
                        "older than a day): start again with the file list")
    if deployment.status == Status.RECEIVING:  # its folder went (a machine's staging lost)
        return NotFound(f"upload {upload_id} is no longer in staging: deploy again")
    why = f" ({deployment.error})" if deployment.error else ""
    return NotFound(f"upload {upload_id} takes no more blobs: its deployment is "
                    f"{deployment.status}{why}" + ("" if deployment.status.servable else
                                                   "; nothing went live: deploy again"))


def _fail(service: Service, deployment: Deployment, error: str, exc: BaseException) -> None:
    """The upload's deployment failed (a lie, a start that broke); its folder goes."""
    deployment.status, deployment.finished = Status.FAILED, time.time()
    deployment.error = error
    deployment.error_kind = type(exc).__name__ if isinstance(exc, PushsiteError) else "internal"
    try:
        failed = service.state.update_deployment(deployment, expect_status=Status.RECEIVING)
    finally:
        discard(service.config.staging, deployment.id)
    if failed:  # after the folder went: a reader of the log finds it gone
        service._note(deployment, "error", "failed", error)
        service._count_outcome(deployment)


def discard(staging: Path, upload_id: str) -> None:
    """Remove an upload's folder, while it arrives or once staged (recovery calls it too)."""
    for suffix in (UPLOADING, STAGED):
        shutil.rmtree(staging / (upload_id + suffix), ignore_errors=True)


def _line(body: BinaryIO) -> bytes:
    """The next frame header, b"" at the end of the body (readline: C speed, bounded)."""
    out = body.readline(_HEADER_MAX + 1)
    if out and not out.endswith(b"\n"):
        if len(out) > _HEADER_MAX:
            raise BundleRejected(f"a blob header is not '<sha256> <size>' ({out[:80]!r}...)")
        raise BundleRejected(f"the body ends inside a blob header ({out[:80]!r})")
    return out


def _parse_header(header: bytes) -> tuple[str, int]:
    parts = header.decode("ascii", "replace").split()
    if len(parts) != 2 or len(parts[0]) != 64 or not parts[1].isdigit():
        raise BundleRejected(f"a blob header is not '<sha256> <size>' ({header[:80]!r})")
    return parts[0].lower(), int(parts[1])


class _Batch:
    """One PUT's blobs, appended to one pack file (`<token>.pack`; one file created per
    batch, not per blob: creating 1,000 files cost more than hashing their 70 MB), with its
    index (`<token>.json`: sha256 -> [offset, size]) written, atomically, only once every
    blob of the batch hashed to its claim. A blob is uploaded once an index names it."""

    def __init__(self, blobs: Path) -> None:
        self._blobs = blobs
        self._token = uuid.uuid4().hex
        self._pack_path = blobs / f"{self._token}.pack"
        self._pack: BinaryIO | None = None
        self.index: dict[str, list[int]] = {}

    def add(self, digest: str, size: int, body: BinaryIO) -> None:
        """Append one blob, checking its bytes hash to what was claimed."""
        if self._pack is None:
            self._pack = open(self._pack_path, "wb")  # noqa: SIM115 - closed by close/drop
        offset = self._pack.tell()
        sha = hashlib.sha256()
        left = size
        while left:
            chunk = body.read(min(left, _CHUNK))
            if not chunk:
                raise BundleRejected(f"blob {digest[:12]}... was cut off: {size - left} of "
                                     f"{size} bytes came")
            sha.update(chunk)
            self._pack.write(chunk)
            left -= len(chunk)
        if sha.hexdigest() != digest:
            raise BundleRejected(f"blob {digest[:12]}... does not hash to what the list says "
                                 f"(its content hashes to {sha.hexdigest()[:12]}...)")
        self.index[digest] = [offset, size]

    def close(self) -> None:
        if self._pack is None:
            return
        self._pack.close()
        part = self._blobs / f".{self._token}.json"
        part.write_text(json.dumps(self.index))
        part.rename(self._blobs / f"{self._token}.json")

    def drop(self) -> None:
        if self._pack is not None:
            self._pack.close()
        self._pack_path.unlink(missing_ok=True)


def _stored(blobs: Path) -> dict[str, tuple[Path, int, int]]:
    """Every uploaded blob: sha256 -> (its pack, offset, size), from the batches' indexes."""
    found: dict[str, tuple[Path, int, int]] = {}
    for index in sorted(blobs.glob("[!.]*.json")):
        pack = index.with_suffix(".pack")
        for digest, (offset, size) in json.loads(index.read_text()).items():
            found[digest] = (pack, offset, size)
    return found


class _Slice(io.RawIOBase):
    """One blob's bytes in its pack, as a file the deployer reads to its end."""

    def __init__(self, pack: Path, offset: int, size: int) -> None:
        super().__init__()
        self._handle = open(pack, "rb")  # noqa: SIM115 - closed with the slice
        self._handle.seek(offset)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(target)[:min(len(target), self._left)]
        got = self._handle.readinto(view)
        if not got:
            raise DeploymentFailed("an uploaded blob's pack in staging is shorter than its "
                                   "index says; deploy again")
        self._left -= got
        return got

    def close(self) -> None:
        self._handle.close()
        super().close()


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

