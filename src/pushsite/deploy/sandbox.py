"""Run a site's build command in a bubblewrap (`bwrap`) sandbox, with limits.

The command comes from the pushed repository, so it is treated as hostile. It runs:

- in a work folder holding a fresh copy of the site's tree (bound read-write at /build), and
  nothing else of the machine that matters: no $PUSHSITE_HOME, /root, /home or /var; only
  /usr (and the /bin, /lib* links into it), a few /etc files, read-only tool folders the
  server names (`build_paths`), its own size-capped /tmp, a new /proc and a minimal /dev;
- with a clean environment (only what the caller passes);
- in new user, PID, IPC, UTS, cgroup and network namespaces (no network unless allowed), as
  uid 65534 with no capabilities and no new privileges, in a new session
  (`--new-session`: no TIOCSTI into the server's terminal), dying with its parent;
- under rlimits set by `prlimit` before bwrap starts: data segment (memory), CPU seconds per
  process, processes, file size, open files, no core dumps. When the server runs as root, the
  sandbox starts as uid 65534 outside too: the kernel did not enforce RLIMIT_NPROC for a
  sandbox started by root (measured: 44 processes under a limit of 20), and does as nobody.
  Run as another user, the process limit counts that user's own processes too, so it is
  raised by how many they run already.

The wall clock, a stop request (cancel, the deployment's deadline), the size of the work
folder and the amount of output are watched from here; any of them kills the sandbox's
process group, and bwrap's PID namespace takes every process of the build with it (a daemon
that double-forked included), so nothing is left running.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pushsite.errors import BuildStopped, DeploymentFailed

NOBODY = 65534
INSIDE = "/build"  # where the work folder appears inside the sandbox
PACKAGE_HINT = ("builds run in a bubblewrap sandbox and `bwrap` is not installed on this "
                "server: install the Debian/Ubuntu package bubblewrap (apt-get install "
                "bubblewrap); pushsite never builds without it")
# /etc files a toolchain needs (dynamic linker, TLS roots, name lookup, MIME types, time)
ETC_FILES = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl",
             "ca-certificates", "ca-certificates.conf", "nsswitch.conf", "localtime",
             "mime.types", "hosts", "gemrc", "os-release", "debian_version")
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class BuildLimits:
    """What one build may use; every value is enforced (DESIGN.md "Builds")."""

    wall: float = 600.0  # seconds, the whole build
    cpu: int = 900  # CPU seconds per process (RLIMIT_CPU)
    memory: int = 2 << 30  # bytes of data segment per process (RLIMIT_DATA)
    processes: int = 256  # processes and threads (RLIMIT_NPROC)
    file_size: int = 1 << 30  # bytes, the largest file it may write (RLIMIT_FSIZE)
    open_files: int = 4096
    work_bytes: int = 4 << 30  # bytes the work folder may grow to
    tmp_bytes: int = 512 << 20  # size of its /tmp (tmpfs)
    log_lines: int = 5_000  # lines of output kept in the log; the rest is counted
    log_bytes: int = 1 << 20
    output_bytes: int = 256 << 20  # output beyond this stops the build
    line_chars: int = 4_000


@dataclass
class Sandbox:
    """One sandboxed command: where it runs and what it may see."""

    work: Path  # the work folder (a fresh copy of the tree), read-write at /build
    command: str  # run by /bin/sh -c in /build
    env: dict[str, str] = field(default_factory=dict)
    network: bool = False
    tools: tuple[Path, ...] = ()  # read-only folders (and their bin/ on PATH)
    limits: BuildLimits = field(default_factory=BuildLimits)
    scratch: Path | None = None  # a private folder for the generated /etc/passwd and group


def bwrap_path() -> str:
    """The bwrap binary, or the error naming the package: there is no unsandboxed build."""
    found = shutil.which("bwrap")
    if found is None:
        raise DeploymentFailed(PACKAGE_HINT)
    return found


def clean_line(raw: bytes, limit: int) -> str:
    """One line of output as text: ANSI escapes removed, a progress bar's last state (after
    the last carriage return), no control characters, at most `limit` characters."""
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    text = _ANSI.sub("", text)
    if "\r" in text:
        text = next((part for part in reversed(text.split("\r")) if part.strip()), "")
    text = _CONTROL.sub("", text)
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text) - limit:,} more characters)"
    return text


def _uid_processes(uid: int) -> int:
    """How many tasks (threads count for RLIMIT_NPROC) the user `uid` runs now."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as status:
                fields = dict(line.split(b":", 1) for line in status if b":" in line)
            if int(fields[b"Uid"].split()[0]) == uid:
                count += int(fields.get(b"Threads", b"1"))
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return count


