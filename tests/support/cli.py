"""`pushsite` as a user runs it: a real subprocess, in a folder of the test's choosing, on the
test's home (PUSHSITE_HOME from the isolated environment unless `env` says otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def pushsite(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
             input: bytes | None = None,
             drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run `pushsite ARGS`; `drop` names environment variables to leave out."""
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in drop}
    return subprocess.run([sys.executable, "-m", "pushsite", *args], cwd=cwd, env=environ,
                          input=input.decode() if input is not None else None,
                          capture_output=True, text=True, timeout=120)


def ok(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`pushsite ARGS`, which must succeed."""
    done = pushsite(*args, **kwargs)
    assert done.returncode == 0, f"pushsite {' '.join(args)}: {done.returncode}\n{done.stderr}"
    return done


def ok_json(*args: str, **kwargs: Any) -> Any:
    """`pushsite ARGS --json`, which must succeed, and the JSON it printed."""
    return json.loads(ok(*args, "--json", **kwargs).stdout)


def create_site(name: str, *args: str, **kwargs: Any) -> None:
    """`pushsite sites create NAME ARGS`: sites are created on purpose before a deploy."""
    ok("sites", "create", name, *args, **kwargs)
