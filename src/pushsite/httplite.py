"""A small HTTP/1.1 client on the standard library's socket, for `deploy DIR --server`.

Why not httpx or http.client: a one-file redeploy from CI is meant to take about 80 ms,
process start included, and importing httpx costs ~86 ms, http.client (through the email
package) ~10 ms more than `socket`; and `socket` itself (its enums, with enum) ~2 ms of CPU
at each start, so this speaks `_socket`, which has every call used here. What the deploy
client needs is small: JSON requests, a streamed body (chunked), answers with a length or
chunked, one keep-alive connection, TLS.

Proxies are not spoken here: with a proxy in the environment the client uses httpx, which
honours it (remote.py chooses).
"""

from __future__ import annotations

import _socket
import io
import os
import select
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import suppress

TYPE_CHECKING = False  # typing is not imported at run time (the client's start, launch.py)
if TYPE_CHECKING:
    from typing import Any

IDLE_SECONDS = 2.0  # a connection idle longer is replaced: servers close idle ones (uvicorn: 5 s)
_LINE_MAX = 65536
_SEND_WHOLE = 256 << 10  # a body chunk this big is sent as it is, its framing apart
_QUICKACK: int | None = getattr(_socket, "TCP_QUICKACK", None)  # Linux only
_GATHER = 64 << 10  # smaller pieces of a chunked body are gathered into sends of this size


