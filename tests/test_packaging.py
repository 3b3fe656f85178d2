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
