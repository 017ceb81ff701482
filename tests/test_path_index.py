"""A big manifest's index by path (pathindex.py): every path answered from one block, the
edge serving a big site from the index alone (its JSON manifest never read), and prune and
site deletion taking the index with the manifest."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushsite import pathindex
from pushsite.edge.respond import Edge
from pushsite.model import FileEntry, Manifest, manifest_key
from pushsite.pathindex import PathIndex, index_key
from pushsite.service import Service
from support.service import accept, open_service


def _manifest(paths: list[str]) -> Manifest:
    files = {p: FileEntry(f"{i:064x}", i, "text/html; charset=utf-8",
                          {"gzip": i // 2} if i % 3 else {}, "", None)
             for i, p in enumerate(paths)}
    return Manifest("d1", "blog", 1.5, files, headers=[{"path": "/*", "set": []}],
                    not_found="404.html", commit="abc", pending=["br"])


def _reader(data: bytes) -> pathindex.Read:
    reads: list[tuple[int, int]] = []

    def read(start: int, end: int) -> bytes:
        reads.append((start, end))
        return data[start:end]

    read.reads = reads  # type: ignore[attr-defined]
    return read


def test_every_path_is_found_in_one_block_and_misses_are_not() -> None:
    paths = [f"docs/{i // 100}/page-{i}.html" for i in range(5000)] + ["é/ü.html", "404.html"]
    manifest = _manifest(paths)
    data = pathindex.encode(manifest)
    read = _reader(data)
    index = PathIndex(read)
    assert len(index) == len(paths)
    assert index.manifest().not_found == "404.html" and index.manifest().pending == ["br"]
    assert index.manifest().commit == "abc" and index.manifest().headers == manifest.headers
    before = len(read.reads)  # type: ignore[attr-defined]
    assert index["docs/7/page-777.html"] == manifest.files["docs/7/page-777.html"]
    assert len(read.reads) == before + 1  # type: ignore[attr-defined]  # one ranged read
    for path in paths:
        assert index[path] == manifest.files[path]
    for missing in ("", "docs", "docs/7/page-777.htm", "zzz", "docs/0/page-0.html/"):
        assert missing not in index
    assert list(index) == sorted(paths)


@settings(max_examples=50, deadline=None)
@given(st.sets(st.text(min_size=1, max_size=12), min_size=1, max_size=600))
def test_any_set_of_paths_round_trips(paths: set[str]) -> None:
    manifest = _manifest(sorted(paths))
    index = PathIndex(_reader(pathindex.encode(manifest)))
    assert {p: index[p] for p in paths} == manifest.files
    assert len(index) == len(paths)


def test_rows_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError):
        pathindex.write(io.BytesIO(), {}, [("b", []), ("a", [])], io.BytesIO())


@pytest.fixture
def service() -> Iterator[Service]:
    with open_service() as svc:
        svc.create_site("big")
        yield svc


def _get(edge: Edge, path: str) -> tuple[int, dict[str, str], bytes]:
    answer = asyncio.run(edge.respond("GET", "big.localhost", path.encode(), "", "gzip"))
    return answer.status, {k.decode(): v.decode() for k, v in answer.headers}, answer.body


def test_the_edge_serves_a_big_site_from_its_index_alone(service: Service) -> None:
    count = pathindex.INDEX_MIN_FILES + 10
    files = {f"p/{i}.html": f"<p>page {i}</p>".encode() for i in range(count)}
    files["docs/index.html"] = b"<h1>docs</h1>"
    files["404.html"] = b"<h1>not here</h1>"
    deployment = service.run(accept(service, "big", files).id)
    assert service.store.has([index_key(deployment.id)])
    # the JSON form goes: what the edge serves now can only come from the index
    service.store.delete([manifest_key(deployment.id)])
    service.store.flush()
    edge = Edge(service.state, service.store)
    assert _get(edge, "/p/17.html")[2] == b"<p>page 17</p>"
    assert _get(edge, "/p/18")[2] == b"<p>page 18</p>"  # clean URL
    status, headers, _ = _get(edge, "/docs")
    assert status == 301 and headers["location"] == "/docs/"
    assert _get(edge, "/docs/")[2] == b"<h1>docs</h1>"
    assert _get(edge, "/nope") == (404, _get(edge, "/nope")[1], b"<h1>not here</h1>")


def test_prune_and_site_deletion_take_the_index_too(service: Service) -> None:
    files = {f"p/{i}.html": f"<p>{i}</p>".encode() for i in range(pathindex.INDEX_MIN_FILES)}
    first = service.run(accept(service, "big", files).id)
    files["p/0.html"] = b"<p>changed</p>"
    second = service.run(accept(service, "big", files).id)
    assert service.store.has([index_key(first.id), index_key(second.id)]) == {
        index_key(first.id), index_key(second.id)}
    service.prune("big", keep=1, grace=0)
    assert not service.store.has([index_key(first.id)])
    assert service.store.has([index_key(second.id)])
    service.delete_site("big")
    assert not service.store.has([index_key(second.id)])


def test_a_big_site_spilled_to_disk_gets_the_same_manifest(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bundle with the deployer's table in memory and spilled to disk every 40
    files: the same files, entries, 404 page and index (top folder stripped, publish
    folder, excludes and a link applied)."""
    import tarfile

    from pushsite.deploy import entries

    def bundle() -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w:gz") as tar:
            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(f"top/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            add("pushsite.toml", b'publish = "public"\nexclude = ["*.tmp"]\n')
            for i in range(300):
                add(f"public/d{i % 7}/p{i}.html", f"<p>{i}</p>".encode() * (i % 40 + 1))
            add("public/404.html", b"<h1>gone</h1>")
            add("public/x.tmp", b"left out")
            add("outside.html", b"not published")
            link = tarfile.TarInfo("top/public/alias.html")
            link.type, link.linkname = tarfile.SYMTYPE, "d1/p1.html"
            tar.addfile(link)
        return out.getvalue()

    whole = service.manifest(service.run(service.accept(
        "big", io.BytesIO(bundle()), enqueue=False).id).id)
    monkeypatch.setattr(entries, "SPILL_FILES", 40)
    spilled_id = service.run(service.accept("big", io.BytesIO(bundle()), enqueue=False).id).id
    spilled = service.manifest(spilled_id)
    assert spilled.files == whole.files and len(spilled.files) == 302
    assert "x.tmp" not in spilled.files and spilled.files["alias.html"] == whole.files[
        "d1/p1.html"]
    assert spilled.not_found == "404.html" and spilled.pending == whole.pending
    edge = Edge(service.state, service.store)
    assert asyncio.run(edge.respond("GET", "big.localhost", b"/d3/p3", "", None)).body == (
        b"<p>3</p>" * 4)
