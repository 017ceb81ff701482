"""The hooks of every site repository: the push waits for its deploy, and fails when it fails.

They run inside `git receive-pack`, which `pushsite serve` started through `git http-backend`,
so the server's address and a per-process secret arrive in the environment. Only the standard
library is imported: the hooks' start-up time is part of every push's latency.

- `pre-receive` runs while the pushed objects sit in git's quarantine: it hands the updates
  and the quarantine's location (GIT_QUARANTINE_PATH, GIT_OBJECT_DIRECTORY,
  GIT_ALTERNATE_OBJECT_DIRECTORIES) to the server, which deploys each commit from there while
  the push waits, echoes the progress, and keeps the server's verdict per ref for the next hook.
- `proc-receive` (git's hook for refs it lets a hook update, `receive.procReceiveRefs`) then
  answers each ref: updated (`ok`) when its deploy went live, or refused with the reason
  (`ng refs/heads/main deploy failed: ...`), which git prints as
  `! [remote rejected] main -> main (deploy failed: ...)`; `git push` exits non-zero and the
  branch stays where it was. pre-receive itself could only say "pre-receive hook declined".
- `post-receive`, installed by older versions, does nothing now (the repository's hooks are
  upgraded on its next push, which removes it).

Each hook imports only what its own stage uses, and proc-receive starts `git update-ref` with
posix_spawn: `urllib`, `json` and `subprocess` were ~0.1 s of a first push on a busy machine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

VERDICT_MARK = "\x00pushsite-verdicts "  # the server's last line: {"ref": "" | "reason"}
QUARANTINE_VARS = ("GIT_QUARANTINE_PATH", "GIT_OBJECT_DIRECTORY",
                   "GIT_ALTERNATE_OBJECT_DIRECTORIES")
ZERO = "0" * 40


def main() -> None:
    stage = os.path.basename(sys.argv[0])
    if stage == "proc-receive":
        proc_receive()
    elif stage == "pre-receive":
        pre_receive()
    # post-receive from an older install: the deploy already ran in pre-receive


def _git_dir() -> str:
    return os.path.abspath(os.environ.get("GIT_DIR", "."))


def _verdict_file() -> str:
    """Where pre-receive leaves its verdicts for proc-receive: both are children of the same
    receive-pack process."""
    return os.path.join(_git_dir(), f"pushsite-verdicts-{os.getppid()}.txt")


def pre_receive() -> None:
    import json

    updates = [line.split() for line in sys.stdin.read().splitlines() if line.strip()]
    url = os.environ.get("PUSHSITE_HOOK_URL")
    verdicts: dict[str, str] = {}
    if not url:
        print("pushsite: this repository was pushed outside `pushsite serve`; not deployed")
    else:
        site = os.path.basename(_git_dir()).removesuffix(".git")
        body = json.dumps({"site": site, "updates": updates, "quarantine": {
            name: os.environ.get(name, "") for name in QUARANTINE_VARS}}).encode()
        try:
            for line in _post(url, body):
                if line.startswith(VERDICT_MARK):
                    verdicts = json.loads(line[len(VERDICT_MARK):])
                    continue
                sys.stdout.write(line)
                sys.stdout.flush()
        except OSError as exc:
            print(f"pushsite: could not reach the server to deploy ({exc}); the commits are "
                  "stored, the site was not updated")
    try:
        with open(_verdict_file(), "w") as out:
            # one "ref TAB reason" line each: proc-receive reads it without importing json
            # (refs hold no whitespace; the server folds a reason's whitespace to spaces)
            out.writelines(f"{ref}\t{' '.join(reason.split())}\n"
                           for ref, reason in verdicts.items())
    except OSError as exc:  # e.g. a full disk: refuse the push rather than guess
        print(f"pushsite: could not keep the deploy's outcome ({exc.strerror}); the push is "
              "refused")
        sys.exit(1)


def _post(url: str, body: bytes) -> Iterator[str]:
    """POST the updates to the server; its answer's lines as they come (the deploy's
    progress). http.client alone: urllib.request's imports cost the push ~10 ms more."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port or 80,
                                      timeout=3600)
    try:
        conn.request("POST", where.path, body=body, headers={
            "Content-Type": "application/json",
            "X-Pushsite-Hook-Secret": os.environ.get("PUSHSITE_HOOK_SECRET", ""),
        })
        response = conn.getresponse()
        if response.status != 200:
            raise OSError(f"HTTP Error {response.status}: {response.reason}")
        while raw := response.readline():
            yield raw.decode("utf-8", "replace")
    except http.client.HTTPException as exc:  # a broken answer: as if unreachable
        raise OSError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


# proc-receive: git's pkt-line protocol ------------------------------------------------------
def _read_pkt(stream: object) -> bytes | None:
    """One pkt-line's payload; None for a flush packet (or the end)."""
    read = stream.read  # type: ignore[attr-defined]
    head = read(4)
    if len(head) < 4 or head == b"0000":
        return None
    return bytes(read(int(head, 16) - 4))


def _write_pkt(stream: object, text: str) -> None:
    data = text.encode()
    stream.write(b"%04x" % (len(data) + 4) + data)  # type: ignore[attr-defined]


def _flush(stream: object) -> None:
    stream.write(b"0000")  # type: ignore[attr-defined]
    stream.flush()  # type: ignore[attr-defined]


def proc_receive() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while _read_pkt(stdin) is not None:  # version=1 and capabilities
        pass
    _write_pkt(stdout, "version=1\0")
    _flush(stdout)
    commands = []
    while (line := _read_pkt(stdin)) is not None:
        commands.append(line.decode().strip().split(" ", 2))
    verdicts: dict[str, str] = {}
    try:
        with open(_verdict_file()) as handle:
            for row in handle:
                ref, _, reason = row.rstrip("\n").partition("\t")
                verdicts[ref] = reason
        os.unlink(_verdict_file())
    except (OSError, ValueError):
        pass
    for old, new, ref in commands:
        reason = verdicts.get(ref, "")
        if not reason:
            reason = _update(ref, old, new)
        _write_pkt(stdout, f"ng {ref} {reason}" if reason else f"ok {ref}")
    _flush(stdout)


def _update(ref: str, old: str, new: str) -> str:
    """Move the ref as receive-pack would have ("" once done, else why not). Started with
    posix_spawn (no `subprocess` import); its stdout is not ours: ours speaks pkt-lines."""
    args = ["git", "update-ref", "-d", ref, old] if new == ZERO else \
        ["git", "update-ref", ref, new, old]
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawnp("git", args, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, write_end, 2),
            (os.POSIX_SPAWN_CLOSE, read_end),
        ])
    except OSError as exc:
        os.close(read_end)
        return f"failed to update ref ({exc})"
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as err:
        said = err.read().decode(errors="replace").strip()
    _, status = os.waitpid(pid, 0)
    return "" if os.waitstatus_to_exitcode(status) == 0 else f"failed to update ref ({said})"


if __name__ == "__main__":
    main()
