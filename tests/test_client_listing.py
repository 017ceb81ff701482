"""The client's walk of a folder (deploy/filelist.py scan_folder, with its hash cache) keeps
exactly the paths the drivers' dotfile rule keeps (_published_early), whatever shortcut the
walk takes, and the cache answers an unchanged file and only that."""

from __future__ import annotations

import os
from pathlib import Path

from pushsite.deploy.filelist import _published_early, list_folder, scan_folder
from pushsite.deploy.hashcache import HashCache

PATHS = [".env", "index.html", ".well-known/security.txt", ".well-known/.env",
         ".github/ci.yml", ".github/.secret", ".github/deep/a.txt", ".git/config",
         "a/.hidden", "a/b/.env.local", "a/b/page.html", "a/.git/HEAD", "a/.cache/x",
         "x.well-known/y", "site/.well-known/z", ".hidden-dir/.also", ".hidden-dir/seen"]


def _expected(root: Path) -> set[str]:
    """The rule as the walk applied it before: folders entered by _published_early(path +
    "/x"), files kept by _published_early(path)."""
    kept = set()
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        prefix = "" if rel == "." else rel + "/"
        dirs[:] = [d for d in dirs if (prefix or d != ".git")
                   and _published_early(prefix + d + "/x")]
        kept |= {prefix + f for f in files if _published_early(prefix + f)}
    return kept


def test_the_walk_keeps_what_the_dotfile_rule_keeps(tmp_path: Path) -> None:
    root = tmp_path / "site"
    for path in PATHS:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(path)
    listed = {row.path for row in list_folder(root).rows}
    assert listed == _expected(root)
    assert {".github/ci.yml", ".well-known/security.txt", ".hidden-dir/seen"} <= listed
    assert not {".env", "a/.hidden", ".git/config", ".well-known/.env"} & listed


def test_the_cache_answers_an_unchanged_file_only(tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "a").mkdir(parents=True)
    for name in ("a/one.txt", "two.txt"):
        (root / name).write_text(name)
        old = (root / name).stat().st_mtime_ns - 10_000_000_000  # past the racy window
        os.utime(root / name, ns=(old, old))
    cache = HashCache(tmp_path / "cache.json", str(root), racy=0.0)
    first = list_folder(root, cache=cache)
    assert cache.hits == 0
    again = HashCache(tmp_path / "cache.json", str(root), racy=0.0)
    scan = scan_folder(root, again)
    assert (again.hits, scan.pending) == (2, [])
    assert sorted(scan.rows) == sorted(first.rows)
    (root / "two.txt").write_text("changed")
    third = HashCache(tmp_path / "cache.json", str(root), racy=0.0)
    scan = scan_folder(root, third)
    assert third.hits == 1 and [p for p, _ in scan.pending] == ["two.txt"]
