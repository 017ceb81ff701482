"""Forward deployment log lines to a remote syslog collector (RFC 5424).

    udp://host:port                 RFC 5426, one message per datagram (default port 514)
    tcp://host:port                 RFC 6587 octet-counting framing (default port 514)
    tcp+tls://host:port[?ca=PEM]    RFC 5425, TLS with octet counting (default port 6514)

Every URL may add `?facility=local0` (default `user`); `tcp+tls` may add `?insecure=1`, which
skips certificate checks and is meant for tests only.

Sending never blocks the deployer: `emit` puts the line on a bounded queue (dropping the oldest
when full, counted in `dropped`) and one background thread formats and sends. A network error
is counted in `errors`, reported once on stderr, and the line is retried after a growing delay
on a fresh connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import ssl
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pushsite.errors import ConfigError
from pushsite.model import LogLine
from pushsite.service.logs import stderr_warning

APP_NAME = "pushsite"
# An SD-ID of the form name@<private enterprise number>; 32473 is the number IANA reserves
# for examples and documentation (RFC 5612), as we have no registered number of our own.
SD_ID = "pushsite@32473"
BOM = b"\xef\xbb\xbf"

SEVERITIES = {
    "emergency": 0,
    "alert": 1,
    "critical": 2,
    "error": 3,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tcp+tls": 6514}
# What one message may weigh: RFC 5424 (6.1) asks receivers to take at least 2048 octets,
# which is also what a UDP datagram crosses the internet with safely; streams allow more.
MAX_BYTES = {"udp": 2048, "tcp": 65536, "tcp+tls": 65536}
_URL_HELP = "expected udp://host:port, tcp://host:port or tcp+tls://host:port[?ca=/path/ca.pem]"
_RESERVED_PARAMS = ("deployment", "site")


def format_rfc5424(
    line: LogLine,
    site: str,
    hostname: str,
    procid: int,
    *,
    facility: int = FACILITIES["user"],
    max_bytes: int | None = None,
) -> bytes:
    """One RFC 5424 message: header, structured data (deployment, site, fields), BOM + message.

    With max_bytes, the message text is cut (at a character boundary) to fit, and if the
    structured data alone is too big the fields are left out of it.
    """
    severity = SEVERITIES.get(line.level, SEVERITIES["info"])
    header = " ".join(
        [
            f"<{facility * 8 + severity}>1",
            _timestamp(line.time),
            _header_field(hostname, 255),
            APP_NAME,
            _header_field(str(procid), 128),
            _header_field(line.stage, 32),
        ]
    ).encode("ascii")
    params = [("deployment", line.deployment_id), ("site", site)]
    head = header + b" " + _structured_data(params + _field_params(line.fields)) + b" "
    body = BOM + line.message.encode("utf-8", "replace")
    if max_bytes is None or len(head) + len(body) <= max_bytes:
        return head + body
    if len(head) + len(BOM) > max_bytes:
        head = header + b" " + _structured_data(params) + b" "
    room = max(max_bytes - len(head) - len(BOM), 0)
    cut = body[len(BOM) : len(BOM) + room].decode("utf-8", "ignore").encode("utf-8")
    return head + BOM + cut


def _timestamp(seconds: float) -> str:
    """RFC 3339 in UTC with microseconds, the most RFC 5424 allows."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _header_field(value: str, limit: int) -> str:
    """Printable US-ASCII only (33-126), at most `limit` characters; "-" when empty."""
    clean = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return clean or "-"


def _param_name(name: str) -> str:
    """An SD-NAME: printable US-ASCII except '=', ' ', ']' and '"', 1-32 characters."""
    clean = "".join(c if 33 <= ord(c) <= 126 and c not in '="]' else "_" for c in name)[:32]
    return clean or "_"


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = ""
    elif isinstance(value, int | float):
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    # RFC 5424 6.3.3: inside PARAM-VALUE, '"', '\' and ']' must be escaped with '\'.
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _field_params(fields: dict[str, Any]) -> list[tuple[str, Any]]:
    """The line's fields as SD-PARAMs; a field named like a reserved one gets a '_' suffix."""
    params = []
    for name, value in fields.items():
        param = _param_name(name)
        if param in _RESERVED_PARAMS:
            param = param + "_"
        params.append((param, value))
    return params


def _structured_data(params: list[tuple[str, Any]]) -> bytes:
    inner = " ".join(f'{name}="{_param_value(value)}"' for name, value in params)
    return f"[{SD_ID} {inner}]".encode("utf-8", "replace")


