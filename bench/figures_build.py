"""Figures 9 (`--only build`, issue 15): builds, against running the generator alone.

9a `build_push_first_to_live`, `build_push_one_page_to_live`: a 1,000-page Hugo site's
   source pushed to `pushsite serve` (checkout, sandbox, `hugo`, deploy), timed from `git
   push` to the first 200 carrying the new text (polled every 10 ms while the push runs: the
   push itself returns later, once its hook has answered); baseline: bare `hugo` on the same
   tree into a fresh output folder, in the same run. `build_overhead_one_page` is the
   difference, run by run (target: at most 0.5 s); `build_overhead_beyond_hugo` subtracts
   the same deployment's own sandboxed `hugo` instead (from its log), which the machine's
   noise touches less; `build_overhead_in_deployment` leaves out the push too. The note
   splits pushsite's time as its log does.
9b `build_cache_warm`: `pushsite deploy DIR --build` of a Hugo site that resizes 24 images
   (Hugo keeps them in resources/_gen, which the build cache saves), with the site's cache
   warm; baseline: the same deploy right after `pushsite cache clear` (cold).
9c `sandbox_start`: the sandbox running `true` (bwrap, namespaces, limits), against
   `sh -c true` without it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import uuid
import zlib
from pathlib import Path

from bench import product
from bench.corpora import scratch_dir
from bench.errors import BenchError
from bench.measure import TreeSampler, alternate, summarize
from bench.report import Figure, figure

PAGES = 1_000
IMAGES = 24
CORPUS = "hugo1000"
_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
        "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
        "GIT_TERMINAL_PROMPT": "0"}
_WORDS = ("static", "sites", "deploy", "atomically", "with", "instant", "rollback", "branch",
          "previews", "and", "a", "searchable", "log", "of", "every", "deployment", "pushed")


def missing() -> str:
    """Why builds cannot be measured here, or ""."""
    for tool, package in (("hugo", "hugo"), ("bwrap", "bubblewrap"), ("git", "git")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install {package})"
    return product.missing_command("serve") or product.missing_command("deploy", option="--build")


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **_ENV},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args[:2])} failed: {done.stderr.strip()[-300:]}")
    return done.stdout


def hugo_site(root: Path, pages: int = PAGES, images: int = 0) -> Path:
    """A plain Hugo site (no theme): `pages` posts of five paragraphs; with `images`, a home
    page that resizes that many 640x640 PNGs (Hugo's resources/_gen cache then matters)."""
    rng = random.Random(15)
    files = {
        "hugo.toml": 'baseURL = "http://example.org/"\ntitle = "Bench"\n'
                     "disableKinds = ['taxonomy', 'term', 'RSS', 'sitemap']\n",
        "layouts/_default/baseof.html": "<!doctype html><html><head><title>{{ .Title }}"
                                        "</title></head><body>{{ block \"main\" . }}{{ end }}"
                                        "</body></html>\n",
        "layouts/_default/single.html": "{{ define \"main\" }}<h1>{{ .Title }}</h1>"
                                        "{{ .Content }}{{ end }}\n",
        "layouts/_default/list.html": "{{ define \"main\" }}<ul>{{ range .Pages }}<li><a "
                                      "href=\"{{ .RelPermalink }}\">{{ .Title }}</a></li>"
                                      "{{ end }}</ul>{{ end }}\n",
        "layouts/index.html": "{{ define \"main\" }}<h1>{{ site.Title }}</h1>"
                              "{{ range resources.Match \"img/*.png\" }}{{ with .Resize "
                              "\"160x\" }}<img src=\"{{ .RelPermalink }}\">{{ end }}{{ end }}"
                              "{{ end }}\n",
        "content/_index.md": "---\ntitle: Home\n---\n",
        "pushsite.toml": "[build]\ncommand = \"hugo\"\npublish = \"public\"\n",
    }
    for n in range(1, pages + 1):
        paragraphs = "\n\n".join(" ".join(rng.choice(_WORDS) for _ in range(60))
                                 for _ in range(5))
        files[f"content/posts/p{n:04d}.md"] = f"---\ntitle: Post {n}\n---\n{paragraphs}\n"
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    for n in range(images):
        target = root / "assets" / "img" / f"i{n:02d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_png(640, 640, n))
    return root


def _png(width: int, height: int, seed: int) -> bytes:
    """Noise as an RGB PNG (written here: no imaging library needed)."""
    rng = random.Random(seed)
    raw = b"".join(b"\0" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1))
            + chunk(b"IEND", b""))


