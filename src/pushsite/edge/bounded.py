"""uvicorn's httptools protocol with limits on what a request's head may cost, as nginx has.

httptools keeps a request's URL and headers in memory until the head ends and has no limit of
its own, and uvicorn waits for a head as long as bytes keep trickling in. One 32 MB header
stalled every site for two seconds and grew the process by 300 MB that it kept; a client
sending a byte every few seconds held a connection forever. Here:

- the head (request line and headers) may total MAX_HEAD bytes: past that the connection is
  answered 431 at once and closed, without reading the rest;
- one header line may be MAX_LINE bytes (431), the request target MAX_URL bytes (414);
- a head must arrive within HEAD_TIMEOUT seconds of its first byte (408, then closed).

The limits match nginx's defaults (`large_client_header_buffers 4 8k`, a 60 s
`client_header_timeout`, shorter here because nothing legitimate sends a head slowly).
`PUSHSITE_HEAD_TIMEOUT` overrides the timeout (tests use a short one).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_LINE = 8 << 10
MAX_URL = 8 << 10
MAX_HEAD = 32 << 10
HEAD_TIMEOUT = float(os.environ.get("PUSHSITE_HEAD_TIMEOUT", "") or 20.0)

_REASONS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses oversized or slow request heads before reading on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: the rest of the head is not worth parsing
        super().data_received(data)
        if self._in_head and not self._refused:  # a head split over reads: rarely the case
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._refuse(431, f"request headers larger than {MAX_HEAD >> 10} KiB")
            elif self._head_timer is None:
                self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_too_slow)

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0  # the clock starts only if the head outlasts this read (above)
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_URL:
            self._refuse(414, f"request target longer than {MAX_URL >> 10} KiB")

    def on_headers_complete(self) -> None:
        if self.head_ok():
            super().on_headers_complete()

    def head_ok(self) -> bool:
        """End the head's clock and check its lines; False when the request was refused.
        Subclasses that answer from this callback call it first (it is cheap to repeat)."""
        if self._in_head:
            self._end_head()
            total = len(self.url)
            for name, value in self.headers:
                line = len(name) + len(value) + 4
                if line > MAX_LINE:
                    self._refuse(431, f"header {name[:64].decode('latin-1')!r} is longer "
                                      f"than {MAX_LINE >> 10} KiB")
                    break
                total += line
            else:
                if total > MAX_HEAD:  # it all came in one read, before data_received counted
                    self._refuse(431, f"request headers larger than {MAX_HEAD >> 10} KiB")
        return not self._refused

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            super().on_header(name, value)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a refused request was answered already
            super().send_400_response(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        super().connection_lost(exc)

    def _end_head(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self._refused:
            self._refuse(408, f"request headers not received within {HEAD_TIMEOUT:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer with `status` and close; nothing more is read from this connection."""
        self._refused = True
        self._end_head()
        body = (message + "\n").encode()
        head = b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n" % (
            status, _REASONS[status])
        self.transport.write(head + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                             + body)
        self.transport.close()
