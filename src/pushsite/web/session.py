"""The dashboard's session: a signed cookie holding a token id and a CSRF secret.

The cookie is `<base64 json>.<base64 HMAC-SHA256>`, signed with a key kept in
`$PUSHSITE_HOME/secret` (created 0600 on first use), so it survives restarts and is shared by
every process on the machine. It holds only the token's id, never the token itself: each
request looks the token up again, so deleting a token signs its sessions out at once. Each
signed-in session also has a random id; signing out records that id as ended in the state
(`Service.end_session`), so a copy of the old cookie is refused afterwards, on every process.
Every session, signed in or not, carries a random CSRF value that each POSTed form must echo.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from pushsite.secretfile import shared_secret

COOKIE = "pushsite_session"
MAX_AGE = 7 * 24 * 3600  # a week, then sign in again
_SECRET_BYTES = 32


@dataclass(frozen=True)
class Session:
    """What the cookie carries: whose session it is, and the value forms must echo."""

    token_id: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    issued: float = field(default_factory=lambda: float(int(time.time())))
    sid: str = ""  # a signed-in session's id, for ending it server-side

    def signed_in(self, token_id: str) -> Session:
        """A fresh session for a token: a new CSRF value, so one seen before sign-in is void."""
        return Session(token_id=token_id, sid=secrets.token_urlsafe(18))

    def csrf_ok(self, value: str) -> bool:
        return bool(value) and hmac.compare_digest(self.csrf.encode(), value.encode())


def load_secret(home: Path) -> bytes:
    """The signing key in `home/secret`, created (mode 0600) by whichever process comes first."""
    return shared_secret(home / "secret", _SECRET_BYTES).encode()


class SessionSigner:
    """Turns a Session into a cookie value and back; a bad, stale or forged value gives None."""

    def __init__(self, secret: bytes, max_age: float = MAX_AGE) -> None:
        self._key = hashlib.sha256(b"pushsite-session\0" + secret).digest()
        self.max_age = max_age

    def _mac(self, payload: bytes) -> str:
        digest = hmac.new(self._key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def dumps(self, session: Session) -> str:
        data = {"t": session.token_id, "c": session.csrf, "i": int(session.issued),
                "s": session.sid}
        payload = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode())
        text = payload.decode().rstrip("=")
        return f"{text}.{self._mac(text.encode())}"

    def loads(self, value: str, now: float | None = None) -> Session | None:
        text, _, mac = value.partition(".")
        if not text or not mac or not hmac.compare_digest(mac, self._mac(text.encode())):
            return None
        try:
            raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            token_id, csrf, issued = raw["t"], raw["c"], float(raw["i"])
            sid = raw.get("s", "")
        except (binascii.Error, ValueError, KeyError, TypeError, AttributeError):
            return None
        if not isinstance(csrf, str) or (token_id is not None and not isinstance(token_id, str)):
            return None
        if not isinstance(sid, str) or (token_id is not None and not sid):
            return None  # a signed-in session without an id could never be ended
        age = (time.time() if now is None else now) - issued
        if age < -60 or age > self.max_age:
            return None
        return Session(token_id=token_id, csrf=csrf, issued=issued, sid=sid)
