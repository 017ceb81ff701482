"""What to build, decided from a tree's top-level files before anything runs.

In order: `pushsite.toml`'s `[build]`; else `netlify.toml`'s `[build]` (people bring it);
else a generator recognised by its files (MkDocs, Hugo, Jekyll, an npm `build` script). A
tree with none of these is deployed as it is. The plan says where it came from, for the log.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from isal import igzip

from pushsite.deploy.siteconfig import (
    BuildSettings,
    SiteSettings,
    parse_netlify_toml,
    parse_pushsite_toml,
)
from pushsite.errors import SiteConfigError

HUGO_CONFIGS = ("hugo.toml", "hugo.yaml", "hugo.yml", "hugo.json")


@dataclass(frozen=True)
class BuildPlan:
    """A build to run: the command, the folders its output may be in (the first that exists
    wins), and the sentence the log opens with."""

    command: str
    publish: tuple[str, ...]
    settings: BuildSettings
    origin: str  # "pushsite.toml [build]", "netlify.toml [build]", "detected mkdocs.yml"

    def describe(self) -> str:
        folders = " or ".join(f"{p}/" for p in self.publish)
        return f"{self.origin}: running `{self.command}`, publishing {folders}"


# read(name) -> the bytes of a top-level file, or None; names: the top-level entries
Reader = Callable[[str], bytes | None]


def plan_build(read: Reader, names: set[str],
               site_settings: SiteSettings | None = None) -> BuildPlan | None:
    """The build a tree asks for, or None (deploy it as it is)."""
    settings = site_settings
    if settings is None and "pushsite.toml" in names:
        data = read("pushsite.toml")
        settings = parse_pushsite_toml(data) if data is not None else None
    build = settings.build if settings else None
    origin = "pushsite.toml [build]"
    if build is None and "netlify.toml" in names:
        data = read("netlify.toml")
        build = parse_netlify_toml(data) if data is not None else None
        origin = "netlify.toml [build]"
    publish_hint = settings.publish if settings else None
    if build is not None and build.command:
        # no publish folder: the whole tree as the build leaves it (Netlify's default)
        publish = build.publish or publish_hint or "."
        return BuildPlan(build.command, (publish,), build, origin)
    detected = _detect(read, names)
    if detected is None:
        return None
    command, folders, origin = detected
    base = build or BuildSettings(source="detected")
    chosen = base.publish or publish_hint
    return BuildPlan(command, (chosen,) if chosen else folders, replace(base, command=command),
                     origin)


def _detect(read: Reader, names: set[str]) -> tuple[str, tuple[str, ...], str] | None:
    if "mkdocs.yml" in names or "mkdocs.yaml" in names:
        name = "mkdocs.yml" if "mkdocs.yml" in names else "mkdocs.yaml"
        return "mkdocs build", ("site",), f"detected {name} (MkDocs)"
    hugo = next((n for n in HUGO_CONFIGS if n in names), None)
    if hugo is None and "config.toml" in names and "content" in names:
        hugo = "config.toml with content/"
    if hugo is not None:
        return "hugo", ("public",), f"detected {hugo} (Hugo)"
    if "_config.yml" in names and ({"Gemfile", "_layouts"} & names):
        return "jekyll build", ("_site",), "detected _config.yml (Jekyll)"
    if "package.json" in names and _has_build_script(read("package.json")):
        install = "npm ci" if "package-lock.json" in names else "npm install"
        return (f"{install} && npm run build", ("dist", "build"),
                "detected package.json with a build script (npm)")
    return None


def _has_build_script(data: bytes | None) -> bool:
    try:
        scripts = json.loads(data or b"{}").get("scripts") or {}
    except (ValueError, AttributeError):
        raise SiteConfigError("package.json is not valid JSON; fix it or add a [build] "
                              "command to pushsite.toml") from None
    return isinstance(scripts, dict) and isinstance(scripts.get("build"), str)


_READ = ("pushsite.toml", "netlify.toml", "package.json")  # the files plan_build reads
_READ_MAX = 1 << 20


def plan_for_bundle(stream: BinaryIO, max_files: int, max_bytes: int
                    ) -> tuple[BuildPlan | None, str]:
    """The build a tar.gz's top-level files ask for, and its one top folder ("" for none),
    in one streamed pass of any size (isal's gunzip, tar headers, and only the few files
    plan_build reads kept: at most 1 MiB each). A bundle over `max_files` members or
    `max_bytes` declared bytes asks for none: the deployer refuses it with its own message.
    Raises tarfile.TarError, EOFError, OSError or zlib.error on a damaged bundle."""
    firsts: set[str] = set()  # first segments (a top-level file or folder each)
    seconds: set[str] = set()  # second segments (what a single top folder holds)
    kept: dict[str, bytes] = {}
    members = total = 0
    with igzip.IGzipFile(fileobj=stream, mode="rb") as gunzipped, \
            tarfile.open(fileobj=gunzipped, mode="r|") as tar:
        for member in tar:
            if member.name == "pax_global_header":
                continue
            members += 1
            total += member.size
            if members > max_files or total > max_bytes:
                return None, ""
            name = member.name.strip("/")
            first, _, rest = name.partition("/")
            firsts.add(first)
            if rest:
                seconds.add(rest.split("/")[0])
            if member.isfile() and name.rpartition("/")[2] in _READ and name.count("/") <= 1:
                handle = tar.extractfile(member)
                if handle is not None:
                    kept[name] = handle.read(_READ_MAX)
    # one folder holding everything, as `git archive --prefix` makes: its contents are the tree
    top = next(iter(firsts)) if len(firsts) == 1 and seconds else ""
    prefix = top + "/" if top else ""
    return plan_build(lambda n: kept.get(prefix + n), seconds if top else firsts), top


def plan_for_folder(folder: Path) -> BuildPlan | None:
    """The build a folder's files ask for (pushsite.toml, netlify.toml, a generator). Here,
    not in build.py, so that a plain folder deploy's warning does not import the sandbox."""
    names = {entry.name for entry in os.scandir(folder)}

    def read(name: str) -> bytes | None:
        path = folder / name
        if path.is_symlink() or not path.is_file():
            return None
        return path.read_bytes()[: 1 << 20]

    return plan_build(read, names)
