"""A deploy never fails on a race with itself: bundles full of identical files, deployed cold
many times on every store backend (local; S3 on SeaweedFS, packed and one object per blob).

A later copy of a file used to look up the variants of the first (`has`, then `size`) while
the first copy's batch was still being written; the two look-ups could disagree and the deploy
failed with "object blobs/...gz is not in the store" (one cold deploy in five of a real
39,011-file site). Now a later copy waits for the first copy's claim and takes what it stored.
"""

from __future__ import annotations

import io
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushsite.config import load_config
from pushsite.deploy.builder import SMALL_FILE
from pushsite.model import Status
from pushsite.service import Service

RUNS = 20
S3_RUNS = 10  # each S3 run costs ~2.5 s against SeaweedFS on 2 shared cores
FILES = 300
DISTINCT = 20


def _contents() -> list[bytes]:
    """20 compressible contents of varied sizes: tiny, middling, and two above SMALL_FILE
    (streamed, not batched), so both paths meet their duplicates."""
    rng = random.Random(13)
    words = [rng.randbytes(4).hex() for _ in range(400)]
    sizes = [300, 700, 2_000, 5_000, 9_000, 20_000, 40_000, 64_000, 100_000, 200_000,
             1_000, 3_000, 12_000, 30_000, 80_000, 150_000, 400_000, 700_000,
             SMALL_FILE + 5_000, SMALL_FILE + 200_000]
    out = []
    for n, size in enumerate(sizes):
        text = f"<html><body><h1>page {n}</h1>"
        while len(text) < size:
            text += f"<p>{' '.join(rng.choice(words) for _ in range(12))}</p>"
        out.append(text[:size].encode())
    assert len(out) == DISTINCT
    return out


def _bundle() -> bytes:
    """300 files, each one of the 20 contents; the big ones only a few times each, so the
    bundle stays small enough to deploy 20 times per backend."""
    contents = _contents()
    small = [c for c in contents if len(c) <= SMALL_FILE]
    big = [c for c in contents if len(c) > SMALL_FILE]
    rng = random.Random(7)
    files = [rng.choice(small) for _ in range(FILES - 3 * len(big))] + big * 3
    rng.shuffle(files)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for n, data in enumerate(files):
            info = tarfile.TarInfo(f"site/d{n % 7}/page{n}.html")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


BUNDLE = _bundle()


def _deploy_cold(home: Path, store_url: str = "") -> None:
    """One cold deploy into an empty store; every copy of a blob carries the same variants
    as its first copy, and verify finds every blob and variant whole."""
    service = Service(load_config(home=str(home), store=store_url, workers=4))
    try:
        deployment = service.accept("dup", io.BytesIO(BUNDLE), enqueue=False)
        done = service.run(deployment.id)
        assert done.status == Status.LIVE, done.error
        manifest = service.manifest(done.id)
        assert len(manifest.files) == FILES
        variants: dict[str, set[tuple[str, ...]]] = {}
        for entry in manifest.files.values():
            variants.setdefault(entry.hash, set()).add(tuple(sorted(entry.encodings)))
        assert len(variants) == DISTINCT
        assert all(len(seen) == 1 for seen in variants.values()), variants
        assert all(seen == {("br", "gzip")} or seen == {("gzip",)} for seen in variants.values())
        assert service.verify() == []
    finally:
        service.close()


def test_cold_deploys_full_of_duplicates_on_the_local_store(tmp_path_factory:
                                                             pytest.TempPathFactory) -> None:
    for _ in range(RUNS):
        _deploy_cold(tmp_path_factory.mktemp("home"))


@pytest.fixture
def s3_urls(seaweed_url: str) -> Iterator[list[str]]:
    """A fresh prefix per run: a cold store each time."""
    yield [seaweed_url.replace("/site-data?", f"/run{run}?") for run in range(S3_RUNS)]


def test_cold_deploys_full_of_duplicates_on_s3(s3_urls: list[str], tmp_path_factory:
                                               pytest.TempPathFactory) -> None:
    for url in s3_urls:
        _deploy_cold(tmp_path_factory.mktemp("home"), url)
