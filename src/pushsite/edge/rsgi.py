"""The app `pushsite serve` runs under granian: RSGI for the edge, ASGI for the control plane.

Granian's RSGI interface costs far less per request than its ASGI one (no scope dict, no
message dicts, one call for a whole response), and the edge answers tens of thousands of
requests a second. Site hosts are answered here directly; every other host (dashboard, API,
git remote, hooks: Starlette apps) goes through `asgi_over_rsgi`, which carries one request
of a plain ASGI app over RSGI, streaming request and response bodies both ways.

RSGI gives the path percent-decoded ("%2F" arrives as "/", like nginx sees it), so the edge
works on the path re-encoded; a path that was not UTF-8 arrives with U+FFFD in it and is
answered 400 like the ASGI edge does.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from pushsite.edge.respond import Answer, ASGIApp, Conditions, Edge, Message

_BAD_PATH = b"/\xff"  # a raw path the edge refuses with 400 (not UTF-8)
_SAFE_PATH = "/:@!$&'()*+,;=-._~"
_FAILED = b"500 Internal Server Error\n"
_TEXT = [("content-type", "text/plain; charset=utf-8")]
_log = logging.getLogger("pushsite.web")


class EdgeOrControl:
    """One RSGI app for the port: site hosts go to the edge, every other host to the control."""

    def __init__(self, edge: Edge, control: ASGIApp) -> None:
        self.edge = edge
        self.control = control
        self._target = edge.hosts.target
        self._paths: dict[str, bytes] = {}

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        headers = scope.headers
        host = headers.get("host", "")
        target = self._target(host)
        if target is None or scope.proto != "http":
            await asgi_over_rsgi(self.control, scope, protocol)
            return
        method = scope.method
        path = scope.path
        query = scope.query_string
        accept = _accept(headers)
        conditions = Conditions(headers.get("if-none-match"), headers.get("if-modified-since"),
                                headers.get("range"), headers.get("if-range"))
        raw_path = self._raw_path(path)
        if (method == "GET" or method == "HEAD") and conditions.plain:
            try:
                answer = self.edge.cached((host, raw_path, query, accept, method == "HEAD"),
                                          target)  # fmt: skip
            except Exception:  # e.g. the state store is down: respond() answers 503
                answer = None
            if answer is not None:
                protocol.response_bytes(answer.status, answer.rsgi_headers, answer.body)
                return
        answer = await self.edge.respond(method, host, raw_path, query, accept, conditions,
                                         target)  # fmt: skip
        await send_answer(protocol, answer)

    def _raw_path(self, path: str) -> bytes:
        """The path as the edge reads it: RSGI's decoded path, percent-encoded again."""
        raw = self._paths.get(path)
        if raw is None:
            raw = _BAD_PATH if "\ufffd" in path else quote(path, safe=_SAFE_PATH).encode()
            if len(self._paths) >= 4096:
                self._paths.clear()
            self._paths[path] = raw
        return raw

    def __rsgi_init__(self, loop: Any) -> None:
        """Nothing to start: the deploy worker runs in the `pushsite serve` parent."""

    def __rsgi_del__(self, loop: Any) -> None:
        """Nothing to stop."""


def _accept(headers: Any) -> str | None:
    """The Accept-Encoding value; several header lines are one comma-separated list."""
    values = headers.get_all("accept-encoding")
    if not values:
        return None
    return values[0] if len(values) == 1 else ",".join(values)


async def send_answer(protocol: Any, answer: Answer) -> None:
    if answer.rest is None:
        protocol.response_bytes(answer.status, answer.rsgi_headers, answer.body)
        return
    transport = protocol.response_stream(answer.status, answer.rsgi_headers)
    try:
        await transport.send_bytes(answer.body)
        async for chunk in answer.rest:
            await transport.send_bytes(chunk)
    except RuntimeError:  # RSGIProtocolClosed: the client went away
        pass
    finally:
        await answer.rest.aclose()  # type: ignore[attr-defined]


def _address(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else None


async def asgi_over_rsgi(app: ASGIApp, scope: Any, protocol: Any) -> None:
    """Run one HTTP request of an ASGI app over RSGI.

    The request body is read as it arrives (a git push streams hundreds of megabytes); once
    it is read, `receive` waits for the client to go away, as server-sent events need. A body
    sent in one message is one RSGI response; one sent in parts is an RSGI stream.
    """
    if scope.proto != "http":  # websockets are off in `pushsite serve`
        protocol.close(1003)
        return
    path = scope.path
    asgi_scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": scope.http_version,
        "method": scope.method,
        "scheme": scope.scheme,
        "path": path,
        "raw_path": quote(path, safe=_SAFE_PATH).encode(),
        "query_string": scope.query_string.encode("latin-1"),
        "root_path": "",
        "headers": [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in scope.headers.items()
        ],
        "client": _address(scope.client),
        "server": _address(scope.server),
        "extensions": {},
    }
    chunks = protocol.__aiter__()
    body_done = False
    status = 500
    headers: list[tuple[str, str]] = []
    transport: Any = None
    started = finished = False

    async def receive() -> Message:
        nonlocal body_done
        if not body_done:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": bytes(chunk), "more_body": True}
        await protocol.client_disconnect()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, headers, transport, started, finished
        kind = message["type"]
        if kind == "http.response.start":
            status = message["status"]
            headers = [
                (bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
                for name, value in message.get("headers", ())
            ]
            started = True
        elif kind == "http.response.body" and started and not finished:
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if transport is None:
                if not more:
                    protocol.response_bytes(status, headers, bytes(body))
                    finished = True
                    return
                transport = protocol.response_stream(status, headers)
            if body:
                try:
                    await transport.send_bytes(bytes(body))
                except RuntimeError as exc:  # RSGIProtocolClosed: as ASGI servers say it
                    raise OSError("the client closed the connection") from exc
            finished = not more

    failed = False
    try:
        await app(asgi_scope, receive, send)
    except Exception:
        _log.exception("the control plane failed on %s %s", scope.method, path)
        failed = True
    if transport is None and not finished:
        # Nothing went out yet: a whole response can still be sent.
        if started and not failed:
            protocol.response_bytes(status, headers, b"")
        else:
            protocol.response_bytes(500, _TEXT, _FAILED)
