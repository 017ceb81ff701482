"""Member paths: one safe spelling, links resolved by spelling, what gets published."""

from __future__ import annotations

import posixpath
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pushsite.deploy.paths import (
    common_top_folder,
    is_published,
    is_root_name,
    normalise_member_path,
    symlink_target,
)
from pushsite.errors import BundleRejected

# Components that are safe on their own: no '/', no backslash, no control characters.
safe_component = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
    min_size=1,
    max_size=12,
).filter(lambda c: c not in (".", ".."))
# Anything a tar header could carry, with the characters that matter made likely.
hostile_text = st.lists(
    st.one_of(
        st.sampled_from(["/", ".", "..", "\\", "\x00", "\x1f", "\x7f", "\x85", "C:", "a", "é"]),
        st.characters(),
    ),
    max_size=20,
).map("".join)


def _is_drive(name: str) -> bool:
    return re.match(r"[A-Za-z]:", name) is not None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("index.html", "index.html"),
        ("./site/index.html", "site/index.html"),
        ("site//css/./a.css", "site/css/a.css"),
        ("site/", "site"),
        (b"site/caf\xc3\xa9.html", "site/café.html"),
        ("x/.well-known/acme", "x/.well-known/acme"),
        ("a/b:c", "a/b:c"),  # a colon is only a drive at the start
        ("...", "..."),  # three dots is a name, not a parent
    ],
)
def test_safe_names_normalise_to_one_spelling(name: str | bytes, expected: str) -> None:
    assert normalise_member_path(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "../etc/passwd",
        "site/../../etc/passwd",
        "site/../index.html",  # stays inside, still refused: '..' is never needed
        "..",
        "/etc/passwd",
        "//server/share",
        "C:/Windows/win.ini",
        "c:evil",
        "site\\..\\..\\x",
        "site/a\\b",
        "a\x00b",
        "a\x01b",
        "a\nb",
        "a\x7fb",
        "a\x9bb",
        b"site/\xff\xfe.html",
        "site/\udcff.html",  # a lone surrogate from surrogateescape decoding
        "",
        "./",
        "//",
    ],
)
def test_unsafe_names_are_rejected(name: str | bytes) -> None:
    with pytest.raises(BundleRejected):
        normalise_member_path(name)


@given(hostile_text)
@example("a/../b")
@example("./.")
def test_normalised_paths_are_always_safe_and_stable(name: str) -> None:
    try:
        path = normalise_member_path(name)
    except BundleRejected:
        return
    parts = path.split("/")
    assert ".." not in parts
    assert "." not in parts and "" not in parts
    assert not path.startswith("/")
    assert "\\" not in path and "\x00" not in path
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in path)
    assert not (len(path) >= 2 and path[1] == ":" and path[0].isascii() and path[0].isalpha())
    assert normalise_member_path(path) == path
    assert normalise_member_path(path.encode("utf-8")) == path


@given(st.binary(max_size=40))
def test_bytes_are_accepted_only_as_utf8_and_read_like_text(name: bytes) -> None:
    try:
        path = normalise_member_path(name)
    except BundleRejected:
        return
    assert normalise_member_path(name.decode("utf-8")) == path


@given(st.lists(safe_component, min_size=1, max_size=6), st.data())
def test_dots_and_extra_slashes_are_dropped(parts: list[str], data: st.DataObject) -> None:
    separators = st.sampled_from(["/", "//", "/./", "/././/"])
    name = data.draw(st.sampled_from(["", "./", ".//"]))
    for index, part in enumerate(parts):
        name += part + (data.draw(separators) if index < len(parts) - 1 else "")
    name += data.draw(st.sampled_from(["", "/", "/."]))
    if _is_drive(parts[0]):
        return  # a drive spelling, rejected on purpose
    assert normalise_member_path(name) == "/".join(parts)


@given(st.lists(safe_component, max_size=3), st.lists(safe_component, max_size=3))
def test_any_parent_component_is_rejected(before: list[str], after: list[str]) -> None:
    with pytest.raises(BundleRejected):
        normalise_member_path("/".join([*before, "..", *after]))


@pytest.mark.parametrize(
    ("link", "target", "expected"),
    [
        ("x/css/link.css", "../style.css", "x/style.css"),
        ("x/a.html", "b.html", "x/b.html"),
        ("x/a.html", "./sub//b.html", "x/sub/b.html"),
        ("x/a/b/c", "../../d", "x/d"),
        ("x/a", "../../etc/passwd", None),
        ("a", "..", None),
        ("x/a", "/etc/passwd", None),
        ("x/a", "C:/x", None),
        ("x/a", "", None),
        ("x/a", "b\x00c", None),
        ("x/a", "b\\c", None),
        ("x/a", b"\xff", None),
        ("x/a", "..", None),  # the root itself is not a file to serve
        ("x/l", "../C:/f", None),  # resolves to a drive path (found by hypothesis)
    ],
)
def test_symlink_targets_resolve_from_the_links_folder(
    link: str, target: str | bytes, expected: str | None
) -> None:
    assert symlink_target(link, target) == expected


