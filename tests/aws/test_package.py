"""The Lambda zip: reproducible, free of boto3, and importable on the runtime's Python.

Building fetches wheels for Lambda's platform from PyPI (a few MB, a few seconds with pip's
cache); the module builds once and every test reads that build. It runs in `make test`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pushsite
from pushsite.aws.package import DEPLOY_PATH_MODULES, LAMBDA_DEPENDENCIES, build_lambda_zip
from pushsite.errors import ConfigError

pytestmark = pytest.mark.timeout(600)

PROJECT = Path(__file__).resolve().parents[2]
# What the python3.11 runtime ships besides the standard library.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the pushsite package as pip installs it into site-packages: the builds read
    this, so an edit to the checkout between two builds cannot tell them apart."""
    site = tmp_path_factory.mktemp("site-packages")
    shutil.copytree(Path(pushsite.__file__).parent, site / "pushsite",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return site


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory, snapshot: Path) -> tuple[Path, Path]:
    """The zip built twice from the same inputs, into different folders."""
    source = snapshot / "pushsite"
    first = build_lambda_zip(tmp_path_factory.mktemp("one") / "lambda.zip", source=source)
    second = build_lambda_zip(tmp_path_factory.mktemp("two") / "lambda.zip", source=source)
    return first, second


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_inputs_give_a_byte_identical_zip(builds: tuple[Path, Path]) -> None:
    first, second = builds
    assert _sha256(first) == _sha256(second)


def test_zip_holds_pushsite_and_its_deploy_dependencies_but_not_boto3(
    builds: tuple[Path, Path],
) -> None:
    with zipfile.ZipFile(builds[0]) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    tops = {name.split("/")[0] for name in names}
    assert {"pushsite", "isal", "brotli.py"} <= tops
    assert "pushsite/deploy/builder.py" in names
    assert not tops & {"boto3", "botocore", "s3transfer", "click", "starlette", "bin"}
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.endswith(("/RECORD", "/INSTALLER"))]
    assert names == sorted(names)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    modes = {info.filename: info.external_attr >> 16 for info in infos}
    assert modes["pushsite/model.py"] == 0o100644
    libraries = [n for n in names if n.endswith(".so")]
    assert libraries and all("x86_64-linux-gnu" in n for n in libraries)
    assert all(modes[n] == 0o100755 for n in libraries)


def test_deploy_path_imports_from_the_zip_on_the_runtime(
    builds: tuple[Path, Path], tmp_path: Path
) -> None:
    """Unpacked, with only the standard library and what Lambda's runtime ships on the path."""
    code = tmp_path / "task"
    with zipfile.ZipFile(builds[0]) as archive:
        archive.extractall(code)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for name in RUNTIME_PACKAGES:
        origin = Path(importlib.import_module(name).__file__ or "")
        source = origin.parent if origin.name == "__init__.py" else origin
        (runtime / source.name).symlink_to(source)
    script = (
        f"import {', '.join(DEPLOY_PATH_MODULES)}\n"
        "import isal, brotli, pushsite, sys\n"
        "print(pushsite.__file__)\nprint(isal.__file__)\n"
        "print(any('site-packages' in p for p in sys.path))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = f"{code}{os.pathsep}{runtime}"
    # -S: no site module, so this virtualenv's site-packages stay off the path.
    result = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    pushsite_file, isal_file, site_packages = result.stdout.split()
    assert pushsite_file.startswith(str(code))
    assert isal_file.startswith(str(code))
    assert site_packages == "False"


def test_arm64_build_carries_aarch64_libraries(tmp_path: Path) -> None:
    out = build_lambda_zip(tmp_path / "arm.zip", platform="arm64")
    with zipfile.ZipFile(out) as archive:
        libraries = [n for n in archive.namelist() if n.endswith(".so")]
    assert libraries and all("aarch64-linux-gnu" in n for n in libraries)


def test_a_zip_over_the_size_limit_fails_with_its_size(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is \d+\.\d MB zipped, over the 1 MB limit"):
        build_lambda_zip(tmp_path / "big.zip", max_zipped=1024 * 1024)
    with pytest.raises(ConfigError, match=r"unpacks to \d+\.\d MB, over Lambda's 2 MB limit"):
        build_lambda_zip(tmp_path / "big.zip", max_unzipped=2 * 1024 * 1024)
    assert not (tmp_path / "big.zip").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"platform": "sparc"}, "unknown Lambda platform 'sparc'"),
        ({"python": "2.7"}, "unsupported Python '2.7'"),
        ({"source": Path("/nonexistent")}, "no pushsite package at /nonexistent"),
    ],
)
def test_bad_options_are_config_errors(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = dict(options)
    with pytest.raises(ConfigError, match=message):
        build_lambda_zip(tmp_path / "x.zip", **arguments)  # type: ignore[arg-type]


def test_pins_are_exact_and_match_the_lock() -> None:
    """The zip bundles fixed versions (two builds on different days agree), and the same ones
    the tests ran with: a `make lock` that moves them fails here until the pins follow."""
    lock = (PROJECT / "requirements" / "test.lock.txt").read_text().splitlines()
    locked = {line.split("==")[0].lower(): line.split()[0] for line in lock if "==" in line}
    for pin in LAMBDA_DEPENDENCIES:
        name, _, version = pin.partition("==")
        assert version, pin
        assert locked[name] == pin


def test_an_installed_pushsite_builds_the_same_zip(
    builds: tuple[Path, Path], snapshot: Path, tmp_path: Path
) -> None:
    """`pushsite aws package` from a copy of the package with no checkout around it (as pip
    installs it into site-packages), run from another folder, gives the same bytes."""
    site = snapshot
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import pushsite; print(pushsite.__file__)"],
                           capture_output=True, text=True, env=env, cwd=work, check=True)
    assert where.stdout.strip() == str(site / "pushsite" / "__init__.py")
    result = subprocess.run(
        [sys.executable, "-m", "pushsite", "aws", "package", "--out", "lambda.zip"],
        capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert result.returncode == 0, result.stderr
    assert _sha256(work / "lambda.zip") == _sha256(builds[0])
