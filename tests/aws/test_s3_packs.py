"""Packs on a real S3-compatible server (SeaweedFS): a deployment's new blobs and its manifest
in segment objects, read back by ranged GETs, cleaned by prune, and checked by verify."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import brotli
import pytest

from pushsite.config import load_config
from pushsite.errors import BackendUnavailable, ConfigError, SiteConfigError
from pushsite.service import Service
from pushsite.stores.packs import Footer, make_ref, parse_ref
from pushsite.stores.s3 import S3Store

PAGE = "<html><body>" + "<p>a page worth compressing</p>" * 60 + "</body></html>"


def _site(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def _pages(count: int, tag: str = "") -> dict[str, str | bytes]:
    return {f"p{n}/index.html": PAGE + f"{tag}{n}" for n in range(count)} | {
        "index.html": PAGE + tag, "logo.png": b"\x89PNG" + os.urandom(3000)}


@pytest.fixture
def service_on(seaweed_url: str) -> Iterator[Service]:
    service = Service(load_config(store=seaweed_url + "&segment_mb=1"))
    try:
        yield service
    finally:
        service.close()


def _objects(service: Service) -> set[str]:
    return set(service.store.keys(""))


def _deploy(service: Service, folder: Path, site: str = "blog") -> str:
    deployment = service.accept(site, None, enqueue=False)
    return service.run(deployment.id, folder=folder).id


def _served(service: Service, deployment_id: str) -> dict[str, bytes]:
    """Every file of a deployment as read back from its refs, each variant decoded."""
    out = {}
    for path, entry in service.manifest(deployment_id).files.items():
        data = service.store.get(entry.key())
        for encoding in entry.encodings:
            packed = service.store.get(entry.key(encoding))
            plain = gzip.decompress(packed) if encoding == "gzip" else brotli.decompress(packed)
            assert plain == data, f"{encoding} variant of {path}"
        out[path] = data
    return out


def test_a_deploy_is_one_pack_and_a_one_file_change_uploads_one_object(
        service_on: Service, tmp_path: Path) -> None:
    files = _pages(30)
    first = _deploy(service_on, _site(tmp_path / "v1", files))
    objects = _objects(service_on)
    assert objects == {f"packs/{first}"}  # 30 pages, 3 variants each, and the manifest
    assert _served(service_on, first) == {
        p: d.encode() if isinstance(d, str) else d for p, d in files.items()}

    files["p7/index.html"] = PAGE + "changed"
    second = _deploy(service_on, _site(tmp_path / "v2", files))
    assert _objects(service_on) - objects == {f"packs/{second}"}
    done = service_on.state.get_deployment(second)
    assert (done.blobs_new, done.blobs_reused) == (1, len(files) - 1)
    assert _served(service_on, second)["p7/index.html"] == (PAGE + "changed").encode()
    assert service_on.verify() == []


def test_a_large_deploy_is_cut_into_segments_and_a_big_file_streams_into_its_own(
        service_on: Service, tmp_path: Path) -> None:
    files = {f"data/{n}.bin": os.urandom(400_000) for n in range(8)}  # 3.2 MB, 1 MB segments
    files["big.bin"] = os.urandom(2_500_000)  # above a segment: a segment of its own
    files["index.html"] = PAGE.encode()
    deployment = _deploy(service_on, _site(tmp_path / "v1", files))
    packs = _objects(service_on)
    assert f"packs/{deployment}" in packs and len(packs) >= 4
    assert all(key.startswith(f"packs/{deployment}") for key in packs)
    assert _served(service_on, deployment) == files
    big = service_on.manifest(deployment).files["big.bin"]
    with service_on.store.open(big.key()) as stream:
        assert stream.read() == files["big.bin"]
    assert service_on.store.get(big.key(), 10, 20) == files["big.bin"][10:20]


def test_a_failed_deploy_leaves_no_pack_and_the_live_site_stays(
        service_on: Service, tmp_path: Path) -> None:
    live = _deploy(service_on, _site(tmp_path / "v1", {"index.html": PAGE}))
    before = _objects(service_on)
    broken = {f"data/{n}.bin": os.urandom(400_000) for n in range(6)}  # segments get written
    broken["_redirects"] = "/from\n"  # ...then the rules fail the deploy at its end
    with pytest.raises(SiteConfigError, match="_redirects"):
        _deploy(service_on, _site(tmp_path / "v2", broken))
    assert _objects(service_on) == before
    alias = service_on.state.get_alias("blog", "production")
    assert alias is not None and alias.deployment_id == live


def test_prune_deletes_packs_no_kept_deployment_uses(
        service_on: Service, tmp_path: Path) -> None:
    first = _deploy(service_on, _site(tmp_path / "v1", _pages(5)))
    changed = _pages(5)
    changed["p1/index.html"] = PAGE + "changed"
    second = _deploy(service_on, _site(tmp_path / "v2", changed))
    # the second deployment's manifest points into the first one's pack: both stay
    service_on.prune("blog", keep=1, grace=0)
    assert _objects(service_on) == {f"packs/{first}", f"packs/{second}"}
    assert _served(service_on, second)["p1/index.html"] == (PAGE + "changed").encode()

    third = _deploy(service_on, _site(tmp_path / "v3", _pages(3, tag="new")))
    result = service_on.prune("blog", keep=1, grace=0)
    assert _objects(service_on) == {f"packs/{third}"}
    assert result["deployments"] == 1
    assert service_on.verify() == []


def test_verify_finds_a_pack_that_went_missing(service_on: Service, tmp_path: Path) -> None:
    first = _deploy(service_on, _site(tmp_path / "v1", _pages(2)))
    service_on.store.delete([f"packs/{first}"])
    problems = service_on.verify()
    assert len(problems) == 1 and first in problems[0] and "no manifest" in problems[0]


def test_verify_names_the_files_of_a_lost_segment(service_on: Service, tmp_path: Path) -> None:
    files = {f"data/{n}.bin": os.urandom(400_000) for n in range(6)}
    files["index.html"] = PAGE.encode()
    deployment = _deploy(service_on, _site(tmp_path / "v1", files))
    where = {path: parse_ref(entry.key())[0]  # type: ignore[index]
             for path, entry in service_on.manifest(deployment).files.items()}
    lost = next(obj for obj in where.values() if obj != f"packs/{deployment}")
    service_on.store.delete([lost])
    problems = service_on.verify()
    for path, obj in where.items():
        named = any(f": {path}: " in problem and "missing" in problem for problem in problems)
        assert named == (obj == lost), path


def test_the_removed_packs_option_is_refused_in_one_line(seaweed_url: str) -> None:
    with pytest.raises(ConfigError, match="the `packs` option is gone"):
        S3Store.from_url(seaweed_url + "&packs=0")


def test_refs_and_footers_round_trip_and_refuse_what_is_not_a_pack() -> None:
    ref = make_ref("packs/01abc", 1234, 567)
    assert parse_ref(ref) == ("packs/01abc", 1234, 567)
    assert parse_ref("blobs/ab/abcdef") is None
    assert parse_ref("packs/01abc") is None
    footer = Footer(blobs={"blobs/ab/x": (0, 10)})
    raw = b"\x00" * 10 + footer.to_bytes()
    parsed, needed = Footer.from_tail(raw, "pack")
    assert needed == 0 and parsed == footer
    assert Footer.from_tail(raw[-20:], "pack") == (None, len(footer.to_bytes()))
    with pytest.raises(BackendUnavailable, match="not a pushsite pack"):
        Footer.from_tail(b"just some object bytes", "'x' in bucket")
