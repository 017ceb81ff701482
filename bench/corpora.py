"""Corpora: real static sites nobody here wrote, plus synthetic extremes, cached outside the repo.

Real sites come from Debian documentation packages (`apt-get download` + `dpkg-deb -x`). Each is
committed to its own git repository (fixed author and date, so the commit id is stable) and
bundled with `git archive`, which gives exactly what a git host serves: one top folder and a pax
global header carrying the commit id. The git repositories also serve the `git push` figures.
Synthetic bundles (a 500 MB incompressible file; 100,000 tiny files) are written with `tarfile`
in PAX format with the same kind of global header.

Everything lives under `$PUSHSITE_BENCH_CACHE` (default `~/.cache/pushsite-bench`) and is built
once; a finished corpus is marked by a `.done` file so an interrupted build starts over.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import isal.igzip

from bench.errors import BenchError

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    # no background `gc --auto` after a commit: _pack's own gc met it ("gc is already
    # running") while the large corpus was built
    "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": "gc.auto",
    "GIT_CONFIG_VALUE_0": "0",
}


@dataclass(frozen=True)
class DebSite:
    """One HTML site shipped by a Debian package: the package and the folder inside it."""

    package: str
    html_dir: str
    mount: str  # sub-folder of the corpus it goes to ("" = the root)


@dataclass(frozen=True)
class CorpusSpec:
    """How to build a corpus; `small` corpora are the ones `--small` runs."""

    name: str
    small: bool
    kind: str  # "debian" | "bigbin" | "tiny"
    sites: tuple[DebSite, ...] = ()


@dataclass(frozen=True)
class Corpus:
    """A built corpus: its bundle, and for real sites the git repository it came from."""

    name: str
    small: bool
    bundle: Path
    repo: Path | None
    change_path: str  # a site-relative HTML file the incremental figures edit
    files: int
    content_bytes: int


_PG = DebSite("postgresql-doc-15", "usr/share/doc/postgresql-doc-15/html", "")
_PY = DebSite("python3.11-doc", "usr/share/doc/python3.11/html", "")
_RUST = DebSite("rust-doc", "usr/share/doc/rust-doc/html", "rust")
_GIT = DebSite("git-doc", "usr/share/doc/git-doc", "git")

SPECS: dict[str, CorpusSpec] = {
    "small": CorpusSpec("small", True, "debian", (_PG,)),
    "medium": CorpusSpec("medium", True, "debian", (_PY,)),
    "large": CorpusSpec(
        "large",
        False,
        "debian",
        (
            _RUST,
            DebSite(_PY.package, _PY.html_dir, "python"),
            DebSite(_PG.package, _PG.html_dir, "postgresql"),
            _GIT,
        ),
    ),
    "bigbin": CorpusSpec("bigbin", False, "bigbin"),
    "tiny100k": CorpusSpec("tiny100k", False, "tiny"),
    "tiny200k": CorpusSpec("tiny200k", False, "tiny"),  # the file limit (issue 20)
}

BIGBIN_BYTES = 500 * 1024 * 1024
TINY_FILES = 100_000


def cache_dir() -> Path:
    """The cache root; outside the repository so corpora never land in a commit."""
    root = Path(os.environ.get("PUSHSITE_BENCH_CACHE", "~/.cache/pushsite-bench")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def scratch_dir() -> Path:
    """A scratch folder on the same disk as the cache, for extractions and stores."""
    path = cache_dir() / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(
            f"Command {' '.join(cmd)!r} failed with exit {proc.returncode}: "
            f"{proc.stderr.strip()[-500:]}; fix the cause and run the benchmark again."
        )
    return proc.stdout


def _fetch_deb(package: str) -> Path:
    """Download and unpack one Debian package into the cache (once)."""
    root = cache_dir() / "debs" / package
    done = root / ".done"
    if done.exists():
        return root / "x"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        _run(["apt-get", "download", package], cwd=root)
    except BenchError:
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "download", package], cwd=root)
    (deb,) = root.glob("*.deb")
    _run(["dpkg-deb", "-x", str(deb), str(root / "x")])
    deb.unlink()
    done.touch()
    return root / "x"


def _copy_site(site: DebSite, dest: Path) -> None:
    src = _fetch_deb(site.package) / site.html_dir
    if not src.is_dir():
        raise BenchError(f"Package {site.package} has no folder {site.html_dir}; pick another.")
    target = dest / site.mount if site.mount else dest
    shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
    # Debian ships many docs gzipped (foo.html.gz); a web host would get them plain.
    for gz in list(target.rglob("*.gz")):
        if gz.is_file() and not gz.is_symlink():
            plain = gz.with_suffix("")
            if not plain.exists():
                with isal.igzip.open(gz, "rb") as fin, open(plain, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                gz.unlink()


def _git(repo: Path, *args: str) -> str:
    return _run(["git", *args], cwd=repo, env=_GIT_ENV)


def _pack(repo: Path) -> None:
    """Pack the repository, as any real one is, so pushes reuse compressed objects."""
    if not any((repo / ".git" / "objects" / "pack").glob("*.pack")):
        _git(repo, "gc", "-q")


def _pick_change_path(tree: Path) -> str:
    """A stable, middle-sized HTML file to edit in the incremental figures."""
    pages = sorted(p for p in tree.rglob("*.html") if p.is_file() and not p.is_symlink())
    if not pages:
        raise BenchError(f"No HTML file under {tree}; the corpus cannot be edited.")
    pages.sort(key=lambda p: (p.stat().st_size, str(p)))
    return str(pages[len(pages) // 2].relative_to(tree))


def _count(tree: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(tree):
        if ".git" in Path(dirpath).parts:
            continue
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                files += 1
                size += path.stat().st_size
    return files, size


def _build_debian(spec: CorpusSpec, root: Path) -> Corpus:
    repo = root / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    for site in spec.sites:
        _copy_site(site, repo)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "core.bigFileThreshold", "16m")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", f"{spec.name} corpus")
    _pack(repo)
    bundle = root / f"{spec.name}.tar.gz"
    _git(repo, "archive", "--format=tar.gz", f"--prefix={spec.name}/", "-o", str(bundle), "HEAD")
    files, size = _count(repo)
    return Corpus(spec.name, spec.small, bundle, repo, _pick_change_path(repo), files, size)


def _commit_id(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


class _Writer:
    """A PAX tar.gz written as a stream, with a git-like global header (a fake commit id)."""

    def __init__(self, path: Path, seed: str) -> None:
        self.raw = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.gz = isal.igzip.IGzipFile(fileobj=self.raw, mode="wb", compresslevel=2, mtime=0)
        headers = {"comment": _commit_id(seed)}
        self.tar = tarfile.open(  # noqa: SIM115 - closed in close()
            fileobj=self.gz, mode="w|", format=tarfile.PAX_FORMAT, pax_headers=headers
        )

    def close(self) -> None:
        """Close all three layers in order: the tar end marker, the gzip trailer, the file."""
        self.tar.close()
        self.gz.close()
        self.raw.close()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 1704067200
    tar.addfile(info, io.BytesIO(data))


class _RandomReader(io.RawIOBase):
    """Incompressible bytes, produced as they are read so memory stays flat."""

    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self._left)
        buf[:n] = os.urandom(n)
        self._left -= n
        return n


def _build_bigbin(root: Path) -> Corpus:
    """One 500 MB random `.jpg` among the small corpus's HTML."""
    small = get("small")
    assert small.repo is not None
    bundle = root / "bigbin.tar.gz"
    writer = _Writer(bundle, "bigbin")
    tar = writer.tar
    files, size = 0, 0
    for path in sorted(small.repo.rglob("*")):
        if ".git" in path.parts or not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        _add_bytes(tar, f"bigbin/{path.relative_to(small.repo)}", data)
        files, size = files + 1, size + len(data)
    info = tarfile.TarInfo("bigbin/media/big.jpg")
    info.size, info.mode, info.mtime = BIGBIN_BYTES, 0o644, 1704067200
    tar.addfile(info, io.BufferedReader(_RandomReader(BIGBIN_BYTES), 1 << 20))
    writer.close()
    return Corpus("bigbin", False, bundle, None, small.change_path, files + 1, size + BIGBIN_BYTES)


