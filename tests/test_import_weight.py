"""A one-shot `pushsite deploy` imports what deploying uses, and not the rest of the product.

Imports are most of a small deploy's time (issue 12's bench: ~110 ms of a 0.47 s CLI deploy of
the small corpus), so the verbs a deploy never calls load their modules when they are called:
housekeeping, domains, tokens, webhook checks, git. These tests run real commands in a fresh
process and read its `sys.modules` when the command is done; they assert what is loaded, never
how long it took (speed is the bench's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.service import bundle

# what a deploy of a bundle or a folder never uses: each loads when a verb that needs it runs
NOT_FOR_A_DEPLOY = (
    "pushsite.service.housekeeping",  # prune, verify, rollback's check
    "pushsite.service.domains",  # custom domains (and the edge's reserved names with them)
    "pushsite.edge.hosts",
    "pushsite.service.tokens",
    "pushsite.sources.webhooks",  # a webhook's repository checks
    "pushsite.deploy.gitcommit",  # a push's repositories
    "pushsite.service.building",  # builds
    "pushsite.service.uploads",  # `deploy --server`'s uploads, on the server
    "pushsite.service.optimising",  # a small site goes live whole: no brotli is left to make
    "pushsite.deploy.optimise",
    "pushsite.deploy.linked",  # SOURCE and --site are both given
    "difflib",  # the "did you mean" of an unknown site
    "httpx",  # notifications are delivered by a worker, not by the deploying process
    "rich",  # --json prints nothing through it
    "boto3",
    "socket",  # the host name of a lease or a temporary file is os.uname()'s
    # the build machinery: a folder's "names a build command" warning reads deploy.detect
    "subprocess", "pushsite.deploy.build", "pushsite.deploy.sandbox",
    # issue 20: the records no deploy builds (tokens, domains, pushes' outcomes: records.py)
    "pushsite.records",
)
# a bundle's deploy, too: the parsers of _headers, _redirects and pushsite.toml load for a site
# that has one (a folder's reads them before, for the CLI's "names a build command" warning)
NOT_FOR_A_BUNDLE_DEPLOY = (*NOT_FOR_A_DEPLOY, "pushsite.deploy.siteconfig", "pushsite.rules",
                           "tomllib")
# and what the console script's quick deploy (launch.py, quickdeploy.py) never loads either:
# click (which imports uuid itself), and a queue's receipt is a worker's (a deploy only sends)
NOT_FOR_A_QUICK_DEPLOY = (*NOT_FOR_A_BUNDLE_DEPLOY, "click", "uuid", "platform")
# nor, before it prints the live deployment, what only the after pass and a site's endpoints or
# git host need: the notifications of a site nobody is told about are never loaded
NOT_BEFORE_LIVE = ("pushsite.service.notify", "pushsite.service.statuses")

# runs one command in this process the way `pushsite` does, then writes the modules it loaded
_DRIVER = """
import json, os, sys
from pushsite.cli import cli
try:
    cli(args=sys.argv[1:], obj={}, prog_name="pushsite")
except SystemExit as done:
    code = done.code
