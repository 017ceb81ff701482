"""Requests the edge answered before, by their exact bytes, so a repeat is not parsed again.

A client asking again for what it asked (a reload, a poll, a load test) sends the same bytes.
Those bytes are the key to what they asked: the host name, the answer's key (host, path,
query, Accept-Encoding, HEAD) and, for a host under the base domain, the site its name says.
None of that can change, so an entry never goes stale; the answer itself is still looked up
for every request (Edge.cached), so deploys and rollbacks show exactly as before.
uvicorn_shortcut fills and reads it; each Edge has its own (one per HTTP process).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from pushsite.edge.hosts import SiteTarget

if TYPE_CHECKING:
    from pushsite.edge.respond import AnswerKey

HEAD_BYTES_MAX = 4 << 10  # a longer request is parsed every time
LIMIT = 1024  # requests remembered: at most 4 MiB of keys

# host name, answer key, and the site the name says when it is under the base domain (a
# custom domain's claim comes and goes: None, looked up on every repeat)
Asked = tuple[str, "AnswerKey", "SiteTarget | None"]


class Repeats:
    """Request bytes -> what they asked, the least recently asked dropped first.

    `asked` is read directly on the hot path (a method call is a good part of a repeat's
    cost in Python); `remember` adds."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.asked: OrderedDict[bytes, Asked] = OrderedDict()
        self.limit = limit
        self.answered = 0  # requests answered without parsing them (tests look)

    def remember(self, data: bytes, asked: Asked) -> None:
        self.asked[data] = asked
        while len(self.asked) > self.limit:
            self.asked.popitem(last=False)
