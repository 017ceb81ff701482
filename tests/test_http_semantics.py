"""The edge's HTTP rules as pure functions: codings, entity tags, dates, ranges, caching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pushsite.edge import http_semantics as hs

BOTH = ("br", "gzip")


@pytest.mark.parametrize(
    ("header", "available", "expected"),
    [
        (None, BOTH, ""),  # no header: identity, as nginx does
        ("", BOTH, ""),  # empty header: the client wants no coding
        ("gzip, deflate, br", BOTH, "br"),  # ties go to br
        ("gzip, deflate, br, zstd", BOTH, "br"),
        ("gzip", BOTH, "gzip"),
        ("br", ("gzip",), ""),  # br asked for but not stored
        ("gzip;q=1, br;q=0.5", BOTH, "gzip"),  # q-values beat our preference
        ("br;q=0, gzip", BOTH, "gzip"),
        ("br;q=0", BOTH, ""),  # gzip not named and no "*": only identity
        ("*", BOTH, "br"),
        ("*;q=0.5, gzip", BOTH, "gzip"),
        ("*, br;q=0", BOTH, "gzip"),
        ("GZIP;Q=0.8", BOTH, "gzip"),  # names and parameters are case-insensitive
        ("gzip ; q=0.8 , br ; q=0.9", BOTH, "br"),
        ("gzip;q=0.5, identity", BOTH, ""),  # identity preferred explicitly
        ("gzip;q=0.5, identity;q=0.5", BOTH, "gzip"),  # tie: the coding wins
        ("gzip;q=bogus", BOTH, "gzip"),  # malformed q counts as 1
        ("gzip;q=0.000", BOTH, ""),
        ("identity", BOTH, ""),
        ("deflate", BOTH, ""),
        ("identity;q=0", BOTH, None),  # refuses identity and names nothing we have
        ("identity;q=0, gzip", BOTH, "gzip"),
        ("*;q=0", BOTH, None),
        ("*;q=0, identity", BOTH, ""),
        ("identity;q=0", (), None),
        ("*;q=0, br", ("gzip",), None),
        ("br, gzip, br;q=0", BOTH, "br"),  # a repeated name keeps its first entry
    ],
)
def test_choose_encoding(
    header: str | None, available: tuple[str, ...], expected: str | None
) -> None:
    assert hs.choose_encoding(header, available) == expected


def test_parse_accept_encoding_keeps_weights() -> None:
    assert hs.parse_accept_encoding("br;q=0.7, gzip;q=2, *;q=-1") == {
        "br": 0.7,
        "gzip": 1.0,
        "*": 0.0,
    }


def test_etags_differ_per_variant_and_are_strong() -> None:
    digest = "ab" * 32
    tags = {hs.make_etag(digest, e) for e in ("", "gzip", "br")}
    assert len(tags) == 3
    assert all(t.startswith('"') and t.endswith('"') for t in tags)
    assert hs.make_etag(digest, "br") == f'"{digest[:32]}-br"'


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"abc"', True),
        ('W/"abc"', True),  # weak comparison for If-None-Match
        ('"x", "abc"', True),
        ('"x",W/"abc" ', True),
        ('"x" , "y"', False),
        ('"ab"', False),
        ('"abc-br"', False),  # another variant's tag
        ("*", True),
        (" * ", True),
        ("abc", True),  # an unquoted tag from a broken client
        ('"a,b", "abc"', True),  # commas inside a tag
        ('"a,b"', False),
        ("", False),
    ],
)
def test_none_match(header: str, matches: bool) -> None:
    assert hs.none_match(header, '"abc"') is matches


def test_none_match_against_weak_current_tag() -> None:
    assert hs.none_match('"abc"', 'W/"abc"')


def test_parse_etags_lists_opaque_tags() -> None:
    assert hs.parse_etags('W/"a", "b",c') == ['"a"', '"b"', '"c"']
    assert hs.parse_etags("*") is None


def test_http_dates_round_trip_in_all_three_forms() -> None:
    when = 784111777.0
    assert hs.http_date(when) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert hs.parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == when
    assert hs.parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == when
    assert hs.parse_http_date("Sun Nov  6 08:49:37 1994") == when
    assert hs.parse_http_date("yesterday") is None
    assert hs.parse_http_date("") is None


@pytest.mark.parametrize(
    ("header", "fresh"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", True),  # same second
        ("Sun, 06 Nov 1994 08:49:38 GMT", True),  # later
        ("Sun, 06 Nov 1994 08:49:36 GMT", False),  # earlier: modified since
        ("not a date", False),
    ],
)
def test_not_modified_since(header: str, fresh: bool) -> None:
    # Sub-second deployment times compare at the precision Last-Modified carries.
    assert hs.not_modified_since(header, 784111777.75) is fresh


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-", 1000, (0, 1000)),
        ("bytes=0-0", 1000, (0, 1)),
        ("bytes=100-199", 1000, (100, 200)),
        ("bytes=900-5000", 1000, (900, 1000)),  # last-pos clamped
        ("bytes=-500", 1000, (500, 1000)),
        ("bytes=-5000", 1000, (0, 1000)),  # suffix longer than the file: all of it
        ("bytes=999-", 1000, (999, 1000)),
        ("Bytes = 1 - 2", 1000, (1, 3)),
        ("bytes=1000-", 1000, hs.UNSATISFIABLE),
        ("bytes=5000-6000", 1000, hs.UNSATISFIABLE),
        ("bytes=-0", 1000, hs.UNSATISFIABLE),
        ("bytes=0-", 0, hs.UNSATISFIABLE),
        ("bytes=-1", 0, hs.UNSATISFIABLE),
        ("bytes=0-1,5-6", 1000, None),  # several ranges: the full content with 200
        ("bytes=200-100", 1000, None),  # invalid: ignored
        ("bytes=-", 1000, None),
        ("bytes=a-b", 1000, None),
        ("items=0-5", 1000, None),
        ("", 1000, None),
    ],
)
def test_parse_range(header: str, size: int, expected: object) -> None:
    assert hs.parse_range(header, size) == expected


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 10_000))
def test_parse_range_stays_inside_the_content(first: int, last: int, size: int) -> None:
    result = hs.parse_range(f"bytes={first}-{last}", size)
    if isinstance(result, tuple):
        start, end = result
        assert 0 <= start < end <= size
    elif result is hs.UNSATISFIABLE:
        assert first >= size
    else:
        assert last < first


def test_if_range() -> None:
    when = 784111777.0
    assert hs.if_range_allows('"abc"', '"abc"', when)
    assert not hs.if_range_allows('"abd"', '"abc"', when)
    assert not hs.if_range_allows('W/"abc"', '"abc"', when)  # needs a strong match
    assert hs.if_range_allows("Sun, 06 Nov 1994 08:49:37 GMT", '"abc"', when)
    assert not hs.if_range_allows("Sun, 06 Nov 1994 08:49:38 GMT", '"abc"', when)
    assert not hs.if_range_allows("garbage", '"abc"', when)


@pytest.mark.parametrize(
    "path",
    [
        "app.3f9a2b7c.js",
        "static/js/main.3f9a2b7c.chunk.js",
        "assets/main-BfK3x9Qa.css",
        "assets/index-C_x-1aZ9.js",
        "_next/static/chunks/pages/index-3f9a2b7c1d2e4f5a.js",
        "css/style.min." + "0123456789abcdef" * 4 + ".css",
        "fonts/inter.a1b2c3d4e5.woff2",
    ],
)
def test_fingerprinted_names(path: str) -> None:
    assert hs.is_fingerprinted(path)
    assert hs.default_cache_control(path, "text/javascript") == hs.IMMUTABLE


@pytest.mark.parametrize(
    "path",
    [
        "index.html",
        "app.js",
        "about/team.html",
        "report-20240115.pdf",  # a date, not a hash
        "images/photo.12345678.jpg",  # all digits: could be anything
        "js/my-Settings.js",  # a word
        "js/my-settings.js",
        "js/HomePage.js",
        "deadbeef.js",  # no separator before it
        "app.3f9a2b7c",  # no extension after it
        "a.facadeba.js",  # hex letters only: could be a word
    ],
)
def test_plain_names_are_not_fingerprinted(path: str) -> None:
    assert not hs.is_fingerprinted(path)
    assert hs.default_cache_control(path, "text/javascript") == hs.REVALIDATE


def test_html_always_revalidates_even_when_fingerprinted() -> None:
    assert hs.is_fingerprinted("page.3f9a2b7c.html")
    assert hs.default_cache_control("page.3f9a2b7c.html", "text/html; charset=utf-8") == (
        hs.REVALIDATE
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=" + "9" * 5000 + "-", hs.UNSATISFIABLE),  # a start past any end
        ("bytes=0-" + "9" * 5000, (0, 10)),  # an end past the end is clamped
        ("bytes=-" + "9" * 5000, (0, 10)),  # a suffix longer than the file is all of it
        ("bytes=" + "0" * 5000 + "2-3", (2, 4)),  # leading zeros are only zeros
    ],
)
def test_range_positions_of_thousands_of_digits_are_answered(header: str,
                                                             expected: object) -> None:
    assert hs.parse_range(header, 10) == expected
