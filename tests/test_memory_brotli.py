"""Brotli's buffers stay small (issue 20, large's peak RSS): a window that fits the file, and
a streamed file compressed a meta-block per chunk.

A quality-4 compressor allocates its ring buffer for its window whole (8 MiB at the default
lgwin 22, for any input over 64 KiB), and a streaming one grows its other buffers with the
meta-block: ~32 MB for a 9.5 MB page, ~16 MB with a meta-block per 1 MiB chunk. What is
checked here is what the memory depends on, in the bytes themselves: the window written
in the stream's header, and that each chunk fed comes out as a finished meta-block (without
the flush, nothing comes out before the end). Each stream still decodes to the input.
"""

from __future__ import annotations

import brotli
import pytest

from pushsite.deploy import encode, optimise
from support.prose import words

CHUNK = 1 << 20


def _window_bits(stream: bytes) -> int:
    """WBITS from a brotli stream's header (RFC 7932, 9.1), read least significant bit first."""
    bits = int.from_bytes(stream[:2], "little")
    if not bits & 1:
        return 16
    n = (bits >> 1) & 7
    if n:
        return 17 + n
    m = (bits >> 4) & 7
    assert m != 1, "a large-window stream"
    return 8 + m if m else 17


@pytest.mark.parametrize(("size", "bits"), [(300, 10), (70_000, 17), (900_000, 20),
                                            (CHUNK - 16, 20), (CHUNK, 21)])
def test_a_file_is_compressed_with_the_smallest_window_that_spans_it(size: int,
                                                                      bits: int) -> None:
    data = words(size, size)
    made = encode.brotli_bytes(data)
    assert _window_bits(made) == bits
    assert (1 << bits) - 16 >= size  # the window still reaches the whole file
    assert brotli.decompress(made) == data


def test_a_window_never_grows_past_the_default() -> None:
    assert encode.brotli_window(50 << 20) == 22
    assert _window_bits(brotli.compress(b"x" * 100, quality=4)) == 22  # the default, for scale


def test_the_fitted_window_costs_no_bytes() -> None:
    data = words(7, 200_000)
    fitted = encode.brotli_bytes(data)
    default = brotli.compress(data, quality=encode.BROTLI_QUALITY)
    assert len(fitted) <= len(default) * 1.001


def test_the_optimiser_ends_a_meta_block_at_every_chunk_it_streams() -> None:
    data = words(3, 3 * CHUNK)
    compressor = brotli.Compressor(quality=encode.BROTLI_QUALITY)
    parts = [optimise._feed(compressor, data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]
    assert all(parts), [len(p) for p in parts]  # each chunk out before the next comes in
    assert brotli.decompress(b"".join(parts) + optimise._finish(compressor)) == data


def test_a_streamed_new_file_ends_a_meta_block_at_every_chunk() -> None:
    data = words(4, 3 * CHUNK)
    stream = encode.StreamCompressor("text/html; charset=utf-8")
    parts = [stream.feed(data[i:i + CHUNK])[1] for i in range(0, len(data), CHUNK)]
    assert all(parts), [len(p) for p in parts]
    assert brotli.decompress(b"".join(parts) + stream.finish()[1]) == data
