"""A TCP proxy on 127.0.0.1 that counts the bytes each way: what a client really sends over
the wire (HTTP headers, chunk framing and all), not what it meant to send."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field


@dataclass
class Counts:
    up: int = 0  # client -> server
    down: int = 0  # server -> client
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, up: bool, n: int) -> None:
        with self.lock:
            if up:
                self.up += n
            else:
                self.down += n

    def reset(self) -> None:
        with self.lock:
            self.up = self.down = 0


@contextmanager
def counting_proxy(target_port: int) -> Iterator[tuple[int, Counts]]:
    """(the proxy's port, its counts) for the block; every connection is relayed as is."""
    counts = Counts()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                counts.add(up, len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", target_port))
            for sock in (client, upstream):  # relay each piece at once, as a proxy does
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client, False), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), counts
    finally:
        stop.set()
        listener.close()
