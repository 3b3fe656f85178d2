"""A plain (non-editable) wheel carries every subpackage, the built-in targets, the zoo and the
report's templates."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_every_package_targets_and_zoo(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("wafer_compiler-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.parent.relative_to(ROOT).as_posix()
                for p in (ROOT / "compiler").rglob("__init__.py")}
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} is missing from the wheel"
    targets = {f"compiler/targets/{p.name}" for p in (ROOT / "targets").glob("*.toml")}
    assert targets <= names and "compiler/targets/wse3.toml" in names
    zoo = {f"compiler/zoo/{p.name}" for p in (ROOT / "models").glob("*.py")}
    assert zoo <= names
    templates = {f"compiler/report/templates/{p.name}"
                 for p in (ROOT / "compiler" / "report" / "templates").iterdir()}
    assert templates and templates <= names, "the report's templates are missing from the wheel"


def _build(hook: str, out: Path) -> str:
    """Run one PEP 517 hook of the real setuptools backend; return its stderr."""
    code = f"from setuptools import build_meta; build_meta.{hook}({str(out)!r})"
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=300)
    return done.stderr


def test_install_prints_no_setuptools_warning(tmp_path):
    # pip shows every warning the backend raises as a BuildBackendWarning; the configuration
    # (not a filter) must leave none: no package left out of `packages`, no meta-path finder.
    for hook in ("build_editable", "build_wheel"):
        stderr = _build(hook, tmp_path / hook)
        assert "Warning" not in stderr and "InformationOnly" not in stderr, stderr[-2000:]
