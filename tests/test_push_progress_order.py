"""A push's `remote:` lines keep the log's order: the lines a pass of GitBridge._follow read
come before that pass's counting line ("reading the bundle" before "1093 files read").

Real parts: a Service on this test's home (SQLite state), a running deployment record with
counters and a log line already written, as a follower that came late under load finds them.
"""

from __future__ import annotations

import asyncio
import time

from pushsite.config import load_config
from pushsite.ids import new_id
from pushsite.model import Deployment, LogLine, Status
from pushsite.service import Service
from pushsite.web.gitremote import GitBridge


def test_a_pass_yields_its_log_lines_before_its_counting_line() -> None:
    service = Service(load_config())
    try:
        service.create_site("blog")
        deployment = Deployment(id=new_id(), site="blog", branch="main",
                                status=Status.RUNNING, files=1093, bytes_in=4096, stage="read")
        service.state.create_deployment(deployment)
        service.state.append_logs([LogLine(deployment.id, time.time(), "info", "read",
                                           "reading the bundle")])
        bridge = GitBridge(service)

        async def first_two() -> list[str]:
            run = asyncio.ensure_future(asyncio.sleep(3600))
            follow = bridge._follow(deployment.id, run, {}, "refs/heads/main")
            try:
                return [await follow.__anext__(), await follow.__anext__()]
            finally:
                await follow.aclose()
                run.cancel()

        lines = asyncio.run(first_two())
    finally:
        service.close()
    assert lines[0] == "pushsite: reading the bundle\n", lines
    assert lines[1].startswith("pushsite: read: 1093 files read, "), lines
