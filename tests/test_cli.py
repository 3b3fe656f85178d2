"""The wafer CLI: inspect, check, targets; exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from compiler.cli import main
from compiler.errors import ExitCode


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _error_lines(err: str) -> list[str]:
    """Stage lines may precede it; the error itself is exactly one line."""
    lines = [line for line in err.splitlines() if not line.startswith("[")]
    assert all(line.startswith("error: ") for line in lines), lines
    return lines


def test_inspect_lists_layers_params_and_ops(capsys):
    code, out, _ = run(capsys, "inspect", "llama-tiny")
    assert code == 0
    assert "block.1" in out and "final_norm" in out and "head" in out
    assert "params     106,816" in out
    assert "RMSNormalization" not in out and "ReduceMean" in out


def test_inspect_json_is_machine_readable(capsys):
    code, out, _ = run(capsys, "inspect", "gpt2-tiny", "--json", "--seq-len", "8")
    data = json.loads(out)
    assert code == 0 and data["dims"] == {"batch": 1, "seq": 8}
    assert [layer["name"] for layer in data["layers"]][:2] == ["embedding", "block.0"]
    assert data["op_histogram"]["Softmax"] == 2


def test_inspect_list_shows_the_zoo(capsys):
    code, out, _ = run(capsys, "inspect", "--list")
    assert code == 0 and "llama3.1-405b" in out and "shape-only" in out


def test_check_gpt2_small_fits_one_wse3(capsys):
    code, out, _ = run(capsys, "check", "gpt2-small", "--target", "wse3")
    assert code == 0
    assert "fits: needs at least 1 wafer(s) of wse3" in out


def test_check_70b_needs_four_wse3_wafers(capsys):
    code, out, _ = run(capsys, "check", "llama3-70b", "--target", "wse3", "--json")
    data = json.loads(out)
    assert code == ExitCode.DOES_NOT_FIT
    assert data["wafers_needed"] == 4 and not data["fits"]
    code, out, _ = run(capsys, "check", "llama3-70b", "--target", "wse3-x4")
    assert code == 0 and "fits" in out


def test_check_long_context_grows_the_kv_cache(capsys):
    _, short, _ = run(capsys, "check", "llama3-8b", "-t", "wse3", "--json")
    _, long, _ = run(capsys, "check", "llama3-8b", "-t", "wse3", "--json", "--context", "131072")
    short, long = json.loads(short), json.loads(long)
    assert long["kv_bytes"] == short["kv_bytes"] * 1024
    assert long["kv_bytes"] == 32 * 2 * 8 * 128 * 2 * 131072  # layers x K,V x heads x dim x fp16


def test_targets_lists_every_builtin(capsys):
    code, out, _ = run(capsys, "targets")
    assert code == 0
    for name in ("wse2", "wse3", "wse3-x4", "tt-wormhole", "mesh8x8"):
        assert name in out


def test_unknown_target_is_one_line_error(capsys):
    code, out, err = run(capsys, "check", "gpt2-tiny", "--target", "wse9")
    assert code == ExitCode.INVALID_INPUT
    assert len(_error_lines(err)) == 1 and "wse3" in err
    assert "Traceback" not in err


def test_unsupported_ops_exit_code_and_listing(tmp_path, capsys):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Hardmax", ["x"], ["a"], name="h"),
             helper.make_node("Celu", ["a"], ["y"], name="c")]
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "m", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 18)]), path)
    code, _, err = run(capsys, "check", str(path), "--target", "mesh8x8")
    assert code == ExitCode.UNSUPPORTED
    assert _error_lines(err) == [line for line in err.splitlines() if "Hardmax" in line]
    assert "Celu" in err and "float32[1,4]" in err


def test_usage_errors_exit_2(capsys):
    assert run(capsys, "inspect")[0] == ExitCode.USAGE
    assert run(capsys, "frobnicate")[0] == ExitCode.USAGE
    code, _, err = run(capsys, "inspect", "gpt2-tiny", "--input-shapes", "bad")
    assert code == ExitCode.USAGE and "input_ids:[1,128]" in err


def test_verbose_shows_the_traceback(capsys):
    code, _, err = run(capsys, "-v", "check", "gpt2-tiny", "--target", "wse9")
    assert code == ExitCode.INVALID_INPUT and "Traceback" in err


@pytest.mark.parametrize("argv", [[str(Path(sys.executable).parent / "wafer")],
                                  [sys.executable, "-m", "compiler"]])
def test_entry_points_run(argv):
    proc = subprocess.run([*argv, "targets"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "wse3" in proc.stdout


_ENTRY = ("import atexit, sys; atexit.register(print, 'freed at exit'); "
          "from compiler.cli import entry; sys.argv[0] = 'wafer'; entry()")


def test_a_compile_process_ends_without_freeing_its_heap(tmp_path):
    """After a plain compile the process ends at once (`cli.entry`: os._exit, the giants' heap
    not freed object by object): what it printed arrives whole (stdout a pipe, so buffered),
    OUT is written, the exit status is the compile's, and exit handlers do not run; a command
    that fails ends the usual way, with its status."""
    proc = subprocess.run([sys.executable, "-c", _ENTRY, "compile", "gpt2-tiny", "-t", "mesh8x8",
                           "-o", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("compiled gpt2-tiny") and "  stages  " in proc.stdout
    assert "freed at exit" not in proc.stdout
    assert (tmp_path / "o" / "schedule.json").is_file()
    proc = subprocess.run([sys.executable, "-c", _ENTRY, "compile", "gpt2-tiny", "-t", "wse9",
                           "-o", str(tmp_path / "p")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == ExitCode.INVALID_INPUT and "freed at exit" in proc.stdout


def test_output_into_a_closed_pipe_is_not_an_error():
    cmd = f"{sys.executable} -m compiler -q inspect llama3-8b --ir | head -1"  # > a pipe buffer
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "internal error" not in proc.stderr


def test_compile_summary_says_where_the_cycles_go_and_why_cores_idle(capsys, tmp_path):
    code, out, _ = run(capsys, "compile", "gpt2-tiny", "-t", "mesh8x8", "-o",
                       str(tmp_path / "o"), "--json")
    assert code == 0
    doc = json.loads(out)
    idle = doc["idle_cores"]
    assert idle["cores"] == doc["target"]["cores"] - doc["cores_used"] and idle["reason"]
    for mode in ("decode", "prefill"):
        rows = doc["cycle_breakdown"][mode]
        assert sum(r["total"] for r in rows) == doc["performance"][mode]["cycles"]
    code, out, _ = run(capsys, "compile", "gpt2-tiny", "-t", "mesh8x8", "-o",
                       str(tmp_path / "p"))
    assert "idle cores" in out and "decode path" in out and "prefill path" in out
