"""A deployment's log: structured lines kept with the deployment, echoed to the process's sinks.

Lines are buffered and written to the state store in batches, because each state write is a
round trip (and on DynamoDB, paid for): a batch goes when `flush_lines` lines are waiting, or
`flush_every` seconds after the first of them (service/flushing.py's one thread per process),
or when `flush()` is called
(the deployer does so when the deployment ends). Every line also goes at once to each sink:
JSON lines on stderr with PUSHSITE_LOG_JSON=1, a syslog collector with PUSHSITE_SYSLOG=URL.
Nothing here raises into the deployer: when the state store fails, the lines stay buffered
(the newest `max_buffered`), a timer retries, `last_error` holds the error, and stderr gets one
warning per deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from pushsite.errors import ConfigError, DiskFull
from pushsite.model import LogLine
from pushsite.service.flushing import FLUSHER
from pushsite.state import StateStore

LEVELS = ("debug", "info", "warning", "error")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class LogSink(Protocol):
    """Somewhere a line goes as soon as it is logged; shared by every deployment of a process."""

    def emit(self, line: LogLine, site: str) -> None:
        """Take the line; must be quick and must not raise."""

    def close(self) -> None:
        """Deliver what is pending and release resources (at process exit)."""


class DeployLog:
    """A deployment's log: buffered lines written to the state store in batches (state writes
    are costly on DynamoDB), echoed as JSON lines to stderr (when enabled) and to syslog when
    configured. Safe to call from many threads."""

    def __init__(
        self,
        state: StateStore,
        deployment_id: str,
        site: str,
        *,
        sinks: Sequence[LogSink] = (),
        flush_every: float = 0.5,
        flush_lines: int = 200,
        max_buffered: int = 10_000,
        retry_every: float = 1.0,
    ) -> None:
        self.state = state
        self.deployment_id = deployment_id
        self.site = site
        self.sinks = tuple(sinks)
        self.flush_every = flush_every
        self.flush_lines = max(flush_lines, 1)
        self.retry_every = retry_every  # after a failed write, whatever flush_every is
        self.lines_written = 0
        self.lines_dropped = 0  # lost because the state store failed for too long
        self.last_error: Exception | None = None
        self._buffer: deque[LogLine] = deque()
        self._max_buffered = max(max_buffered, 1)
        self._buffer_lock = threading.Lock()  # held briefly: append, swap
        self._flush_lock = threading.Lock()  # held while writing, so batches keep their order
        self._armed: object | None = None  # the pending delayed flush's token, if any
        self._warned = False

    def __enter__(self) -> DeployLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def debug(self, stage: str, message: str, **fields: Any) -> None:
        self.log("debug", stage, message, fields)

    def info(self, stage: str, message: str, **fields: Any) -> None:
        self.log("info", stage, message, fields)

    def warning(self, stage: str, message: str, **fields: Any) -> None:
        self.log("warning", stage, message, fields)

    def error(self, stage: str, message: str, **fields: Any) -> None:
        self.log("error", stage, message, fields)

    def log(self, level: str, stage: str, message: str, fields: Mapping[str, Any]) -> None:
        """Record one line; fields become JSON values (anything else is stored as its str)."""
        if level not in LEVELS:
            level = "info"
        line = LogLine(
            deployment_id=self.deployment_id,
            time=time.time(),
            level=level,
            stage=str(stage),
            message=str(message),
            fields={str(k): _plain(v) for k, v in fields.items()},
        )
        with self._buffer_lock:
            # Sinks see lines in the order the store keeps them.
            for sink in self.sinks:
                with contextlib.suppress(Exception):  # a broken sink must not break a deploy
                    sink.emit(line, self.site)
            if len(self._buffer) >= self._max_buffered:
                self._buffer.popleft()
                self.lines_dropped += 1
            self._buffer.append(line)
            full = len(self._buffer) >= self.flush_lines
            self._arm_timer(self.flush_every)
        if full and self._flush_lock.acquire(blocking=False):
            # A thread that finds a flush under way leaves its lines to that one's successor
            # (the next full buffer, the timer, or the final flush) instead of waiting.
            try:
                self._write_quietly()
            finally:
                self._flush_lock.release()

    def flush(self) -> None:
        """Write buffered lines now (waiting for a write under way); never raises: a failure
        keeps the lines for a retry and sets `last_error`."""
        with self._buffer_lock:
            self._armed = None  # the armed flush finds itself stale and does nothing
        with self._flush_lock:
            self._write_quietly()

    def _on_due(self, token: object) -> None:
        with self._buffer_lock:
            if token is not self._armed:
                return  # flushed meanwhile; a later arming has its own token
            self._armed = None
        with self._flush_lock:
            self._write_quietly()

    def _write_quietly(self) -> None:
        try:
            self._write()
            self.last_error = None
        except Exception as exc:  # a log write must not fail a deployment; kept and retried
            self._note_failure(exc)

    def _write(self) -> None:
        """Write everything buffered as one batch; the caller holds the flush lock."""
        with self._buffer_lock:
            batch = list(self._buffer)
            self._buffer.clear()
        if not batch:
            return
        try:
            self.state.append_logs(batch)
        except BaseException:
            with self._buffer_lock:
                self._buffer.extendleft(reversed(batch))
                while len(self._buffer) > self._max_buffered:
                    self._buffer.popleft()
                    self.lines_dropped += 1
                self._arm_timer(self.retry_every)
            raise
        self.lines_written += len(batch)

    def _arm_timer(self, delay: float) -> None:
        """Make sure buffered lines get written within `delay`; the caller holds the buffer lock."""
        if self._armed is None and self._buffer:
            token = self._armed = object()
            FLUSHER.arm(delay, lambda: self._on_due(token))

    def _note_failure(self, exc: Exception) -> None:
        self.last_error = exc
        # a full disk fails the deployment itself, which says so in one line; its final
        # flush uses the reserve's room (diskspace.py)
        if not self._warned and not isinstance(exc, DiskFull):
            self._warned = True
            stderr_warning(
                f"pushsite: cannot write the log of deployment {self.deployment_id} "
                f"to the state store: {exc}; the lines are kept and retried"
            )


class JsonStderrSink:
    """One JSON object per line on stderr, for log shippers and `journalctl` to pick up."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream  # None: whatever sys.stderr is at the time of writing
        self._lock = threading.Lock()

    def emit(self, line: LogLine, site: str) -> None:
        text = json.dumps(
            {
                "time": format_time(line.time),
                "level": line.level,
                "site": site,
                "deployment": line.deployment_id,
                "stage": line.stage,
                "message": line.message,
                "fields": line.fields,
            },
            ensure_ascii=False,
            separators=(",", ":"),
            default=str,
        )
        stream = self._stream or sys.stderr
        with self._lock:
            try:
                stream.write(text + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # stderr closed or gone: nothing better to do with a log line

    def close(self) -> None:
        pass


def sinks_from_env(environ: Mapping[str, str] = os.environ) -> list[LogSink]:
    """The process-wide sinks the environment asks for: PUSHSITE_LOG_JSON=1, PUSHSITE_SYSLOG=URL.

    Make them once per process, share them across deployments, and close them at exit.
    """
    sinks: list[LogSink] = []
    json_flag = environ.get("PUSHSITE_LOG_JSON", "").strip().lower()
    if json_flag in _TRUE:
        sinks.append(JsonStderrSink())
    elif json_flag not in _FALSE:
        raise ConfigError(
            f"bad PUSHSITE_LOG_JSON {environ['PUSHSITE_LOG_JSON']!r}: "
            "set it to 1 to log JSON lines on stderr, or 0 (or leave it unset) not to"
        )
    syslog_url = environ.get("PUSHSITE_SYSLOG", "").strip()
    if syslog_url:
        from pushsite.service.syslog import (
            SyslogSink,  # only when asked for: it costs start-up time
        )

        sinks.append(SyslogSink.from_url(syslog_url))
    return sinks


def format_time(seconds: float) -> str:
    """RFC 3339 in UTC with microseconds, as log services parse it."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _plain(value: Any) -> Any:
    """A JSON-safe copy of a field value: the state store and the sinks all serialise it."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


def stderr_warning(message: str) -> None:
    """One line on stderr, never raising (a closed stderr must not stop a deploy)."""
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
