"""uvicorn's httptools protocol with a shortcut for the edge's cached answers.

A plain GET or HEAD (no body, no If-None-Match, If-Modified-Since or Range) on a site host
whose answer the edge already holds for the deployment it serves now (Edge.cached) is written
to the socket straight from the parser callback: no ASGI scope, task or messages, the same
bytes the ASGI path would send. Everything else takes uvicorn's ordinary path.

A read that holds exactly one whole request, byte for byte the same as one the shortcut
answered before (a client asking again for what it asked), is not parsed again: the bytes are
the key to what they asked (host, path, query, Accept-Encoding, HEAD), every check the first
parse made is a function of those bytes, and the answer is looked up as above (so it follows
deploys and rollbacks just the same). That skips httptools' callbacks and uvicorn's per-request
scope, which were most of a cached answer's time in Python.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from pushsite.edge.bounded import BoundedHttpToolsProtocol
from pushsite.edge.repeats import HEAD_BYTES_MAX, Asked
from pushsite.edge.respond import Answer, AnswerKey, Edge

_PLAIN_METHODS = (b"GET", b"HEAD")
_NOT_PLAIN = frozenset(
    {b"if-none-match", b"if-modified-since", b"range", b"content-length", b"transfer-encoding",
     b"expect", b"upgrade"}
)  # fmt: skip


def find_edge(app: Any) -> Edge | None:
    """The Edge behind uvicorn's middleware wrappers (each keeps the next one in `.app`)."""
    for _ in range(8):
        if app is None:
            return None
        edge = getattr(app, "edge", None)
        if isinstance(edge, Edge):
            return edge
        app = getattr(app, "app", None)
    return None


class EdgeHttpToolsProtocol(BoundedHttpToolsProtocol):
    """The bounded protocol (bounded.py), answering cached edge requests from the parser."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._edge = find_edge(self.app)
        self._repeats = self._edge.repeats if self._edge is not None else None
        self._shortcut = False  # the current message was answered by the shortcut
        self._defaults: tuple[object, bytes] = (None, b"")
        self._idle = True  # between messages: a read may start a new request
        self._begun = 0  # messages begun in the current read
        self._asked: Asked | None = None  # what the shortcut answered in the current read
        self._answered_at = float("-inf")  # loop time of the last repeated request's answer

    def data_received(self, data: bytes) -> None:
        repeats = self._repeats
        if self._idle and len(data) <= HEAD_BYTES_MAX and repeats is not None:
            asked = repeats.asked.get(data)
            if asked is not None:
                repeats.asked.move_to_end(data)
                if self._answer_again(asked):
                    return
        began_idle = self._idle
        self._new_read()
        super().data_received(data)
        # Remembered only when the read was exactly one whole request the shortcut answered:
        # it began between messages, began one message only and ended after it.
        if self._asked is not None and began_idle and self._begun == 1 and self._idle \
                and len(data) <= HEAD_BYTES_MAX and not self._refused \
                and not self.transport.is_closing() and repeats is not None:
            repeats.remember(data, self._asked)

    def _new_read(self) -> None:
        self._begun = 0
        self._asked = None

    def on_message_begin(self) -> None:
        self._shortcut = False
        self._idle = False
        self._begun += 1
        self._asked = None
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if not self.head_ok():
            return
        try:
            shortcut = self._edge is not None and self._answer_cached()
        except Exception:  # e.g. the state store is down: the ordinary path answers 503
            shortcut = False
        if shortcut:
            self._shortcut = True
            self.on_response_complete()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._shortcut:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._idle = True
        if not self._shortcut:
            super().on_message_complete()

    def _answer_again(self, asked: Asked) -> bool:
        """Answer a request whose bytes were answered before, as the shortcut would."""
        cycle: RequestResponseCycle | None = self.cycle
        if (cycle is not None and not cycle.response_complete) or self.pipeline \
                or self.flow.write_paused or self._refused or self.transport.is_closing():
            return False
        edge = self._edge
        assert edge is not None
        host_name, key, target = asked
        try:
            if target is None:
                target = edge.hosts.target(host_name)
            answer = edge.cached(key, target) if target is not None else None
        except Exception:  # e.g. the state store is down: parsed, the ordinary path answers
            return False
        if answer is None:
            return False
        self.transport.writelines((self._head(answer), answer.body))
        edge.repeats.answered += 1
        # on_response_complete's work, but the keep-alive timer armed after an earlier answer
        # stays, and is moved on when it fires (uvicorn cancels it on every read and makes a
        # new one after every answer: more than the rest of this answer cost in Python)
        self.server_state.total_requests += 1
        self._answered_at = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler)
        return True

    def timeout_keep_alive_handler(self) -> None:
        """Close an idle kept-alive connection, unless a repeated request was answered since
        the timer was armed: then wait out the rest of the idle time from that answer."""
        due = self._answered_at + self.timeout_keep_alive
        now = self.loop.time()
        if due > now:
            self.timeout_keep_alive_task = self.loop.call_later(
                due - now, self.timeout_keep_alive_handler)
            return
        super().timeout_keep_alive_handler()

    def _answer_cached(self) -> bool:
        # uvicorn declares `cycle` non-optional but it is None until the first request
        cycle: RequestResponseCycle | None = self.cycle
        if (cycle is not None and not cycle.response_complete) or self.pipeline:
            return False  # an earlier request is still being answered: keep the order
        if self.flow.write_paused:
            return False  # the client is not reading: uvicorn's path waits for it
        parser = self.parser
        method = parser.get_method()
        if method not in _PLAIN_METHODS or parser.get_http_version() != "1.1":
            return False
        if not parser.should_keep_alive():
            return False  # "Connection: close": uvicorn's path closes after the answer
        url = self.url
        if url[:1] != b"/":
            return False
        host = accept = forwarded_host = None
        for name, value in self.headers:
            if name == b"host":
                host = value
            elif name == b"accept-encoding":
                accept = value if accept is None else accept + b"," + value
            elif name == b"x-forwarded-host":
                forwarded_host = value
            elif name in _NOT_PLAIN:
                return False
        if host is None:
            return False
        if forwarded_host is not None and forwarded_host != host:
            return False  # a trusted proxy's may name another host (web/forwarded.py)
        edge = self._edge
        assert edge is not None
        host_name = host.decode("latin-1")
        target = edge.hosts.target(host_name)
        if target is None:
            return False
        raw_path, _, query = url.partition(b"?")
        raw_path = raw_path.partition(b"#")[0]
        head = method == b"HEAD"
        key: AnswerKey = (host_name, raw_path, query.decode("latin-1"),
                          None if accept is None else accept.decode("latin-1"), head)
        answer = edge.cached(key, target)
        if answer is None:
            return False
        self.transport.writelines((self._head(answer), answer.body))
        self._asked = (host_name, key, edge.hosts.named(host_name))
        return True

    def _head(self, answer: Answer) -> bytes:
        """Status line and headers as uvicorn writes them, with its current Date header."""
        defaults = self.server_state.default_headers
        seen, block = self._defaults
        if seen is not defaults:
            block = b"".join(name + b": " + value + b"\r\n" for name, value in defaults)
            self._defaults = (defaults, block)
        return STATUS_LINE[answer.status] + block + answer.wire_headers
