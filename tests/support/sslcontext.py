"""One default SSL context for every httpx client of the test process.

httpx.get/post/request build a client per call, and each client loads the CA bundle
(SSL_CERT_FILE, SSL_CERT_DIR or certifi's) into a new SSL context: ~50 ms of CPU a call
(cProfile: load_verify_locations), paid by every poll of a test that waits on a server with
httpx.get. The context is the same every time for the same environment, so it is made once per
bundle and shared (httpcore only sets the ALPN protocols on it, ["http/1.1"] for every client
here: nothing uses HTTP/2). A context or `verify=False` the caller passes is used as before.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from httpx._transports import default as transports


@contextmanager
def shared_default_context() -> Iterator[None]:
    """httpx's transports share one default (verify=True) context per CA bundle in the block."""
    original = transports.create_ssl_context
    made: dict[tuple[bool, str | None, str | None], ssl.SSLContext] = {}

    def create(verify: Any = True, cert: Any = None, trust_env: bool = True) -> ssl.SSLContext:
        if verify is not True or cert is not None:
            return original(verify=verify, cert=cert, trust_env=trust_env)
        key = (trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        if key not in made:
            made[key] = original(verify=True, cert=None, trust_env=trust_env)
        return made[key]

    transports.create_ssl_context = create
    try:
        yield
    finally:
        transports.create_ssl_context = original
