"""`pushsite deploys` as a user reads it: within 80 columns, short ids that the other verbs
take back (shortest unique prefix, at least 7 characters), a started column, one `*` on the
deployment production serves (after a promote too), the context of each (production, preview
BRANCH, draft), and a failed one's error. Real CLI subprocesses on the test's home."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from support.cli import create_site, ok, ok_json, pushsite


def test_the_table_fits_and_its_ids_work(make_site: Callable[..., Path], tmp_path: Path) -> None:
    create_site("blog")
    first = ok_json("deploy", str(make_site()), "--site", "blog", "-m",
                    "a long message " * 10)["id"]
    preview = ok_json("deploy", str(make_site()), "--site", "blog", "--branch",
                      "feature/a-branch-with-a-long-descriptive-name")["id"]
    draft = ok_json("deploy", str(make_site({"index.html": "new"})), "--site", "blog",
                    "--draft")["id"]
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    assert pushsite("deploy", str(broken), "--site", "blog").returncode != 0
    ok("promote", draft)

    listed = ok("deploys", "blog")
    lines = listed.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split() == ["id", "status", "context", "started", "commit", "message"]
    rows = [json.loads(x) for x in ok("deploys", "blog", "--json").stdout.splitlines()]
    assert [r["id"] for r in rows][1:] == [draft, preview, first]
    failed = rows[0]
    assert failed["status"] == "failed" and failed["context"] == "production"
    assert [r["context"] for r in rows[1:]] == [
        "draft", "preview feature/a-branch-with-a-long-descriptive-name", "production"]
    assert [r["production"] for r in rows] == [False, True, False, False]
    starred = [line for line in lines[1:] if line.startswith("*")]
    assert len(starred) == 1 and rows[1]["short_id"] in starred[0].split()
    assert "production: http://blog.localhost:8000/" in listed.stderr
    for row, line in zip(rows, lines[1:], strict=True):
        short = row["short_id"]
        assert len(short) >= 7 and row["id"].startswith(short)
        assert line[3:].split()[0] == short  # shown whole, never cut
        assert "ago" in line
        assert ok("log", short).stdout == ok("log", row["id"]).stdout
    assert "error:" in lines[1] and "preview feature/" in lines[3] and "…" in lines[3]
    assert "a long" in lines[4] and lines[4].endswith("…")  # cut to fit, never wrapped
    # the prefixes are as short as they can be: one character fewer names several (or is
    # below git's 7)
    for row in rows:
        fewer = row["short_id"][:-1]
        assert len(fewer) < 7 or pushsite("log", fewer).returncode == 2
