"""HTTP receivers on 127.0.0.1 that record what they are sent (notifications, commit
statuses) and answer as a test says, and a Service with its worker on a thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pushsite.config import load_config
from pushsite.service import Service
from pushsite.service.worker import run_worker

WAIT = 30.0


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int
    path: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server that records every POST and answers what `answer(n)` says (n from 1);
    an answer of 0 means: say nothing for `hang` seconds."""

    answer: Callable[[int], int] = lambda n: 204
    hang: float = 0.0
    seen: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                code = receiver.answer(len(receiver.seen) + 1)
                receiver.seen.append(Received({k.lower(): v for k, v in self.headers.items()},
                                              body, time.time(), code, self.path))
                if code == 0:
                    time.sleep(receiver.hang)
                    code = 204
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def events(self) -> list[str]:
        return [r.json().get("type", "") for r in self.seen if r.body.startswith(b'{"type"')]

    def wait_for(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: never seen; got {[r.body for r in self.seen]}")
            time.sleep(0.02)


def receivers_fixture() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(**options: Any) -> Receiver:
        receiver = Receiver(**options).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def running_fixture() -> Iterator[Callable[..., Service]]:
    """A Service on this test's home with its worker on a thread, as `pushsite serve` has."""
    stops: list[tuple[threading.Event, threading.Thread, Service]] = []

    def start(**settings: Any) -> Service:
        service = Service(load_config(**settings))
        service.runner_kind = "serve"
        stop = threading.Event()
        thread = threading.Thread(target=run_worker, args=(service,),
                                  kwargs={"stop": stop, "wait": 0.05, "kind": "serve"},
                                  daemon=True)
        thread.start()
        stops.append((stop, thread, service))
        return service

    yield start
    for stop, thread, service in stops:
        stop.set()
        thread.join(10)
        service.close()


