"""The systemd unit `pushsite systemd-unit` prints: `pushsite serve` as a system service.

Restarted on failure; stopped with SIGTERM (the server finishes what it is answering; a
deployment cut short is taken over through its lease at the next start); with `--tls-cert`,
`systemctl reload` sends SIGHUP, which reloads the certificate (web/certificates.py). The
data lives in one folder (StateDirectory), the only one the service may write besides /tmp.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Unit:
    command: tuple[str, ...]  # how to run pushsite, e.g. ("/opt/pushsite/bin/pushsite",)
    serve_args: tuple[str, ...]  # the options of `pushsite serve`
    user: str = "pushsite"
    home: str = "/var/lib/pushsite"


def render(unit: Unit) -> str:
    exec_start = shlex.join((*unit.command, "serve", *unit.serve_args))
    state_dir = unit.home.removeprefix("/var/lib/") if unit.home.startswith("/var/lib/") else ""
    state_line = f"StateDirectory={state_dir}\n" if state_dir else ""
    # SIGHUP reloads the certificate; without one it would end the server
    reload_line = "ExecReload=/bin/kill -HUP $MAINPID\n" if "--tls-cert" in unit.serve_args else ""
    return f"""\
# pushsite under systemd (made by `pushsite systemd-unit`).
# Install: save as /etc/systemd/system/pushsite.service, create the user
#   (useradd --system --home {unit.home} {unit.user}), then
#   systemctl daemon-reload && systemctl enable --now pushsite
# Logs: journalctl -u pushsite. With --tls-cert, `systemctl reload pushsite` loads a
# renewed certificate.
[Unit]
Description=pushsite: git push static site deploys
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={unit.user}
Group={unit.user}
Environment=PUSHSITE_HOME={unit.home}
{state_line}WorkingDirectory={unit.home}
ExecStart={exec_start}
{reload_line}Restart=on-failure
RestartSec=2
KillSignal=SIGTERM
TimeoutStopSec=30
# hardening that leaves builds (bubblewrap's user namespaces) working
NoNewPrivileges=true
PrivateTmp=true
ProtectSystem=strict
ProtectHome=true
ReadWritePaths={unit.home}
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""
