"""The import quarantine: each big library may be imported in its one package and is banned
everywhere else (pyproject.toml's banned-api, repeated less that library by the package's own
ruff.toml). Probed with ruff itself on a one-line file named as if it lived in each package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
RUFF = Path(sys.executable).parent / "ruff"
HOME = {"onnx": ("compiler/frontend", "models"), "onnx_ir": ("compiler/frontend",),
        "onnxscript": ("compiler/frontend",), "onnxruntime": ("compiler/verify",),
        "ortools": ("compiler/placement/cpsat",), "jinja2": ("compiler/report",),
        "ray": ("compiler/sweep",)}
PLACES = ("compiler", "compiler/frontend", "models", "compiler/verify", "compiler/placement",
          "compiler/placement/cpsat", "compiler/report", "compiler/sweep", "compiler/tiling",
          "compiler/schedule", "compiler/executor", "compiler/outdir", "compiler/target")


def banned(place: str, library: str) -> bool:
    """Does ruff refuse `import LIBRARY` in a module of PLACE?"""
    run = subprocess.run([str(RUFF), "check", "--no-cache", "--select", "TID251",
                          "--stdin-filename", f"{place}/_probe.py", "-"],
                         input=f"import {library}\n", text=True, capture_output=True, cwd=ROOT)
    assert run.returncode in (0, 1), run.stderr
    return run.returncode == 1 and "TID251" in run.stdout


@pytest.mark.skipif(not RUFF.exists(), reason="ruff is not installed beside this Python")
@pytest.mark.parametrize("library", sorted(HOME))
def test_each_library_only_in_its_package(library):
    wrong = [p for p in PLACES if banned(p, library) == (p in HOME[library])]
    assert wrong == [], f"{library}: quarantine wrong in {wrong}"
