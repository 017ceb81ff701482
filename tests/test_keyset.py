"""The compact sets that keep a 200,000-file deploy's memory flat (deploy/keyset.py): exact
answers whatever keys members share, and the two places that use them (the bundle reader's
paths, the deployer's settled claims)."""

from __future__ import annotations

import io
import tarfile

import pytest

from pushsite.config import load_config
from pushsite.deploy.bundle import BundleReader
from pushsite.deploy.keyset import KeySet, SeenPaths
from pushsite.errors import BundleRejected
from pushsite.model import Status
from pushsite.service import Service


def test_a_key_set_holds_every_key_it_was_given_through_its_growth() -> None:
    keys = KeySet()
    values = [n * 0x9E3779B97F4A7C15 for n in range(20_000)]  # 0 among them
    assert [keys.add(v) for v in values] == [False] * len(values)
    assert len(keys) == len(values)
    assert all(v in keys for v in values)
    assert all(keys.add(v) for v in values[:100])  # a second add says it was there
    assert sum((v + 1) in keys for v in values) <= 2  # other keys are (nearly all) absent
    assert -1 not in keys or (1 << 64) - 1 in keys  # negative keys are taken modulo 2**64


@pytest.mark.parametrize("key", [hash, len, lambda path: 0], ids=["hash", "len", "one-key"])
def test_seen_paths_are_exact_however_often_paths_share_a_key(key) -> None:  # type: ignore[no-untyped-def]
    """`len` and a constant give every look-up a key that others share: the answers must come
    from the paths' text, through the set, the in-memory text and the spool's chunks."""
    seen = SeenPaths(set_upto=50, spool_after=300, key=key)
    paths = [f"site/d{n % 13}/page-{n}.html" for n in range(600)]
    for path in paths:
        assert path not in seen
        assert not seen.add(path)
    assert len(seen) == len(paths)
    for path in paths:
        assert path in seen and seen.maybe(path)
        assert seen.add(path)  # named again
    for other in ("site/d1/page-6000.html", "site/d1/page-", "ite/d1/page-1.html", "site"):
        assert other not in seen
    seen.close()


def test_a_path_split_across_two_chunks_of_the_spool_is_found(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pushsite.deploy.keyset as keyset

    monkeypatch.setattr(keyset, "_SCAN", 7)  # every path straddles a chunk boundary
    seen = SeenPaths(set_upto=1, spool_after=40, key=len)
    paths = [f"f{n:03d}/index.html" for n in range(40)]
    for path in paths:
        seen.add(path)
    assert all(path in seen for path in paths)
    assert "f999/index.html" not in seen


def _bundle(paths: list[str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            info = tarfile.TarInfo(path)
            data = path.encode()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def test_a_big_bundle_naming_its_first_path_again_at_the_end_is_refused() -> None:
    paths = [f"site/d{n // 100}/p{n}.html" for n in range(12_000)]  # past the plain set
    reader = BundleReader(io.BytesIO(_bundle([*paths, paths[0]])))
    with pytest.raises(BundleRejected, match="names 'site/d0/p0.html' twice"):
        for _ in reader.members():
            pass
    reader = BundleReader(io.BytesIO(_bundle(paths)))
    assert sum(1 for _ in reader.members()) == len(paths)


def test_a_hard_link_past_the_plain_set_still_resolves_to_its_target() -> None:
    paths = [f"site/p{n}.html" for n in range(9_000)]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            info = tarfile.TarInfo(path)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        for name, target in (("site/link", paths[3]), ("site/self", "site/self"),
                             ("site/none", "site/missing.html")):
            link = tarfile.TarInfo(name)
            link.type = tarfile.LNKTYPE
            link.linkname = target
            tar.addfile(link)
    targets = {m.path: m.link_target for m in BundleReader(io.BytesIO(raw.getvalue())).members()
               if m.path in ("site/link", "site/self", "site/none")}
    assert targets == {"site/link": paths[3], "site/self": None, "site/none": None}


def test_copies_of_blobs_met_after_their_claims_settled_store_nothing_twice(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """12,000 files (the deployer's table spills), 40 distinct contents in every batch: on a
    loose store a settled claim is a key, and later copies find the blob stored, once."""
    contents = [(f"<p>{n} " + "text " * 80).encode() for n in range(40)]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for n in range(12_000):
            info = tarfile.TarInfo(f"site/d{n // 100}/p{n}.html")
            data = contents[n % len(contents)]
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    service = Service(load_config(home=str(tmp_path), workers=2))
    try:
        deployment = service.accept("keys", io.BytesIO(raw.getvalue()), enqueue=False)
        done = service.run(deployment.id)
        assert done.status == Status.LIVE, done.error
        assert done.blobs_new == len(contents)
        assert done.blobs_reused == 12_000 - len(contents)
        assert service.verify() == []
    finally:
        service.close()
