"""The hook of every site repository: the push waits for its deploy, and fails when it fails.

`proc-receive` (git's hook for the refs it lets a hook update, `receive.procReceiveRefs`)
runs inside `git receive-pack`, which `pushsite serve` started through `git http-backend`, so
the server's address and a per-process secret arrive in the environment. receive-pack runs it
once the pushed objects are checked and moved out of git's quarantine into the repository,
so the server deploys each updated branch from the repository itself while the push waits.
The progress goes to stderr, which git relays as `remote:` lines (stdout speaks pkt-lines).
Each ref is then answered: moved and `ok` when its deploy went live, or refused with the
reason (`ng refs/heads/main deploy failed: ...`), which git prints as
`! [remote rejected] main -> main (deploy failed: ...)`; `git push` exits non-zero and the
branch stays where it was. A refused ref's objects stay in the repository, unreachable, as
after any rejected push.

There is one hook, not two: the deploy ran in `pre-receive` before, from the quarantine, and
its Python start, and the verdicts it left in a file for proc-receive, were on every push's
way. An older repository's `pre-receive` and `post-receive` are removed on its next push
(gitcommit.OLD_HOOKS); one still running meanwhile does nothing.

The hook's start is part of every push's latency, so Python runs it without `site`
(`-IS`, from the standard library only) and it imports nothing beyond `os`, `sys` and
`_socket`: json, http.client and socket were ~40 ms of CPU per start (measured under load),
and it speaks the little HTTP/1.1 it needs (one POST; a chunked or plain answer) itself.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy reads it as True
if TYPE_CHECKING:
    from collections.abc import Iterator

VERDICT_MARK = "\x00pushsite-verdicts "  # the server's last line: ref TAB reason, TAB-joined
ZERO = "0" * 40


def main() -> None:
    if os.path.basename(sys.argv[0]) == "proc-receive":
        proc_receive()
    # pre-receive or post-receive of an older install: the deploy runs in proc-receive now


def verdict_line(verdicts: dict[str, str]) -> str:
    """The server's last line: why each refused ref was refused (a reason's whitespace is
    folded to single spaces; refs hold none), so the hook reads it without json."""
    fields = [f"{ref}\t{' '.join(reason.split())}" for ref, reason in verdicts.items()]
    return VERDICT_MARK + "\t".join(fields) + "\n"


def _read_verdicts(line: str) -> dict[str, str]:
    fields = line[len(VERDICT_MARK):].rstrip("\n").split("\t")
    return dict(zip(fields[0::2], fields[1::2], strict=False)) if fields != [""] else {}


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
    verdicts = _deploy(commands)
    for old, new, ref in commands:
        reason = verdicts.get(ref, "")
        if not reason:
            reason = _update(ref, old, new)
        _write_pkt(stdout, f"ng {ref} {reason}" if reason else f"ok {ref}")
    _flush(stdout)


def _deploy(commands: list[list[str]]) -> dict[str, str]:
    """Hand the updates to the server and relay its progress; its verdict per refused ref
    ({} when it could not be asked: the refs move, the site is not updated)."""
    url = os.environ.get("PUSHSITE_HOOK_URL")
    if not url:
        _say("pushsite: this repository was pushed outside `pushsite serve`; not deployed\n")
        return {}
    site = os.path.basename(os.path.abspath(os.environ.get("GIT_DIR", "."))).removesuffix(".git")
    body = "".join([site + "\n", *(" ".join(command) + "\n" for command in commands)])
    verdicts: dict[str, str] | None = None
    try:
        for line in _post(url, body.encode()):
            if line.startswith(VERDICT_MARK):
                verdicts = _read_verdicts(line)
            else:
                _say(line)
    except OSError as exc:
        _say(f"pushsite: could not reach the server to deploy ({exc}); the commits are "
             "stored, the site was not updated\n")
        return {}
    if verdicts is None:  # the answer ended before the server's last line
        _say("pushsite: the server's answer ended early; the commits are stored, the site may "
             "not be updated\n")
        return {}
    return verdicts


def _say(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _post(url: str, body: bytes) -> Iterator[str]:
    """POST the updates to the server (an `http://IP:port/path` URL, gitremote.callback_url);
    its answer's lines as they come (the deploy's progress)."""
    import _socket

    rest = url.removeprefix("http://")
    where, _, path = rest.partition("/")
    host, _, port = where.rpartition(":")
    family = _socket.AF_INET6 if host.startswith("[") else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    sock.settimeout(3600.0)
    try:
        sock.connect((host.strip("[]"), int(port or 80)))
        head = (f"POST /{path} HTTP/1.1\r\nHost: {where}\r\nConnection: close\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"X-Pushsite-Hook-Secret: {os.environ.get('PUSHSITE_HOOK_SECRET', '')}\r\n\r\n")
        sock.sendall(head.encode("latin-1") + body)
        reader = _Reader(sock)
        status = reader.line().split(b" ", 2)
        if len(status) < 2 or not status[1].isdigit():
            raise OSError(f"not an HTTP answer: {b' '.join(status)[:80]!r}")
        headers = {}
        while header := reader.line().rstrip(b"\r\n"):
            name, _, value = header.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if status[1] != b"200":
            raise OSError(f"HTTP Error {int(status[1])}: "
                          f"{status[2].strip().decode('latin-1') if len(status) > 2 else ''}")
        pending = b""
        for data in reader.body(headers):
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace") + "\n"
        if pending:
            yield pending.decode("utf-8", "replace")
    finally:
        sock.close()


class _Reader:
    """Lines and bodies of one HTTP/1.1 answer, from a socket read in 64 KiB pieces."""

    def __init__(self, sock: object) -> None:
        self._recv = sock.recv  # type: ignore[attr-defined]
        self._buffer = b""

    def _more(self) -> bytes:
        data = self._recv(65536)
        if not data:
            raise OSError("the server closed the connection before its answer ended")
        return bytes(data)

    def line(self) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            self._buffer += self._more()
        line, self._buffer = self._buffer[:end + 1], self._buffer[end + 1:]
        return line

    def exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._buffer += self._more()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def body(self, headers: dict[bytes, bytes]) -> Iterator[bytes]:
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            while size := int(self.line().split(b";")[0].strip() or b"0", 16):
                yield self.exactly(size)
                self.exactly(2)  # the CRLF after each chunk
            return  # trailers, if any, are not read: the connection is closed
        if b"content-length" in headers:
            yield self.exactly(int(headers[b"content-length"]))
            return
        while True:  # until the server closes the connection
            if self._buffer:
                yield self._buffer
                self._buffer = b""
            data = self._recv(65536)
            if not data:
                return
            self._buffer = bytes(data)


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
