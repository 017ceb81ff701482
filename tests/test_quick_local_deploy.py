"""The console script's quick path for a plain local `deploy SOURCE --site S --json`
(launch.py, quickdeploy.py): taken without importing click or the CLI, and what it prints and
exits with is the CLI's own, for a bundle, a folder, stdin, a bundle the deploy refuses and an
unknown site; anything it is not sure of still goes to the CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pushsite.config import load_config
from pushsite.model import Status
from pushsite.service import Service

VOLATILE = ("created", "started", "finished", "seconds", "lease_until", "runner")
CLI = "import sys; from pushsite.cli import main; sys.argv[0] = 'pushsite'; main()"


class Ran:
    """One finished `pushsite deploy`: exit code, stdout, stderr (import lines left out) and
    whether click was imported."""

    def __init__(self, done: subprocess.CompletedProcess[bytes]) -> None:
        self.code = done.returncode
        self.stdout = done.stdout.decode()
        lines = done.stderr.decode().splitlines(keepends=True)
        self.imported = {line.split("|")[-1].strip() for line in lines
                         if line.startswith("import time:")}
        self.stderr = "".join(line for line in lines if not line.startswith("import time:"))

    def doc(self) -> dict[str, Any]:
        return dict(json.loads(self.stdout))


def _run(home: Path, args: list[str], *, quick: bool, stdin: bytes | None = None,
         env: dict[str, str] | None = None) -> Ran:
    """`pushsite ARGS` on `home`: the console script's way (`-m pushsite`, imports listed)
    or the CLI's own (`pushsite.cli:main`, which runs only the remote quick path)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSITE_")}
    argv = ([sys.executable, "-X", "importtime", "-m", "pushsite"] if quick
            else [sys.executable, "-c", CLI])
    done = subprocess.run([*argv, *args], input=stdin if stdin is not None else b"",
                          env={**base, "PUSHSITE_HOME": str(home), **(env or {})},
                          capture_output=True, timeout=120, check=False)
    return Ran(done)


def _both(tmp_path: Path, args: list[str], stdin: bytes | None = None,
          site: str | None = None) -> tuple[Ran, Ran]:
    """The same deploy on two fresh homes, quick then the CLI; `site` created first."""
    runs = []
    for name, quick in (("quick", True), ("cli", False)):
        home = tmp_path / name
        if site:
            created = _run(home, ["sites", "create", site], quick=False)
            assert created.code == 0, created.stderr
        runs.append(_run(home, args, quick=quick, stdin=stdin))
    quick_run, cli_run = runs
    assert "click" not in quick_run.imported and "pushsite.cli" not in quick_run.imported
    assert "pushsite.quickdeploy" in quick_run.imported
    return quick_run, cli_run


def _same_doc(quick: Ran, cli: Ran) -> dict[str, Any]:
    """The two JSON documents, equal once each deployment's id and times are set aside."""
    docs = []
    for ran in (quick, cli):
        text = ran.stdout.replace(ran.doc()["id"], "ID")
        assert text.endswith("}\n") and text.count("\n") == 1  # one line, as click.echo
        docs.append({k: v for k, v in json.loads(text).items() if k not in VOLATILE})
    assert docs[0] == docs[1]
    return docs[0]


