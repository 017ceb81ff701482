"""Real generators, built in the sandbox: MkDocs (from PyPI, in a virtualenv the server names
in build_paths), Hugo and Jekyll (Debian packages), an npm build (Debian's nodejs). Each is
pushed with `git push` to a real `pushsite serve` and deployed with `pushsite deploy . --build`;
the build's lines reach the push's `remote:` output, and a one-page change stores only the
outputs that changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.servers import Server, serving
from support.sites import deploy, git, write_files

ROOT = Path(__file__).resolve().parents[1]

MKDOCS = {
    "mkdocs.yml": "site_name: Build test docs\nnav:\n  - Home: index.md\n  - Guide: guide.md\n",
    "docs/index.md": "# Hello from MkDocs\n\nThe front page.\n",
    "docs/guide.md": "# Guide\n\nFirst version of the guide.\n",
}
HUGO = {
    "hugo.toml": 'baseURL = "http://example.org/"\ntitle = "Hugo build test"\n'
                 "disableKinds = ['taxonomy', 'term']\n",
    "content/_index.md": "---\ntitle: Home\n---\nHello from Hugo\n",
    "content/posts/first.md": "---\ntitle: First post\n---\nThe first post.\n",
    "content/posts/second.md": "---\ntitle: Second post\n---\nThe second post.\n",
    "layouts/index.html": "<h1>{{ site.Title }}</h1>{{ .Content }}"
                          "{{ range .Site.RegularPages }}<a href='{{ .RelPermalink }}'>"
                          "{{ .Title }}</a>{{ end }}",
    "layouts/_default/single.html": "<h1>{{ .Title }}</h1>{{ .Content }}",
    "layouts/_default/list.html": "<h1>{{ .Title }}</h1>",
}
JEKYLL = {
    "_config.yml": "title: Jekyll build test\n",
    "_layouts/default.html": "<html><body><h1>{{ site.title }}</h1>{{ content }}</body></html>",
    "index.md": "---\nlayout: default\n---\nHello from Jekyll\n",
    "about.md": "---\nlayout: default\npermalink: /about/\n---\nAbout this site\n",
}
NPM = {
    "package.json": json.dumps({"name": "npm-build-test", "version": "1.0.0", "private": True,
                                "scripts": {"build": "node build.js"}}),
    "build.js": "const fs = require('fs');\n"
                "fs.mkdirSync('dist', {recursive: true});\n"
                "console.log('\\u001b[32mwriting\\u001b[0m dist/index.html');\n"
                "fs.writeFileSync('dist/index.html', '<p>Hello from npm on ' + "
                "process.env.CONTEXT + ' ' + process.env.BRANCH + '</p>');\n",
}
SITES = {  # files, what the front page says, a line the build prints, the log's detection
    "mkdocs": (MKDOCS, "Hello from MkDocs", "Documentation built", "detected mkdocs.yml"),
    "hugo": (HUGO, "Hello from Hugo", "Total in", "detected hugo.toml (Hugo)"),
    "jekyll": (JEKYLL, "Hello from Jekyll", "done in", "detected _config.yml (Jekyll)"),
    "npm": (NPM, "Hello from npm on production main", "writing dist/index.html",
            "detected package.json with a build script (npm)"),
}


@pytest.fixture(scope="session")
def mkdocs_env() -> Iterator[Path]:
    """MkDocs (the version test.lock.txt pins) in a virtualenv of Debian's python3, outside
    /root, as a server would install it for builds (the sandbox cannot see /root)."""
    folder = Path(tempfile.mkdtemp(prefix="pushsite-tools-"))
    folder.chmod(0o755)
    venv = folder / "mkdocs"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c",
                           str(ROOT / "requirements" / "test.lock.txt"), "mkdocs"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    yield venv
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, mkdocs_env: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("gen-home")
    with serving(home, extra_env={"PUSHSITE_BUILD_PATHS": str(mkdocs_env),
                                  "PUSHSITE_WAIT": "300"}) as server:
        yield server


@pytest.fixture(scope="module")
def token(srv: Server) -> str:
    return srv.new_token("--name", "gen")


def push(srv: Server, token: str, site: str, repo: Path) -> str:
    url = f"http://x:{token}@127.0.0.1:{srv.port}/{site}.git"
    done = subprocess.run(["git", "push", url, "main"], cwd=repo, capture_output=True,
                          text=True, timeout=300)
    return done.stderr


def new_repo(where: Path, files: dict[str, str | bytes]) -> Path:
    where.mkdir()
    git(where, "init", "-q", "-b", "main")
    write_files(where, files)
    git(where, "add", "-A")
    git(where, "commit", "-q", "-m", "source")
    return where


@pytest.mark.parametrize("kind", sorted(SITES))
def test_git_push_of_the_source_builds_and_goes_live(srv: Server, token: str, tmp_path: Path,
                                                     kind: str) -> None:
    files, front, printed, detected = SITES[kind]
    site = f"gen-{kind}"
    assert srv.cli("sites", "create", site).returncode == 0
    repo = new_repo(tmp_path / kind, files)
    err = push(srv, token, site, repo)
    assert "pushsite: production:" in err, err
    assert detected in err and "running `" in err
    assert re.search(rf"remote: pushsite: .*{re.escape(printed)}", err), err
    assert "\x1b[" not in err  # colours stripped before the log
    assert front in srv.get(f"{site}.localhost", "/").text


def test_one_page_change_stores_only_changed_outputs(srv: Server, token: str,
                                                     tmp_path: Path) -> None:
    site = "gen-change"
    assert srv.cli("sites", "create", site).returncode == 0
    repo = new_repo(tmp_path / "change", MKDOCS)
    first = push(srv, token, site, repo)
    files = int(re.search(r"production: \S+ \((\d+) files", first).group(1))  # type: ignore[union-attr]
    write_files(repo, {"docs/guide.md": "# Guide\n\nSecond version of the guide.\n"})
    git(repo, "commit", "-q", "-am", "edit the guide")
    second = push(srv, token, site, repo)
    found = re.search(r"production: \S+ \((\d+) files, (\d+) new blobs?", second)
    assert found, second
    assert int(found.group(1)) == files > 20
    # the page itself, the search index, the sitemap (and its .gz): the theme's files are
    # the same blobs as before
    assert int(found.group(2)) <= 4, second
    assert "Second version" in srv.get(f"{site}.localhost", "/guide/").text


@pytest.mark.parametrize("kind", sorted(SITES))
def test_pushsite_deploy_build_runs_the_same_sandbox(tmp_path: Path, mkdocs_env: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     kind: str) -> None:
    files, front, _printed, _detected = SITES[kind]
    monkeypatch.setenv("PUSHSITE_BUILD_PATHS", str(mkdocs_env))
    folder = write_files(tmp_path / "src", files)
    code, _out, err = deploy(str(folder), "--site", f"local-{kind}", "--build", "--json")
    assert code == 0, err
    from support.sites import live_manifest

    manifest = live_manifest(f"local-{kind}")
    assert "index.html" in manifest.files
    assert not any(p.startswith(("docs/", "content/", "_layouts/")) for p in manifest.files)
    assert front  # the front page's text is checked over HTTP in the push test
    assert not (folder / "site").exists() and not (folder / "public").exists()  # a copy built


def test_deploy_without_build_warns_that_the_folder_goes_as_it_is(
        tmp_path: Path) -> None:
    folder = write_files(tmp_path / "src", {
        "pushsite.toml": '[build]\ncommand = "make"\npublish = "."\n',
        "index.html": "<p>as is</p>"})
    code, _out, err = deploy(str(folder), "--site", "asis")
    assert code == 0, err
    assert "pushsite.toml names a build command (`make`)" in err
    assert "add --build" in err


def test_the_build_environment_names_branch_and_context(srv: Server, token: str,
                                                        tmp_path: Path) -> None:
    site = "gen-branch"
    assert srv.cli("sites", "create", site).returncode == 0
    repo = new_repo(tmp_path / "branch", NPM)
    assert "pushsite: production:" in push(srv, token, site, repo)
    git(repo, "checkout", "-q", "-b", "feature")
    url = f"http://x:{token}@127.0.0.1:{srv.port}/{site}.git"
    done = subprocess.run(["git", "push", url, "feature"], cwd=repo, capture_output=True,
                          text=True, timeout=300)
    assert "pushsite: preview:" in done.stderr, done.stderr
    page = srv.get(f"feature--{site}.localhost", "/").text
    assert page == "<p>Hello from npm on branch-deploy feature</p>"
    assert os.path.isdir(srv.home)
