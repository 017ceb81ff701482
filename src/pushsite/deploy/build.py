"""The build step: a fresh copy of the tree, the site's command in the sandbox, the output
folder checked and handed to the folder driver (read in place).

The copy lives in a work folder outside $PUSHSITE_HOME (the system's temporary folder, or
`build_root`), made for this build and removed after it; when the server runs as root, the
tree is handed to uid 65534, the user the sandbox runs as. At most `slots` builds run at once
on a machine (a lock file per slot, so every process of the server counts).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from pushsite.deploy.detect import BuildPlan, plan_build
from pushsite.deploy.sandbox import (
    INSIDE,
    NOBODY,
    BuildLimits,
    Sandbox,
    bwrap_path,
    redactor,
    run_sandboxed,
)
from pushsite.errors import DeploymentFailed

STAGE = "build"
PREFIX = "pushsite-build-"
STALE = 3 * 3600.0  # seconds: longer than any build may run (siteconfig.MAX_TIMEOUT) and more


class Log(Protocol):
    """What the build writes to (a DeployLog)."""

    def info(self, stage: str, message: str, **fields: object) -> None: ...

    def warning(self, stage: str, message: str, **fields: object) -> None: ...


@dataclass
class BuildContext:
    """Who is building what: becomes the Netlify-style variables the build sees."""

    site: str
    branch: str
    commit: str
    deploy_id: str
    production: bool
    url: str  # the site's production URL
    deploy_url: str  # this deployment's own URL
    variables: dict[str, str] = field(default_factory=dict)  # the site's, secrets included
    secrets: tuple[str, ...] = ()  # values to redact from every line

    def environment(self, plan: BuildPlan) -> dict[str, str]:
        """Netlify's names and pushsite's, then pushsite.toml's, then the site's variables
        (an admin's setting wins over the repository's file)."""
        context = "production" if self.production else "branch-deploy"
        env = {"CI": "true", "NETLIFY": "false", "PUSHSITE": "true", "HOME": "/tmp",
               "TMPDIR": "/tmp", "LANG": "C.UTF-8", "CONTEXT": context, "BRANCH": self.branch,
               "HEAD": self.branch, "COMMIT_REF": self.commit, "DEPLOY_ID": self.deploy_id,
               "SITE_NAME": self.site, "URL": self.url, "DEPLOY_URL": self.deploy_url,
               "DEPLOY_PRIME_URL": self.deploy_url, "PUSHSITE_CONTEXT": context,
               "PUSHSITE_SITE": self.site, "PUSHSITE_BRANCH": self.branch,
               "PUSHSITE_COMMIT": self.commit, "PUSHSITE_DEPLOY_ID": self.deploy_id,
               "PUSHSITE_URL": self.url, "PUSHSITE_DEPLOY_URL": self.deploy_url,
               "JEKYLL_ENV": "production", "npm_config_update_notifier": "false",
               "npm_config_fund": "false", "npm_config_audit": "false"}
        env.update(dict(plan.settings.environment))
        env.update(self.variables)
        return env


@dataclass(frozen=True)
class Builds:
    """The server's build settings."""

    tools: tuple[Path, ...] = ()  # read-only folders builds may use (e.g. a MkDocs venv)
    slots: int = 0  # builds at once on this machine; 0: half the cores, at least 1
    network: bool = False  # allow the network to every build (a site may ask for its own)
    root: Path | None = None  # where work folders go (default: the temporary folder)
    limits: BuildLimits = field(default_factory=BuildLimits)

    @property
    def max_builds(self) -> int:
        return self.slots or max(1, (os.cpu_count() or 2) // 2)


class WorkFolder:
    """A private temporary folder: `src` (the tree, built in place) and `etc` (the sandbox's
    passwd and group). Removed whole at the end, whatever the build left in it; or, made by
    `kept`, kept for the next build of the same site and branch."""

    def __init__(self, root: Path | None = None) -> None:
        root = root or default_root()
        _sweep_stale(root)
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
        self.path.chmod(0o711)  # the sandbox's user may pass through, not list
        self.src = self.path / "src"
        self.src.mkdir()
        self._lock: BinaryIO | None = None

    @classmethod
    def kept(cls, key: str, root: Path | None = None) -> WorkFolder:
        """The folder kept between builds of `key` (a home, site and branch), so a push
        checks out only what changed (git read-tree -u over the last build's index: measured
        0.02-0.3 s for a one-page change to a 1,000-page Hugo site, against 1.3-1.8 s for
        writing the whole tree on this machine's disk). Held with a lock while used: a
        second build of the same branch at once gets a fresh folder. Between builds it is
        closed to the sandbox's user (mode 0700); STALE seconds unused, it is swept."""
        root = root or default_root()
        _sweep_stale(root)
        path = root / f"{PREFIX}kept-{hashlib.sha256(key.encode()).hexdigest()[:24]}"
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            return cls(root)  # not ours (a link, another user's): never build there
        lock = open(path / "lock", "a+b")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return cls(root)
        work = cls.__new__(cls)
        work.path, work.src, work._lock = path, path / "src", lock
        work.src.mkdir(exist_ok=True)
        os.utime(path)  # the stale sweep goes by this time
        path.chmod(0o711)
        return work

    def checkout(self, repo: Path, commit: str) -> None:
        """The commit's tree as files (a private index: the repository is not touched). In
        a kept folder, over the last build's tree: files that differ from the commit (by
        git's stat check, which a build's writes always trip: their ctime changes) are
        written again, and everything else the build left is removed (git clean -ffdx)."""
        index = self.path / "index"
        started = time.time()
        if self._lock is not None and index.exists():
            try:
                self._git(repo, commit, ["read-tree", "--reset", "-u", commit])
                self._set_aside(repo)
                self._git(repo, commit, ["clean", "-ffdxq"])  # what setting aside missed
            except (DeploymentFailed, OSError):  # a damaged kept tree: start it again
                self._wipe()
            else:
                self._own(repo, started)
                return
        self._git(repo, commit, ["read-tree", "--reset", "-u", commit])
        if self._lock is None:
            index.unlink(missing_ok=True)
        else:
            self._own(repo, started)

    def _set_aside(self, repo: Path) -> None:
        """Move what the last build left (its output, caches, anything untracked) out of
        the tree, to be removed on a thread: deleting a 1,000-page site's output took 2 s
        of this machine's disk, which the next build need not wait for."""
        listed = subprocess.run(["git", f"--git-dir={repo}", f"--work-tree={self.src}",
                                 "ls-files", "-z", "--others", "--directory"],
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                     "GIT_INDEX_FILE": str(self.path / "index")},
                                capture_output=True, check=True, cwd=self.src).stdout
        names = [n.decode("utf-8", "surrogateescape").rstrip("/")
                 for n in listed.split(b"\0") if n]
        if not names:
            return
        trash = Path(tempfile.mkdtemp(prefix="trash-", dir=self.path))
        for n, name in enumerate(names):
            os.rename(self.src / name, trash / str(n))  # a link is moved, never followed
        leftover = WorkFolder.__new__(WorkFolder)
        leftover.path, leftover.src, leftover._lock = trash, trash, None
        leftover.remove_later()

    def _git(self, repo: Path, commit: str, *steps: list[str]) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "GIT_INDEX_FILE": str(self.path / "index")}
        for args in steps:
            done = subprocess.run(["git", f"--git-dir={repo}", f"--work-tree={self.src}",
                                   *args], env=env, capture_output=True, check=False,
                                  cwd=self.src)
            if done.returncode != 0:
                raise DeploymentFailed(f"could not check out {commit[:12]} to build it: "
                                       f"{done.stderr.decode(errors='replace').strip()}")

    def _own(self, repo: Path, started: float) -> None:
        """Make the kept index trustworthy for the next build. Files written by this
        checkout get an mtime a second before it began: git takes a file as "racily
        clean" when its mtime is not older than the index, and then rewrites it on the next
        checkout (measured: every file of a 1,000-page tree, 2 s, each push). Then the tree
        is handed over, and the index refreshed with the stat data that gives (a chown
        changes ctime, which would make every file look changed next time)."""
        before = (int(started) - 1) * 1_000_000_000
        for where, _dirs, files in os.walk(self.src):
            for name in files:
                path = os.path.join(where, name)
                info = os.lstat(path)
                if info.st_mtime_ns > before:
                    os.utime(path, ns=(info.st_atime_ns, before), follow_symlinks=False)
        self.hand_over()
        subprocess.run(["git", f"--git-dir={repo}", f"--work-tree={self.src}", "update-index",
                        "-q", "--refresh"],
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                            "GIT_INDEX_FILE": str(self.path / "index")},
                       capture_output=True, check=False, cwd=self.src)

    def _wipe(self) -> None:
        (self.path / "index").unlink(missing_ok=True)
        shutil.rmtree(self.src, ignore_errors=True)
        self.src.mkdir()

    def copy(self, folder: Path) -> None:
        """A local folder's files (links kept as links; `.git` left out)."""
        shutil.copytree(folder, self.src, symlinks=True, dirs_exist_ok=True,
                        ignore=lambda where, names: [".git"] if Path(where) == folder else [])

    def hand_over(self) -> None:
        """Give the tree to the sandbox's user when this process is root (what it owns
        already is left alone: a chown would change its ctime)."""
        if os.geteuid() != 0:
            return
        for where, dirs, files in os.walk(self.src):
            for path in (where, *(os.path.join(where, name) for name in dirs + files)):
                info = os.lstat(path)
                if info.st_uid != NOBODY or info.st_gid != NOBODY:
                    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)

    def remove(self) -> None:
        """Remove the folder (once: a second call does nothing)."""
        inside = str(self.path) + os.sep

        def writable(func: Callable[..., object], path: str, _exc: object) -> None:
            # a folder the build made read-only: open it up and retry (never through a link:
            # chmod follows links, and the build chose where they point); never above the
            # work folder (a failure on the folder itself once made /tmp 0700)
            parent = os.path.dirname(path)
            if not (parent + os.sep).startswith(inside):
                return
            with contextlib.suppress(OSError):
                os.chmod(parent, 0o700)
                if not os.path.islink(path) and os.path.isdir(path):
                    os.chmod(path, 0o700)
                func(path)

        if os.path.lexists(self.path):
            shutil.rmtree(self.path, onerror=writable)

    def remove_later(self) -> None:
        """Remove it on a thread: after the deploy has read the output, nothing waits for
        this (measured: 2.4 s to remove a 1,000-page site's tree on ext4 with `discard`).
        A one-shot command calls `finish_removals` before it exits. A kept folder is
        closed to the sandbox's user and let go instead, for the next build."""
        if self._lock is not None:
            self.path.chmod(0o700)
            self._lock.close()
            self._lock = None
            return
        thread = threading.Thread(target=self.remove, name="build-cleanup")
        with _REMOVING_LOCK:
            _REMOVING.append(thread)
        thread.start()