def tiny_entries(variant: str, count: int = TINY_FILES) -> Iterator[tuple[str, bytes]]:
    """The tiny-file corpus: `count` distinct small HTML pages, 100 per folder."""
    for i in range(count):
        body = (
            f"<!doctype html><title>{variant} {i}</title>"
            f"<p>page {i} of the {variant} tiny-file corpus</p>\n"
        ).encode()
        yield f"d{i // 100:04d}/p{i % 100:02d}.html", body


def _build_tiny(root: Path, variant: str = "tiny100k") -> Corpus:
    bundle = root / f"{variant}.tar.gz"
    writer = _Writer(bundle, variant)
    tar = writer.tar
    files = size = 0
    count = 200_000 if variant == "tiny200k" else TINY_FILES
    for name, data in tiny_entries(variant, count):
        _add_bytes(tar, f"{variant}/{name}", data)
        files, size = files + 1, size + len(data)
    writer.close()
    return Corpus(variant, False, bundle, None, "d0000/p00.html", files, size)


def _meta_path(root: Path) -> Path:
    return root / ".done"


def get(name: str) -> Corpus:
    """Build the named corpus if it is not cached yet, and return it."""
    spec = SPECS.get(name)
    if spec is None and name.startswith("tiny100k-"):
        spec = CorpusSpec(name, False, "tiny")  # a variant: same shape, other content
    if spec is None:
        raise BenchError(f"Unknown corpus {name!r}; known: {', '.join(SPECS)}.")
    root = cache_dir() / "corpora" / name
    done = _meta_path(root)
    if done.exists():
        fields = done.read_text().split("\n")
        repo = root / "repo"
        if repo.is_dir():
            _pack(repo)
        return Corpus(
            name,
            spec.small,
            root / f"{name}.tar.gz",
            repo if repo.is_dir() else None,
            fields[0],
            int(fields[1]),
            int(fields[2]),
        )
    root.mkdir(parents=True, exist_ok=True)
    if spec.kind == "debian":
        corpus = _build_debian(spec, root)
    elif spec.kind == "bigbin":
        corpus = _build_bigbin(root)
    else:
        corpus = _build_tiny(root, name)
    done.write_text(f"{corpus.change_path}\n{corpus.files}\n{corpus.content_bytes}\n")
    return corpus