def _bundle(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


SITE = {"index.html": b"<h1>home</h1>" + b"words " * 2000, "app.js": b"let x = 1;\n" * 3000,
        "about/index.html": b"<p>about</p>"}


def test_a_bundle_goes_live_the_same_without_click(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "site.tar.gz", SITE)
    quick, cli = _both(tmp_path, ["deploy", str(bundle), "--site", "blog", "--json",
                                  "--create", "-m", "first", "--branch", "main"])
    assert (quick.code, quick.stderr) == (cli.code, cli.stderr) == (0, "")
    doc = _same_doc(quick, cli)
    assert doc["status"] == "live" and doc["files"] == 3 and doc["message"] == "first"
    assert doc["context"] == "production"
    service = Service(load_config(home=str(tmp_path / "quick")))
    try:  # the deploy is the home's: live, and what it printed
        live = service.state.get_deployment(quick.doc()["id"])
        assert live.status == Status.LIVE and live.files == 3
    finally:
        service.close()


def test_a_folder_and_a_preview_branch(tmp_path: Path) -> None:
    folder = tmp_path / "public"
    for name, data in SITE.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    quick, cli = _both(tmp_path, ["deploy", str(folder), "--site=blog", "--json",
                                  "--branch=feature-x"], site="blog")
    assert (quick.code, quick.stderr) == (cli.code, cli.stderr) == (0, "")
    doc = _same_doc(quick, cli)
    assert doc["context"] == "preview" and doc["files"] == 3


def test_stdin(tmp_path: Path) -> None:
    data = _bundle(tmp_path / "site.tar.gz", SITE).read_bytes()
    quick, cli = _both(tmp_path, ["deploy", "-", "--site", "blog", "--json"], stdin=data,
                       site="blog")
    assert (quick.code, quick.stderr) == (cli.code, cli.stderr) == (0, "")
    assert _same_doc(quick, cli)["files"] == 3


def test_a_bundle_with_a_bad_path_fails_the_same(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bad.tar.gz", {"index.html": b"x", "../evil.html": b"y"})
    quick, cli = _both(tmp_path, ["deploy", str(bundle), "--site", "blog", "--json"],
                       site="blog")
    assert quick.code == cli.code == 3
    doc = _same_doc(quick, cli)  # the failed deployment, on stdout as the CLI prints it
    assert doc["status"] == "failed"
    stderr = [ran.stderr.replace(ran.doc()["id"], "ID") for ran in (quick, cli)]
    assert stderr[0] == stderr[1] and stderr[0].startswith("error: ")
    assert stderr[0].count("\n") == 1 and "evil.html" in stderr[0]


def test_an_unknown_site_without_create_fails_the_same(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "site.tar.gz", SITE)
    quick, cli = _both(tmp_path, ["deploy", str(bundle), "--site", "nosuch", "--json"])
    assert quick.code == cli.code == 4
    assert quick.stdout == cli.stdout == ""
    assert quick.stderr == cli.stderr
    assert quick.stderr.startswith("error: ") and "pushsite sites create nosuch" in quick.stderr


@pytest.mark.parametrize("backend", ["state file", "state scheme", "store file",
                                     "store scheme"])
def test_a_backend_that_cannot_open_fails_the_same(tmp_path: Path, backend: str) -> None:
    """An error opening the state or the store is the CLI's one line and exit code (the
    failed deployment printed as the CLI prints it once the state was open)."""
    bundle = _bundle(tmp_path / "site.tar.gz", SITE)
    (tmp_path / "a-file").write_text("not a folder")
    which, how = backend.split()
    url = {("state", "file"): f"sqlite://{tmp_path}/a-file/state.db",
           ("store", "file"): f"file://{tmp_path}/a-file/store"}.get((which, how), "nosuch:///x")
    args = ["deploy", str(bundle), "--site", "blog", "--create", "--json"]
    env = {f"PUSHSITE_{which.upper()}": url}
    runs = [_run(tmp_path / name, args, quick=quick, env=env)
            for name, quick in (("quick", True), ("cli", False))]
    quick, cli = runs
    assert "pushsite.quickdeploy" in quick.imported
    assert quick.code == cli.code != 0
    stderr = [ran.stderr for ran in runs]
    if which == "store":  # the deployment was accepted, and failed: printed as the CLI does
        assert _same_doc(quick, cli)["status"] == "failed"
        stderr = [ran.stderr.replace(ran.doc()["id"], "ID") for ran in runs]
    else:  # nothing was accepted
        assert quick.stdout == cli.stdout == ""
    assert stderr[0] == stderr[1]
    assert stderr[0].startswith("error: ") and stderr[0].count("\n") == 1


def test_two_at_once_on_one_home(tmp_path: Path) -> None:
    """Two quick deploys of one site on one home: both succeed, the alias names a live one."""
    home = tmp_path / "home"
    assert _run(home, ["sites", "create", "blog"], quick=False).code == 0
    bundles = [_bundle(tmp_path / f"{i}.tar.gz", {**SITE, "n.txt": str(i).encode()})
               for i in range(2)]
    base = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSITE_")}
    procs = [subprocess.Popen([sys.executable, "-m", "pushsite", "deploy", str(bundle),
                               "--site", "blog", "--json"],
                              env={**base, "PUSHSITE_HOME": str(home)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for bundle in bundles]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outs]
    ids = {json.loads(out)["id"] for out, _ in outs}
    assert len(ids) == 2
    service = Service(load_config(home=str(home)))
    try:
        status = {i: service.state.get_deployment(i).status for i in ids}
        alias = service.state.get_alias("blog", "production")
        assert alias is not None and status[alias.deployment_id] == Status.LIVE
        assert set(status.values()) <= {Status.LIVE, Status.READY}  # one may be overtaken
    finally:
        service.close()


@pytest.mark.parametrize("extra, env", [
    (["--draft"], {}),  # an option the quick path leaves to the CLI
    (["-m=note"], {}),  # click reads "=note" for a short option: not guessed here
    (["--branch", "--json"], {}),  # a value that looks like an option
    ([], {"PUSHSITE_DEPLOY_BRANCH": "feature-y"}),  # click's own environment for an option
    (["--token", "t"], {}),  # a token without a server
])
def test_what_it_is_not_sure_of_goes_to_the_cli(tmp_path: Path, extra: list[str],
                                                env: dict[str, str]) -> None:
    bundle = _bundle(tmp_path / "site.tar.gz", SITE)
    home = tmp_path / "home"
    ran = _run(home, ["deploy", str(bundle), "--site", "blog", "--json", "--create", *extra],
               quick=True, env=env)
    assert "click" in ran.imported and "pushsite.quickdeploy" not in ran.imported


def test_a_folder_with_settings_of_its_own_goes_to_the_cli(tmp_path: Path) -> None:
    """A pushsite.toml may link the folder or name a build the CLI warns about."""
    folder = tmp_path / "public"
    folder.mkdir()
    (folder / "index.html").write_text("<h1>x</h1>")
    (folder / "pushsite.toml").write_text('[build]\ncommand = "make"\n')
    ran = _run(tmp_path / "home", ["deploy", str(folder), "--site", "blog", "--json",
                                   "--create"], quick=True)
    assert "click" in ran.imported and ran.code == 0
    assert "add --build" in ran.stderr  # the CLI's warning
