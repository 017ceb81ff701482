"""Linked folders: `pushsite link SITE` writes `site = "SITE"` into a folder's pushsite.toml,
and commands run in that folder (or below it) deploy to and show that site without `--site`,
as netlify-cli's and wrangler's project folders do.

The link lives in the file users already keep for the site's settings (production branch,
publish folder, build), so one file says what the folder is and where it goes.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pushsite.errors import SiteConfigError
from pushsite.names import check_site_name

FILE = "pushsite.toml"
_SITE_LINE = re.compile(r"^\s*site\s*=.*$", re.MULTILINE)
_TABLE = re.compile(r"^\s*\[", re.MULTILINE)


@dataclass(frozen=True)
class Linked:
    """A folder linked to a site: where its pushsite.toml is, and the site it names."""

    folder: Path
    site: str

    @property
    def file(self) -> Path:
        return self.folder / FILE


def find_link(start: Path) -> Linked | None:
    """The nearest pushsite.toml at or above `start` that names a site, or None."""
    for folder in (start.resolve(), *start.resolve().parents):
        path = folder / FILE
        if not path.is_file():
            continue
        site = _site_of(path)
        if site is not None:
            return Linked(folder, site)
    return None


def write_link(folder: Path, site: str) -> Linked:
    """Write `site = "SITE"` into folder/pushsite.toml, creating the file or replacing the
    line it had; every other line stays as it was."""
    check_site_name(site)
    path = folder / FILE
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    line = f'site = "{site}"'
    if _site_line(text) is not None:
        text = _SITE_LINE.sub(line, text, count=1)
    else:  # top-level keys go before the first [table]
        table = _TABLE.search(text)
        at = table.start() if table else len(text)
        head = text[:at]
        if head and not head.endswith("\n"):
            head += "\n"
        text = head + line + "\n" + text[at:]
    _parse(text, path)  # never leave a file that no longer parses
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return Linked(folder.resolve(), site)


def _site_line(text: str) -> re.Match[str] | None:
    """The top-level `site = ...` line (one inside a [table] is not the link)."""
    table = _TABLE.search(text)
    found = _SITE_LINE.search(text)
    if found is None or (table is not None and found.start() > table.start()):
        return None
    return found


def _site_of(path: Path) -> str | None:
    value = _parse(path.read_text(encoding="utf-8"), path).get("site")
    if value is None:
        return None
    if not isinstance(value, str):
        raise SiteConfigError(f"{path}: site must be a string, found {value!r}")
    return check_site_name(value)


def _parse(text: str, path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SiteConfigError(f"{path}: {exc}; check the TOML syntax") from None
