"""What to build, decided from a tree's top-level files before anything runs.

In order: `pushsite.toml`'s `[build]`; else `netlify.toml`'s `[build]` (people bring it);
else a generator recognised by its files (MkDocs, Hugo, Jekyll, an npm `build` script). A
tree with none of these is deployed as it is. The plan says where it came from, for the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace

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
