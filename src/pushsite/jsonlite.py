"""JSON for the deploy client's start, from the standard library's C parts (`_json`).

Why: `import json` imports `re` (and `enum` with it), ~6 ms of CPU at each start of a
`deploy DIR --server` whose client is ~45 ms in all; the quick path needs no regex
otherwise. These are the functions json.dumps and json.loads call for their defaults
(c_make_encoder, c_make_scanner), so the text is the same; only what the client needs:
no indent, no hooks, UTF-8 bytes or a str in.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False  # typing is not imported at run time (the client's start, launch.py)
if TYPE_CHECKING:
    from typing import Any

_SPACE = " \t\n\r"


def _unknown(value: object) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def dumps(value: Any, separators: tuple[str, str] = (", ", ": ")) -> str:
    """json.dumps(value, separators=separators): ASCII, NaN allowed, circles refused."""
    item, key = separators
    encode = _json.make_encoder({}, _unknown, _json.encode_basestring_ascii, None, key, item,
                                False, False, True)
    return "".join(encode(value, 0))


class _Context:
    """What the C scanner reads off json.JSONDecoder: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # typeshed: a JSONDecoder


def loads(text: str | bytes) -> Any:
    """json.loads(text) for a str or UTF-8 bytes; ValueError for anything but one JSON
    value (whitespace around it allowed)."""
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")
    start = len(text) - len(text.lstrip(_SPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    if text[end:].strip(_SPACE):
        raise ValueError(f"Extra data: char {end}")
    return value
