"""README's tour, command by command, as a user runs it: from their own site's folder (not
the checkout) against a temporary home, with a real `pushsite serve` on it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support.readme import block
from support.servers import start_server
from support.sites import write_files

_ID = re.compile(r"deployment ([0-9a-z]{26})")


def tour() -> list[str]:
    """The commands of README's "A short tour" block (comments dropped)."""
    return list(block("A short tour").commands)


def test_the_tour_works_from_a_folder_that_is_not_the_checkout(tmp_path: Path) -> None:
    home = Path(os.environ["PUSHSITE_HOME"])
    folder = write_files(tmp_path / "my-blog", {"public/index.html": "<h1>tour</h1>"})
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("DISPLAY", None)
    commands = tour()
    assert commands[0] == "pushsite serve &" and "pushsite sites create blog" in commands
    server = start_server(home)  # the tour's `pushsite serve &`, on a free port
    last_id = ""
    try:
        for command in commands[1:]:
            command = command.replace("<deployment-id>", last_id)
            done = subprocess.run(command, shell=True, cwd=folder, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{command}: {done.stderr}"
            found = _ID.findall(done.stderr)
            last_id = found[-1] if found else last_id
            if command == "pushsite status":
                assert f"127.0.0.1:{server.port}" in done.stdout and "blog" in done.stdout
        assert server.get(f"blog.localhost:{server.port}").text == "<h1>tour</h1>"
    finally:
        server.stop()
    assert not (folder / ".pushsite").exists()
    assert (folder / "pushsite.toml").read_text() == 'publish = "public"\nsite = "blog"\n'
