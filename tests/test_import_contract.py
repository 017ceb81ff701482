"""The layer contract (pyproject.toml [tool.importlinter]) holds for the code as it is, and it
has teeth: a copy of src/ with one lazy import against the layers is refused. `make lint` runs
the same check; here it is part of `make test` too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=ROOT, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120, check=False)


def test_the_code_keeps_the_layer_contract() -> None:
    done = lint_imports(ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_a_backend_importing_the_service_inside_a_function_breaks_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "pushsite" / "stores" / "upward.py").write_text(
        "def reach_up() -> None:\n    from pushsite.service import Service  # noqa: F401\n")
    (src / "pushsite" / "githook.py").write_text(
        (src / "pushsite" / "githook.py").read_text() + "\nimport pushsite.errors  # noqa\n")
    done = lint_imports(src)
    assert done.returncode != 0
    assert "pushsite.stores is not allowed to import pushsite.service" in done.stdout
    assert "pushsite.stores.upward -> pushsite.service" in done.stdout
    assert "pushsite.githook is not allowed to import pushsite.errors" in done.stdout
