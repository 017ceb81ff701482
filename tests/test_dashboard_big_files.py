"""A big site's deployment page (issue 17's paginated, searchable file list; issue 20's big
sites like small ones), over a real `pushsite serve`: its files, their pages, a search and
the diff come from the manifest's index by path (pathindex.py), read a block at a time,
never from parsing the whole manifest (1.3 s and the whole of it in memory for each view of
a 70,000-file deployment). The JSON manifests are deleted before the pages are read, so what
they show can only come from the index."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_dashboard import sign_in

from pushsite import pathindex
from pushsite.config import load_config
from pushsite.model import manifest_key
from pushsite.service import Service
from pushsite.state import open_state_store
from support.servers import Server, serving
from support.service import bundle

COUNT = pathindex.INDEX_MIN_FILES + 150
_ROW = re.compile(r"<td data-label=\"Path\"><code>([^<]+)</code>")


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("bigfiles") / "home") as srv:
        yield srv


def _files(version: str) -> dict[str, bytes]:
    files = {f"p/{i:05d}.html": f"<p>page {i}</p>".encode() for i in range(COUNT)}
    if version == "two":
        files["p/00007.html"] = b"<p>page 7, changed</p>"
        del files["p/00008.html"]
        files["new/added.html"] = b"<p>added</p>"
    return files


def _deploy(board: Server, tmp_path: Path, version: str) -> str:
    archive = tmp_path / f"{version}.tar.gz"
    archive.write_bytes(bundle(_files(version)))
    done = board.cli("deploy", str(archive), "--site", "huge", "--create")
    said = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, said
    found = re.search(r"deployment ([0-9a-z]{26})", said)
    assert found, said
    return found.group(1)


def test_a_big_sites_files_pages_search_and_diff_come_from_its_index(
        board: Server, tmp_path: Path) -> None:
    first = _deploy(board, tmp_path, "one")
    second = _deploy(board, tmp_path, "two")
    service = Service(load_config(home=str(board.home)))
    try:
        assert len(service.store.has([pathindex.index_key(d) for d in (first, second)])) == 2
        service.store.delete([manifest_key(first), manifest_key(second)])
        service.store.flush()
    finally:
        service.close()
    client = sign_in(board, board.new_token("--name", "viewer"))
    page = client.get(f"/deployments/{second}").text
    expected = sorted(_files("two"))
    assert f"{COUNT} files." in page  # no stored total: it would mean reading every block
    assert _ROW.findall(page) == expected[:100]
    assert '<strong id="diff-summary">1 added, 1 changed, 1 removed</strong>' in page
    assert f", {COUNT - 2} unchanged." in page
    assert "<code>new/added.html</code>" in page and "<code>p/00008.html</code>" in page
    again = client.get(f"/deployments/{second}?files_page=2").text  # the diff kept
    assert '<strong id="diff-summary">1 added, 1 changed, 1 removed</strong>' in again
    assert _ROW.findall(again) == expected[100:200]
    pages = -(-COUNT // 100)
    last = client.get(f"/deployments/{second}?files_page={pages}").text
    assert _ROW.findall(last) == expected[(pages - 1) * 100:]
    assert f"page {pages} of {pages}" in last
    found = client.get(f"/deployments/{second}", params={"files": "P/0012"}).text
    assert _ROW.findall(found) == [p for p in expected if "p/0012" in p]
    assert "matching <q>P/0012</q>" in found
    nothing = client.get(f"/deployments/{second}", params={"files": "zebra"}).text
    assert "No file matches <q>zebra</q>" in nothing
    state = open_state_store(f"sqlite:///{board.home}/state.db")
    assert state.get_deployment(second).files == COUNT

