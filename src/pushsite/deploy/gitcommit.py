"""Per-site bare repositories, and a pushed commit read straight from git's object store.

A push is deployed from the repository rather than from a `git archive` of it, because git
already knows which files changed: every file whose blob id the previous deployment of the
site already published is carried over from its manifest without being read, hashed or
compressed again, so a one-file change costs one blob whatever the site's size.
`git archive` stays available to export any commit as a bundle (`archive`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pushsite.deploy import encode
from pushsite.deploy.builder import CONFIG_FILES, SMALL_FILE, ManifestBuilder
from pushsite.deploy.paths import is_published, normalise_member_path, symlink_target
from pushsite.errors import BackendUnavailable, DeploymentFailed
from pushsite.model import FileEntry, Manifest
from pushsite.words import plural

# -IS: no site-packages, no PYTHON* variables; the hook needs the standard library only, and
# its start is part of every push's latency
HOOK = """#!{python} -IS
# Installed by pushsite: the push waits for its deploy, and fails when it fails (githook.py).
import sys
sys.path.insert(0, {src!r})
from pushsite.githook import main
main()
"""
HOOK_NAMES = ("proc-receive",)
# a site repository's settings, after what `git init --bare` wrote: pushes (force pushes and
# deletions too) over git http-backend, refs moved by the proc-receive hook, no auto gc (and
# no `git gc --auto` process started after every push only to find gc.auto=0; prune compacts
# it: `SiteRepos.compact`), and every push kept as a pack, never loose objects (UNPACK_LIMIT)
REPO_CONFIG = """[http]
\treceivepack = true
[receive]
\tdenyNonFastForwards = false
\tdenyDeletes = false
\tprocReceiveRefs = refs/heads
\tprocReceiveRefs = refs/tags
\tautogc = false
\tunpackLimit = 1
[gc]
\tauto = 0
"""
# receive.unpackLimit: a push of fewer objects is unpacked as loose objects, and one that
# repeats objects the repository already holds (a refused push's, unreachable) only touches
# their mtime instead of writing them: a gc that listed them as old just before may delete
# them under the push. A push kept as a pack holds all it sent, with git's `.keep` file on
# it until its refs are updated, which gc and prune respect whatever their expiry. It costs
# a pack per push (no more CPU than unpacking, measured: git alone, 20 one-file pushes) until
# the next prune repacks them into one.
UNPACK_LIMIT = "1"
# held (flock) while a prune compacts the repository: a second prune skips it
COMPACT_LOCK = "pushsite-compact.lock"
# installed by older versions, removed on a repository's next push: post-receive a no-op since
# the deploy moved to pre-receive, pre-receive since it moved to proc-receive (githook.py);
# each was a Python start on every push's way
OLD_HOOKS = ("post-receive", "pre-receive")


@dataclass(frozen=True)
class TreeEntry:
    mode: str
    kind: str  # blob, commit (submodule)
    oid: str
    path: str


def _git(*args: str, cwd: Path | None = None, input: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True,
                              check=False)
    except FileNotFoundError:
        raise BackendUnavailable("git is not installed; install it (apt-get install git)") \
            from None
    if done.returncode != 0:
        raise DeploymentFailed(f"git {args[0]} failed: {done.stderr.decode(errors='replace')}"
                               .strip())
    return done.stdout


class SiteRepos:
    """The bare repositories under `$PUSHSITE_HOME/repos`, one per site (`<site>.git`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, site: str) -> Path:
        return self.root / f"{site}.git"

    def exists(self, site: str) -> bool:
        return (self.path(site) / "HEAD").exists()

    def create(self, site: str, branch: str = "main") -> Path:
        """A bare repository that accepts pushes (force pushes too) and reports them.

        Made whole in a folder beside it, then renamed into place: a push arriving meanwhile
        never finds a repository without its hooks, and of two pushes creating it at once one
        rename wins. Its settings are written into the config `git init` made, in one go:
        one `git config` process each was ~0.1 s of a site's first push on a busy machine.
        """
        repo = self.path(site)
        if self.exists(site):
            return repo
        self.root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{site}.git.", dir=self.root))
        try:
            _git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(partial))
            with open(partial / "config", "a") as config:
                config.write(REPO_CONFIG)
            _write_hooks(partial)
            try:
                partial.rename(repo)
            except OSError:
                if not self.exists(site):  # not another push's rename: a real failure
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)  # gone already once renamed
        return repo

    def install_hook(self, site: str) -> None:
        """The hook (githook.py): proc-receive deploys each updated branch while the push
        waits and moves only the refs whose deploy went live (with the reason otherwise); an
        older install's pre-receive and post-receive are removed."""
        repo = self.path(site)
        _write_hooks(repo)
        _git("config", "--replace-all", "receive.procReceiveRefs", "refs/heads", cwd=repo)
        _git("config", "--add", "receive.procReceiveRefs", "refs/tags", cwd=repo)
        _git("config", "receive.autogc", "false", cwd=repo)
        _git("config", "receive.unpackLimit", UNPACK_LIMIT, cwd=repo)

    def ensure_hooks(self, site: str) -> None:
        """Upgrade a repository made by an older version (a post-receive hook only)."""
        repo = self.path(site)
        hook = repo / "hooks" / "proc-receive"
        src = str(Path(__file__).resolve().parents[2])
        try:
            current = hook.read_text() == HOOK.format(python=sys.executable, src=src)
        except FileNotFoundError:
            current = False
        current = current and not any((repo / "hooks" / name).exists() for name in OLD_HOOKS)
        if not current:
            self.install_hook(site)

    def tree(self, site: str, commit: str) -> list[TreeEntry]:
        out = _git("ls-tree", "-r", "-z", "--full-tree", commit, cwd=self.path(site))
        entries = []
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, path = record.partition(b"\t")
            mode, kind, oid = meta.decode().split(" ")
            entries.append(TreeEntry(mode, kind, oid, path.decode("utf-8", "surrogateescape")))
        return entries

    def commit_message(self, site: str, commit: str) -> str:
        return _git("log", "-1", "--format=%s", commit, cwd=self.path(site)).decode(
            errors="replace").strip()

    def compact(self, site: str, expire: float) -> int | None:
        """Repack the site's repository and drop the unreachable objects last written before
        `expire` (a Unix time): what refused pushes left. The bytes freed under `objects/`
        (negative if it grew); None when another compaction of it is running (git's
        `gc.pid`, or a prune of ours holding COMPACT_LOCK), which does the same work.

        `git gc --cruft`: reachable objects go into one pack, unreachable ones younger than
        `expire` into a cruft pack that records each one's own mtime (so a refused push's
        objects age out one day, and are never exploded into loose files as `repack -A`
        would), older ones go, and `git prune` drops loose ones by the same rule. A push in
        flight has its objects here, unreachable, from git moving them out of quarantine to
        the hook's update-ref (githook.py): in its own pack, which git's `.keep` file guards
        until then (UNPACK_LIMIT). Before that they are in its quarantine folder, which
        `git prune` removes once older than `expire`: so `expire` must never be "now", and
        the caller's grace is longer than an upload takes. A pack that arrives while gc runs
        is not among the packs it replaces. Refs are not packed (gc.packRefs=false): nothing
        to gain with a few branches, and pack-refs would take the ref locks a push's
        update-ref needs."""
        repo = self.path(site)
        if not self.exists(site):
            return None
        with open(repo / COMPACT_LOCK, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # another prune of this site compacts it now
            _git("config", "receive.unpackLimit", UNPACK_LIMIT, cwd=repo)  # an older repo's
            before = objects_bytes(repo)
            done = subprocess.run(
                ["git", "-c", "gc.packRefs=false", "gc", "--quiet", "--cruft",
                 f"--prune=@{int(expire)} +0000"],
                cwd=repo, capture_output=True, env={**os.environ, "LC_ALL": "C"}, check=False)
            if done.returncode != 0:
                message = done.stderr.decode(errors="replace").strip()
                if "gc is already running" in message:
                    return None
                raise DeploymentFailed(f"git gc of {repo} failed: {message}")
            return before - objects_bytes(repo)

    def archive(self, site: str, commit: str, out: BinaryIO) -> None:
        """Write a `git archive --format=tar.gz` bundle of a commit."""
        proc = subprocess.Popen(["git", "archive", "--format=tar.gz", f"--prefix={site}/",
                                 commit], cwd=self.path(site), stdout=subprocess.PIPE)
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            out.write(chunk)
        if proc.wait() != 0:
            raise DeploymentFailed(f"git archive of {commit} failed")


PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size


class BlobStream:
    """`git cat-file --batch` over a list of blob ids, read in order as streams.

    Its output pipe is widened from 64 KiB to 1 MiB and cat-file buffers its writes (all ids
    are known up front): cat-file then runs ahead while the deploy hashes and hands over a
    file, and the reader wakes ~70 times for medium's 68 MB instead of ~1,000 (~60 ms of
    CPU of a first push, mostly the deploy's, measured in process under load)."""

    def __init__(self, repo: Path, oids: list[str]) -> None:
        self._proc = subprocess.Popen(["git", "cat-file", "--batch", "--buffer"], cwd=repo,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      bufsize=1 << 20)
        assert self._proc.stdout is not None
        with contextlib.suppress(AttributeError, OSError):  # Linux only, within its limits
            fcntl.fcntl(self._proc.stdout, fcntl.F_SETPIPE_SZ,
                        PIPE_BYTES)
        self._feeder = threading.Thread(target=self._feed, args=(oids,), daemon=True)
        self._feeder.start()
        self._left = 0
        self._newline_due = False

    def _feed(self, oids: list[str]) -> None:
        assert self._proc.stdin is not None
        try:
            for oid in oids:
                self._proc.stdin.write(oid.encode() + b"\n")
            self._proc.stdin.close()
        except BrokenPipeError:
            pass

    def next(self) -> tuple[str, int]:
        """Start the next blob: (oid, size); then read() its content."""
        assert self._proc.stdout is not None
        self._skip_rest()
        header = self._proc.stdout.readline().split()
        if len(header) != 3 or header[1] != b"blob":
            raise DeploymentFailed(f"git cat-file answered {b' '.join(header)!r}")
        self._left = int(header[2])
        self._newline_due = True
        return header[0].decode(), self._left

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes of the current blob; b"" at its end, as often as asked."""
        assert self._proc.stdout is not None
        if size < 0 or size > self._left:
            size = self._left
        data = self._proc.stdout.read(size)
        if len(data) < size:
            raise DeploymentFailed("git cat-file ended in the middle of a blob")
        self._left -= len(data)
        if self._left == 0 and self._newline_due:
            self._proc.stdout.read(1)  # the newline after each blob, read once
            self._newline_due = False
        return data

    def _skip_rest(self) -> None:
        while self._left:
            self.read(1 << 20)
        self.read(0)  # an empty or unread blob's newline

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()


def deploy_commit(builder: ManifestBuilder, repos: SiteRepos, site: str, commit: str,
                  deployment_id: str, created: float, previous: Manifest | None) -> Manifest:
    """Build a commit's manifest, carrying over every file whose blob id is unchanged.

    Its brotli variants are all made after live: a push's reading keeps both cores busy
    (`git cat-file` and the pool), so the early brotli thread only slowed it (a first push
    of medium: ~0.06 s less CPU before live, and `finish` no longer waits for a brotli)."""
    builder.without_early()
    known = {e.git: e for e in previous.files.values() if e.git} if previous else {}
    same_place = previous.files if previous else {}
    to_read: list[TreeEntry] = []
    links: list[TreeEntry] = []
    for entry in repos.tree(site, commit):
        # the common case of a push: the same blob at the same (already checked) path
        old = same_place.get(entry.path)
        if old is not None and old.git == entry.oid and entry.mode != "120000":
            builder.add_existing(entry.path, old)
            continue
        if entry.kind != "blob":
            builder.log.warning("read", f"skipped {entry.path}: submodules are not published")
            continue
        path = normalise_member_path(entry.path)
        if not is_published(path):
            continue
        if entry.mode == "120000":
            links.append(entry)
            continue
        old = known.get(entry.oid)
        content_type = encode.media_type(path)
        if (old is not None and posixpath.basename(path) not in CONFIG_FILES
                and encode.is_compressible(old.type) == encode.is_compressible(content_type)):
            builder.add_existing(path, FileEntry(old.hash, old.size, content_type,
                                                 dict(old.encodings), entry.oid))
        else:
            to_read.append(entry)
    builder.log.info("read", f"{plural(len(to_read), 'changed file')} to read, "
                     f"{builder.counters.files} carried over unchanged",
                     changed=len(to_read), unchanged=builder.counters.files)
    blobs = BlobStream(repos.path(site), [e.oid for e in to_read + links])
    try:
        for entry in to_read:
            _, size = blobs.next()
            path = normalise_member_path(entry.path)
            if size <= SMALL_FILE:
                builder.add_small(path, blobs.read(), git=entry.oid)
            else:
                builder.add_stream(path, blobs, size, git=entry.oid)
        for entry in links:
            blobs.next()
            path = normalise_member_path(entry.path)
            builder.add_link(path, symlink_target(path, blobs.read()), "symlink")
        return builder.finish(deployment_id, site, commit, created, strip_top=False)
    except BaseException:
        builder.abort()
        raise
    finally:
        blobs.close()


def objects_bytes(repo: Path) -> int:
    """The bytes of a repository's object store (loose objects, packs and their indexes)."""
    total = 0
    for folder, _, files in os.walk(repo / "objects"):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a gc or push moved it meanwhile
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _write_hooks(repo: Path) -> None:
    src = str(Path(__file__).resolve().parents[2])
    text = HOOK.format(python=sys.executable, src=src)
    for name in HOOK_NAMES:
        hook = repo / "hooks" / name
        hook.parent.mkdir(exist_ok=True)
        partial = hook.with_name(name + ".new")
        partial.write_text(text)
        partial.chmod(0o755)
        partial.rename(hook)  # a push running now sees the old or the new hook, whole
    for name in OLD_HOOKS:
        (repo / "hooks" / name).unlink(missing_ok=True)


def hook_environment(url: str, secret: str) -> dict[str, str]:
    """What the proc-receive hook needs to reach the server that spawned git."""
    return {"PUSHSITE_HOOK_URL": url, "PUSHSITE_HOOK_SECRET": secret,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
