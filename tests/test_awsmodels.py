"""botocore's model files cached as marshal files: same data, read back, renewed when the
source changes, and passed over when the cache folder cannot be written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from botocore.loaders import Loader

from pushsite.awssdk import models as awsmodels


@pytest.fixture()
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "pushsite" / "botocore"


def test_cached_models_equal_botocore_own_and_are_read_back(cache_home: Path) -> None:
    plain = Loader()
    first = awsmodels.session().get_component("data_loader")
    model = first.load_service_model("s3", "service-2")
    assert model == plain.load_service_model("s3", "service-2")
    assert first.list_available_services("service-2") == plain.list_available_services(
        "service-2")
    written = {p.name: p.stat().st_mtime_ns for p in cache_home.iterdir()}
    assert len(written) >= 2  # the listing and the model at least
    again = awsmodels.session().get_component("data_loader")
    assert again.load_service_model("s3", "service-2") == model
    assert {p.name: p.stat().st_mtime_ns for p in cache_home.iterdir()} == written


def test_a_cached_file_is_what_is_returned_and_a_changed_source_misses(tmp_path: Path) -> None:
    cache = awsmodels._Cache(tmp_path / "c")
    made: list[int] = []

    def make() -> dict[str, int]:
        made.append(1)
        return {"n": len(made)}

    assert cache.get_or_make(["a:1"], make) == {"n": 1}
    assert cache.get_or_make(["a:1"], make) == {"n": 1}  # read back, not made again
    assert cache.get_or_make(["a:2"], make) == {"n": 2}  # another stamp: made anew
    for written in (tmp_path / "c").iterdir():
        written.write_bytes(b"\xff not marshal")
    assert cache.get_or_make(["a:1"], make) == {"n": 3}  # unreadable: made and written again
    assert cache.get_or_make(["a:1"], make) == {"n": 3}
    assert len(made) == 3


def test_a_source_file_changing_is_a_miss(tmp_path: Path) -> None:
    source = tmp_path / "model"
    source.with_suffix(".json").write_text('{"version": 1}')
    loader = awsmodels.MarshalFileLoader(awsmodels._Cache(tmp_path / "c"))
    assert loader.load_file(str(source)) == {"version": 1}
    source.with_suffix(".json").write_text('{"version": 22}')  # another size and mtime
    os.utime(source.with_suffix(".json"), ns=(1, 1))
    assert loader.load_file(str(source)) == {"version": 22}
    assert loader.load_file(str(tmp_path / "absent")) is None


def test_an_unwritable_cache_is_passed_over(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    client = awsmodels.session().create_client(
        "s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="a", aws_secret_access_key="b")
    assert client.meta.service_model.service_name == "s3"
