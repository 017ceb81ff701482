"""A bundle that names one path twice is refused: tools disagree about which entry wins, so a
reviewer's listing and the live site could differ. One line naming the path, exit 3."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pushsite.config import load_config
from pushsite.deploy.bundle import BundleReader
from pushsite.errors import BundleRejected
from pushsite.service import Service
from support.sites import deploy


def _tgz(*members: tuple[str, str, bytes | str]) -> bytes:
    """A tar.gz made by tarfile: (kind, path, data or link target) in order."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE}[kind]
            info.linkname = str(payload)
            tar.addfile(info)
    return raw.getvalue()


def _read_all(data: bytes) -> list[str]:
    reader = BundleReader(io.BytesIO(data))
    paths = []
    for member in reader.members():
        paths.append(member.path)
        if member.size:
            reader.read()
    return paths


AMBIGUOUS = {
    "two files": [("file", "site/index.html", b"<p>reviewed</p>"),
                  ("file", "site/index.html", b"<p>served</p>")],
    "a link then a file": [("file", "site/real.html", b"<p>real</p>"),
                           ("symlink", "site/index.html", "real.html"),
                           ("file", "site/index.html", b"<p>other</p>")],
    "a file then a hard link": [("file", "site/a.html", b"a"),
                                ("file", "site/index.html", b"<p>first</p>"),
                                ("hardlink", "site/index.html", "site/a.html")],
    "a folder then a file": [("dir", "site/docs", ""), ("file", "site/docs", b"x")],
    "a file then a folder": [("file", "site/docs", b"x"), ("dir", "site/docs", "")],
    "the same path spelt twice": [("file", "site/index.html", b"one"),
                                  ("file", "./site//index.html", b"two")],
}


@pytest.mark.parametrize("members", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
def test_a_path_named_twice_is_refused_with_its_name(
        members: list[tuple[str, str, bytes | str]]) -> None:
    with pytest.raises(BundleRejected) as refused:
        _read_all(_tgz(*members))
    message = str(refused.value)
    assert "\n" not in message
    assert "twice" in message
    assert "'site/index.html'" in message or "'site/docs'" in message


def test_a_folder_listed_twice_and_distinct_paths_are_fine() -> None:
    paths = _read_all(_tgz(("dir", "site", ""), ("dir", "site/a", ""), ("dir", "site/a", ""),
                           ("file", "site/a/index.html", b"<p>a</p>"),
                           ("file", "site/a/Index.html", b"<p>b</p>"),
                           ("symlink", "site/b.html", "a/index.html")))
    assert paths == ["site", "site/a", "site/a", "site/a/index.html", "site/a/Index.html",
                     "site/b.html"]


def test_deploy_refuses_it_with_exit_3_and_nothing_goes_live(tmp_path: Path) -> None:
    bundle = tmp_path / "twice.tar.gz"
    bundle.write_bytes(_tgz(*AMBIGUOUS["a link then a file"]))
    code, out, err = deploy(str(bundle), "--site", "blog")
    assert code == 3, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "'site/index.html'" in lines[0] and "twice" in lines[0]
    service = Service(load_config())
    try:
        assert service.state.get_alias("blog", "production") is None
    finally:
        service.close()