@given(
    st.lists(safe_component, min_size=1, max_size=4),
    st.lists(st.one_of(safe_component, st.sampled_from(["..", ".", ""])), max_size=6),
)
def test_symlink_targets_match_posix_normpath_or_are_none(
    link_parts: list[str], target_parts: list[str]
) -> None:
    link = "/".join(link_parts)
    target = "/".join(target_parts)
    result = symlink_target(link, target)
    root = "/\\"  # a folder name no component can spell
    joined = posixpath.normpath(posixpath.join(root, posixpath.dirname(link), target))
    inside = target and not target.startswith("/") and not _is_drive(target)
    if inside and joined.startswith(root + "/"):
        assert result == joined.removeprefix(root + "/")
        assert normalise_member_path(result) == result
    else:
        assert result is None


@pytest.mark.parametrize(
    ("path", "published"),
    [
        ("index.html", True),
        ("x/css/a.css", True),
        (".well-known/security.txt", True),
        (".well-known", True),
        (".git/config", False),
        (".git", False),
        ("docs/.git/HEAD", False),
        (".env", False),
        (".env.production", False),
        ("config/.envrc", False),
        (".htaccess", False),
        ("a/.DS_Store", False),
        (".well-known/.env", False),
        (".well-known/.git/x", False),
        ("x/.well-known/acme", False),  # only a first component is exempt
        ("a.b/c.d", True),
        (".well-knownx/a", False),
    ],
)
def test_dotfiles_are_never_published_except_well_known(path: str, published: bool) -> None:
    assert is_published(path) is published


@given(st.lists(safe_component, min_size=1, max_size=5))
def test_published_means_no_dot_component_after_the_exemption(parts: list[str]) -> None:
    path = "/".join(parts)
    rest = parts[1:] if parts[0] == ".well-known" else parts
    assert is_published(path) is not any(p.startswith(".") for p in rest)


@pytest.mark.parametrize(
    ("paths", "dirs", "expected"),
    [
        (["x", "x/index.html", "x/css", "x/css/a.css"], {"x", "x/css"}, "x"),
        (["x/index.html", "x/css/a.css"], set(), "x"),  # folder implied by its contents
        (["x"], {"x"}, "x"),
        (["index.html"], set(), None),  # a single file is not a folder to strip
        (["x", "x/a"], set(), None),  # "x" is a file here
        (["x/index.html", "y/index.html"], set(), None),
        (["x/index.html", "index.html"], set(), None),
        ([], set(), None),
    ],
)
def test_common_top_folder(paths: list[str], dirs: set[str], expected: str | None) -> None:
    assert common_top_folder(paths, dirs) == expected


def test_common_top_folder_takes_an_iterator() -> None:
    assert common_top_folder(iter(["s/a", "s/b/c"]), {"s/b"}) == "s"


@pytest.mark.parametrize(
    ("name", "root"), [(".", True), ("./", True), (".//./", True), ("", False), ("/", False)]
)
def test_root_names(name: str, root: bool) -> None:
    assert is_root_name(name) is root


def _reference_spelling(text: str) -> str | None:
    """normalise_member_path step by step (its slow path), None where it must refuse."""
    if re.search(r"[\x00-\x1f\x7f-\x9f\\]", text) or text.startswith("/") or _is_drive(text):
        return None
    parts = [p for p in text.split("/") if p and p != "."]
    return None if not parts or ".." in parts else "/".join(parts)


@given(hostile_text)
@example("a/./b")
@example("a//b/")
@example("a/../b")
@example("./")
@example("C:/x")
@example("x/C:")
@example("a/.")
@example("a/..")
@example("../a")
@example("a\\b")
@example("a\x7fb/")
@example("1:x")
def test_the_plain_name_shortcut_spells_as_the_full_rules(name: str) -> None:
    """Most names take the plain-name shortcut (paths._plain_spelling); every name gets
    the same answer as by the full rules."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return  # refused before either spelling (test_bytes_are_accepted_only_as_utf8...)
    expected = _reference_spelling(name)
    if expected is None:
        with pytest.raises(BundleRejected):
            normalise_member_path(name)
    else:
        assert normalise_member_path(name) == expected
