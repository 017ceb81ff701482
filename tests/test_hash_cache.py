"""The client's hash cache (deploy/hashcache.py): `deploy DIR --server` reads only files that
changed since their hash was taken, and never trusts a hash a change could hide behind."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from pushsite.deploy.filelist import list_folder
from pushsite.deploy.hashcache import HashCache


def _folder(root: Path, count: int = 20) -> Path:
    for i in range(count):
        (root / "pages").mkdir(parents=True, exist_ok=True)
        (root / f"pages/{i}.html").write_text(f"<p>page {i}</p>")
    return root


def _cache(tmp_path: Path, folder: Path, racy: float = 0.0) -> HashCache:
    # racy=0: files written before the cache opened count as settled (the 2 s default is
    # for files written by a build a moment before the deploy)
    return HashCache(tmp_path / "cache.json", str(folder), racy=racy)


def _hashes(folder: Path, cache: HashCache | None) -> dict[str, str]:
    return {r.path: r.sha256 for r in list_folder(folder, cache=cache).rows}


def test_unchanged_files_come_from_the_cache_and_a_changed_one_is_read(tmp_path: Path
                                                                        ) -> None:
    folder = _folder(tmp_path / "site")
    first = _cache(tmp_path, folder)
    assert _hashes(folder, first) == _hashes(folder, None) and first.hits == 0
    # the same size, new content: its ctime moved, so it is read again
    (folder / "pages/3.html").write_text("<p>page X</p>")
    again = _cache(tmp_path, folder)
    assert _hashes(folder, again) == _hashes(folder, None)
    assert again.hits == 19


def test_a_file_changed_within_the_racy_window_is_not_remembered(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "site", count=3)
    cache = _cache(tmp_path, folder, racy=3600.0)  # every file is "just written"
    _hashes(folder, cache)
    later = _cache(tmp_path, folder, racy=3600.0)
    _hashes(folder, later)
    assert later.hits == 0


def test_another_folder_and_a_broken_cache_file_only_cost_time(tmp_path: Path) -> None:
    one, two = _folder(tmp_path / "one"), _folder(tmp_path / "two", count=5)
    _hashes(one, _cache(tmp_path, one))
    other = _cache(tmp_path, two)
    assert _hashes(two, other) == _hashes(two, None) and other.hits == 0
    (tmp_path / "cache.json").write_bytes(b"not a cache at all" * 100)
    broken = _cache(tmp_path, one)
    assert _hashes(one, broken) == _hashes(one, None) and broken.hits == 0


def test_two_clients_listing_at_once_both_get_true_hashes(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "site", count=200)
    truth = _hashes(folder, None)
    results: list[dict[str, str]] = []

    def client() -> None:
        for _ in range(3):
            results.append(_hashes(folder, _cache(tmp_path, folder)))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 6 and all(r == truth for r in results)
    assert os.path.getsize(tmp_path / "cache.json") > 0


def test_a_cache_of_another_shape_is_ignored_and_a_deleted_file_s_row_goes(
        tmp_path: Path) -> None:
    folder = _folder(tmp_path / "site", count=4)
    prefix = str(folder) + os.sep
    for doc in ([1, 2], {"folder": prefix, "files": [1]},
                {"folder": prefix, "files": {prefix + "pages/0.html": [1, 2, "x"],
                                             prefix + "pages/1.html": "row"}}):
        (tmp_path / "cache.json").write_text(json.dumps(doc))
        cache = _cache(tmp_path, folder)
        assert _hashes(folder, cache) == _hashes(folder, None) and cache.hits == 0
    (folder / "pages/2.html").unlink()
    (folder / "pages/3.html").write_text("<p>page three, changed</p>")
    _hashes(folder, _cache(tmp_path, folder))  # a new hash: the rows of the three left
    rows = json.loads((tmp_path / "cache.json").read_text())["files"]
    assert sorted(rows) == [prefix + f"pages/{i}.html" for i in (0, 1, 3)]
    again = _cache(tmp_path, folder)
    assert _hashes(folder, again) == _hashes(folder, None) and again.hits == 3


def test_a_packed_first_deploy_remembers_its_hashes_for_the_caller_to_save(
        tmp_path: Path) -> None:
    """The packing hashes each file as it goes and remembers it; the save is left to the
    caller (deploy --server writes it while the server deploys, not before the body ends)."""
    from pushsite.deploy.filelist import scan_folder
    from pushsite.deploy.packing import packed_folder

    folder = _folder(tmp_path / "site", count=6)
    cache = _cache(tmp_path, folder)
    assert b"".join(packed_folder(scan_folder(str(folder), cache), cache))
    assert not (tmp_path / "cache.json").exists()
    cache.save()
    again = _cache(tmp_path, folder)
    assert _hashes(folder, again) == _hashes(folder, None) and again.hits == 6


def test_a_cache_says_whether_it_has_anything_to_save(tmp_path: Path) -> None:
    """deploy --server starts no thread (nor imports threading) to save nothing: a redeploy
    whose only changed file is too new to remember."""
    from pushsite.deploy.filelist import hash_pending, scan_folder

    folder = _folder(tmp_path / "site", count=3)
    racy = _cache(tmp_path, folder, racy=3600.0)  # every file is "just written"
    hash_pending(scan_folder(str(folder), racy), cache=racy)
    assert not racy.unsaved
    settled = _cache(tmp_path, folder)
    hash_pending(scan_folder(str(folder), settled), cache=settled)
    assert settled.unsaved
    settled.save()
    assert not settled.unsaved and (tmp_path / "cache.json").exists()
