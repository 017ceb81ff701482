"""The compression policy: which codec and level each kind of file gets."""

from __future__ import annotations

import gzip

from pushsite.deploy import encode


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