def _etc(scratch: Path) -> list[str]:
    """bwrap arguments for /etc: chosen files read-only, and a passwd/group naming only the
    build's user (so tools that look themselves up work, and no host account shows)."""
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "passwd").write_text(f"build:x:{NOBODY}:{NOBODY}:build:/tmp:/bin/sh\n")
    (scratch / "group").write_text(f"build:x:{NOBODY}:\n")
    for name in ("passwd", "group"):
        (scratch / name).chmod(0o644)
    args = ["--ro-bind", str(scratch / "passwd"), "/etc/passwd",
            "--ro-bind", str(scratch / "group"), "/etc/group"]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def _system() -> list[str]:
    """/usr read-only, and /bin, /sbin, /lib* as the host has them (links or folders)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{name}"]
    return args


def bwrap_args(box: Sandbox) -> list[str]:
    """The whole bwrap command line (without the limits wrapper)."""
    limits = box.limits
    scratch = box.scratch or box.work.parent / "etc"
    args = [bwrap_path(), "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--uid", str(NOBODY), "--gid", str(NOBODY),
            "--hostname", "build", "--die-with-parent", "--new-session", "--clearenv",
            *_system(), *_etc(scratch),
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
            "--bind", str(box.work), INSIDE, "--chdir", INSIDE]
    if box.network:
        args += ["--share-net", "--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    else:
        args += ["--unshare-net"]
    for tool in box.tools:
        args += ["--ro-bind", str(tool), str(tool)]
    args += ["--remount-ro", "/"]  # the root (and /etc in it): only /build and /tmp written
    env = dict(box.env)
    tool_bins = [str(t / "bin") for t in box.tools if (t / "bin").is_dir()]
    env["PATH"] = ":".join([*tool_bins, "/usr/local/bin", "/usr/bin", "/bin"])
    for name, value in sorted(env.items()):
        args += ["--setenv", name, value]
    return [*args, "--", "/bin/sh", "-c", box.command]


def _limits_wrapper(limits: BuildLimits, as_uid: int) -> list[str]:
    prlimit = shutil.which("prlimit") or "/usr/bin/prlimit"
    processes = limits.processes
    if as_uid != NOBODY:  # the count is that user's, not the sandbox's alone
        processes += _uid_processes(as_uid)
    return [prlimit, f"--data={limits.memory}", f"--cpu={limits.cpu}",
            f"--nproc={processes}", f"--fsize={limits.file_size}",
            f"--nofile={limits.open_files}", "--core=0", "--"]


def folder_bytes(root: Path, stop_at: int) -> int:
    """Bytes of the files under `root` (not following links), stopping once over `stop_at`."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as listing:
                for entry in listing:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
                    if total > stop_at:
                        return total
        except OSError:
            continue
    return total


class _Watch:
    """Why the sandbox must stop (set by the watcher thread or the reading loop)."""

    def __init__(self) -> None:
        self.reason: BaseException | None = None
        self.lock = threading.Lock()

    def stop(self, reason: BaseException) -> None:
        with self.lock:
            if self.reason is None:
                self.reason = reason