def default_root() -> Path:
    """Where work folders go: the temporary folder, or /var/tmp when the sandbox's user
    cannot pass through that (bwrap, started as that user, could not reach the tree: a
    /tmp at mode 0700 fails every build with "Permission denied")."""
    for candidate in (Path(tempfile.gettempdir()), Path("/var/tmp")):
        with contextlib.suppress(OSError):
            if candidate.stat().st_mode & 0o001:
                return candidate
    raise DeploymentFailed(f"no folder for builds that the sandbox's user (uid {NOBODY}) may "
                           f"pass through: {tempfile.gettempdir()} and /var/tmp are both "
                           "closed to others; chmod 1777 one of them")


def _sweep_stale(root: Path) -> None:
    """Remove work folders left by a process that stopped before its removal thread ended
    (a server stopped mid-cleanup): none can be in use after STALE seconds."""
    now = time.time()
    try:
        entries = [e for e in os.scandir(root) if e.name.startswith(PREFIX)
                   and e.is_dir(follow_symlinks=False)
                   and not e.name.startswith(PREFIX + "slots")]
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(OSError):
            if now - entry.stat(follow_symlinks=False).st_mtime > STALE \
                    and (Path(entry.path) / "src").is_dir():
                _remove_unused(Path(entry.path))


def _remove_unused(path: Path) -> None:
    """Remove a work folder, unless it is a kept one that a build holds."""
    if not (path / "lock").exists():
        shutil.rmtree(path, ignore_errors=True)
        return
    with open(path / "lock", "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        shutil.rmtree(path, ignore_errors=True)


_REMOVING: list[threading.Thread] = []
_REMOVING_LOCK = threading.Lock()


def finish_removals() -> None:
    """Wait until every work folder this process let go of is gone."""
    with _REMOVING_LOCK:
        pending, _REMOVING[:] = list(_REMOVING), []
    for thread in pending:
        thread.join()


def plan_for_commit(repo: Path, commit: str) -> BuildPlan | None:
    """The build a pushed commit's top-level files ask for, read from git without a
    checkout (most pushes have none, and cost one `ls-tree`)."""
    listing = subprocess.run(["git", f"--git-dir={repo}", "ls-tree", "-z", commit],
                             capture_output=True, check=False)
    if listing.returncode != 0:
        raise DeploymentFailed(f"git ls-tree of {commit[:12]} failed: "
                               f"{listing.stderr.decode(errors='replace').strip()}")
    entries = {}
    for record in listing.stdout.split(b"\0"):
        if record:
            meta, _, name = record.partition(b"\t")
            entries[name.decode("utf-8", "surrogateescape")] = meta.split()

    def read(name: str) -> bytes | None:
        meta = entries.get(name)
        if meta is None or meta[1] != b"blob" or meta[0] == b"120000":
            return None
        shown = subprocess.run(["git", f"--git-dir={repo}", "cat-file", "blob",
                                meta[2].decode()], capture_output=True, check=False)
        return shown.stdout[: 1 << 20] if shown.returncode == 0 else None

    return plan_build(read, set(entries))


@contextlib.contextmanager
def build_slot(slots: int, check: Callable[[], None], log: Log) -> Iterator[int]:
    """Hold one of `slots` machine-wide build slots (a lock file each) while building."""
    folder = Path(tempfile.gettempdir()) / f"pushsite-build-slots-{os.geteuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    waiting = False
    while True:
        for slot in range(slots):
            handle = open(folder / f"{slot}.lock", "a+b")  # noqa: SIM115 - held while building
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield slot
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if not waiting:
            log.info(STAGE, f"waiting for a build slot ({slots} builds run at once here)")
            waiting = True
        check()
        time.sleep(0.25)


def run_build(plan: BuildPlan, work: WorkFolder, context: BuildContext, builds: Builds,
              log: Log, check: Callable[[], None] = lambda: None,
              before_start: Callable[[], None] = lambda: None) -> Path:
    """Run the plan's command on the work folder's tree; return the folder to publish.

    A non-zero exit fails with `build failed (exit N): <last line>`; a limit, a cancel or
    the deadline stops it (every process of it ended). Nothing is deployed in either case.
    `before_start` may raise to skip a build that has not started (a newer push).
    """
    bwrap_path()  # before anything else: no sandbox, no build
    log.info(STAGE, plan.describe(), command=plan.command)
    redact = redactor(context.secrets)
    limits = builds.limits
    if plan.settings.timeout and plan.settings.timeout != limits.wall:
        limits = BuildLimits(**{**limits.__dict__, "wall": plan.settings.timeout})
    last: list[str] = []

    def line(text: str) -> None:
        text = redact(text)
        if text.strip():
            last[:] = [text]
        log.info(STAGE, text)

    work.hand_over()
    box = Sandbox(work.src, plan.command, env=context.environment(plan),
                  network=builds.network or plan.settings.network, tools=builds.tools,
                  limits=limits, scratch=work.path / "etc")
    def waiting() -> None:
        check()
        before_start()

    with build_slot(builds.max_builds, waiting, log):
        before_start()
        started = time.monotonic()
        status = run_sandboxed(box, line, check)
    seconds = time.monotonic() - started
    if status != 0:
        raise DeploymentFailed(f"build failed (exit {status}): "
                               f"{last[0] if last else '(no output)'}")
    log.info(STAGE, f"build finished in {seconds:.2f}s", seconds=round(seconds, 3))
    return output_folder(work.src, plan.publish)


def output_folder(tree: Path, candidates: tuple[str, ...]) -> Path:
    """The publish folder the build wrote: a real folder inside the tree, holding a file.
    A link (to anywhere) is refused, so the build cannot point the deploy outside."""
    for name in candidates:
        path = tree / name
        parts = Path(name).parts
        if any((tree.joinpath(*parts[:i + 1])).is_symlink() for i in range(len(parts))):
            raise DeploymentFailed(f"the publish folder {name}/ is a symbolic link; the build "
                                   "must write a real folder")
        if not path.is_dir():
            continue
        if not any(_has_file(path)):
            raise DeploymentFailed(f"the build's publish folder {name}/ is empty; check the "
                                   "build command's output folder")
        return path
    folders = " or ".join(f"{c}/" for c in candidates)
    raise DeploymentFailed(f"the build produced no publish folder ({folders} in {INSIDE}); "
                           "set [build] publish to the folder it writes")


def _has_file(folder: Path) -> Iterator[bool]:
    for _where, _dirs, files in os.walk(folder):
        if files:
            yield True
            return
