"""Error paths on real parts (SQLite state, the local store and queue, the CLI as a user runs
it): each refusal says what is wrong, changes nothing it should not, and leaves a record.

- two branches whose preview hosts would be one: the second is refused, naming both;
- a rollback to another site's deployment: refused (exit 4), production untouched;
- two rollbacks at once: the one that moved production first wins, the other gets
  AliasConflict (exit 5), and production ends on the winner's target;
- a store that fails to open on the deploy's background thread: the deploy fails with that
  error (exit 7), the deployment is recorded failed and the live site stays as it was;
- the state unavailable when a worker takes a message: the message is not acked, and once the
  state is back a worker deploys it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from click.testing import CliRunner, Result

from pushsite.cli import cli
from pushsite.config import load_config
from pushsite.model import PRODUCTION, Status, branch_alias
from pushsite.service import Service
from pushsite.service.worker import run_worker
from support.service import WAIT, bundle, joined, open_service, site_files, wait_for
from support.sites import deploy, live_manifest, write_files


def deployed(folder: Path, site: str, *args: str) -> dict[str, Any]:
    """`pushsite deploy FOLDER --site SITE ARGS --json`, which must succeed."""
    code, out, err = deploy(str(folder), "--site", site, "--json", *args)
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def folder(tmp_path: Path, name: str, text: str) -> Path:
    return write_files(tmp_path / name, {"index.html": f"<p>{text}</p>"})


# preview labels -------------------------------------------------------------------------------
def test_a_branch_whose_preview_host_another_branch_holds_is_refused_naming_both(
        tmp_path: Path) -> None:
    first = deployed(folder(tmp_path, "a", "login"), "blog", "--branch", "feature/login")
    code, _, err = deploy(str(folder(tmp_path, "b", "other")), "--site", "blog",
                          "--branch", "feature-login")
    assert code == 2, err
    assert "'feature-login'" in err and "'feature/login'" in err
    assert "feature-login--blog" in err  # the host they would share
    with open_service() as service:
        assert [d.id for d in service.state.list_deployments("blog")] == [first["id"]]
        alias = service.state.get_alias("blog", branch_alias("feature/login"))
        assert alias is not None and alias.deployment_id == first["id"]
        assert service.state.get_alias("blog", branch_alias("feature-login")) is None


# rollback -------------------------------------------------------------------------------------
def rollback(*args: str) -> Result:
    return CliRunner().invoke(cli, ["rollback", *args], obj={})


def production(site: str) -> str | None:
    with open_service() as service:
        alias = service.state.get_alias(site, PRODUCTION)
        return alias.deployment_id if alias else None


def test_a_rollback_to_another_sites_deployment_is_refused(tmp_path: Path) -> None:
    blog_one = deployed(folder(tmp_path, "b1", "blog one"), "blog")
    blog_two = deployed(folder(tmp_path, "b2", "blog two"), "blog")
    docs = deployed(folder(tmp_path, "d1", "docs"), "docs")
    result = rollback("blog", docs["id"])
    assert result.exit_code == 4, result.stderr
    assert docs["id"] in result.stderr and "'docs'" in result.stderr
    assert "'blog'" in result.stderr
    assert production("blog") == blog_two["id"]
    assert production("docs") == docs["id"]
    assert live_manifest("blog").deployment_id == blog_two["id"]
    with open_service() as service:  # the refused one was not touched either
        assert service.state.get_deployment(docs["id"]).status == Status.LIVE
        assert service.state.get_deployment(blog_one["id"]).status == Status.READY


def pause_at_alias_move(reached: threading.Event, go: threading.Event) -> None:
    """Stop this thread as it enters the state's move_alias: its new alias version is made,
    the write not yet done. A trace hook on the thread; nothing is replaced."""

    def trace(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_name == "move_alias" and (
                f"{Path('pushsite', 'state')}" in frame.f_code.co_filename):
            reached.set()
            go.wait(WAIT)

    sys.settrace(trace)  # type: ignore[arg-type]


def test_two_rollbacks_at_once_one_wins_and_the_other_gets_a_conflict(
        tmp_path: Path) -> None:
    one = deployed(folder(tmp_path, "1", "one"), "blog")
    two = deployed(folder(tmp_path, "2", "two"), "blog")
    three = deployed(folder(tmp_path, "3", "three"), "blog")
    reached, go = threading.Event(), threading.Event()
    results: list[Result] = []

    def first_rollback() -> None:
        pause_at_alias_move(reached, go)
        try:
            results.append(rollback("blog", one["id"]))
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=first_rollback, daemon=True)
    thread.start()
    try:
        assert reached.wait(WAIT), "the first rollback never reached its alias move"
        # meanwhile another process rolls production back to `two`, start to end
        other = subprocess.run([sys.executable, "-m", "pushsite", "rollback", "blog", two["id"]],
                               capture_output=True, text=True, timeout=120, check=False)
    finally:
        go.set()
        joined(thread)
    assert other.returncode == 0, other.stderr
    [first] = results
    assert first.exit_code == 5, first.stderr
    assert "moved while rolling back" in first.stderr
    assert production("blog") == two["id"]  # the winner's target, never anything else
    with open_service() as service:  # the loser changed nothing: `one` is not live anywhere
        statuses = {d.id: d.status for d in service.state.list_deployments("blog")}
        main_preview = service.state.get_alias("blog", branch_alias("main"))
    assert (statuses[one["id"]], statuses[two["id"]]) == (Status.READY, Status.LIVE)
    assert main_preview is not None and main_preview.deployment_id == three["id"]


# the store fails to open during a deploy ------------------------------------------------------
def test_a_store_that_fails_to_open_during_a_deploy_fails_it_and_the_live_site_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = deployed(folder(tmp_path, "v1", "live"), "blog")
    (tmp_path / "not-a-folder").write_text("a file where the store's folder should be")
    monkeypatch.setenv("PUSHSITE_STORE", f"file://{tmp_path / 'not-a-folder' / 'store'}")
    code, out, err = deploy(str(folder(tmp_path, "v2", "never live")), "--site", "blog",
                            "--json")
    assert code == 7, err  # BackendUnavailable
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot open the local store at")
    failed = json.loads(out)
    monkeypatch.delenv("PUSHSITE_STORE")
    with open_service() as service:
        record = service.state.get_deployment(failed["id"])
        assert record.status == Status.FAILED
        assert record.error_kind == "BackendUnavailable"
        assert "cannot open the local store" in record.error
        logs = service.state.get_logs(failed["id"])
        assert any(line.level == "error" and "cannot open the local store" in line.message
                   for line in logs)
        assert service.state.get_deployment(live["id"]).status == Status.LIVE
    assert production("blog") == live["id"]
    manifest = live_manifest("blog")
    assert manifest.deployment_id == live["id"] and list(manifest.files) == ["index.html"]


# the state unavailable while a worker processes a message ------------------------------------
def test_a_message_taken_while_the_state_is_unavailable_stays_on_the_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _isolated_env: Path) -> None:
    queue = f"local://{_isolated_env / 'queue.db'}?visibility=1"
    monkeypatch.setenv("PUSHSITE_QUEUE", queue)
    with open_service() as service:
        accepted = service.accept("blog", io.BytesIO(bundle(site_files("queued"))))
        assert service.queue.pending() == 1
        # a worker whose state cannot be reached (its database's folder is a file)
        (tmp_path / "no-state").write_text("a file where the state's folder should be")
        cut_off = Service(load_config(state=f"sqlite://{tmp_path / 'no-state' / 'state.db'}"))
        try:
            assert run_worker(cut_off, once=True) == 0
        finally:
            cut_off.close()
        assert service.queue.pending() == 1  # not acked: it comes back after its visibility
        assert service.state.get_deployment(accepted.id).status == Status.QUEUED
        # the state is back (a worker that reaches it): the same message deploys
        wait_for("the message to be delivered again and deployed",
                 lambda: run_worker(service, once=True) == 1)
        assert service.queue.pending() == 0
        assert service.state.get_deployment(accepted.id).status == Status.LIVE
