"""A real DNS server on 127.0.0.1 (dnslib) answering TXT questions from a dict the test edits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import DNSServer

from support.servers import free_port


class TxtZone:
    """Answers TXT questions for the names in `records` (name -> strings), NXDOMAIN else."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.questions: list[str] = []

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        self.questions.append(name)
        texts = self.records.get(name)
        if texts is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.TXT:
            for text in texts:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(text), ttl=1))
        return reply


@contextmanager
def txt_server() -> Iterator[tuple[TxtZone, str]]:
    """The zone and the server's "127.0.0.1:<port>" (UDP), for the `dns` setting."""
    zone = TxtZone()
    port = free_port()
    server = DNSServer(zone, address="127.0.0.1", port=port, logger=_Quiet())
    server.start_thread()
    try:
        yield zone, f"127.0.0.1:{port}"
    finally:
        server.stop()


class _Quiet:
    """dnslib's logger interface, printing nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
