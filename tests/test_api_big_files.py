"""The API's file list of a big site (issue 17 audit): GET /deployments/{id}/files reads the
manifest's index by path (pathindex.py) from where its page starts, never parsing the whole
manifest (0.39-0.49 s for each 10-file page of a 70,000-file site). Over a real `pushsite
serve`: every answer equals the whole-manifest one worked out here first, and is then read
again with the JSON manifest deleted, so it can only come from the index."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pushsite import pathindex
from pushsite.config import load_config
from pushsite.model import Manifest, manifest_key
from pushsite.service import Service
from support.api import Api
from support.servers import Server, serving
from support.service import bundle

COUNT = pathindex.INDEX_MIN_FILES + 150


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("apibig") / "home") as srv:
        yield srv


def _files() -> dict[str, bytes]:
    files = {f"p/{i:05d}.html": f"<p>page {i}</p>".encode() for i in range(COUNT)}
    files.update({f"css/{i}.css": b"p{}" for i in range(3)})
    files["zz.txt"] = b"last"
    return files


def _whole(manifest: Manifest, prefix: str = "", after: str | None = None,
           limit: int = 1000) -> dict[str, Any]:
    """What list_files answered when it parsed the whole manifest (the code before)."""
    paths = sorted(p for p in manifest.files if p.startswith(prefix))
    page = [p for p in paths if after is None or p > after][:limit]
    files = [{"path": p, "size": e.size, "type": e.type, "hash": e.hash,
              "encodings": e.encodings} for p in page for e in [manifest.files[p]]]
    more = bool(page) and page[-1] != paths[-1]
    return {"files": files, "total": len(paths), "next_after": page[-1] if more else None}


QUERIES: list[dict[str, Any]] = [
    {}, {"limit": 10}, {"limit": 10, "after": "p/01000.html"},
    {"limit": 10, "after": "p/00127.html"}, {"limit": 10, "after": "p/00128"},
    {"after": f"p/{COUNT - 5:05d}.html"}, {"after": "zz.txt"}, {"after": "~"},
    {"after": ""}, {"prefix": "css/"}, {"prefix": "css/", "limit": 2},
    {"prefix": "css/", "limit": 2, "after": "css/1.css"}, {"prefix": "p/012", "limit": 7},
    {"prefix": "p/012", "after": "p/01250.html", "limit": 20}, {"prefix": "nothing/"},
    {"prefix": "zz"}, {"prefix": "p/", "after": "p/02000.html", "limit": 3},
]


def test_pages_of_a_big_sites_files_come_from_its_index(board: Server,
                                                        tmp_path: Path) -> None:
    archive = tmp_path / "big.tar.gz"
    archive.write_bytes(bundle(_files()))
    done = board.cli("deploy", str(archive), "--site", "big", "--create")
    said = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, said
    found = re.search(r"deployment ([0-9a-z]{26})", said)
    assert found, said
    deployment = found.group(1)
    api = Api(board, board.new_token("--name", "reader"))
    url = f"/deployments/{deployment}/files"
    service = Service(load_config(home=str(board.home)))
    try:
        assert service.store.has([pathindex.index_key(deployment)])
        manifest = service.manifest(deployment)
        expected = [_whole(manifest, **query) for query in QUERIES]
        before = [api.ok("GET", url, params=query) for query in QUERIES]
        assert before == expected
        service.store.delete([manifest_key(deployment)])
        service.store.flush()
    finally:
        service.close()
    after = [api.ok("GET", url, params=query) for query in QUERIES]
    assert after == expected
    assert expected[1]["total"] == COUNT + 4 and expected[1]["next_after"] == "p/00006.html"
    assert expected[7]["files"] == [] and expected[7]["next_after"] is None
    # a whole walk, page by page, gives every path once
    walked, cursor = [], None
    while True:
        page = api.ok("GET", url, params={"limit": 500, **({"after": cursor} if cursor else {})})
        walked += [f["path"] for f in page["files"]]
        cursor = page["next_after"]
        if cursor is None:
            break
    assert walked == sorted(_files())
