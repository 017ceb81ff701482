"""Deployment logs: batched writes to the state store, JSON lines on stderr, sinks from the env."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from pushsite.errors import BackendUnavailable, ConfigError
from pushsite.model import LogLine
from pushsite.service.logs import DeployLog, JsonStderrSink, sinks_from_env
from pushsite.service.syslog import SD_ID, SyslogSink
from pushsite.state.sqlite import SqliteState
from support.service import wait_for

DEPLOYMENT = "01jd5m7k8q0000000000000000"


class InMemoryLogState:
    """Test double for the log half of a StateStore (append_logs/get_logs), recording batches."""

    def __init__(self, fail_times: int = 0) -> None:
        self.fail_times = fail_times
        self.batches: list[int] = []
        self._logs: dict[str, list[LogLine]] = {}
        self._lock = threading.Lock()

    def append_logs(self, lines: list[LogLine]) -> None:
        with self._lock:
            if self.fail_times:
                self.fail_times -= 1
                raise BackendUnavailable("the state store is unreachable; try again later")
            for line in lines:
                kept = self._logs.setdefault(line.deployment_id, [])
                kept.append(dataclasses.replace(line, seq=len(kept) + 1))
            self.batches.append(len(lines))

    def get_logs(self, deployment_id: str, after: int = 0, limit: int = 10_000) -> list[LogLine]:
        with self._lock:
            lines = [x for x in self._logs.get(deployment_id, []) if x.seq > after]
        return lines[:limit]


class RecordingSink:
    def __init__(self) -> None:
        self.lines: list[tuple[LogLine, str]] = []
        self.closed = False

    def emit(self, line: LogLine, site: str) -> None:
        self.lines.append((line, site))

    def close(self) -> None:
        self.closed = True


class BrokenSink:
    def emit(self, line: LogLine, site: str) -> None:
        raise RuntimeError("this sink is broken")

    def close(self) -> None:
        pass



def test_lines_carry_level_stage_message_and_fields() -> None:
    state = InMemoryLogState()
    log = DeployLog(state, DEPLOYMENT, "blog", flush_every=3600)
    log.debug("read", "opened the bundle", source="cli")
    log.info("store", "stored blobs", new=3, reused=9)
    log.warning("read", "skipped a link", path="docs/latest")
    log.error("activate", "alias moved by a newer push", alias="production")
    log.flush()

    lines = state.get_logs(DEPLOYMENT)
    assert [(x.level, x.stage, x.message) for x in lines] == [
        ("debug", "read", "opened the bundle"),
        ("info", "store", "stored blobs"),
        ("warning", "read", "skipped a link"),
        ("error", "activate", "alias moved by a newer push"),
    ]
    assert [x.fields for x in lines] == [
        {"source": "cli"},
        {"new": 3, "reused": 9},
        {"path": "docs/latest"},
        {"alias": "production"},
    ]
    assert [x.seq for x in lines] == [1, 2, 3, 4]
    assert {x.deployment_id for x in lines} == {DEPLOYMENT}
    assert [x.time for x in lines] == sorted(x.time for x in lines)
    assert log.lines_written == 4


def test_lines_are_written_in_batches_of_flush_lines() -> None:
    state = InMemoryLogState()
    log = DeployLog(state, DEPLOYMENT, "blog", flush_every=3600, flush_lines=3)
    log.info("read", "one")
    log.info("read", "two")
    assert state.batches == []
    log.info("read", "three")
    assert state.batches == [3]
    log.info("read", "four")
    log.info("read", "five")
    assert state.batches == [3]
    log.flush()
    log.flush()  # nothing waiting: no empty write
    assert state.batches == [3, 2]
    assert log.lines_written == 5
    assert [x.message for x in state.get_logs(DEPLOYMENT, after=3)] == ["four", "five"]


def test_waiting_lines_are_written_after_flush_every_without_more_logging() -> None:
    state = InMemoryLogState()
    log = DeployLog(state, DEPLOYMENT, "blog", flush_every=0.05, flush_lines=1000)
    log.info("read", "a lone line")
    wait_for("state.batches == [1]", lambda: state.batches == [1])
    assert log.lines_written == 1


def test_context_manager_flushes_at_the_end() -> None:
    state = InMemoryLogState()
    with DeployLog(state, DEPLOYMENT, "blog", flush_every=3600) as log:
        log.info("accept", "queued")
    assert [x.message for x in state.get_logs(DEPLOYMENT)] == ["queued"]


def test_concurrent_loggers_lose_nothing_and_keep_each_threads_order() -> None:
    state = InMemoryLogState()
    sink = RecordingSink()
    log = DeployLog(state, DEPLOYMENT, "blog", sinks=[sink], flush_every=0.001, flush_lines=50)
    start = threading.Barrier(8)

    def work(worker: int) -> None:
        start.wait()
        for n in range(250):
            log.info("store", "stored", worker=worker, n=n)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.flush()

    lines = state.get_logs(DEPLOYMENT)
    assert [x.seq for x in lines] == list(range(1, 2001))
    for worker in range(8):
        assert [x.fields["n"] for x in lines if x.fields["worker"] == worker] == list(range(250))
    stored = [(x.fields["worker"], x.fields["n"]) for x in lines]
    emitted = [(x.fields["worker"], x.fields["n"]) for x, _ in sink.lines]
    assert emitted == stored  # the sinks see the order the store keeps
    assert log.lines_written == 2000
    assert len(state.batches) > 1


def test_a_failing_state_store_keeps_lines_without_raising_into_the_deployer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = InMemoryLogState(fail_times=3)
    log = DeployLog(state, DEPLOYMENT, "blog", flush_every=3600, flush_lines=2)
    log.info("read", "one")
    log.info("read", "two")  # the batch write fails, quietly for the deployer
    log.info("read", "three")  # and again
    log.flush()  # and again
    assert state.batches == []
    assert isinstance(log.last_error, BackendUnavailable)
    assert log.lines_written == 0

    log.flush()
    assert [x.message for x in state.get_logs(DEPLOYMENT)] == ["one", "two", "three"]
    assert log.lines_written == 3
    assert log.last_error is None
    err = capsys.readouterr().err
    assert err.count("cannot write the log") == 1 and DEPLOYMENT in err


def test_a_timer_retries_a_failed_write_without_more_logging() -> None:
    state = InMemoryLogState(fail_times=1)
    log = DeployLog(state, DEPLOYMENT, "blog", flush_every=3600, retry_every=0.05)
    log.info("done", "written on the second try")
    log.flush()  # fails; the deployment is over and nobody will log or flush again
    assert state.fail_times == 0
    wait_for("state.batches == [1]", lambda: state.batches == [1])
    assert log.lines_written == 1


def test_while_the_store_is_down_the_buffer_keeps_only_the_newest_lines() -> None:
    state = InMemoryLogState(fail_times=1000)
    log = DeployLog(state, DEPLOYMENT, "blog", flush_every=3600, flush_lines=2, max_buffered=5)
    for n in range(8):
        log.info("read", f"line {n}")  # every batch write fails
    assert log.lines_dropped == 3
    state.fail_times = 0
    log.flush()
    assert [x.message for x in state.get_logs(DEPLOYMENT)] == [f"line {n}" for n in range(3, 8)]
    assert log.lines_dropped == 3


def test_fields_are_stored_as_json_values() -> None:
    state = InMemoryLogState()
    log = DeployLog(state, DEPLOYMENT, "blog", flush_every=3600)
    log.error(
        "read",
        "bundle rejected",
        path=Path("/tmp/site.tar.gz"),
        error=ValueError("truncated gzip"),
        sizes=(1, 2),
        nested={1: {"ok": True, "when": None}},
    )
    log.flush()
    fields = state.get_logs(DEPLOYMENT)[0].fields
    assert fields == {
        "path": "/tmp/site.tar.gz",
        "error": "truncated gzip",
        "sizes": [1, 2],
        "nested": {"1": {"ok": True, "when": None}},
    }
    assert json.loads(json.dumps(fields)) == fields


def test_every_line_reaches_the_sinks_at_once_even_past_a_broken_one() -> None:
    state = InMemoryLogState()
    sink = RecordingSink()
    log = DeployLog(state, DEPLOYMENT, "blog", sinks=[BrokenSink(), sink], flush_every=3600)
    log.info("accept", "queued", branch="main")
    assert state.batches == []  # not yet stored, already emitted
    assert [(x.message, site) for x, site in sink.lines] == [("queued", "blog")]
    log.flush()
    assert log.lines_written == 1
    assert not sink.closed  # sinks are the process's, not the deployment's


def test_json_sink_writes_one_object_per_line_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = DeployLog(InMemoryLogState(), DEPLOYMENT, "blog", sinks=[JsonStderrSink()])
    log.info("store", "stored blobs", new=3)
    log.warning("read", "skipped 'a\nb'", path="é")
    log.flush()

    rows = [json.loads(text) for text in capsys.readouterr().err.splitlines()]
    assert [r["message"] for r in rows] == ["stored blobs", "skipped 'a\nb'"]
    first = rows[0]
    assert set(first) == {"time", "level", "site", "deployment", "stage", "message", "fields"}
    assert (first["level"], first["site"], first["deployment"], first["stage"]) == (
        "info",
        "blog",
        DEPLOYMENT,
        "store",
    )
    assert first["fields"] == {"new": 3}
    assert rows[1]["fields"] == {"path": "é"}
    assert first["time"].endswith("Z")
    when = dt.datetime.fromisoformat(first["time"])
    assert abs(when.timestamp() - time.time()) < 3600  # a real, current UTC time


def test_sinks_from_env_builds_what_is_asked_for() -> None:
    assert sinks_from_env({}) == []
    assert sinks_from_env({"PUSHSITE_LOG_JSON": "0"}) == []
    sinks = sinks_from_env(
        {"PUSHSITE_LOG_JSON": "1", "PUSHSITE_SYSLOG": "tcp://logs.example.com:6514"}
    )
    try:
        assert isinstance(sinks[0], JsonStderrSink)
        assert isinstance(sinks[1], SyslogSink)
        assert (sinks[1].transport, sinks[1].host, sinks[1].port) == (
            "tcp",
            "logs.example.com",
            6514,
        )
    finally:
        for sink in sinks:
            sink.close()


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PUSHSITE_LOG_JSON": "sometimes"}, "sometimes"),
        ({"PUSHSITE_SYSLOG": "syslog://logs.example.com"}, "syslog://logs.example.com"),
    ],
)
def test_sinks_from_env_rejects_bad_values_by_name(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        sinks_from_env(environ)
    assert named in str(info.value)


def test_a_deployment_log_reaches_a_syslog_collector() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    port = receiver.getsockname()[1]
    (sink,) = sinks_from_env({"PUSHSITE_SYSLOG": f"udp://127.0.0.1:{port}"})
    try:
        log = DeployLog(InMemoryLogState(), DEPLOYMENT, "blog", sinks=[sink])
        log.info("activate", "live", url="http://blog.localhost:8000/")
        log.flush()
        message = receiver.recv(65535)
    finally:
        sink.close()
        receiver.close()

    match = re.match(
        rb"<14>1 \S+ \S+ pushsite \d+ activate \[(\S+) (.*?)\] \xef\xbb\xbflive$", message
    )
    assert match, message
    assert match.group(1).decode() == SD_ID
    assert match.group(2).decode() == (
        f'deployment="{DEPLOYMENT}" site="blog" url="http://blog.localhost:8000/"'
    )


def test_logs_land_in_the_real_sqlite_state(tmp_path: Path) -> None:
    state = SqliteState.from_url("sqlite:///" + str(tmp_path / "s.db"))
    try:
        log = DeployLog(state, DEPLOYMENT, "blog", flush_every=3600, flush_lines=2)
        log.info("read", "one", files=1, path=Path("a b"))
        log.info("read", "two")
        log.warning("store", "three", detail='a"b]')
        log.flush()
        lines = state.get_logs(DEPLOYMENT)
        assert [(x.seq, x.level, x.stage, x.message) for x in lines] == [
            (1, "info", "read", "one"),
            (2, "info", "read", "two"),
            (3, "warning", "store", "three"),
        ]
        assert lines[0].fields == {"files": 1, "path": "a b"}
        assert lines[2].fields == {"detail": 'a"b]'}
        assert [x.message for x in state.get_logs(DEPLOYMENT, after=2)] == ["three"]
    finally:
        state.close()
