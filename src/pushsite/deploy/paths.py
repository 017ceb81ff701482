"""Paths inside a bundle: one safe spelling for every member, and which of them get published.

Names arrive from tar headers as bytes. A name is accepted only if it is valid UTF-8, relative,
free of control characters, backslashes and `..` components, and does not start with a Windows
drive (`C:`). `.` and empty components are dropped, so `./a//b/` becomes `a/b`. Whatever passes
can never point outside the bundle, on any operating system.
"""

from __future__ import annotations

from collections.abc import Iterable

from pushsite.errors import BundleRejected

# C0 controls, DEL and C1 controls: never part of a file name someone means to publish.
# (No regex: `re`, with enum, is ~4 ms of CPU at each start of the deploy client, which
# lists folders with these rules and otherwise never imports it.)
_CONTROL = frozenset(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))
_ASCII_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_WELL_KNOWN = ".well-known"


def _is_drive(text: str) -> bool:
    """Whether the text starts with a Windows drive (`C:`)."""
    return text[1:2] == ":" and text[0] in _ASCII_LETTERS


def _decode(name: bytes | str) -> str:
    if isinstance(name, bytes):
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError:
            raise BundleRejected(
                f"the bundle holds a path that is not valid UTF-8 ({name[:200]!r}); "
                "rename the file and push again"
            ) from None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from surrogateescape decoding
        raise BundleRejected(
            f"the bundle holds a path that is not valid UTF-8 ({name[:200]!r}); "
            "rename the file and push again"
        ) from None
    return name


def _check(text: str) -> None:
    """Raise BundleRejected if the text may never appear in a member or link path."""
    if not _CONTROL.isdisjoint(text):
        bad = next(char for char in text if char in _CONTROL)
        raise BundleRejected(
            f"the bundle holds a path with a control character ({text[:200]!r}, "
            f"character {ord(bad):#04x}); rename the file and push again"
        )
    if "\\" in text:
        raise BundleRejected(
            f"the bundle holds a path with a backslash ({text[:200]!r}); "
            "bundles use '/' between folders"
        )


def is_root_name(name: bytes | str) -> bool:
    """True for names that mean the bundle root itself (`.`, `./`, `.//.`): a folder to skip."""
    text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
    return bool(text) and not text.startswith("/") and all(c in ("", ".") for c in text.split("/"))


def normalise_member_path(name: bytes | str) -> str:
    """The member's path as a relative '/'-separated string, or BundleRejected if it is unsafe.

    Rejected: invalid UTF-8, control characters (NUL included), backslashes, absolute paths,
    Windows drive paths and any `..` component (even one that would stay inside the bundle).
    """
    # an ASCII str is valid UTF-8 as it is: no encoding to try (a list's 1,000 rows, each)
    text = name if isinstance(name, str) and name.isascii() else _decode(name)
    plain = _plain_spelling(text)
    if plain is not None:
        return plain
    _check(text)
    if text.startswith("/"):
        raise BundleRejected(
            f"the bundle holds an absolute path ({text[:200]!r}); "
            "make the archive with relative paths (git archive does)"
        )
    if _is_drive(text):
        raise BundleRejected(f"the bundle holds a Windows drive path ({text[:200]!r})")
    parts = [p for p in text.split("/") if p and p != "."]
    if ".." in parts:
        raise BundleRejected(
            f"the bundle holds a path with a '..' component ({text[:200]!r}); "
            "such a path could write outside the site"
        )
    if not parts:
        raise BundleRejected(f"the bundle holds an empty path ({text[:200]!r})")
    return "/".join(parts)


def _plain_spelling(text: str) -> str | None:
    """The spelling of a plain name, or None to apply the full rules: a printable ASCII name
    with no backslash, drive, empty, "." or ".." component (at most one trailing "/") is
    its own spelling. Most members of every bundle are such names; these checks are C
    string methods, where the full rules (a regex search, a split, a join) were a tenth of
    the reader's time per member, and a regex for the same was no faster."""
    bare = text[:-1] if text.endswith("/") else text
    if not (bare.isascii() and bare.isprintable()) or "\\" in bare:  # no C0, DEL, C1
        return None
    if bare[1:2] == ":" and bare[0].isalpha():  # a drive (ASCII letters only, here)
        return None
    walled = "/" + bare + "/"
    if "//" in walled or "/./" in walled or "/../" in walled:
        return None
    return bare


def symlink_target(link_path: str, target: bytes | str) -> str | None:
    """Where a symlink at `link_path` points, relative to the bundle root; None if outside.

    The target is relative to the link's own folder and may use `..`, resolved here by its
    spelling only (links are never followed). None also for absolute, drive, empty or
    unreadable targets: the deployer skips such a link with a warning.
    """
    try:
        text = _decode(target)
        _check(text)
    except BundleRejected:
        return None
    if not text or text.startswith("/") or _is_drive(text):
        return None
    parts = link_path.split("/")[:-1]
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    resolved = "/".join(parts)
    # `x/l -> ../C:/f` spells a drive path no member can have: outside, like an absolute one
    return resolved if parts and not _is_drive(resolved) else None


def is_published(path: str) -> bool:
    """False for paths the edge must never serve: `.git/`, `.env*` and other dotfiles.

    The one exception is a first component `.well-known` (ACME challenges, security.txt); even
    under it, dot-components such as `.well-known/.env` stay private.
    """
    if not path.startswith(".") and "/." not in path:  # no component starts with a dot
        return True
    parts = path.split("/")
    for index, part in enumerate(parts):
        if part.startswith(".") and not (index == 0 and part == _WELL_KNOWN):
            return False
    return True


def common_top_folder(paths: Iterable[str], dirs: set[str]) -> str | None:
    """The one top-level folder every path lies under, or None when there is not exactly one.

    `git archive --prefix=x/` and `tar czf site.tgz site` wrap the site in one folder, which
    the deployer strips. A first component that is a file (not in `dirs`) is never stripped.
    """
    top: str | None = None
    for path in paths:
        first, slash, _ = path.partition("/")
        if top is None:
            top = first
        elif first != top:
            return None
        if not slash and path not in dirs:
            return None  # the top-level name is a file, not a folder
    return top
