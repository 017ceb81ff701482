"""Screenshots of the dashboard for the README, made from a real server, not by hand.

Starts `pushsite serve` in a temporary home, pushes a small demo site with git (a few
versions, a branch preview and one failing deploy), signs in with Playwright driving Debian's
chromium, and writes docs/screenshots/*.png.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--hide-scrollbars"]
GIT_ENV = {"GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.com",
           "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.com",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
PAGE = "<!doctype html><title>{title}</title><h1>{title}</h1><p>{body}</p>"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def commit(repo: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def push(repo: Path, remote: str, ref: str) -> None:
    done = subprocess.run(["git", "push", "-q", remote, ref], cwd=repo, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"git push failed: {done.stderr}")


def demo_pushes(root: Path, remote: str) -> None:
    """A small site with a history worth looking at."""
    repo = root / "blog"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    posts = {f"posts/{n}.html": PAGE.format(title=f"Post {n}", body="Lorem ipsum. " * 40)
             for n in range(12)}
    commit(repo, {"index.html": PAGE.format(title="My blog", body="Hello."), **posts,
                  "style.css": "body{font-family:sans-serif;max-width:40em;margin:auto}" * 5},
           "First version of the blog")
    push(repo, remote, "main")
    commit(repo, {"posts/12.html": PAGE.format(title="Post 12", body="New post. " * 30)},
           "Add a post about atomic deploys")
    push(repo, remote, "main")
    git(repo, "checkout", "-q", "-b", "redesign")
    commit(repo, {"style.css": "body{font-family:serif;max-width:42em;margin:auto}" * 5},
           "Try a serif layout")
    push(repo, remote, "redesign")
    git(repo, "checkout", "-q", "main")
    commit(repo, {"_redirects": "/old /new 999\n"}, "Redirect the old page")
    push(repo, remote, "main")
    commit(repo, {"_redirects": "/old /posts/1 301\n",
                  "about.html": PAGE.format(title="About", body="Who writes this.")},
           "Fix the redirect, add an about page")
    push(repo, remote, "main")
    docs = root / "docs"
    docs.mkdir()
    git(docs, "init", "-q", "-b", "main")
    commit(docs, {"index.html": PAGE.format(title="Docs", body="Read me.")}, "Docs skeleton")
    push(docs, remote.replace("/blog.git", "/docs.git"), "main")


def shoot(page: Page, out: Path, name: str) -> None:
    page.wait_for_load_state("networkidle")
    path = out / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"{path} ({path.stat().st_size // 1024} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        port = free_port()
        env = {**os.environ, **GIT_ENV, "PUSHSITE_HOME": str(root / "home"),
               "HOME": str(root)}
        os.environ.update({k: v for k, v in env.items() if k in GIT_ENV or k == "HOME"})
        server = subprocess.Popen([sys.executable, "-m", "pushsite", "serve", "--host",
                                   "127.0.0.1", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            token = subprocess.run([sys.executable, "-m", "pushsite", "tokens", "create",
                                    "--name", "ada"], env=env, capture_output=True, text=True,
                                   check=True).stdout.strip()
            for site in ("blog", "docs"):  # pushes go only to sites created on purpose
                subprocess.run([sys.executable, "-m", "pushsite", "sites", "create", site],
                               env=env, capture_output=True, check=True)
            demo_pushes(root, f"http://x:{token}@127.0.0.1:{port}/blog.git")
            take_pictures(base, token, out)
        finally:
            server.terminate()
            server.wait(10)


def take_pictures(base: str, token: str, out: Path) -> None:
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 820})
            page = context.new_page()
            page.goto("/login")
            shoot(page, out, "sign-in")
            page.get_by_label("Token").fill(token)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("heading", name="Sites").wait_for()
            shoot(page, out, "sites")
            page.goto("/sites/blog")
            shoot(page, out, "site")
            rows = page.locator("table.deployments tbody tr")
            rows.nth(0).get_by_role("link").click()
            shoot(page, out, "deployment")
            page.goto("/sites/blog")
            page.locator("table.deployments tbody tr .badge-failed").first.locator(
                "xpath=ancestor::tr").get_by_role("link").click()
            shoot(page, out, "deployment-failed")
            page.goto("/sites/blog/search?q=redirects")
            shoot(page, out, "search")
            phone = browser.new_context(base_url=base, viewport={"width": 390, "height": 844},
                                        storage_state=context.storage_state())
            small = phone.new_page()
            small.goto("/sites/blog")
            small.evaluate("document.getElementById('deps-h').scrollIntoView()")
            shoot(small, out, "site-phone")
        finally:
            browser.close()


if __name__ == "__main__":
    main()