class SyslogSink:
    """A LogSink that sends each line to a syslog collector from a background thread."""

    def __init__(
        self,
        transport: str,
        host: str,
        port: int,
        *,
        url: str = "",
        ssl_context: ssl.SSLContext | None = None,
        facility: int = FACILITIES["user"],
        hostname: str | None = None,
        procid: int | None = None,
        queue_size: int = 10_000,
        max_bytes: int | None = None,
        retry_delay: float = 0.5,
        max_retry_delay: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        if transport not in DEFAULT_PORTS:
            raise ConfigError(f"unknown syslog transport {transport!r}: {_URL_HELP}")
        if transport == "tcp+tls" and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self.transport = transport
        self.host = host
        self.port = port
        self.url = url or f"{transport}://{host}:{port}"
        self.sent = 0
        self.dropped = 0
        self.errors = 0
        self._ssl_context = ssl_context
        self._facility = facility
        self._hostname = hostname if hostname is not None else socket.gethostname()
        self._procid = procid if procid is not None else os.getpid()
        self._queue_size = max(queue_size, 1)
        self._max_bytes = max_bytes if max_bytes is not None else MAX_BYTES[transport]
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._timeout = timeout
        self._pending: deque[tuple[LogLine, str]] = deque()
        self._in_flight = False
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_url(cls, url: str) -> SyslogSink:
        """A sink for PUSHSITE_SYSLOG; ConfigError naming the URL when it is not one we take."""

        def bad(reason: str) -> ConfigError:
            return ConfigError(f"bad syslog URL {url!r}: {reason}; {_URL_HELP}")

        parts = urlsplit(url)
        transport = parts.scheme.lower()
        if transport not in DEFAULT_PORTS:
            raise bad(f"unknown scheme {parts.scheme or 'none'!r}")
        if not parts.hostname:
            raise bad("the host is missing")
        try:
            port = parts.port or DEFAULT_PORTS[transport]
        except ValueError:
            raise bad("the port is not a number from 1 to 65535") from None
        if parts.path not in ("", "/"):
            raise bad(f"unexpected path {parts.path!r}")
        try:
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise bad(f"cannot read the query {parts.query!r}") from None
        unknown = sorted(set(query) - {"ca", "insecure", "facility"})
        if unknown:
            raise bad(f"unknown option {unknown[0]!r} (known: ca, insecure, facility)")
        facility_name = query.get("facility", ["user"])[-1].lower()
        if facility_name not in FACILITIES:
            raise bad(f"unknown facility {facility_name!r} (use user, daemon or local0-local7)")
        context = None
        if transport == "tcp+tls":
            context = _tls_context(query, bad)
        elif "ca" in query or "insecure" in query:
            raise bad("ca and insecure apply only to tcp+tls://")
        return cls(
            transport,
            parts.hostname,
            port,
            url=url,
            ssl_context=context,
            facility=FACILITIES[facility_name],
        )

    # LogSink --------------------------------------------------------------------------------
    def emit(self, line: LogLine, site: str) -> None:
        """Queue the line for sending; never blocks on the network and never raises."""
        with self._cond:
            if self._closing:
                self.dropped += 1
                return
            if len(self._pending) >= self._queue_size:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append((line, site))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"pushsite-syslog {self.url}", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued line was sent (or dropped); False if time ran out first."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._pending and not self._in_flight, timeout=timeout
            )

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (one more try if the collector is down), then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return  # stuck in a network call; the daemon thread ends with the process
        self._disconnect()

    # the sending thread ---------------------------------------------------------------------
    def _run(self) -> None:
        delay = self._retry_delay
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing)
                if not self._pending:
                    return
                item = self._pending.popleft()
                self._in_flight = True
            try:
                data = self._format(*item)
            except Exception:  # a line we cannot format is lost, not the sending thread
                with self._cond:
                    self.dropped += 1
                    self._in_flight = False
                    self._cond.notify_all()
                continue
            try:
                self._send(data)
            except OSError as exc:
                self._disconnect()
                if not self._failed(item, exc, delay):
                    return
                delay = min(delay * 2, self._max_retry_delay)
                continue
            with self._cond:
                self.sent += 1
                self._in_flight = False
                self._cond.notify_all()
            delay = self._retry_delay

    def _failed(self, item: tuple[LogLine, str], exc: OSError, delay: float) -> bool:
        """Count the error, keep the line, warn once, wait; False when closing gave up."""
        with self._cond:
            self.errors += 1
            closing = self._closing
            if closing:
                self.dropped += len(self._pending) + 1
                self._pending.clear()
            elif len(self._pending) < self._queue_size:
                self._pending.appendleft(item)
            else:
                self.dropped += 1
            self._in_flight = False
            self._cond.notify_all()
        if not self._warned:
            self._warned = True
            stderr_warning(
                f"pushsite: cannot send logs to syslog at {self.url}: {exc}; "
                "the deployment goes on, and lines are queued and retried "
                f"(up to {self._queue_size}, oldest dropped first)"
            )
        if closing:
            return False
        with self._cond:
            # Closing wakes us up at once, for one last try.
            self._cond.wait_for(lambda: self._closing, timeout=delay)
        return True

    def _format(self, line: LogLine, site: str) -> bytes:
        return format_rfc5424(
            line,
            site,
            self._hostname,
            self._procid,
            facility=self._facility,
            max_bytes=self._max_bytes,
        )

    def _send(self, data: bytes) -> None:
        if self._sock is not None and self.transport != "udp" and self._peer_closed(self._sock):
            self._disconnect()
        if self._sock is None:
            self._sock = self._connect()
        if self.transport == "udp":
            self._sock.send(data)
        else:
            self._sock.sendall(b"%d " % len(data) + data)

    def _connect(self) -> socket.socket:
        if self.transport == "udp":
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_DGRAM
            )[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.connect(address)
            except OSError:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=self._timeout)
        if self._ssl_context is None:
            return sock
        try:
            return self._ssl_context.wrap_socket(sock, server_hostname=self.host)
        except OSError:
            sock.close()
            raise

    def _peer_closed(self, sock: socket.socket) -> bool:
        """Whether the collector hung up; a send into a closed stream would be lost silently."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            sock.settimeout(0)
            try:
                return sock.recv(1024) == b""  # collectors send nothing; data is discarded
            finally:
                sock.settimeout(self._timeout)
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # a TLS record that is not data yet (a session ticket)
        except (OSError, ValueError):
            return True

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


def _tls_context(query: dict[str, list[str]], bad: Any) -> ssl.SSLContext:
    ca = query.get("ca", [""])[-1]
    insecure = query.get("insecure", ["0"])[-1].lower()
    if insecure not in ("0", "1", "true", "false", "yes", "no"):
        raise bad(f"insecure must be 1 or 0, not {insecure!r}")
    try:
        context = ssl.create_default_context(cafile=ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise bad(f"cannot load the CA file {ca!r} ({exc})") from None
    if insecure in ("1", "true", "yes"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
