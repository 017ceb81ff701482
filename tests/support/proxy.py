"""A TCP proxy to a local server that misbehaves like a network: a slow link either way, or a
connection that breaks after so many bytes.

Why a relay rather than a slow server: the client and the server under test stay the real
ones; only the wire between them changes, as it does between a CI runner and a host.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

# The relay's receive buffer when the upload is throttled: small and fixed (no autotuning), so
# what the client counts as sent is at most its own send buffer ahead of what the relay took.
_SLOW_BUFFER = 128 << 10


class Proxy:
    """Relay at most `rate` bytes a second back to each client and `up_rate` bytes a second
    from it, or cut the first connection once it has relayed `cut_after` bytes back (a staging
    download that breaks mid-bundle)."""

    def __init__(self, upstream_port: int, *, cut_after: int | None = None,
                 rate: float | None = None, up_rate: float | None = None) -> None:
        self.cut_after = cut_after
        self.rate = rate
        self.up_rate = up_rate
        self.cuts = 0
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        if up_rate:  # accepted sockets inherit it
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SLOW_BUFFER)
        self.port = self._listener.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True),
                             daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, downstream: bool) -> None:
        relayed = 0
        rate = self.rate if downstream else self.up_rate
        try:
            while data := source.recv(65536):
                target.sendall(data)
                relayed += len(data)
                if rate:
                    time.sleep(len(data) / rate)
                if downstream and self.cut_after is not None and self.cuts == 0 \
                        and relayed > self.cut_after:
                    self.cuts += 1
                    break
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closing = True
        self._listener.close()
