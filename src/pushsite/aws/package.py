"""The Lambda deployment package: pushsite and the deploy path's dependencies, as one zip.

Which dependencies go in: only what the deploy path imports (bundle reader, encoder, deployer,
service, the S3/DynamoDB/SQS backends):

    isal     gzip of the bundle and of text files; several times faster than zlib
    brotli   the .br variants of text files
    httpx    (with httpcore, h11, anyio, certifi, idna, typing-extensions) notifications and
             commit statuses, which reach the function through the same queue

Left out on purpose:

    boto3, botocore, s3transfer (and their jmespath, dateutil, urllib3, six): the python3.11
        runtime ships them, and a second copy would add ~25 MB and shadow the runtime's
    click, rich: the command line; Lambda calls pushsite.aws.handler.handler directly
    starlette, fastapi, uvicorn, jinja2, python-multipart: the edge, dashboard, API and
        webhook receiver, which serve HTTP on a host, not in the deployer function

The versions are pinned here (LAMBDA_DEPENDENCIES, exact `==`, installed with --no-deps), so
two builds on different days bundle the same wheels; tests/aws/test_package.py fails when they
drift from requirements/test.lock.txt (`make lock`), so the zip runs what the tests ran. The
wheels are the ones pip picks for the runtime's platform (manylinux2014, the glibc 2.17 baseline
that the python3.11 runtime's Amazon Linux 2 satisfies), never the build machine's.

pushsite itself comes from the package this code runs from (`pushsite.__file__`'s folder): an
editable checkout's src/pushsite or an installed site-packages/pushsite alike.

Reproducible: the same sources and the same wheels give a byte-identical zip. Entries are
sorted, every timestamp is 1980-01-01, permissions are 0644 (0755 for shared libraries), no
__pycache__ or .pyc (Lambda's file system is read-only, so a cache could not be written anyway),
and pip's INSTALLER/REQUESTED/RECORD/direct_url.json, which vary by installer, are dropped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pushsite
from pushsite.errors import ConfigError

MB = 1024 * 1024
MAX_UNZIPPED = 250 * MB  # Lambda's limit for the function and its layers, unzipped
MAX_ZIPPED = 50 * MB  # Lambda's limit for a zip uploaded directly (not from S3)

# Exact pins: the zip must not change with the day it is built (see the module docstring).
LAMBDA_DEPENDENCIES = (
    "isal==1.9.1", "brotli==1.2.1",
    # httpx and what it needs: the function delivers notifications and commit statuses too
    "httpx==0.29.0", "httpcore==1.0.9", "h11==0.16.0", "anyio==4.16.0",
    "certifi==2026.10.19.post1", "idna==3.21", "typing-extensions==4.16.0",
)
# What pushsite.aws.handler runs; each must import from the zip on the runtime (tests check).
DEPLOY_PATH_MODULES = (
    "pushsite.service.verbs",
    "pushsite.deploy.builder",
    "pushsite.stores.s3",
    "pushsite.state.dynamodb",
    "pushsite.queues.sqs",
    "pushsite.aws.mirror",
    "pushsite.service.notify",
    "pushsite.service.statuses",
)
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")
PLATFORMS = {"x86_64": "manylinux2014_x86_64", "arm64": "manylinux2014_aarch64"}
PYTHONS = ("3.11", "3.12", "3.13")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_SKIP_NAMES = {"__pycache__", "INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}
_SKIP_TOP = {"bin"}  # console scripts pip writes for the build machine


def _pip_install(target: Path, requirements: list[str], platform: str, python: str) -> None:
    command = [
        sys.executable, "-m", "pip", "install",
        "--quiet", "--disable-pip-version-check", "--no-input", "--no-compile",
        "--platform", PLATFORMS[platform],
        "--implementation", "cp",
        "--python-version", python,
        "--only-binary=:all:",
        "--no-deps",  # every dependency is pinned above; none may come in unpinned
        "--target", str(target),
        *requirements,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(
            f"pip could not fetch {' '.join(requirements)} for Lambda ({platform}, Python "
            f"{python}): {detail}; check the network and that wheels exist for that platform"
        )


def _remove_runtime_provided(target: Path) -> None:
    """Drop boto3 and friends if a dependency ever pulls them in: the runtime has them."""
    for path in target.iterdir():
        name = path.name.split("-")[0].lower()
        if name in RUNTIME_PROVIDED:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _files(root: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, file) for every file to ship under root."""
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if (
            path.is_dir()
            or relative.parts[0] in _SKIP_TOP
            or any(part in _SKIP_NAMES for part in relative.parts)
            or path.suffix in (".pyc", ".pyo")
        ):
            continue
        yield relative.as_posix(), path


def _zip_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.create_system = 3  # unix, so the permission bits below mean what they say
    mode = 0o755 if name.endswith(".so") or ".so." in name else 0o644
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _write_zip(out: Path, entries: dict[str, Path]) -> int:
    """Write the zip; return the unzipped size."""
    total = 0
    tmp = out.with_name(out.name + ".part")
    with zipfile.ZipFile(tmp, "w", compresslevel=9) as archive:
        for name in sorted(entries):
            data = entries[name].read_bytes()
            total += len(data)
            archive.writestr(_zip_entry(name), data)
    os.replace(tmp, out)
    return total


def check_size(out: Path, unzipped: int, *, max_unzipped: int, max_zipped: int) -> None:
    """Fail with the sizes and the limit when Lambda would refuse the zip."""
    zipped = out.stat().st_size
    if unzipped > max_unzipped:
        raise ConfigError(
            f"the Lambda package {out} unpacks to {unzipped / MB:.1f} MB, over Lambda's "
            f"{max_unzipped / MB:.0f} MB limit: leave dependencies out of LAMBDA_DEPENDENCIES"
        )
    if zipped > max_zipped:
        raise ConfigError(
            f"the Lambda package {out} is {zipped / MB:.1f} MB zipped, over the "
            f"{max_zipped / MB:.0f} MB limit for a direct upload: leave dependencies out"
        )


def build_lambda_zip(
    out: Path,
    *,
    platform: str = "x86_64",
    python: str = "3.11",
    source: Path | None = None,
    max_unzipped: int = MAX_UNZIPPED,
    max_zipped: int = MAX_ZIPPED,
) -> Path:
    """Build the deployer's zip at `out` for Lambda's platform and Python; returns `out`.

    `source` is the pushsite package folder to ship (default: the one running this)."""
    if platform not in PLATFORMS:
        raise ConfigError(
            f"unknown Lambda platform {platform!r}: use one of {', '.join(PLATFORMS)}"
        )
    if python not in PYTHONS:
        raise ConfigError(f"unsupported Python {python!r} for Lambda: use one of {PYTHONS}")
    package = source or Path(pushsite.__file__).resolve().parent
    if not (package / "__init__.py").is_file():
        raise ConfigError(f"no pushsite package at {package}: pass the folder of pushsite")
    requirements = list(LAMBDA_DEPENDENCIES)
    with tempfile.TemporaryDirectory(prefix="pushsite-lambda-") as tmp:
        target = Path(tmp)
        _pip_install(target, requirements, platform, python)
        _remove_runtime_provided(target)
        entries = dict(_files(target))
        entries.update((f"pushsite/{name}", path) for name, path in _files(package))
        out.parent.mkdir(parents=True, exist_ok=True)
        unzipped = _write_zip(out, entries)
    try:
        check_size(out, unzipped, max_unzipped=max_unzipped, max_zipped=max_zipped)
    except ConfigError:
        out.unlink()  # so nobody uploads a zip Lambda would refuse
        raise
    return out
