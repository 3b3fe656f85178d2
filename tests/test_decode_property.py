"""Property (issue 14): whatever `wafer compile --verify --decode N` accepts, it verifies;
anything else it refuses before writing OUT. A seeded draw of zoo models (no-cache, with an
attention mask, with past, an Attention-op export, an encoder), targets, prompt lengths,
contexts and step counts; each compile either exits 0 with every decode step passed, or exits
with a refusal code, one `error:` line and no OUT."""

from __future__ import annotations

import json
import random

import pytest

from compiler.cli import main

MODELS = ["gpt2-tiny", "gpt2-tiny-mask", "gpt2-tiny-past", "llama-tiny", "bert-tiny",
          "llama-tiny-opset23"]
TARGETS = ["mesh8x8", "mesh16x16", "mesh8x8-x2"]
REFUSALS = {2, 3, 4, 5}  # usage, invalid input, unsupported, does not fit
DRAWS = 8


def draws(seed: int = 14) -> list[tuple[str, str, int, int, int | None]]:
    rng = random.Random(seed)
    out = []
    for _ in range(DRAWS):
        model, target = rng.choice(MODELS), rng.choice(TARGETS)
        seq, steps = rng.randint(1, 12), rng.randint(1, 6)
        context = rng.choice([None, seq + steps - 1, seq + steps + rng.randint(0, 8)])
        out.append((model, target, seq, steps, context))
    return out


@pytest.mark.parametrize(("model", "target", "seq", "steps", "context"), draws())
def test_compile_verify_decode_verifies_or_refuses_before_writing(tmp_path, capsys, model,
                                                                  target, seq, steps, context):
    out = tmp_path / "out"
    argv = ["-q", "compile", model, "-t", target, "-o", str(out), "--verify", "--decode",
            str(steps), "--seq-len", str(seq), "--time-limit", "5", "--no-report"]
    argv += ["--context", str(context)] if context is not None else []
    code = main(argv)
    captured = capsys.readouterr()
    if code == 0:
        doc = json.loads((out / "verify-decode.json").read_text())
        assert doc["passed"] and len(doc["steps"]) == steps + 1
        assert doc["tokens"] == doc["reference_tokens"]
    else:
        assert code in REFUSALS, (code, captured.err)
        assert not out.exists() and list(tmp_path.iterdir()) == []
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1


def test_the_draws_cover_both_outcomes():
    """The draw holds models that decode and models that are refused, so the property above is
    exercised both ways (an encoder is refused; a one-token prompt or a context without room
    for the steps too)."""
    got = draws()
    assert any(m == "bert-tiny" or s == 1 or (c is not None and c < s + n)
               for m, _, s, n, c in got)
    assert any(m != "bert-tiny" and s > 1 and (c is None or c >= s + n) for m, _, s, n, c in got)
