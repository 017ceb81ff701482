"""`pushsite deploy DIR --server URL` in a terminal shows the upload as it goes: bytes sent (of
the total, where known) and the rate (remote.UploadMeter, at most once a second), then the
last figure. Both ways a folder goes: packed and streamed whole to a site that holds nothing
yet (no total: the tar is made as it is sent), and the blobs the server lacks, in batches.

The real CLI runs in a pseudo-terminal against a real `pushsite serve`, through a relay that
lets the upload through at 4 MiB/s: 16 MiB of new files then take four seconds to send
whatever the machine, so the meter must draw more than once before the upload ends.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.proxy import Proxy
from support.servers import Server, serving

RATE = 4 << 20  # bytes a second from the client to the server
FILES, FILE_SIZE = 8, 2 << 20
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_METER = re.compile(r"upload\s+sent (\S+ \S+)(?: of (\S+ \S+))? \((\S+ \S+)/s\)")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("meter") / "home") as srv:
        yield srv


def in_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `args` with a pseudo-terminal (160 columns) as stdin, stdout and stderr; its exit
    code and everything it wrote there, escape sequences removed."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    process = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower,
                               env=env, close_fds=True)
    os.close(follower)
    out = bytearray()
    try:
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child's side of the terminal is closed
                break
            if not data:
                break
            out += data
    finally:
        os.close(leader)
    code = process.wait(timeout=120)
    return code, _ANSI.sub("", out.decode(errors="replace")).replace("\r\n", "\n")


def size(text: str) -> float:
    """human_size's text back to bytes (to the precision it shows)."""
    number, unit = text.split()
    return float(number) * _UNITS[unit]


def test_a_server_deploy_in_a_terminal_shows_bytes_and_rate_while_it_uploads(
        remote: Server, tmp_path: Path) -> None:
    remote.create_site("metered")
    token = remote.new_token("--name", "meter")
    folder = tmp_path / "public"
    (folder / "data").mkdir(parents=True)
    (folder / "index.html").write_text("<h1>metered</h1>")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSITE_")}
    env.update(PUSHSITE_HOME=str(tmp_path / "client-home"), TERM="xterm-256color")
    link = Proxy(remote.port, up_rate=RATE)
    try:
        for first in (True, False):  # the site holds nothing yet, then the folder's old files
            for n in range(FILES):  # random: as big on the wire, compressed or not
                (folder / "data" / f"part{n}.bin").write_bytes(os.urandom(FILE_SIZE))
            code, shown = in_terminal(
                [sys.executable, "-m", "pushsite", "deploy", str(folder), "--site", "metered",
                 "--server", link.url, "--token", token], env)
            assert code == 0, shown
            check_meter(shown, total=None if first else FILES * FILE_SIZE)
    finally:
        link.close()


def check_meter(shown: str, total: int | None) -> None:
    """The meter drew at least twice while sending, rising, each time with a rate, then the
    last figure (all of it), all before the deployment's URLs."""
    meter = [m.groups() for m in _METER.finditer(shown)]
    assert meter, shown
    sent = [size(s) for s, _, _ in meter]
    assert sent == sorted(sent) and sent[-1] >= FILES * FILE_SIZE, shown
    assert len({s for s in sent if s < sent[-1]}) >= 2, shown  # drawn while it uploaded
    assert all(size(rate) > 0 for _, _, rate in meter), shown
    if total is None:
        assert all(of is None for _, of, _ in meter), shown
    else:
        assert {of for _, of, _ in meter} == {meter[-1][1]} and meter[-1][0] == meter[-1][1]
        assert size(meter[-1][1]) >= total, shown
    assert shown.rindex("sent ") < shown.index("metered.localhost"), shown
