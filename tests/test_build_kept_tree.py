"""The work folder kept between builds of one site and branch: a push writes only what
changed, yet every build starts from the commit's exact tree (what the last build changed,
added or deleted is undone), and two builds of one branch at once never share it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pushsite.deploy.build import WorkFolder
from support.servers import serving
from support.sites import git, write_files

# the build fails unless it starts from the commit's tree; then it spoils that tree
SPOILER = ("test ! -e junk && test ! -e out && grep -qx original data.txt && test -e keep.txt "
           "&& mkdir -p out && cp data.txt out/index.html && cat page.txt >> out/index.html "
           "&& echo tampered > data.txt && rm keep.txt && echo x > junk")


def test_each_push_builds_from_the_commits_own_tree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write_files(repo, {"data.txt": "original\n", "keep.txt": "kept\n", "page.txt": "one\n",
                       "pushsite.toml": f'[build]\ncommand = """{SPOILER}"""\n'
                                        'publish = "out"\n'})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    with serving(tmp_path / "home") as server:
        assert server.cli("sites", "create", "kept").returncode == 0
        url = f"http://x:{server.new_token('--name', 'k')}@127.0.0.1:{server.port}/kept.git"
        for page in ("one", "two", "three"):
            if page != "one":
                (repo / "page.txt").write_text(f"{page}\n")
                git(repo, "commit", "-q", "-am", page)
            pushed = subprocess.run(["git", "push", "-q", url, "main"], cwd=repo,
                                    capture_output=True, text=True, timeout=180)
            assert pushed.returncode == 0, pushed.stderr
            assert server.get("kept.localhost").text == f"original\n{page}\n"
    kept = WorkFolder.kept(f"{tmp_path / 'home'}\0kept\0main")
    try:
        assert (kept.src / "junk").exists(), "the tree was not kept between builds"
    finally:
        kept.remove_later()
        kept.remove()


def test_a_second_build_of_the_branch_at_once_gets_a_fresh_folder(tmp_path: Path) -> None:
    key = f"{tmp_path}\0site\0main"
    first = WorkFolder.kept(key)
    try:
        second = WorkFolder.kept(key)
        assert second.path != first.path and "kept" not in second.path.name
        second.remove()
    finally:
        first.remove_later()
    again = WorkFolder.kept(key)
    try:
        assert again.path == first.path
        assert oct(again.path.stat().st_mode & 0o777) == "0o711"
    finally:
        again.remove_later()
    assert oct(first.path.stat().st_mode & 0o777) == "0o700"  # closed between builds
    again.remove()


def test_a_kept_folder_that_is_a_link_is_never_used(tmp_path: Path) -> None:
    key = f"{tmp_path}\0linked\0main"
    probe = WorkFolder.kept(key)
    path = probe.path
    probe.remove_later()
    probe.remove()
    os.symlink(tmp_path, path)
    try:
        work = WorkFolder.kept(key)
        assert work.path != path and "kept" not in work.path.name
        work.remove()
    finally:
        path.unlink()


def test_removing_a_work_folder_twice_leaves_the_folder_around_it_alone(
        tmp_path: Path) -> None:
    """A second removal once reached rmtree's error handler for the work folder itself,
    which opened up its parent with chmod 0700: /tmp closed to the sandbox's user."""
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o1777)
    work = WorkFolder(root)
    (work.src / "ro").mkdir()
    (work.src / "ro" / "f").write_text("x")
    (work.src / "ro").chmod(0o555)  # as a build may leave it
    work.remove()
    work.remove()
    assert not work.path.exists()
    assert oct(root.stat().st_mode & 0o7777) == "0o1777"
