"""`make run`: the example site deployed (through the bundle path) on first start, a token, and
`pushsite serve` on 127.0.0.1.

The data lives where every pushsite command puts it: `$PUSHSITE_HOME`, else the per-user
home (config.default_home). The example ships in examples/hello; it is deployed exactly as
`pushsite deploy` would (a tar.gz stream through the deployer), only when its site does not
exist yet: a restart keeps what was pushed since.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from pushsite.config import load_config
from pushsite.deploy.folder import open_folder
from pushsite.errors import NotAuthorized, SiteNotFound
from pushsite.service import Service
from pushsite.web.server import run_server
from pushsite.words import plural

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello"


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _token(service: Service, path: Path) -> str:
    """The `make-run` token, kept (0600) in the home and reused while it is valid: one token
    however often `make run` starts, not a new one for every start."""
    try:
        secret = path.read_text().strip()
        service.check_token(secret)
        return secret
    except (OSError, NotAuthorized):
        pass
    secret = service.create_token("make-run")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret)
    return secret


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--site", default="hello")
    args = parser.parse_args()
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if _port_taken(args.port):  # before anything is deployed or printed
        raise SystemExit(f"error: port {args.port} on 127.0.0.1 is in use; "
                         "choose another with `make run PORT=8001`")
    config = load_config(public_url=f"http://localhost:{args.port}")
    service = Service(config)
    try:
        service.site(args.site)
        console.print(f"site {args.site} exists in {escape(str(config.home))}; "
                      "not deployed again")
    except SiteNotFound:
        service.create_site(args.site)
        deployment = service.accept(args.site, None, message="example site (make run)",
                                    source="make-run", enqueue=False)
        deployment = service.run(deployment.id, bundle=open_folder(EXAMPLE))
        console.print(f"[green]deployed[/] {plural(deployment.files, 'file')} from "
                      f"{EXAMPLE.name} ({deployment.id}) into {escape(str(config.home))}")
    token = _token(service, config.home / "make-run-token")
    service.close()
    console.print(f"site:       [bold]{config.site_url(args.site)}[/]")
    console.print(f"dashboard:  http://127.0.0.1:{args.port}/   (sign in with the token)")
    console.print(f"git remote: git remote add pushsite "
                  f"http://x:{token}@127.0.0.1:{args.port}/{args.site}.git")
    console.print("            git push pushsite main")
    console.print(f"token:      {token}   (kept in {escape(str(config.home))}/make-run-token)")
    run_server(config, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
