"""Bad inputs through the command line (issue 7, item 8): for every class of docs/errors.md,
the documented exit code, one `error: ...` line naming the file, node, op or key, no traceback,
and after a failed `compile` no OUT and no temporary directory.

Classes: exit codes; broken and non-ONNX files; versions; graph structure; tensor data; NaN/Inf
weights (a warning); inputs; unsupported ops and control flow; onnx's node checks; external
data (the three onnx path-traversal CVEs and their relatives); target specs; OUT handling and
interrupts (a real SIGINT/SIGTERM to a child process); verify of a changed OUT; determinism
across processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_cases import ROOT, SPEC, WAFER, _lines, mlp, refused, save, wafer

from compiler.cli import main
from compiler.errors import ExitCode

# --- 5. OUT handling, interrupts, verify of a changed OUT --------------------------------------


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
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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


# --- 6. determinism across processes ------------------------------------------------------------


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


# --- 7. mistakes caught before ONNX Runtime or OUT (issue 12, items 4 and 5) --------------------


@pytest.mark.parametrize(("model", "table", "node"), [
    ("gpt2-tiny", "transformer.wpe.weight", "/transformer/wpe/Gather"),  # Gather(Range(seq))
    # HF BERT slices a [0, max_positions) buffer to seq: Slice clamps, Add would fail later
    ("bert-tiny", "bert.embeddings.position_embeddings.weight",
     "/bert/embeddings/position_embeddings/Gather"),
])
def test_a_seq_len_beyond_the_position_table_is_refused_before_out(tmp_path, capsys, model,
                                                                   table, node):
    from compiler import zoo

    rows = zoo.ZOO[model].config.max_positions
    line = refused(capsys, tmp_path, model, ExitCode.INVALID_INPUT,
                   rf"needs row {4 * rows - 1} of {re.escape(table)}, a table of {rows} "
                   rf"rows .*use --seq-len {rows} or less", "--seq-len", str(4 * rows), "--verify")
    assert f"node {node} (Gather)" in line
    # one past the table is refused, the table's own length is not
    assert wafer(capsys, "inspect", model, "--seq-len", str(rows + 1))[0] == 3
    assert wafer(capsys, "inspect", model, "--seq-len", str(rows))[0] == 0


def test_a_real_export_past_its_position_table_is_refused(tmp_path, capsys):
    """The torch export ONNX Runtime failed on ('indices element out of data bounds')."""
    fixture = ROOT / "tests" / "fixtures" / "gpt2_torchscript_op20_dynamic.onnx"
    table = onnx.load(str(fixture)).graph.initializer
    rows = next(t.dims[0] for t in table if t.name == "transformer.wpe.weight")
    refused(capsys, tmp_path, fixture, ExitCode.INVALID_INPUT,
            rf"transformer\.wpe\.weight, a table of {rows} rows", "--batch", "1", "--seq-len",
            str(rows + 16), "--verify")


STATIC = ROOT / "tests" / "fixtures" / "gpt2_torchscript_op17_static.onnx"  # input_ids [2, 16]


@pytest.mark.parametrize(("model", "flags", "pattern"), [
    (STATIC, ["--seq-len", "8"],
     r"--seq-len 8: the model fixes input input_ids dim 1 to 16; leave out --seq-len"),
    (STATIC, ["--batch", "1"], r"--batch 1: the model fixes input input_ids dim 0 to 2"),
    ("mlp", ["--batch", "2"], r"--batch 2: the model has no batch dim to bind"),
    ("mlp", ["--seq-len", "4"], r"--seq-len 4: the model has no sequence dim to bind"),
    ("gpt2-tiny", ["--input-shapes", "input_ids:[1,32]", "--seq-len", "64"],
     r"input input_ids dim 1 \(seq\) is 32 by --input-shapes but --seq-len says 64"),
])
def test_batch_or_seq_len_is_never_silently_ignored(tmp_path, capsys, model, flags, pattern):
    path = save(tmp_path, mlp()) if model == "mlp" else model
    refused(capsys, tmp_path, path, ExitCode.INVALID_INPUT, pattern, *flags)


def test_batch_and_seq_len_that_agree_with_fixed_dims_are_accepted(capsys):
    code, out, _ = wafer(capsys, "inspect", str(STATIC), "--batch", "2", "--seq-len", "16")
    assert code == 0 and "batch" not in out.splitlines()[0]  # static: nothing was bound
    code, out, _ = wafer(capsys, "inspect", "gpt2-tiny", "--input-shapes", "input_ids:[1,32]",
                         "--seq-len", "32")
    assert code == 0 and "seq=32" in out


def test_a_misspelt_zoo_name_gets_did_you_mean_like_a_misspelt_target(tmp_path, capsys):
    model = refused(capsys, tmp_path, "gpt2-tinny", ExitCode.INVALID_INPUT,
                    r"model 'gpt2-tinny' is neither a file nor a zoo name \(did you mean "
                    r"'gpt2-tiny'\?\); zoo models: gpt2-tiny, ")
    target = refused(capsys, tmp_path, "gpt2-tiny", ExitCode.INVALID_INPUT,
                     r"unknown target 'mesh8z8' \(did you mean 'mesh8x8'\?\)", target="mesh8z8")
    assert model and target
    assert wafer(capsys, "inspect", "no-such-model")[0] == ExitCode.INVALID_INPUT  # no close one


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_and_verbose_go_before_or_after_the_command(capsys, where):
    def run(flag: str, *argv: str) -> tuple[int, str, str]:
        code = main([flag, *argv] if where == "before" else [*argv, flag])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("-q", "check", "gpt2-tiny", "-t", "mesh8x8")
    assert code == 0 and "verdict" in out and err == ""
    code, _, err = run("-v", "inspect", "gpt2-tiny", "--input-shapes", "input_ids:[1,2,3]")
    assert code == ExitCode.INVALID_INPUT and "Traceback" in err
    assert err.rstrip().splitlines()[-1].startswith("error: --input-shapes gives input_ids rank")
    code, _, err = run("-q", "inspect", "gpt2-tiny", "--input-shapes", "input_ids:[1,2,3]")
    assert code == ExitCode.INVALID_INPUT and "Traceback" not in err


def test_both_places_at_once_and_either_alone_keep_their_meaning(capsys):
    from compiler.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["-q", "targets"]).quiet and not parse(["-q", "targets"]).verbose
    assert parse(["targets", "-v"]).verbose and not parse(["targets", "-v"]).quiet
    both = parse(["-v", "check", "gpt2-tiny", "-t", "wse3", "-q"])
    assert both.verbose and both.quiet
    assert not parse(["targets"]).quiet and not parse(["targets"]).verbose


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
