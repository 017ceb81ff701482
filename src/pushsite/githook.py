"""The post-receive hook of every site repository: hand the push to the server, echo progress.

It runs inside `git receive-pack`, which `pushsite serve` started through `git http-backend`,
so the server's address and a per-process secret arrive in the environment. Only the standard
library is imported: the hook's start-up time is part of every push's latency. Whatever
happens, the push itself stands (the commits are stored); the hook only reports.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request


def main() -> None:
    updates = [line.split() for line in sys.stdin.read().splitlines() if line.strip()]
    url = os.environ.get("PUSHSITE_HOOK_URL")
    if not url:
        print("pushsite: this repository was pushed outside `pushsite serve`; not deployed")
        return
    site = os.path.basename(os.path.abspath(os.environ.get("GIT_DIR", "."))).removesuffix(".git")
    body = json.dumps({"site": site, "updates": updates}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json",
        "X-Pushsite-Hook-Secret": os.environ.get("PUSHSITE_HOOK_SECRET", ""),
    })
    try:
        with urllib.request.urlopen(request, timeout=3600) as response:
            for raw in response:
                sys.stdout.write(raw.decode("utf-8", "replace"))
                sys.stdout.flush()
    except (urllib.error.URLError, OSError) as exc:
        print(f"pushsite: could not reach the server to deploy ({exc}); the commits are stored,"
              " the site was not updated")


if __name__ == "__main__":
    main()
