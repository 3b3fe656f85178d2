"""`wafer compile --verify` on every no-cache causal-LM family export of tests/fixtures/hf/: each
one either compiles and verifies against ONNX Runtime, or is refused before OUT with exit 4 and
every unsupported node listed (benchmarks/hf_families.py tabulates both targets and both forms
in docs/performance.md)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from test_hf_fixtures import HF, NOCACHE

from compiler.cli import main
from compiler.errors import ExitCode

LISTED = re.compile(r" \((?:ai\.onnx|[\w.]+)::(\w+) v\d+; inputs ")


@pytest.mark.parametrize("entry", NOCACHE, ids=lambda e: e["name"])
def test_no_cache_export_verifies_or_lists_its_unsupported_ops(entry, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["-q", "compile", str(HF / entry["file"]), "-t", "mesh8x8", "-o", str(out),
            "--batch", "1", "--seq-len", "16", "--method", "first-fit", "--no-report",
            "--verify"]
    code = main(argv)
    err = capsys.readouterr().err
    if code == 0:
        verify = json.loads((out / "verify.json").read_text())
        assert verify["passed"] and [o["name"] for o in verify["outputs"]] == ["logits"]
        return
    assert code == ExitCode.UNSUPPORTED, err
    assert not out.exists()
    line = err.strip().splitlines()[-1]
    head = re.match(r"error: (\d+) unsupported op\(s\) \(([^:]*)\): ", line)
    assert head, line
    listed = Counter(LISTED.findall(line))
    assert sum(listed.values()) == int(head[1])
    assert sorted(listed) == head[2].split(", ")
    histogram = entry["op_histogram"]
    assert all(0 < n <= histogram.get(op, 0) for op, n in listed.items()), (listed, histogram)
