"""One documented exit code per class of docs/errors.md, one line each, through the command
line: a valid model compiles (0), usage errors (2), a model that does not fit (5), a verify
mismatch (1) and a refused schedule (70, internal)."""

from __future__ import annotations

import json
import re

import pytest
from cli_cases import ROOT, _lines, mlp, refused, save, wafer

from compiler.errors import ExitCode


def test_a_valid_model_compiles(tmp_path, capsys):
    code, out, err = wafer(capsys, "compile", str(save(tmp_path, mlp())), "-t", "mesh8x8",
                           "-o", str(tmp_path / "out"))
    assert code == 0 and "compiled m for mesh8x8" in out and _lines(err) == []


@pytest.mark.parametrize(("argv", "pattern"), [
    (["compile", "gpt2-tiny", "-t", "mesh8x8"], r"required: -o/--output"),
    (["frobnicate"], r"invalid choice: 'frobnicate'"),
    (["inspect", "gpt2-tiny", "--seq-len", "0"], r"--seq-len: 0 is out of range 1\.\."),
    (["compile", "gpt2-tiny", "-t", "mesh8x8", "-o", "x", "--seed", "99999999999"],
     r"--seed: 99999999999 is out of range"),
    (["compile", "gpt2-tiny", "-t", "mesh8x8", "-o", "x", "--time-limit", "nan"],
     r"--time-limit: nan is out of range"),
    (["compile", "gpt2-tiny", "-t", "mesh8x8", "-o", "x", "--workers", "0"],
     r"--workers: 0 is out of range 1\.\.256"),
])
def test_usage_errors(capsys, argv, pattern):
    code, _, err = wafer(capsys, *argv)
    assert code == ExitCode.USAGE and len(_lines(err)) == 1 and re.search(pattern, err), err


def test_does_not_fit(tmp_path, capsys):
    spec = (ROOT / "targets" / "mesh8x8.toml").read_text()
    spec = spec.replace("rows = 8", "rows = 1").replace("cols = 8", "cols = 1")
    path = tmp_path / "one-core.toml"
    path.write_text(spec.replace('sram_bytes = "64 KiB"', 'sram_bytes = "8 KiB"'))
    refused(capsys, tmp_path, "gpt2-tiny", ExitCode.DOES_NOT_FIT,
            r"layer \S+: a core needs [\d,]+ bytes but 4,096 are available", target=str(path))


def test_verify_mismatch_and_internal_error(tmp_path, capsys):
    out = tmp_path / "out"
    assert wafer(capsys, "compile", "llama-tiny", "-t", "mesh8x8", "-o", str(out))[0] == 0
    code, stdout, err = wafer(capsys, "verify", str(out), "--atol", "0", "--rtol", "0")
    assert code == ExitCode.MISMATCH and stdout.startswith("FAILED") and _lines(err) == []
    # a schedule.json edited so that a step runs where its operands are not: the executor
    # refuses it as a compiler bug would be refused (exit 70), in one line
    doc = json.loads((out / "schedule.json").read_text())
    step = next(s for s in doc["steps"] if s["kind"] == "compute" and s["region"] != "head")
    step["region"] = "head"
    (out / "schedule.json").write_text(json.dumps(doc))
    code, _, err = wafer(capsys, "verify", str(out))
    assert code == ExitCode.INTERNAL and len(_lines(err)) == 1
    assert re.match(r"error: schedule fault at step \d+ \(compute .* on head\)", err)
