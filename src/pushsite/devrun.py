"""`make run`: deploy the example site through the bundle path, make a token, and serve.

The example ships in examples/hello; it is deployed exactly as `pushsite deploy` would (a
tar.gz stream through the deployer), then `pushsite serve` starts on 127.0.0.1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from rich.console import Console

from pushsite.config import load_config
from pushsite.deploy.folder import open_folder
from pushsite.service import Service
from pushsite.web.app import build_app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--site", default="hello")
    args = parser.parse_args()
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    config = load_config(public_url=f"http://localhost:{args.port}")
    service = Service(config)
    deployment = service.accept(args.site, None, message="example site (make run)",
                                source="make-run", enqueue=False)
    deployment = service.run(deployment.id, bundle=open_folder(EXAMPLE))
    token = service.create_token("make-run")
    service.close()
    console.print(f"[green]deployed[/] {deployment.files} files from {EXAMPLE.name} "
                  f"({deployment.id})")
    console.print(f"site:       [bold]http://{args.site}.localhost:{args.port}/[/]")
    console.print(f"dashboard:  http://127.0.0.1:{args.port}/   (sign in with the token)")
    console.print(f"git remote: git remote add pushsite "
                  f"http://x:{token}@127.0.0.1:{args.port}/{args.site}.git")
    console.print("            git push pushsite main")
    console.print(f"token:      {token}   (shown once)")
    app = build_app(config)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
