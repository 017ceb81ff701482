"""The small redeploy's fast path: an upload that changes a few rows of the manifest it was
listed against goes live inside its own `finish` request, its manifest spliced from that
one's bytes (issue 17, 8a).

Why: a one-file redeploy of a 1,062-file site spent ~100 ms on the server's per-deployment
machinery (a queue message, a thread started and awaited, the builder's pool and early
thread, 1,062 entries built and encoded again) to change one row. Here `plan` (at the
upload's start, where the live manifest is parsed anyway) finds the rows that differ, and
`prepare` + `run` (at finish) store the changed blobs with the same variants the builder
makes, write the base manifest's bytes with those rows replaced, inserted or cut out, and
move the aliases through the run's own `_complete` (same states, lock, log lines, metrics,
notifications).

The spliced manifest is byte for byte what the normal path writes for the same list
(tests/test_splicing.py compares them), with one known difference: on a base whose carried
variants are still pending beyond LATER_NOW_BYTES, the builder leaves the changed files'
brotli for after live too, and this path makes it before (the manifest the normal path ends
with once its optimiser ran). Where it could not be, the plan says why and the upload takes
the normal path: see `plan`. The changed files' brotli (and a JS or CSS file's
final gzip) are made before live, as the builder makes them for a change of up to
LATER_NOW_BYTES (a few ms here, against a pending marker, a queue message and a second
manifest write after): the manifest is final, and the edge offers br at once.

Crash: the deployment is `running` under a lease, its staged folder in place, before any
blob is written; a process killed from there leaves it to recovery, which queues it again
once the lease ran out and a worker runs it the normal way (the manifest written here, if
any, is written again; the alias moves only after the manifest is flushed).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pushsite.deploy import builder, encode
from pushsite.deploy.builder import CONFIG_FILES, Counters
from pushsite.deploy.filelist import DIR, LINK, Row
from pushsite.deploy.listed import Held
from pushsite.deploy.paths import common_top_folder, is_published
from pushsite.errors import DeploymentFailed, NotFound
from pushsite.limits import human_size
from pushsite.model import (
    Deployment,
    FileEntry,
    Manifest,
    Status,
    blob_key,
    manifest_key,
    pending_key,
)
from pushsite.pathindex import INDEX_MIN_FILES, encode_string
from pushsite.service import sweeps
from pushsite.service.progress import copy_counters
from pushsite.stores import PackingStore
from pushsite.words import plural

if TYPE_CHECKING:
    from pushsite.service.verbs import Service

MAX_ROWS = 64  # changed, added and removed paths a fast redeploy may have
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # as Manifest.to_bytes writes a row
# a base manifest: (deployment id, its bytes, path -> row as parsed, in the bytes' order)
Base = tuple[str, bytes, dict[str, list[Any]]]


def plan(rows: list[Row], held: dict[str, Held], base: Base | None, missing: set[str],
         strip_top: bool) -> dict[str, Any] | str:
    """What `finish` splices into the base manifest (a JSON-able dict kept in the upload's
    record), or why the upload takes the normal path (a str). Falls back when:
    - there is no base (no live manifest of the branch or production), or it has
      INDEX_MIN_FILES or more files (it has an index by path to write too);
    - the list has a site config file (`_headers`, `_redirects`, `pushsite.toml`: a
      manifest keeps their parsed rules, not their bytes, so a change cannot be told; the
      builder parses them), or a common top folder to strip; a file of that name in a
      folder is sent again by every upload (listed.reusable), so it falls back too;
    - a link is new, changed, or points at a changed path;
    - an unchanged path's row in the base is not the row the builder would write for it
      (another media type, a git id from a push, other variants than the held blob's), or
      its blob must come again (held with another compressibility);
    - one new blob is at paths whose types get different variants (compressible or not, a
      JS or CSS file's or not: the builder's variants of it then depend on which copy its
      pool met first);
    - more than MAX_ROWS paths change, or the changed files hold more than LATER_NOW_BYTES
      (their variants are made before live here: the builder's own bound for that);
    - a new path takes a held text blob with no gzip while the base lists no "gzip" pending
      (encode.gzip_undecided: its row cannot say whether it was tried; the builder tries).
    A carried text row with no gzip in a base whose `pending` lists "gzip" (a big deploy
    left it for after: builder.GZIP_NOW_BYTES) keeps "br" and "gzip" pending and the
    marker: the after pass tries it from the manifest, as the builder's would with more
    than LATER_NOW_BYTES of them (with less, the builder makes them before live: another
    case of the difference named at the top)."""
    if base is None:
        return "no live manifest to build on"
    base_id, raw, files = base
    undecided = "gzip" in _pending_of(raw)  # its text rows without gzip: still to try
    if len(files) >= INDEX_MIN_FILES:
        return f"the live manifest has {len(files)} files (it has an index by path)"
    if strip_top and common_top_folder(
            (r.path for r in rows if r.mode != DIR), {r.path for r in rows if r.mode == DIR}):
        return "the list has a top folder to strip"
    put: dict[str, list[Any] | str] = {}  # path -> its row, or an uploaded blob's sha256
    unlisted: dict[str, str] = {}  # an uploaded blob no published path has -> its path
    links: list[Row] = []
    listed: set[str] = set()
    wanted: set[str] = set()  # variants the base's optimiser still makes for carried rows
    uploaded: dict[str, Any] = {}  # a new blob's sha256 -> the kind of its paths' types
    # the builder's counters: a held blob's file is carried, an uploaded one's read
    carried = fed = new_bytes = 0
    media_type = encode.media_type
    for row in rows:  # every unchanged row is looked at: kept to a few look-ups each
        if row.mode == DIR:
            continue
        path = row.path
        listed.add(path)
        old = files.get(path)
        if (old is not None and old[0] == row.sha256 and old[1] == row.size
                and row.mode != LINK):
            if row.sha256 in missing:
                return f"{path}: its blob comes again"
            found = held[row.sha256]
            # the row the builder writes for it (_held_row), without making it
            if (old[2] != media_type(path) or old[4] != "" or old[3] is not found[1]
                    and not _as_held(old, found)):
                return f"{path}: its live row is not the one a deploy writes"
            encodings = old[3]
            if "gzip" not in encodings:  # still to try while the base lists it pending, else
                if undecided and encode.gzip_undecided(encodings, old[1], old[2]):  # tried
                    wanted |= _GZIP_LATER
            elif "br" not in encodings or len(old) > 5:
                wanted |= encode.wanted_later(encodings, old[5] if len(old) > 5 else None)
            carried += 1
            continue
        if path in CONFIG_FILES:  # a base never publishes them: never unchanged
            return f"the list has a site config file ({path})"
        published = is_published(path)
        if row.mode == LINK:
            if published:
                links.append(row)
        elif row.sha256 in missing:  # stored even when unpublished, as the builder does
            kind = media_type(path)  # what decides the variants the builder makes of it
            sort = ((encode.is_compressible(kind), encode.is_asset(kind))
                    if row.size >= encode.MIN_COMPRESS_SIZE else None)
            if uploaded.setdefault(row.sha256, sort) != sort:
                return f"{path}: its new content is at a path of another kind too"
            if published:
                put[path] = row.sha256
            else:
                unlisted.setdefault(row.sha256, path)
            new_bytes += row.size
            fed += 1
        else:
            carried += 1
            if encode.gzip_undecided(held[row.sha256][1], row.size, media_type(path)):
                if not undecided:  # held from another manifest: it may not be tried yet
                    return f"{path}: its gzip may be still to make (the builder tries it)"
                wanted |= _GZIP_LATER
            if published:
                put[path] = _held_row(row, held[row.sha256])
                wanted |= encode.wanted_later(held[row.sha256][1], held[row.sha256][2])
    for link in links:
        target = files.get(link.target)
        if (link.target in put or link.target not in listed or target is None
                or files.get(link.path) != target):
            return f"the link {link.path} is new or changed"
    drop = [path for path in files if path not in listed]
    if len(put) + len(drop) > MAX_ROWS:
        return f"{len(put) + len(drop)} paths changed (the fast path takes {MAX_ROWS})"
    limit = builder.LATER_NOW_BYTES  # read now: the builder's bound, whatever it is set to
    if new_bytes > limit:
        return f"{new_bytes} changed bytes (the fast path takes {limit})"
    if not put and not drop:
        return "nothing changed"
    order = list(files)
    inserted = [path for path in put if path not in files]
    if inserted and order != sorted(order):
        return "the live manifest's paths are not in order"
    # the base rows the splice finds in the bytes: those it replaces or cuts, the first and
    # the last, and each inserted path's successor (it goes in before it)
    around = {path: _successor(order, path) for path in inserted}
    known = {p: files[p] for p in (*drop, *(p for p in put if p in files), order[0],
                                   order[-1], *(a for a in around.values() if a))}
    return {"base": base_id, "length": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
            "put": put, "drop": drop, "known": known, "first": order[0], "last": order[-1],
            "around": around, "count": len(files), "has404": "404.html" in files,
            "pending": encode.pending_of(wanted) if wanted else [],
            "unlisted": {sha: p for sha, p in unlisted.items() if sha not in put.values()},
            "counts": {"files": carried + fed, "carried": carried, "bytes_in": new_bytes,
                       "reused": carried + fed - len(uploaded), "new": len(uploaded)}}


_GZIP_LATER = frozenset(("gzip", *encode.LATER))


def _pending_of(raw: bytes) -> list[str]:
    """A manifest's `pending` from its bytes' tail (Manifest.to_bytes writes `not_found`
    and then `pending` last), without parsing its files again."""
    at = raw.rfind(b'"not_found":')
    if at < 0:
        return []
    return list(json.loads(b"{" + raw[at:]).get("pending") or ())


def _as_held(old: list[Any], held: Held) -> bool:
    """Whether a base row has the held blob's variants and refs, as `_held_row` makes it."""
    refs = held[2]
    return old[3] == held[1] and (old[5] == refs if len(old) == 6
                                  else len(old) == 5 and not refs)


def _held_row(row: Row, held: Held) -> list[Any]:
    """The row the builder writes for a held blob (listed.deploy_listed's add_existing)."""
    kind, encodings, refs = held
    return FileEntry(row.sha256, row.size, encode.media_type(row.path), dict(encodings), "",
                     refs).to_json()


@dataclass
class Prepared:
    """What `run` writes: the changed blobs' variants, and the manifest with them."""

    blobs: dict[str, dict[str, bytes]]  # sha256 -> encoding ("" too) -> bytes
    types: dict[str, str]  # sha256 -> media type
    manifest: bytes
    counters: Counters
    base: str
    files: int  # the manifest's


def prepare(service: Service, deployment: Deployment, splice: dict[str, Any],
            stored: dict[str, tuple[Path, int, int]]) -> Prepared | str:
    """The blobs and the manifest bytes, before anything is written (a str: why not, and
    the upload takes the normal path): the base must still be the same bytes, and no
    uploaded blob stored already (the builder would reuse its stored variants), and the store
    one that keeps blobs loose (a packing store's deploys put them in a pack)."""
    if isinstance(service.store, PackingStore):  # its deploys write packs and refs
        return "the store packs small blobs"
    try:
        raw = service.store.get(manifest_key(splice["base"]))
    except NotFound:
        return "the live manifest is gone"
    if len(raw) != splice["length"] or hashlib.sha256(raw).hexdigest() != splice["sha256"]:
        return "the live manifest changed since the list came"
    put: dict[str, list[Any] | str] = splice["put"]
    uploaded = {sha: path for path, sha in reversed(put.items()) if isinstance(sha, str)}
    if service.store.has(blob_key(sha) for sha in uploaded):
        return "an uploaded blob is stored already"
    # an unpublished file's blob is never held (no manifest names it: `.buildinfo` comes
    # with every upload); stored already, the builder reuses it, as here
    unlisted: dict[str, str] = splice["unlisted"]
    kept = {key.rpartition("/")[2] for key in
            service.store.has(blob_key(sha) for sha in unlisted)}
    uploaded |= {sha: path for sha, path in unlisted.items() if sha not in kept}
    counters = Counters()
    blobs: dict[str, dict[str, bytes]] = {}
    types: dict[str, str] = {}
    for sha, path in uploaded.items():
        pack, offset, size = stored[sha]
        try:
            with open(pack, "rb") as handle:
                handle.seek(offset)
                data = handle.read(size)
        except FileNotFoundError:  # a second finish of this upload took its blobs first
            return "the upload's blobs are gone (finished by another request)"
        kind = encode.media_type(path)
        made = _variants(data, kind)
        if made is None:
            return f"{path}: its variants would leave one pending"
        blobs[sha], types[sha] = made, kind
        counters.bytes_stored += sum(map(len, made.values()))
    rows: dict[str, list[Any]] = {}
    for path, row in put.items():
        if isinstance(row, str):
            made = blobs[row]
            row = FileEntry(row, len(made[""]), encode.media_type(path),
                            {e: len(b) for e, b in made.items() if e}, "").to_json()
        rows[path] = row
    try:
        manifest, files = splice_manifest(raw, rows, splice, deployment)
    except ValueError as exc:
        return str(exc)
    counts = splice["counts"]  # as the builder counts the same list (plan)
    counters.files, counters.carried = counts["files"], counts["carried"]
    counters.bytes_in, counters.blobs_new = counts["bytes_in"], counts["new"] - len(kept)
    counters.blobs_reused = counts["reused"] + len(kept)
    return Prepared(blobs, types, manifest, counters, splice["base"], files)


def _variants(data: bytes, kind: str) -> dict[str, bytes] | None:
    """Identity and every variant the builder ends with for a small new blob deployed live
    first (encode.variants with `later`, then builder._later_now within LATER_NOW_BYTES):
    a JS or CSS file's final gzip in place of its quick one. None when its entry would still
    want a later variant (a final gzip not worth keeping: the builder keeps the quick one)."""
    out = {"": data, **encode.variants(data, kind, later=True)}
    if "gzip" not in out:
        return out
    out.update(encode.later_variants(data))
    if encode.is_asset(kind):
        final = encode.gzip_bytes(data, kind)
        if not encode.worth_keeping(len(final), len(data)):
            return None
        out["gzip"] = final
    return out


def splice_manifest(raw: bytes, rows: dict[str, list[Any]], splice: dict[str, Any],
                    deployment: Deployment) -> tuple[bytes, int]:
    """The manifest `Manifest.to_bytes` writes for `deployment` with the base's files,
    `rows` put in (replaced, or inserted in path order) and the plan's `drop` cut out,
    from the base's bytes: each untouched row's text is kept as it is. Returns it and its
    number of files. ValueError when a row is not where its text should be."""
    known: dict[str, list[Any]] = splice["known"]
    drop: list[str] = splice["drop"]
    spans = {path: _span(raw, path, known[path])
             for path in (*drop, *(p for p in rows if p in known and p not in splice["around"]))}
    events: list[tuple[int, int, str]] = []  # (position, 0 insert / 1 replace or cut, path)
    for path in rows:
        after = splice["around"].get(path, False)
        if after is False:
            events.append((spans[path][0], 1, path))
        elif after is None:  # after every base path
            events.append((_span(raw, splice["last"], known[splice["last"]])[1], 0, path))
        else:
            events.append((_span(raw, after, known[after])[0], 0, path))
    events += [(spans[path][0], 1, path) for path in drop]
    events.sort()
    cursor = _span(raw, splice["first"], known[splice["first"]])[0]
    last = _span(raw, splice["last"], known[splice["last"]])[1]
    pieces: list[bytes] = []
    for where, replaces, path in events:
        kept = raw[cursor:where].strip(b",")
        if kept:
            pieces.append(kept)
        if path in rows:
            pieces.append(_row_text(path, rows[path]))
        cursor = spans[path][1] if replaces else where
    kept = raw[cursor:last].strip(b",")
    if kept:
        pieces.append(kept)
    count = splice["count"] - len(drop) + sum(1 for p in rows if p in splice["around"])
    if not count:
        raise ValueError("the manifest would have no file")
    found = "404.html" in rows or (splice["has404"] and "404.html" not in drop)
    head = {"version": 1, "deployment": deployment.id, "site": deployment.site,
            "created": deployment.created, "commit": ""}
    tail: dict[str, Any] = {"headers": [], "redirects": [],
                            "not_found": "404.html" if found else None}
    if splice["pending"]:  # carried rows whose variants the optimiser makes after live
        tail["pending"] = splice["pending"]
    return (_ENCODER.encode(head)[:-1].encode() + b',"files":{' + b",".join(pieces) + b"},"
            + _ENCODER.encode(tail)[1:].encode(), count)


def _row_text(path: str, row: list[Any]) -> bytes:
    return (encode_string(path) + ":" + _ENCODER.encode(row)).encode()


def _span(raw: bytes, path: str, row: list[Any]) -> tuple[int, int]:
    """Where a path's `"path":[row]` is in the manifest's bytes (after a `{` or a `,`)."""
    needle = _row_text(path, row)
    at = raw.find(needle)
    while at > 0 and raw[at - 1:at] not in (b"{", b","):
        at = raw.find(needle, at + 1)
    if at <= 0:
        raise ValueError(f"the live manifest's row of {path} is not where it should be")
    return at, at + len(needle)


def _successor(order: list[str], path: str) -> str | None:
    """The first base path after `path` in Python's str order (the manifest's)."""
    at = bisect.bisect_right(order, path)
    return order[at] if at < len(order) else None


def run(service: Service, deployment: Deployment, prepared: Prepared, record: dict[str, Any],
        received: int) -> Deployment:
    """Take the finished upload's deployment from receiving to running (its staged folder
    in place, under a lease) and on to live, in the caller's thread; returns it as it ended.
    NotFound when it was not receiving any more (cancelled, expired). A failure after it
    runs is recorded as a run's is (running._stopped): an outage queues it again, with a
    message, for a worker to run the normal way."""
    from pushsite.service.lease import Runner

    now = time.time()
    deployment.status, deployment.started, deployment.error = Status.RUNNING, now, ""
    deployment.runner = str(Runner.here(service.runner_kind))
    deployment.lease_until = now + service.lease
    deployment.progress, deployment.bytes_in = "", 0
    if not service.state.update_deployment(deployment, expect_status=Status.RECEIVING):
        raise NotFound(f"upload {deployment.id} takes no more blobs: it ended meanwhile")
    log = service.log_for(deployment)
    log.info("accept", f"received {plural(len(record['missing']), 'blob')} "
             f"({human_size(received)}); {plural(len(record['splice']['put']), 'path')} put "
             f"and {len(record['splice']['drop'])} removed from the manifest of "
             f"{prepared.base}: deploying it now", bytes=received)
    service._announce(deployment, "deployment.started")
    try:
        counters = prepared.counters
        reading = time.monotonic()
        log.info("read", f"{len(record['missing'])} uploaded blobs to store, "
                 f"{counters.blobs_reused} held already", uploaded=len(record["missing"]),
                 held=counters.blobs_reused)
        store = service.store
        for sha, made in prepared.blobs.items():
            meta = {"content-type": prepared.types[sha], "sha256": sha}
            for enc, data in made.items():
                store.put(blob_key(sha, enc), data, meta | {"content-encoding": enc} if enc
                          else meta)
        if record["splice"]["pending"]:  # as the builder marks it: the optimiser's record
            store.put(pending_key(deployment.id), deployment.id.encode())
        store.put(manifest_key(deployment.id), prepared.manifest,
                  {"content-type": "application/json"})
        store.flush()
        lost = sweeps.settle(service.state, {k: (v[0], v[1]) for k, v in
                                             record.get("seen", {}).items()},
                             lambda: _missing(service, prepared.manifest))
        if lost:
            raise DeploymentFailed(f"deployment {deployment.id}: a prune running beside it "
                                   f"deleted {plural(len(lost), 'stored object')} it "
                                   f"references (e.g. {min(lost)}); nothing went live: "
                                   "deploy again")
        copy_counters(counters, deployment)
        service._time_stage("read", time.monotonic() - reading)  # as a run times its read
        log.info("manifest", f"wrote the manifest: {counters.describe()}",
                 files=prepared.files, bytes_stored=deployment.bytes_stored)
        deployment.files = prepared.files
        brotlis = sum(1 for m in prepared.blobs.values() if "br" in m)
        if brotlis and not record["splice"]["pending"]:  # the after pass says it otherwise
            log.info("optimise", f"optimised: {plural(brotlis, 'brotli variant')} made "
                     "before live", blobs=brotlis)
        elif brotlis:
            log.info("optimise", f"{plural(brotlis, 'brotli variant')} of the changed files "
                     "made before live; the carried files' are left for after", blobs=brotlis)
        return service._complete(deployment, log)
    except BaseException as exc:
        caught = service._disk_full(exc)
        service._stopped(deployment, caught, log, retry=True)
        if service.state.get_deployment(deployment.id).status == Status.QUEUED:
            service.queue.send({"deployment": deployment.id})  # as `finish` queues one
        if not isinstance(exc, Exception):
            raise
        return service.state.get_deployment(deployment.id)
    finally:
        log.flush()


def _missing(service: Service, manifest: bytes) -> set[str]:
    """What of the manifest's objects the store lacks (asked only when a prune ran beside)."""
    from pushsite.service.housekeeping import referenced

    wanted = referenced(Manifest.from_bytes(manifest))
    return wanted - service.store.has(wanted)
