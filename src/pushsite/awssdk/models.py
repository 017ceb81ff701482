"""botocore's model files, parsed once per version and then read back as marshal files.

Why: every new botocore client parses ~3 MB of JSON (the endpoints file, the service model and
its endpoint rules) and lists the ~450 service folders twice, a few stats each: ~50 ms of CPU,
the same in every process, and an eighth of a one-file deploy to S3 from CI (figure 5).

The parsed data is kept under the user's cache folder ($XDG_CACHE_HOME or ~/.cache, then
pushsite/botocore), named after the source file's path, size and mtime (folders: the search
paths and their mtimes) and the marshal format, so upgrading botocore or Python is a miss and
never a stale hit. A cache that cannot be read or written (a read-only home on Lambda) is
passed over: botocore then parses its JSON as usual.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore
from botocore.loaders import JSONFileLoader, Loader
from botocore.session import Session

_EXTENSIONS = (".json", ".json.gz")  # the ones botocore's JSONFileLoader tries, in its order
_FORMAT = f"{marshal.version}-{sys.version_info[0]}.{sys.version_info[1]}"


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pushsite" / "botocore"


def _plain(value: Any) -> Any:
    """botocore's OrderedDicts as dicts (marshal knows only built-in types; order is kept)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


class _Cache:
    """Marshal files in one folder, named by a digest of what their content depends on."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get_or_make(self, parts: list[str], make: Callable[[], Any]) -> Any:
        name = hashlib.sha256("\0".join([_FORMAT, *parts]).encode()).hexdigest()[:32]
        path = self.folder / name
        try:
            return marshal.loads(path.read_bytes())
        except (OSError, ValueError, EOFError, TypeError):
            pass
        value = make()
        if value is not None:
            self._write(path, marshal.dumps(_plain(value)))
        return value

    def _write(self, path: Path, data: bytes) -> None:
        """Atomically (a concurrent reader sees the whole file or none); errors are ignored."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".part-")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except OSError:
            return


def _stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:-"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


class MarshalFileLoader(JSONFileLoader):
    """botocore's JSON file loader, with each parsed file kept in the cache."""

    def __init__(self, cache: _Cache) -> None:
        self._cache = cache

    def load_file(self, file_path: str) -> Any:
        for ext in _EXTENSIONS:
            source = file_path + ext
            if os.path.isfile(source):
                return self._cache.get_or_make([_stamp(source)],
                                               lambda: JSONFileLoader.load_file(self, file_path))
        return None


class CachedLoader(Loader):
    """botocore's loader whose service listing and files come from the cache."""

    def __init__(self, cache: _Cache, extra_search_paths: list[str] | None = None) -> None:
        super().__init__(extra_search_paths=extra_search_paths,
                         file_loader=MarshalFileLoader(cache))
        self._listing_cache = cache
        self._listings: dict[str, list[str]] = {}

    def list_available_services(self, type_name: str) -> list[str]:
        if type_name not in self._listings:
            parts = ["services", botocore.__version__, type_name,
                     *(_stamp(path) for path in self.search_paths)]
            self._listings[type_name] = self._listing_cache.get_or_make(
                parts, lambda: Loader.list_available_services(self, type_name))
        return self._listings[type_name]


def session() -> Session:
    """A fresh botocore session (the default one is not thread-safe) with the cached loader;
    AWS_DATA_PATH is honoured as botocore's own loader does."""
    fresh = Session()
    extra = fresh.get_config_variable("data_path")
    paths = ([os.path.expanduser(os.path.expandvars(p)) for p in extra.split(os.pathsep)]
             if extra else None)
    fresh.register_component("data_loader", CachedLoader(_Cache(cache_folder()), paths))
    return fresh