def run_sandboxed(box: Sandbox, on_line: Callable[[str], None],
                  check: Callable[[], None] = lambda: None) -> int:
    """Run the sandbox to its end, passing each line of output (stdout and stderr, cleaned)
    to `on_line` as it comes; return the command's exit status.

    `check` is called a few times a second and may raise (a cancel, the deployment's
    deadline): the sandbox is killed and the exception propagates. A limit reached raises
    BuildStopped. Either way every process of the build has ended when this returns.
    """
    limits = box.limits
    as_root = os.geteuid() == 0
    argv = _limits_wrapper(limits, NOBODY if as_root else os.geteuid()) + bwrap_args(box)
    drop = NOBODY if as_root else None  # as root: the build runs as nobody, no groups
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                            env={"PATH": "/usr/bin:/bin"}, user=drop, group=drop,
                            extra_groups=[] if as_root else None)
    watch = _Watch()
    done = threading.Event()
    watcher = threading.Thread(target=_watch_size, args=(box, watch, done), daemon=True,
                               name="build-size")
    watcher.start()
    started = time.monotonic()
    try:
        _read(proc, box, on_line, check, watch, started)
        if watch.reason is None:
            return proc.wait()
    except BaseException as exc:
        watch.stop(exc)
    finally:
        done.set()
        if proc.poll() is None or watch.reason is not None:
            kill_tree(proc)
        assert proc.stdout is not None
        proc.stdout.close()
    assert watch.reason is not None
    raise watch.reason


def _read(proc: subprocess.Popen[bytes], box: Sandbox, on_line: Callable[[str], None],
          check: Callable[[], None], watch: _Watch, started: float) -> None:
    limits = box.limits
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    pending = b""
    lines = logged = produced = 0
    truncated = False

    def emit(raw: bytes) -> None:
        nonlocal lines, logged, truncated
        lines += 1
        text = clean_line(raw, limits.line_chars)
        if lines <= limits.log_lines and logged + len(text) <= limits.log_bytes:
            logged += len(text) + 1
            on_line(text)
        elif not truncated:
            truncated = True
            on_line(f"[pushsite] output truncated: more than {limits.log_lines:,} lines or "
                    f"{limits.log_bytes:,} bytes; the rest is not kept")

    try:
        while watch.reason is None:
            if time.monotonic() - started > limits.wall:
                watch.stop(BuildStopped(f"build timed out after {_seconds(limits.wall)} (the "
                                        "[build] timeout); every process of it was stopped"))
                break
            check()
            if not selector.select(timeout=0.2):
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                break
            produced += len(chunk)
            if produced > limits.output_bytes:
                watch.stop(BuildStopped(f"build printed more than {limits.output_bytes:,} "
                                        "bytes of output; it was stopped"))
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                emit(raw)
            while len(pending) > limits.line_chars * 4:  # a line that never ends
                emit(pending[: limits.line_chars * 4])
                pending = pending[limits.line_chars * 4:]
        if pending and watch.reason is None:
            emit(pending)
        if truncated:
            on_line(f"[pushsite] {lines:,} lines of output in all")
    finally:
        selector.close()


def _watch_size(box: Sandbox, watch: _Watch, done: threading.Event) -> None:
    """Stop the build when its work folder outgrows the limit (checked every second)."""
    cap = box.limits.work_bytes
    while not done.wait(1.0):
        size = folder_bytes(box.work, cap)
        if size > cap:
            watch.stop(BuildStopped(f"the build's work folder grew past {cap:,} bytes; it "
                                    "was stopped"))
            return


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill the sandbox: its process group here, and with bwrap's namespace every process
    inside it. Waits for bwrap to end (it does within milliseconds of SIGKILL)."""
    for _ in range(2):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        except PermissionError:
            proc.kill()
        try:
            proc.wait(timeout=2.0)
            break
        except subprocess.TimeoutExpired:
            continue


def _seconds(value: float) -> str:
    return f"{value / 60:g}m" if value >= 60 and value % 60 == 0 else f"{value:g}s"


def redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    """A function hiding every secret value in a line (longest first, so one that contains
    another is hidden whole); values shorter than 4 characters are left, too common to hide."""
    values = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
    if not values:
        return lambda line: line
    pattern = re.compile("|".join(re.escape(v) for v in values))
    return lambda line: pattern.sub("••••", line)
