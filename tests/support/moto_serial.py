"""moto's standalone server with DynamoDB's requests answered one at a time.

Why: moto's server is threaded and its DynamoDB backend reads, changes and writes an item in
Python without a lock, so two concurrent `UpdateItem ... ADD` on one counter can both read the
old value and return the same number (seen: tests/contracts/test_state_contract.py's
concurrent appends got seqs 1, 1, 2, 2, ... under load). Real DynamoDB applies each write to
an item atomically; answering DynamoDB's requests in turn gives moto that guarantee, and only
that one: a client that reads and then writes still races. Other services (SQS's long polls)
stay concurrent.

Run as `python -P tests/support/moto_serial.py -H HOST -p PORT` (moto.server's arguments).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

import moto.server

_DYNAMODB = "DynamoDB_"
_run_simple = moto.server.run_simple
_turn = threading.Lock()


def _serial_dynamodb(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """`app`, with a DynamoDB request (X-Amz-Target DynamoDB_...) run and read out under a lock."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith(_DYNAMODB):
            return app(environ, start_response)
        with _turn:
            return list(app(environ, start_response))

    return wrapped


def _run_simple_serial(host: str, port: int, app: Any, **options: Any) -> None:
    _run_simple(host, port, _serial_dynamodb(app), **options)


if __name__ == "__main__":
    moto.server.run_simple = _run_simple_serial  # type: ignore[assignment]
    moto.server.main(sys.argv[1:])
