"""Secrets shared by every process of one home: made once, whole, and the same for all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pushsite.secretfile import shared_secret


def test_made_once_with_mode_0600_then_reused(tmp_path: Path) -> None:
    first = shared_secret(tmp_path / "home" / "s", 16)
    assert len(first) == 32 and int(first, 16) >= 0
    assert shared_secret(tmp_path / "home" / "s", 16) == first
    assert (tmp_path / "home" / "s").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["s"]  # no temporary left


def test_an_empty_secret_file_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("")
    with pytest.raises(RuntimeError, match="delete it and restart"):
        shared_secret(tmp_path / "s", 16)


def test_processes_starting_together_all_read_the_same_whole_secret(tmp_path: Path) -> None:
    """As a new `serve`'s HTTP processes do: whoever loses the race reads the winner's."""
    go = tmp_path / "go"
    code = (
        "import sys, time, pathlib\n"
        "from pushsite.secretfile import shared_secret\n"
        "root, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
        "while not go.exists(): time.sleep(0.001)\n"
        "print(' '.join(shared_secret(root / f'{n}' / 'secret', 16) for n in range(40)))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    go.touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err.decode()[-300:] for _, err in outputs]
    seen = {out.decode().split()[n] for out, _ in outputs for n in range(40)}
    assert len(seen) == 40  # one secret per path, whichever process made it
