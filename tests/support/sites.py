"""Sites and git repositories built in a test's folder, and `pushsite deploy` run in-process."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pushsite.model import Manifest

GIT_ENV = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}


def write_files(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
    return root


def deploy(*args: str, input: bytes | None = None, create: bool = True) -> tuple[int, str, str]:
    """`pushsite deploy ARGS` in this process: exit code, stdout, stderr. With `create` (the
    default here) the site is made if missing (`--create`): sites are created on purpose."""
    from click.testing import CliRunner

    from pushsite.cli import cli

    result = CliRunner().invoke(cli, ["deploy", *args, *(["--create"] if create else [])],
                                input=input, obj={}, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def live_manifest(site: str) -> Manifest:
    """The manifest a site's production alias points at."""
    from pushsite.config import load_config
    from pushsite.model import manifest_key
    from pushsite.service import Service

    service = Service(load_config())
    alias = service.state.get_alias(site, "production")
    assert alias is not None
    return Manifest.from_bytes(service.store.get(manifest_key(alias.deployment_id)))


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def git_bundle(repo: Path, out: Path, rev: str = "HEAD") -> Path:
    """A bundle exactly as `git archive` makes one: one top folder, pax header with commit."""
    subprocess.run(["git", "archive", "--format=tar.gz", f"--prefix={repo.name}/", "-o",
                    str(out), rev], cwd=repo, check=True)
    return out
