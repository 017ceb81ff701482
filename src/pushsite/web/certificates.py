"""pushsite's own HTTPS (`pushsite serve --tls-cert FILE --tls-key FILE`), for a setup without
a proxy: one SSLContext per HTTP process, its certificate reloaded on SIGHUP.

Why reloading works without a restart: the listening socket wraps each new connection with
this one context, and `load_cert_chain` on it replaces the certificate that new handshakes
present; a connection already open keeps the session it made. So a renewed certificate
(certbot's deploy hook, `systemctl reload`) needs only `kill -HUP <pid of pushsite serve>`,
which the parent passes on to every HTTP process (web/processes.py).

A pair that does not load (a key that is not the certificate's, a file written half-way) is
tried on a scratch context first and refused with one line on stderr: the old one stays.
"""

from __future__ import annotations

import signal
import ssl
import sys
from types import FrameType
from typing import Any

from pushsite.errors import ConfigError


def _context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # TLS 1.2+, the library's safe ciphers
    context.set_alpn_protocols(["http/1.1"])  # uvicorn speaks HTTP/1.1 only
    return context


class Certificate:
    """The certificate and key files, and the live context built from them."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self.context = _context()
        try:
            self.context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the certificate {cert} with the key {key}: "
                              f"{_reason(exc)}") from None
        self.reloads = 0

    def reload(self) -> bool:
        """Load the files again into the live context; False (the old pair kept) on error."""
        try:
            _context().load_cert_chain(self.cert, self.key)
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            print(f"error: certificate not reloaded, the old one stays: {self.cert}: "
                  f"{_reason(exc)}", file=sys.stderr, flush=True)
            return False
        self.reloads += 1
        return True

    def reload_on_hangup(self) -> None:
        """SIGHUP reloads (in the main thread; uvicorn leaves SIGHUP alone)."""

        def hangup(signum: int, frame: FrameType | None) -> None:
            self.reload()

        signal.signal(signal.SIGHUP, hangup)

    def factory(self, config: Any, default: Any) -> ssl.SSLContext:
        """uvicorn's `ssl_context_factory`: this live context, not one uvicorn builds."""
        return self.context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