def changed_bundle(corpus: Corpus, marker: str) -> Path:
    """A bundle of `corpus` with one HTML file changed (a marker appended), cached per marker.

    Built by a commit on a side branch, so the pax header carries a new commit id as it would
    after a real push.
    """
    if corpus.repo is None:
        raise BenchError(f"Corpus {corpus.name} has no git repository to change.")
    out = corpus.bundle.parent / f"{corpus.name}-change-{marker}.tar.gz"
    if out.exists():
        return out
    worktree = scratch_dir() / f"wt-{corpus.name}-{marker}"
    shutil.rmtree(worktree, ignore_errors=True)
    _git(corpus.repo, "worktree", "prune")
    _git(corpus.repo, "worktree", "add", "-q", "--detach", str(worktree), "main")
    try:
        page = worktree / corpus.change_path
        with open(page, "a") as fh:
            fh.write(f"\n<!-- bench change {marker} -->\n")
        _git(worktree, "commit", "-q", "-am", f"change {marker}")
        tmp = out.with_suffix(".part")
        prefix = f"--prefix={corpus.name}/"
        _git(worktree, "archive", "--format=tar.gz", prefix, "-o", str(tmp), "HEAD")
        tmp.rename(out)
    finally:
        _git(corpus.repo, "worktree", "remove", "--force", str(worktree))
    return out


def names(small_only: bool) -> list[str]:
    """Corpus names in the order figures use them."""
    return [n for n, s in SPECS.items() if s.small or not small_only]