def _bare_hugo(tree: Path) -> float:
    """`hugo` alone on the tree, into a fresh output folder."""
    out = Path(tempfile.mkdtemp(prefix="hugo-out-", dir=scratch_dir()))
    try:
        started = time.monotonic()
        done = subprocess.run(["hugo", "--quiet", "-s", str(tree), "-d", str(out)],
                              capture_output=True, text=True)
        seconds = time.monotonic() - started
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise BenchError(f"hugo failed: {done.stderr.strip()[-300:]}")
    return seconds


class _Pushed:
    """A serve holding the site, and a working clone whose pages are changed and pushed."""

    def __init__(self, repo: Path) -> None:
        self.home = product.fresh_home("build")
        self.server = product.Server(self.home).__enter__()
        self.sampler = TreeSampler(self.server.pid, interval=0.02).__enter__()
        self.server.create_site("bench")
        self.url = (f"http://{self.server.create_token()}@127.0.0.1:{self.server.port}"
                    "/bench.git")
        self.clone = Path(tempfile.mkdtemp(prefix="clone-hugo-", dir=scratch_dir()))
        _git(self.clone, "clone", "-q", str(repo), ".")

    def push_to_live(self, page: int, marker: str) -> float:
        """From `git push` to the first 200 with the new text, polled while the push runs
        (a push waits for its deploy, then for the hook to answer: visitors see it first)."""
        seen: list[float] = []
        poll = threading.Thread(target=lambda: seen.append(self.server.wait_content(
            "bench", f"posts/p{page:04d}/", marker.encode(), 300)))
        started = time.monotonic()
        poll.start()
        try:
            _git(self.clone, "push", "-q", self.url, "HEAD:refs/heads/main")
        finally:
            poll.join()
        if not seen:
            raise BenchError(f"posts/p{page:04d}/ never showed the pushed change")
        return seen[0] - started

    def change(self, page: int) -> str:
        marker = f"bench change {uuid.uuid4().hex}"
        with open(self.clone / "content" / "posts" / f"p{page:04d}.md", "a") as fh:
            fh.write(f"\n{marker}\n")
        _git(self.clone, "commit", "-q", "-am", "one page")
        return marker

    def stages(self) -> dict[str, float]:
        """The last deployment's checkout, build and whole-run seconds, from its log."""
        argv = product.pushsite_argv()
        env = {**os.environ, "PUSHSITE_HOME": str(self.home)}
        listed = subprocess.run([*argv, "deploys", "bench", "--json"], env=env,
                                capture_output=True, text=True).stdout.splitlines()
        if not listed:
            return {}
        latest = json.loads(listed[0])
        log = subprocess.run([*argv, "log", latest["id"]], env=env, capture_output=True,
                             text=True).stdout
        found: dict[str, float] = {}
        for key, pattern in (("checkout", r"prepared the work folder in ([\d.]+)s"),
                             ("build", r"build finished in ([\d.]+)s"),
                             ("run", r"(?:live|ready) in ([\d.]+)s")):
            match = re.search(pattern, log)
            if match:
                found[key] = float(match.group(1))
        return found

    def close(self) -> float:
        self.sampler.__exit__()
        self.server.__exit__()
        product.remove(self.home)
        shutil.rmtree(self.clone, ignore_errors=True)
        return self.sampler.peak_mb


