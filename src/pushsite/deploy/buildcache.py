"""The build cache: the generator's caches (Hugo's `resources/_gen`, `.jekyll-cache`,
`node_modules`, `.cache`) and `[build] cache` folders, kept per site and branch under
`$PUSHSITE_HOME/build-cache/<site>/<branch label>/`, restored into the work folder before a
build (the branch's, else the production branch's) and saved after a successful one.

What a build leaves is untrusted: only real folders inside the tree are saved (a cache path
that is, or passes through, a symbolic link is skipped: `ln -s /var/lib/pushsite .cache`
would otherwise copy the server's files into the next build), links inside are kept as links,
never followed. A site's caches together stay under `max_bytes`: the oldest branches' go
first, and a cache larger than the whole allowance is not kept.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pushsite.deploy.detect import BuildPlan
from pushsite.deploy.sandbox import folder_bytes
from pushsite.limits import human_size

MAX_BYTES = 2 << 30  # per site, all branches together
DEFAULTS = {"hugo": ("resources/_gen",), "jekyll": (".jekyll-cache",),
            "npm": ("node_modules",)}


def cache_paths(plan: BuildPlan) -> tuple[str, ...]:
    """The folders kept between builds: the generator's, `.cache`, and `[build] cache`."""
    words = plan.command.split()
    found: list[str] = [".cache"]
    for tool, paths in DEFAULTS.items():
        if tool in words:
            found += paths
    found += plan.settings.cache
    return tuple(dict.fromkeys(found))


def _real_folder(tree: Path, rel: str) -> Path | None:
    """tree/rel when it and every folder on the way are real folders (no links)."""
    parts = Path(rel).parts
    if not parts or ".." in parts:
        return None
    for i in range(len(parts)):
        step = tree.joinpath(*parts[: i + 1])
        if step.is_symlink() or not step.is_dir():
            return None
    return tree.joinpath(*parts)


class BuildCache:
    """One site's caches on this machine."""

    def __init__(self, root: Path, site: str, max_bytes: int = MAX_BYTES) -> None:
        self.site_root = root / site
        self.max_bytes = max_bytes

    def restore(self, tree: Path, labels: tuple[str, ...], paths: tuple[str, ...]) -> str:
        """Copy the first of `labels`' caches that exists into the tree; what was done."""
        for label in labels:
            saved = self.site_root / label
            if not saved.is_dir():
                continue
            restored = []
            for rel in paths:
                source = _real_folder(saved, rel)
                if source is None:
                    continue
                target = tree / rel
                if target.is_symlink() or target.exists():
                    continue  # the tree's own files win
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(source, target, symlinks=True)
                restored.append(rel)
            os.utime(saved)
            if restored:
                return (f"restored the build cache of {label} ({', '.join(restored)}, "
                        f"{human_size(folder_bytes(saved, 1 << 62))})")
        return "no build cache yet"

    def save(self, tree: Path, label: str, paths: tuple[str, ...]) -> str:
        """Keep the tree's cache folders as `label`'s cache (replacing it); what was done."""
        kept = []
        staging = self.site_root / f".{label}.{os.getpid()}.{time.monotonic_ns()}"
        skipped = []
        for rel in paths:
            source = _real_folder(tree, rel)
            if source is None:
                if (tree / rel).is_symlink():
                    skipped.append(rel)
                continue
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, target, symlinks=True)
            kept.append(rel)
        note = f"; not kept (a link): {', '.join(skipped)}" if skipped else ""
        if not kept:
            shutil.rmtree(staging, ignore_errors=True)
            return "nothing to cache" + note
        size = folder_bytes(staging, self.max_bytes)
        final = self.site_root / label
        if size > self.max_bytes:
            shutil.rmtree(staging, ignore_errors=True)
            return f"the build cache is over {human_size(self.max_bytes)}; not kept" + note
        old = self.site_root / f".{label}.old.{os.getpid()}.{time.monotonic_ns()}"
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        self._trim(keep=final)
        return f"saved the build cache of {label} ({', '.join(kept)}, {human_size(size)})" + note

    def _trim(self, keep: Path) -> None:
        """Drop the least recently used branches' caches until the site's fit."""
        caches = sorted((p for p in self.site_root.iterdir()
                         if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.stat().st_mtime)
        sizes = {p: folder_bytes(p, 1 << 62) for p in caches}
        total = sum(sizes.values())
        for path in caches:
            if total <= self.max_bytes:
                break
            if path != keep:
                shutil.rmtree(path, ignore_errors=True)
                total -= sizes[path]

    def clear(self) -> int:
        """Remove every cache of the site; how many branches' there were."""
        if not self.site_root.exists():
            return 0
        count = sum(1 for p in self.site_root.iterdir() if not p.name.startswith("."))
        shutil.rmtree(self.site_root, ignore_errors=True)
        return count