with open(os.environ["IMPORTED_TO"], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


def imported_by(tmp_path: Path, *args: str) -> set[str]:
    """The modules loaded in a fresh process by `pushsite ARGS` (which must succeed)."""
    record = tmp_path / "imported.json"
    env = {**os.environ, "PUSHSITE_HOME": str(tmp_path / "home"), "IMPORTED_TO": str(record)}
    done = subprocess.run([sys.executable, "-c", _DRIVER, *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(record.read_text())
    assert result["code"] in (0, None), done.stderr
    return set(result["modules"])


@pytest.mark.parametrize("live_first", ["1", "0"])
def test_a_bundle_deploy_into_a_fresh_home_loads_only_the_deploy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, live_first: str) -> None:
    monkeypatch.setenv("PUSHSITE_LIVE_FIRST", live_first)
    source = tmp_path / "site.tar.gz"
    source.write_bytes(bundle({"index.html": b"<h1>hello</h1>" * 50, "app.js": b"let a;" * 99}))
    loaded = imported_by(tmp_path, "deploy", str(source), "--site", "blog", "--create",
                         "--json")
    assert "pushsite.deploy.builder" in loaded  # it did deploy, here
    assert sorted(loaded & set(NOT_FOR_A_BUNDLE_DEPLOY)) == []


def test_a_folder_deploy_to_an_existing_site_loads_only_the_deploy(tmp_path: Path) -> None:
    folder = tmp_path / "public"
    folder.mkdir()
    (folder / "index.html").write_text("<h1>hello</h1>")
    imported_by(tmp_path, "sites", "create", "blog")
    loaded = imported_by(tmp_path, "deploy", str(folder), "--site", "blog", "--json")
    assert "pushsite.deploy.folder" in loaded
    assert sorted(loaded & set(NOT_FOR_A_DEPLOY)) == []


# `pushsite deploy ...` as the console script runs it (launch.py -> quickdeploy.py, which ends
# the process with os._exit): the modules loaded when it printed the live deployment, and when
# it exits
_QUICK_DRIVER = """
import json, os, sys
sys.argv = ["pushsite", *sys.argv[1:]]
import pushsite.quickdeploy as quick
at_live = []
_print_json = quick._print_json
def recording_print(data):
    at_live.append(sorted(sys.modules))
    _print_json(data)
quick._print_json = recording_print
_exit = os._exit
def recording_exit(code):
    with open(os.environ["IMPORTED_TO"], "w") as out:
        json.dump({"code": code, "modules": sorted(sys.modules), "at_live": at_live}, out)
    _exit(code)
os._exit = recording_exit
from pushsite.launch import main
main()
"""


def test_the_console_script_s_quick_deploy_loads_only_the_deploy(tmp_path: Path) -> None:
    """The quick path (issue 20) does not go through click: what it loads is checked here.
    big.js is larger than deploy.early's queue holds, so its brotli is left to the after pass
    and the deploy sends the optimising message: the queue is opened, and still no uuid."""
    source = tmp_path / "site.tar.gz"
    source.write_bytes(bundle({"index.html": b"<h1>hello</h1>" * 50,
                               "big.js": b"let a = 1;\n" * 100_000,
                               "_headers": b"/*\n  X-Frame-Options: DENY\n"}))
    record = tmp_path / "imported.json"
    env = {**os.environ, "PUSHSITE_HOME": str(tmp_path / "home"), "IMPORTED_TO": str(record)}
    done = subprocess.run([sys.executable, "-c", _QUICK_DRIVER, "deploy", str(source), "--site",
                           "blog", "--create", "--json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["status"] == "live"
    result = json.loads(record.read_text())
    loaded = set(result["modules"])
    assert "pushsite.quickdeploy" in loaded  # the quick path ran
    assert "pushsite.queues.local" in loaded  # and sent the after pass its message
    # a site with _headers loads their parser, one with brotli left the optimiser (after live)
    assert sorted(loaded & {*NOT_FOR_A_QUICK_DEPLOY, *NOT_BEFORE_LIVE}) == [
        "pushsite.deploy.optimise", "pushsite.deploy.siteconfig", "pushsite.rules",
        "pushsite.service.optimising", "tomllib"]
    # and none of the optimiser, nor the notifications of a site without endpoints, before the
    # live line: the optimising message is queued without them (issue 20)
    [live] = result["at_live"]
    assert "pushsite.queues.local" in live
    assert sorted(set(live) & {*NOT_FOR_A_QUICK_DEPLOY, *NOT_BEFORE_LIVE}) == [
        "pushsite.deploy.siteconfig", "pushsite.rules", "tomllib"]


def test_the_verbs_that_need_them_load_them(tmp_path: Path) -> None:
    """The other side (and proof that the check above sees a lazy import): a prune loads
    housekeeping, a deploy to a mistyped site the typo hint."""
    imported_by(tmp_path, "sites", "create", "blog")
    assert "pushsite.service.housekeeping" in imported_by(tmp_path, "prune", "blog",
                                                          "--keep", "1")
    record = tmp_path / "imported.json"
    env = {**os.environ, "PUSHSITE_HOME": str(tmp_path / "home"), "IMPORTED_TO": str(record)}
    typo = subprocess.run([sys.executable, "-c", _DRIVER, "deploy", str(tmp_path), "--site",
                           "blgo"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    assert "did you mean 'blog'?" in typo.stderr
    assert "difflib" in json.loads(record.read_text())["modules"]


def test_importing_the_cli_loads_no_command_s_machinery() -> None:
    """`pushsite --help`, `deploy --server` and every command that deploys nothing here."""
    code = "import json, sys, pushsite.cli; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded = set(json.loads(done.stdout))
    heavy = {"pushsite.service", "pushsite.deploy.builder", "pushsite.service.housekeeping",
             "httpx", "rich", "difflib", "subprocess"}
    assert sorted(loaded & heavy) == []


def test_the_entry_points_named_elsewhere_still_import() -> None:
    """Existing repositories' hooks import pushsite.githook by name; the console script and
    the Lambda function name pushsite.cli:main and pushsite.aws.handler.handler."""
    code = ("import pushsite.githook; from pushsite.cli import main; "
            "from pushsite.aws.handler import handler; assert callable(main) and callable(handler)")
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True)