class Answer:
    """A response: its status, headers (lower-case names) and body."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        from pushsite import jsonlite

        return jsonlite.loads(self.content)


class Connection:
    """One keep-alive connection to BASE's host; OSError (socket.timeout included) when the
    server cannot be reached or stops answering. Not for several threads at once."""

    def __init__(self, base: str, headers: Mapping[str, str], timeout: float = 60.0,
                 connect_timeout: float = 10.0) -> None:
        parts = split_url(base)
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        netloc = parts.netloc.rpartition("@")[2]
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": netloc, **headers}.items())
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._sock: _socket.socket | None = None
        self._reader: Any = None
        self._used = 0.0
        self._cut_off: OSError | None = None

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                body: bytes | Iterable[bytes] | None = None,
                headers: Mapping[str, str] | None = None) -> Answer:
        """Send one request and read its answer."""
        self.send(method, path, params=params, body=body, headers=headers)
        return self.receive()

    def send(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
             body: bytes | Iterable[bytes] | None = None,
             headers: Mapping[str, str] | None = None) -> None:
        """Send a request (its answer is read by `receive`, so work can go on meanwhile)."""
        sock = self._ready()
        target = quote(self._prefix + path, _PATH_SAFE)
        if params:
            target += "?" + "&".join(f"{quote(str(k))}={quote(str(v))}"
                                     for k, v in params.items())
        head = f"{method} {target} HTTP/1.1\r\n{self._head}"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        try:
            if body is None or isinstance(body, bytes):
                data = body or b""
                if data or method in ("POST", "PUT"):
                    head += f"Content-Length: {len(data)}\r\n"
                sock.sendall(f"{head}\r\n".encode("latin-1") + data)
            else:
                _send_chunked(sock, f"{head}Transfer-Encoding: chunked\r\n\r\n"
                              .encode("latin-1"), body)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # the server may have answered before it stopped reading (413, 422): `receive`
            # reads that answer, and raises this only when there is none
            self._cut_off = exc
        except BaseException:
            self.close()
            raise

    def receive(self) -> Answer:
        """The answer to the request sent last."""
        cut_off, self._cut_off = self._cut_off, None
        try:
            self._ack_at_once()
            answer = self._read_answer()
        except BaseException:
            self.close()
            if cut_off is not None:
                raise cut_off from None
            raise
        if cut_off is not None:
            answer.headers["connection"] = "close"
        if answer.headers.get("connection", "").lower() == "close":
            self.close()
        self._used = time.monotonic()
        return answer

    def close(self) -> None:
        if self._sock is not None:
            self._reader.close()
            self._sock.close()
        self._sock = self._reader = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------------
    def _ready(self) -> _socket.socket:
        """The open connection, or a new one where it was idle long or closed by the server
        (an idle socket that reads as ready has been closed: its EOF is waiting)."""
        sock = self._sock
        if sock is not None and (time.monotonic() - self._used > IDLE_SECONDS
                                 or select.select([sock], [], [], 0)[0]):
            self.close()
            sock = None
        if sock is None:
            # an ASCII name as bytes: a str goes through the idna codec, ~1.5 ms to import
            host: Any = self._host.encode() if self._host.isascii() else self._host
            sock = _connect(host, self._port, self._connect_timeout)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            if self._tls:
                import socket  # ssl imports it anyway

                sock = _tls_context().wrap_socket(socket.socket(fileno=sock.detach()),
                                                  server_hostname=self._host)
            sock.settimeout(self._timeout)
            self._sock, self._reader = sock, io.BufferedReader(_SocketReader(sock))
        return sock

    def _ack_at_once(self) -> None:
        """Acknowledge the answer's segments as they come (Linux's TCP_QUICKACK, which
        lasts a few segments: so it is set again for each answer). A server writes an
        answer's head and body apart (uvicorn does); a relay between with Nagle's algorithm
        on holds the body until the head is acknowledged, and a delayed ACK is ~40 ms."""
        if _QUICKACK is not None and self._sock is not None:
            with suppress(OSError):
                self._sock.setsockopt(_socket.IPPROTO_TCP, _QUICKACK, 1)

    def _line(self) -> bytes:
        line: bytes = self._reader.readline(_LINE_MAX)
        if not line:
            raise ConnectionResetError("the server closed the connection without an answer")
        if not line.endswith(b"\n"):
            raise ConnectionError("the server's answer has a line too long or cut off")
        return line

    def _read_answer(self) -> Answer:
        status_line = self._line()
        while status_line.split(b" ", 2)[1:2] == [b"100"]:  # 100 Continue: skip it
            while self._line().strip():
                pass
            status_line = self._line()
        try:
            status = int(status_line.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise ConnectionError(f"not an HTTP answer: {status_line[:80]!r}") from None
        headers: dict[str, str] = {}
        while (line := self._line().strip()):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b"".join(self._chunks())
        elif "content-length" in headers:
            body = self._exactly(int(headers["content-length"]))
        else:
            body = self._reader.read()
            headers["connection"] = "close"
        return Answer(status, headers, body)

    def _chunks(self) -> Iterator[bytes]:
        while size := int(self._line().split(b";")[0].strip(), 16):
            yield self._exactly(size)
            self._line()
        while self._line().strip():  # trailers
            pass

    def _exactly(self, size: int) -> bytes:
        data: bytes = self._reader.read(size)
        if len(data) != size:
            raise ConnectionResetError("the server's answer was cut off")
        return data


class Url:
    """The parts of an absolute URL this client uses (urlsplit's, for these URLs)."""

    def __init__(self, scheme: str, netloc: str, path: str) -> None:
        self.scheme = scheme
        self.netloc = netloc
        self.path = path

    @property
    def hostname(self) -> str:
        """The host, lower case, without user info, port or an IPv6 address's brackets."""
        host = self.netloc.rpartition("@")[2]
        if host.startswith("["):
            return host[1:].partition("]")[0].lower()
        return host.partition(":")[0].lower()

    @property
    def port(self) -> int | None:
        """The port named, or None; ValueError when it is not one (as urlsplit's)."""
        host = self.netloc.rpartition("@")[2]
        digits = host.rpartition("]")[2].partition(":")[2]
        if not digits:
            return None
        if not digits.isascii() or not digits.isdigit() or not 0 <= int(digits) <= 65535:
            raise ValueError(f"Port could not be cast to integer value as {digits!r}")
        return int(digits)


def split_url(url: str) -> Url:
    """`scheme://netloc/path` (a query or fragment left off) as urllib.parse.urlsplit
    splits it, without importing urllib.parse: it imports ipaddress, ~4 ms of CPU at each
    start of a client whose whole budget is a few tens."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.isascii() or not scheme.isalpha():
        return Url("", "", url)
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))
    path = rest[cut:].partition("?")[0].partition("#")[0]
    return Url(scheme.lower(), rest[:cut], path)


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_PATH_SAFE = _UNRESERVED | frozenset("/:@!$&'()*+,;=")


def quote(text: str, safe: frozenset[str] = _UNRESERVED) -> str:
    """urllib.parse.quote(text, safe=...): each byte of the UTF-8 outside `safe` as %XX."""
    if safe.issuperset(text):
        return text
    return "".join(char if char in safe else "".join(f"%{b:02X}" for b in char.encode())
                   for char in text)


def _connect(host: Any, port: int, timeout: float) -> _socket.socket:
    """A connected socket to the first address of HOST that answers (socket.create_connection,
    on `_socket`); the last address's error when none does."""
    error: OSError | None = None
    for family, kind, proto, _, address in _socket.getaddrinfo(host, port, 0,
                                                               _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error or OSError(f"no address found for {host!r}")


class _SocketReader(io.RawIOBase):
    """A socket's incoming bytes as a raw file, under a BufferedReader (socket.makefile's
    SocketIO, without importing socket); a timeout raises TimeoutError (an OSError)."""

    def __init__(self, sock: _socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)


def _send_chunked(sock: _socket.socket, head: bytes, body: Iterable[bytes]) -> None:
    """The head, then the body in chunked framing, in as few sends as it takes: small
    pieces are gathered up to _GATHER bytes (a one-file PUT is one send), so no segment
    waits behind the one before for a delayed ACK on a relay that has Nagle's algorithm
    on (the bench's byte-counting proxy added ~40 ms to a redeploy's PUT); a chunk of
    _SEND_WHOLE or more goes as it is, its framing beside it, never copied."""
    pending = [head]
    size = len(head)
    for chunk in body:
        if len(chunk) >= _SEND_WHOLE:
            sock.sendall(b"".join([*pending, b"%x\r\n" % len(chunk)]))
            sock.sendall(chunk)
            pending, size = [b"\r\n"], 2
        elif chunk:
            pending.append(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            size += len(pending[-1])
            if size >= _GATHER:
                sock.sendall(b"".join(pending))
                pending, size = [], 0
    pending.append(b"0\r\n\r\n")
    sock.sendall(b"".join(pending))


def _tls_context() -> Any:
    """The certificates httpx would trust (the CLI used it): SSL_CERT_FILE or SSL_CERT_DIR
    when set, else certifi's bundle, else the system's."""
    import ssl

    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())
