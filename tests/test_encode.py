"""The compression policy: which codec and level each kind of file gets."""

from __future__ import annotations

import gzip
import posixpath
import zlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from isal import isal_zlib

from pushsite.deploy import encode
from pushsite.model import fast_gzip_key


def test_javascript_and_css_get_the_harder_gzip_and_still_decode() -> None:
    script = b"".join(b"function f%d(a, b) { return a + b * %d; }\n" % (n, n) for n in range(3000))
    plain_gzip = encode.gzip_bytes(script, "text/html; charset=utf-8")
    for content_type in ("text/javascript; charset=utf-8", "text/css; charset=utf-8"):
        asset = encode.variants(script, content_type)["gzip"]
        assert len(asset) < len(plain_gzip)
        assert gzip.decompress(asset) == script
        streamed = encode.StreamCompressor(content_type)
        parts = [streamed.feed(script[i:i + 10_000])[0] for i in range(0, len(script), 10_000)]
        parts.append(streamed.finish()[0])
        assert gzip.decompress(b"".join(parts)) == script
        assert len(b"".join(parts)) < len(plain_gzip)


def test_live_first_gzips_everything_fast_and_leaves_the_harder_one_for_after() -> None:
    """Before live (`later`) a JS or CSS file gets isal's gzip like any text; its final
    gzip, made after live, is zlib's level 6, byte for byte what the deploy made before."""
    script = b"".join(b"var v%d = [%d, 'x%d'];\n" % (n, n * 7, n) for n in range(4000))
    for content_type in ("text/javascript; charset=utf-8", "text/css; charset=utf-8"):
        quick = encode.variants(script, content_type, later=True)["gzip"]
        assert quick == isal_zlib.compress(script, encode.GZIP_LEVEL, wbits=31)
        final = encode.gzip_bytes(script, content_type)
        assert final == zlib.compress(script, encode.ASSET_GZIP_LEVEL, wbits=31)
        assert final == encode.variants(script, content_type)["gzip"]
        assert len(final) < len(quick) and gzip.decompress(final) == script
        assert encode.is_fast(content_type, True) and not encode.is_fast(content_type, False)
        stream = encode.final_gzip_stream()
        whole = b"".join(stream.compress(script[i:i + 7000])
                         for i in range(0, len(script), 7000)) + stream.flush()
        assert gzip.decompress(whole) == script and len(whole) < len(quick)
        streamed = encode.StreamCompressor(content_type, brotli_too=False, fast=True)
        parts = [streamed.feed(script)[0], streamed.finish()[0]]
        assert gzip.decompress(b"".join(parts)) == script
    html = "text/html; charset=utf-8"
    assert not encode.is_fast(html, True)
    assert encode.variants(script, html, later=True)["gzip"] == encode.gzip_bytes(script, html)


def test_an_entry_with_a_quick_gzip_wants_its_final_one() -> None:
    quick = {"gzip": fast_gzip_key("ab" * 32)}
    assert encode.wanted_later({"gzip": 10, "br": 8}, quick) == {"gzip"}
    assert encode.wanted_later({"gzip": 10}, quick) == {"br", "gzip"}
    assert encode.wanted_later({"gzip": 10}, None) == {"br"}
    assert encode.wanted_later({"gzip": 10, "br": 8}, None) == set()
    assert encode.wanted_later({}, None) == set()
    packed = {"gzip": "packs/x@0+10"}
    assert not encode.wants_later({"gzip": 10, "br": 8}, packed)
    assert encode.wants_later({"gzip": 10, "br": 8}, quick)
    assert encode.pending_of({"gzip", "br"}) == ["br", "gzip"]


@given(st.text(st.sampled_from(["a", "B", ".", "/", "é", "y"]), max_size=12))
@example(".env")
@example("a/..x")
@example("a.b/c")
@example("a/b.tar.gz")
@example("x.")
def test_a_paths_extension_is_posixpaths(path: str) -> None:
    """The media type's extension is found by string methods (encode.extension), as
    posixpath.splitext finds it."""
    assert encode.extension(path) == posixpath.splitext(path)[1]


@pytest.mark.parametrize(("encodings", "refs", "wanted"), [
    ({}, None, False),
    ({"gzip": 10}, None, True),
    ({"gzip": 10, "br": 8}, None, False),
    ({"gzip": 10, "br": 8}, {"gzip": fast_gzip_key("a" * 64)}, True),
    ({"br": 8}, None, False),
])
def test_what_an_entry_still_wants(encodings: dict[str, int], refs: dict[str, str] | None,
                                   wanted: bool) -> None:
    assert encode.wants_later(encodings, refs) is wanted
    assert bool(encode.wanted_later(encodings, refs)) is wanted
