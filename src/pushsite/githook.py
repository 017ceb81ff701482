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
  upgraded on its next push).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

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
    return os.path.join(_git_dir(), f"pushsite-verdicts-{os.getppid()}.json")


def pre_receive() -> None:
    updates = [line.split() for line in sys.stdin.read().splitlines() if line.strip()]
    url = os.environ.get("PUSHSITE_HOOK_URL")
    verdicts: dict[str, str] = {}
    if not url:
        print("pushsite: this repository was pushed outside `pushsite serve`; not deployed")
    else:
        site = os.path.basename(_git_dir()).removesuffix(".git")
        body = json.dumps({"site": site, "updates": updates, "quarantine": {
            name: os.environ.get(name, "") for name in QUARANTINE_VARS}}).encode()
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json",
            "X-Pushsite-Hook-Secret": os.environ.get("PUSHSITE_HOOK_SECRET", ""),
        })
        try:
            with urllib.request.urlopen(request, timeout=3600) as response:
                for raw in response:
                    line = raw.decode("utf-8", "replace")
                    if line.startswith(VERDICT_MARK):
                        verdicts = json.loads(line[len(VERDICT_MARK):])
                        continue
                    sys.stdout.write(line)
                    sys.stdout.flush()
        except (urllib.error.URLError, OSError) as exc:
            print(f"pushsite: could not reach the server to deploy ({exc}); the commits are "
                  "stored, the site was not updated")
    try:
        with open(_verdict_file(), "w") as out:
            json.dump(verdicts, out)
    except OSError as exc:  # e.g. a full disk: refuse the push rather than guess
        print(f"pushsite: could not keep the deploy's outcome ({exc.strerror}); the push is "
              "refused")
        sys.exit(1)


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
    try:
        with open(_verdict_file()) as handle:
            verdicts: dict[str, str] = json.load(handle)
        os.unlink(_verdict_file())
    except (OSError, ValueError):
        verdicts = {}
    for old, new, ref in commands:
        reason = verdicts.get(ref, "")
        if not reason:
            reason = _update(ref, old, new)
        _write_pkt(stdout, f"ng {ref} {reason}" if reason else f"ok {ref}")
    _flush(stdout)


def _update(ref: str, old: str, new: str) -> str:
    """Move the ref as receive-pack would have ("" once done, else why not)."""
    args = ["git", "update-ref", "-d", ref, old] if new == ZERO else \
        ["git", "update-ref", ref, new, old]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    return "" if done.returncode == 0 else f"failed to update ref ({done.stderr.strip()})"


if __name__ == "__main__":
    main()
