"""External weight data through `wafer compile`: a location never leads outside the model's
directory (the three onnx path-traversal CVEs and their relatives: .., absolute paths, backslashes,
symlinks, hard links; an audit hook proves the secret file is never opened), offsets and lengths
are checked before reading, external data only for initializers, and data inside the directory is
read."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_cases import _lines, _node, mlp, refused, save, wafer
from onnx import TensorProto

from compiler.errors import ExitCode

SECRET = b"SECRET!!" * 8  # 64 bytes: W is 4 x 4 float32


def _external_model(location: str, *, offset=None, length=None, dims=(4, 4),
                    extra_keys=()) -> onnx.ModelProto:
    t = onnx.TensorProto(name="W", data_type=TensorProto.FLOAT, dims=list(dims))
    t.data_location = TensorProto.EXTERNAL
    entries = [("location", location), ("offset", offset), ("length", length), *extra_keys]
    for key, value in entries:
        if value is not None:
            t.external_data.add(key=key, value=str(value))
    return mlp(inits=[t])


def _attack_dir(tmp_path: Path) -> tuple[Path, Path]:
    """tmp_path/model (the model's directory) and a secret file outside it."""
    (tmp_path / "model").mkdir(exist_ok=True)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    return tmp_path / "model", secret


_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], str | bytes):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one records only when asked


def _setup(kind: str, model_dir: Path, secret: Path) -> str:
    """Lay out one attack; returns the location the model gives."""
    if kind == "dotdot":  # CVE-2022-25882
        return "../secret.bin"
    if kind == "nested":  # CVE-2024-27318: traversal inside the path
        (model_dir / "sub").mkdir()
        return "sub/../../secret.bin"
    if kind == "absolute":
        return str(secret)
    if kind == "backslash":
        return "..\\secret.bin"
    if kind == "dir_symlink":  # CVE-2026-27489: a symlinked parent directory
        os.symlink(secret.parent, model_dir / "link")
        return "link/secret.bin"
    if kind == "file_symlink":
        os.symlink(secret, model_dir / "w.bin")
        return "w.bin"
    if kind == "hardlink":
        os.link(secret, model_dir / "w.bin")
        return "w.bin"
    raise AssertionError(kind)


@pytest.mark.parametrize(("kind", "pattern"), [
    ("dotdot", r"'\.\./secret\.bin' contains '\.\.'"),
    ("nested", r"'sub/\.\./\.\./secret\.bin' contains '\.\.'"),
    ("absolute", r"'/\S+/secret\.bin' must be a relative path inside the model's directory"),
    ("backslash", r"'\.\.\\\\secret\.bin' contains '\.\.'"),
    ("dir_symlink", r"'link/secret\.bin' leads outside the model's directory"),
    ("file_symlink", r"'w\.bin' leads outside the model's directory"),
    ("hardlink", r"\(w\.bin\): the data file has 2 hard links"),
])
def test_external_data_never_leaves_the_model_directory(tmp_path, capsys, kind, pattern):
    global _OPENED
    model_dir, secret = _attack_dir(tmp_path)
    path = save(tmp_path, _external_model(_setup(kind, model_dir, secret)))
    _OPENED = []
    try:
        refused(capsys, tmp_path, path, ExitCode.INVALID_INPUT,
                r"m\.onnx: initializer W(: external data location)? " + pattern)
        opened = list(_OPENED)
    finally:
        _OPENED = None
    assert not [p for p in opened if Path(p).resolve() == secret.resolve()], opened


def _data(model_dir: Path, size: int = 64) -> None:
    (model_dir / "w.bin").write_bytes(np.ones(size // 4, np.float32).tobytes())


@pytest.mark.parametrize(("kw", "pattern"), [
    ({"offset": 32}, r"bytes 32\.\.96 lie past the end of the 64-byte file"),
    ({"length": 1 << 60}, r"declares 1,152,921,504,606,846,976 bytes but its shape needs 64"),
    ({"dims": (1 << 20, 1 << 20)}, r"bytes 0\.\.4,398,046,511,104 lie past the end of the "
     "64-byte file"),
    ({"dims": (1 << 40, 1 << 40)}, r"has [\d,]+ elements, more than any real model"),
    ({"length": -5}, r"negative external offset or length"),
    ({"offset": "12abc"}, r"external offset/length are not integers"),
    ({"extra_keys": [("basepath2", "x")]}, r"unknown external data key\(s\) 'basepath2'"),
])
def test_external_offsets_and_lengths_are_checked_before_reading(tmp_path, capsys, kw,
                                                                 pattern):
    (tmp_path / "model").mkdir()
    _data(tmp_path / "model")
    path = save(tmp_path, _external_model("w.bin", **kw))
    refused(capsys, tmp_path, path, ExitCode.INVALID_INPUT, pattern)


def test_external_data_only_for_initializers(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    _data(tmp_path / "model")
    t = _external_model("w.bin").graph.initializer[0]
    nodes = [_node("Constant", [], ["W"], "const", value=t),
             _node("MatMul", ["x", "W"], ["h"], "mm"), _node("Relu", ["h"], ["y"], "act")]
    refused(capsys, tmp_path, save(tmp_path, mlp(nodes=nodes, inits=[])),
            ExitCode.INVALID_INPUT, r"node const \(Constant\) attribute value: external data is "
            "accepted only for graph initializers")


def test_external_weights_inside_the_directory_are_read(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    _data(tmp_path / "model")
    path = save(tmp_path, _external_model("w.bin"))
    code, out, err = wafer(capsys, "inspect", str(path), "--json")
    assert code == 0 and json.loads(out)["shape_only"] is False and _lines(err) == []
