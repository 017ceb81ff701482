"""A one-shot `pushsite deploy` into a home that does not exist yet (a CI job's first run): the
home's metrics.db is made on a thread while the files are read (six fdatasyncs off the
deploy's path), and every count the process made is in it when it ends, though it ends with
os._exit and no teardown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pushsite.state.counters import CounterFile, key
from support.service import bundle


def deploy(home: Path, source: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pushsite", "deploy", str(source), "--site",
                           "blog", "--create", "--json"], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "PUSHSITE_HOME": str(home)})


def test_a_first_deploy_and_a_failed_one_are_both_counted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    good = tmp_path / "site.tar.gz"
    good.write_bytes(bundle({"index.html": b"<h1>hello</h1>", "style.css": b"a{}" * 300}))
    first = deploy(home, good)
    assert first.returncode == 0, first.stderr
    assert not list(home.glob("metrics.db*-journal"))  # made whole, not cut off

    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(good.read_bytes()[:-40])  # cut off: the bundle is refused
    assert deploy(home, bad).returncode != 0

    counts = CounterFile(home / "metrics.db").read()
    assert counts[key("pushsite_deployments_total", source="cli", status="live")] == 1
    assert counts[key("pushsite_deployments_total", source="cli", status="failed")] == 1
    assert counts[key("pushsite_deploy_stage_seconds_count", stage="total")] == 1