def push_figures(runs: int) -> list[Figure]:
    """9a: first push and one-page pushes of the 1,000-page site, against bare hugo."""
    repo = Path(tempfile.mkdtemp(prefix="hugo1000-", dir=scratch_dir()))
    hugo_site(repo)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "site")
    pushed = _Pushed(repo)
    stages: list[dict[str, float]] = []
    try:
        first = pushed.push_to_live(1, "Post 1")
        first_base = _bare_hugo(pushed.clone)
        ones: list[float] = []
        bases: list[float] = []
        for run in range(runs):  # the subject commits the change; the baseline builds it
            page = 1 + (run * 97) % PAGES
            ones.append(pushed.push_to_live(page, pushed.change(page)))
            stages.append(pushed.stages())
            bases.append(_bare_hugo(pushed.clone))
    finally:
        peak = pushed.close()
        shutil.rmtree(repo, ignore_errors=True)
    overheads = [one - base for one, base in zip(ones, bases, strict=True)]
    # the same run's own sandboxed hugo (its log): less noisy than a separate bare run
    beyond = [one - s["build"] for one, s in zip(ones, stages, strict=True) if "build" in s]
    inside = [s["run"] - s["build"] for s in stages if "build" in s and "run" in s]

    def median(key: str) -> float:
        values = [s[key] for s in stages if key in s]
        return summarize(values).median if values else float("nan")

    split = (f"pushsite's run (median): checkout {median('checkout'):.2f} s, sandboxed hugo "
             f"{median('build'):.2f} s, whole deployment {median('run'):.2f} s")
    common = {"baseline_name": "bare hugo on the same tree", "peak_rss_mb": peak}
    return [
        figure("build_push_first_to_live", CORPUS, summarize([first]), "s",
               baseline=summarize([first_base]), note="one run: a fresh server's first push",
               **common),  # type: ignore[arg-type]
        figure("build_push_one_page_to_live", CORPUS, summarize(ones), "s",
               baseline=summarize(bases), note=split, **common),  # type: ignore[arg-type]
        figure("build_overhead_one_page", CORPUS, summarize(overheads), "s", target=0.5,
               target_of="value", target_op="<=",
               note="push-to-live minus bare hugo, run by run"),
        figure("build_overhead_beyond_hugo", CORPUS, summarize(beyond or [float("nan")]), "s",
               target=0.5, target_of="value", target_op="<=",
               note="push-to-live minus the same deployment's sandboxed hugo (its log's "
                    "'build finished in'), run by run"),
        figure("build_overhead_in_deployment", CORPUS, summarize(inside or [float("nan")]),
               "s", target=0.5, target_of="value", target_op="<=",
               note="the deployment's own time (its log's 'live in') minus its sandboxed hugo: "
                    "checkout, build cache, sandbox, deploy of the output, aliases"),
    ]  # fmt: skip


def cache_figures(runs: int) -> list[Figure]:
    """9b: `deploy --build` with the build cache warm, against cold (after cache clear)."""
    tree = hugo_site(Path(tempfile.mkdtemp(prefix="hugo-images-", dir=scratch_dir())),
                     pages=50, images=IMAGES)
    home = product.fresh_home("build-cache")
    env = {**os.environ, "PUSHSITE_HOME": str(home)}
    argv = product.pushsite_argv()

    def deploy() -> float:
        started = time.monotonic()
        done = subprocess.run([*argv, "deploy", str(tree), "--site", "cached", "--create",
                               "--build", "--json"], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"deploy --build failed: {done.stderr.strip()[-300:]}")
        return time.monotonic() - started

    def cold() -> float:
        subprocess.run([*argv, "cache", "clear", "cached"], env=env, capture_output=True,
                       check=False)
        return deploy()

    try:
        deploy()  # the site exists and its cache is warm before the first pair
        warm, colds = alternate(deploy, cold, runs)
    finally:
        product.remove(home)
        shutil.rmtree(tree, ignore_errors=True)
    return [figure("build_cache_warm", f"hugo50+{IMAGES}img", summarize(warm), "s",
                   baseline=summarize(colds), baseline_name="the same with the cache cleared",
                   note=f"pushsite deploy --build; Hugo resizes {IMAGES} images, kept in "
                        "resources/_gen by the build cache")]


def sandbox_figures(runs: int) -> list[Figure]:
    """9c: the sandbox's start-up cost."""
    from pushsite.deploy.build import WorkFolder
    from pushsite.deploy.sandbox import Sandbox, run_sandboxed

    work = WorkFolder()  # where builds run: reachable by the sandbox's user
    work.hand_over()
    box = Sandbox(work.src, "true", scratch=work.path / "etc")
    count = max(runs, 10)

    def sandboxed() -> float:
        started = time.monotonic()
        status = run_sandboxed(box, lambda line: None, lambda: None)
        if status != 0:
            raise BenchError(f"the sandbox ran `true` with status {status}")
        return time.monotonic() - started

    def bare() -> float:
        started = time.monotonic()
        subprocess.run(["sh", "-c", "true"], check=True)
        return time.monotonic() - started

    try:
        inside, outside = alternate(sandboxed, bare, count)
    finally:
        work.remove()
    return [figure("sandbox_start", "-", summarize(inside), "s", baseline=summarize(outside),
                   baseline_name="sh -c true without it",
                   note=f"{count} runs each; bwrap with its namespaces and prlimit")]
