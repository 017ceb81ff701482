"""An HTTP proxy on 127.0.0.1 that counts the DynamoDB calls made through it: what a process
(a `pushsite serve` in another process) really asks its state store, seen from outside it.

    with DynamoCalls(moto_endpoint) as calls:
        url = f"dynamodb://table?endpoint={calls.url}"
        ...
        calls.count("GetItem", "site#blog", "alias#production")

Calls are told apart by DynamoDB's JSON protocol: the operation in `X-Amz-Target`
(`DynamoDB_20120810.GetItem`), the item in the body's `Key` (pk, sk). Each request is relayed
as is over a kept-alive connection per proxy thread; the answer goes back with its status,
headers and body.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class DynamoCalls:
    """A counting relay to `upstream` (an http:// endpoint); use as a context manager."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._calls: Counter[tuple[str, str, str]] = Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def count(self, operation: str = "", pk: str = "", sk: str = "") -> int:
        """Calls so far of that operation (all when ""), on that item when pk/sk are given."""
        with self._lock:
            return sum(n for (op, p, s), n in self._calls.items()
                       if (not operation or op == operation) and (not pk or p == pk)
                       and (not sk or s == sk))

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> DynamoCalls:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _note(self, target: str, body: bytes) -> None:
        operation = target.rpartition(".")[2]
        pk = sk = ""
        try:
            key = json.loads(body or b"{}").get("Key") or {}
            pk, sk = key.get("pk", {}).get("S", ""), key.get("sk", {}).get("S", "")
        except (ValueError, AttributeError):
            pass
        with self._lock:
            self._calls[(operation, pk, sk)] += 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        calls = self
        local = threading.local()

        class Relay(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                calls._note(self.headers.get("X-Amz-Target", ""), body)
                status, headers, answer = self._relay(body)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def _relay(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP_BY_HOP}
                for attempt in (1, 2):  # a kept-alive connection the upstream closed: anew
                    connection = getattr(local, "connection", None)
                    if connection is None:
                        connection = local.connection = http.client.HTTPConnection(
                            *calls._upstream, timeout=60)
                    try:
                        connection.request("POST", self.path, body, headers)
                        response = connection.getresponse()
                        return response.status, response.getheaders(), response.read()
                    except (http.client.HTTPException, OSError):
                        connection.close()
                        local.connection = None
                        if attempt == 2:
                            raise
                raise AssertionError("unreachable")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        return Relay
