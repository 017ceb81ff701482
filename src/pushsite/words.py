"""Counts in sentences: "1 changed file", "2 changed files". No I/O (vocabulary layer)."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`count` and `noun`, the noun's plural (`many`, default noun + "s") unless count is 1.

    The noun may have words before it: plural(1, "changed file") is "1 changed file".
    """
    return f"{count:,} {noun if count == 1 else many or noun + 's'}"
