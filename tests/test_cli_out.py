"""OUT through the command line: an existing OUT is never corrupted or replaced unless wafer wrote
it, an interrupted compile (a real SIGINT/SIGTERM to a child process) leaves no partial OUT,
`verify` notices a changed model or target and `verify`/`view` refuse a damaged OUT in one line,
inputs are checked before an existing OUT is refused, and two processes write byte-identical
artifacts."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_cases import SPEC, WAFER, _lines, mlp, save, wafer
from conftest import default_sigint

from compiler.errors import ExitCode


def _contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_existing_out_is_never_corrupted(tmp_path, capsys):
    out = tmp_path / "out"
    assert wafer(capsys, "compile", "llama-tiny", "-t", "mesh8x8", "-o", str(out))[0] == 0
    before = _contents(out)
    code, _, err = wafer(capsys, "compile", "gpt2-tiny", "-t", "mesh8x8", "-o", str(out))
    assert code == ExitCode.USAGE and "already exists; pass --force" in err
    # --force with a compile that fails: the old OUT stays whole, nothing else is left
    bad = save(tmp_path, b"")
    code, _, err = wafer(capsys, "compile", str(bad), "-t", "mesh8x8", "-o", str(out), "--force")
    assert code == ExitCode.INVALID_INPUT
    assert _contents(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]
    # --force never replaces a directory wafer did not write
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, err = wafer(capsys, "compile", "llama-tiny", "-t", "mesh8x8", "-o", str(mine),
                         "--force")
    assert code == ExitCode.USAGE and "not an output of `wafer compile`" in err
    assert (mine / "notes.txt").read_text() == "keep"


def _interrupt(tmp_path: Path, sig: int, *extra: str) -> tuple[int, str]:
    """Start a compile whose placement takes seconds, send `sig` while CP-SAT runs."""
    proc = subprocess.Popen([*WAFER, "compile", "llama3-8b", "-t", "wse3", "-o", "out",
                             "--time-limit", "60", *extra], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # stage lines arrive as the stages finish
        lines.append(line)
        if line.startswith("[tiling]"):
            break
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=120)  # a hang guard, not a timing assertion
    return proc.returncode, "".join(lines) + rest


@pytest.mark.parametrize(("sig", "code", "message"), [
    (signal.SIGINT, 130, "error: interrupted"),
    (signal.SIGTERM, 143, "error: terminated (SIGTERM)"),
])
def test_interrupted_compile_leaves_no_partial_out(tmp_path, sig, code, message):
    got, err = _interrupt(tmp_path, sig)
    assert got == code and err.rstrip().endswith(message), err
    assert "[placement]" not in err  # it stopped inside the solver, not after it
    assert list(tmp_path.iterdir()) == []  # no OUT, no temporary directory


def test_interrupted_forced_compile_keeps_the_old_out(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "placement.json").write_text("{}")
    got, err = _interrupt(tmp_path, signal.SIGINT, "--force")
    assert got == 130, err
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["placement.json"]


def test_verify_detects_a_changed_model_or_target(tmp_path, capsys):
    model = save(tmp_path, mlp())
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    assert wafer(capsys, "compile", str(model), "-t", str(spec), "-o", str(out))[0] == 0
    assert wafer(capsys, "verify", str(out))[0] == 0
    spec.write_text(SPEC.replace("step_overhead_cycles = 100", "step_overhead_cycles = 101"))
    code, _, err = wafer(capsys, "verify", str(out))
    assert code == ExitCode.INVALID_INPUT and len(_lines(err)) == 1
    assert "target mesh8x8 (" in err and "changed since the compile (sha256 differs)" in err
    spec.write_text(SPEC)
    model.write_bytes(mlp(w=np.zeros((4, 4), np.float32)).SerializeToString())
    code, _, err = wafer(capsys, "verify", str(out))
    assert code == ExitCode.INVALID_INPUT and "changed since it was compiled" in err
    shutil.rmtree(model.parent)
    code, _, err = wafer(capsys, "verify", str(out))
    assert code == ExitCode.INVALID_INPUT and "is not found" in err


@pytest.mark.parametrize(("file", "content", "pattern"), [
    ("placement.json", "[]", r"placement\.json: expected a JSON object"),
    ("placement.json", '{"model": "x"}', r"placement\.json: model is not an object"),
    ("placement.json", "{not json", r"placement\.json: not readable JSON"),
    ("schedule.json", "{}", r"schedule\.json: malformed \(KeyError: 'regions'\)"),
])
def test_verify_of_a_damaged_out(tmp_path, capsys, file, content, pattern):
    out = tmp_path / "out"
    assert wafer(capsys, "compile", "llama-tiny", "-t", "mesh8x8", "-o", str(out))[0] == 0
    (out / file).write_text(content)
    code, _, err = wafer(capsys, "verify", str(out))
    assert code == ExitCode.INVALID_INPUT and len(_lines(err)) == 1 and re.search(pattern, err)


def _edit_layer(doc: dict) -> None:
    doc["layers"][0]["rect"] = "x"


@pytest.mark.parametrize(("file", "edit", "pattern"), [
    ("placement.json", _edit_layer, r"placement\.json: layers\[0\]: rect is missing or not an "
     "object"),
    ("schedule.json", lambda d: d.update(regions=1), r"schedule\.json: malformed \(TypeError"),
])
def test_view_of_a_damaged_out(tmp_path, capsys, file, edit, pattern):
    out = tmp_path / "out"
    assert wafer(capsys, "compile", "llama-tiny", "-t", "mesh8x8", "-o", str(out),
                 "--no-report")[0] == 0
    doc = json.loads((out / file).read_text())
    edit(doc)
    (out / file).write_text(json.dumps(doc))
    code, _, err = wafer(capsys, "view", str(out))
    assert code == ExitCode.INVALID_INPUT and len(_lines(err)) == 1 and re.search(pattern, err)


# --- determinism across processes ---------------------------------------------------------------


def test_two_processes_write_byte_identical_placement_and_schedule(tmp_path):
    for run, seed in (("a", "1"), ("b", "2")):  # different hash seeds: set order may differ
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([*WAFER, "-q", "compile", "gpt2-tiny", "-t", "mesh8x8-x2", "-o", run],
                       cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    for name in ("placement.json", "schedule.json", "trace.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    log = json.loads((tmp_path / "a" / "compile_log.json").read_text())
    assert set(log) == {"stage_seconds", "solver_wall_time_s"}  # timings live only here
    assert "wall_time" not in (tmp_path / "a" / "placement.json").read_text()


# --- inputs are checked before an existing OUT is refused (issue 12) ------------------------------


@pytest.mark.parametrize(("argv", "code", "pattern"), [
    (["nosuch.onnx", "-t", "mesh8x8"], ExitCode.INVALID_INPUT,
     r"model file nosuch\.onnx does not exist"),
    (["gpt2-tiny", "-t", "mesh8z8"], ExitCode.INVALID_INPUT, r"unknown target 'mesh8z8'"),
    (["gpt2-tiny", "-t", "mesh8x8", "--input-shapes", "input_ids=1,2"], ExitCode.USAGE,
     r"--input-shapes: cannot parse"),
])
def test_compile_checks_its_inputs_before_refusing_an_existing_out(tmp_path, capsys, argv,
                                                                    code, pattern):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    got, _, err = wafer(capsys, "compile", *argv, "-o", str(out))
    assert got == code and re.search(pattern, err) and "already exists" not in err, err
    assert (out / "notes.txt").read_text() == "keep"
