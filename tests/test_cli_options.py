"""Options and names that do not fit the model, caught before ONNX Runtime or OUT (issue 12,
items 4 and 5): a --seq-len past the position table, --batch/--seq-len that the model fixes or
cannot bind (never silently ignored), a misspelt zoo or target name (did you mean), and -q/-v
before or after the command. The other bad-input classes of docs/errors.md: test_cli_exit_codes,
test_cli_bad_models, test_cli_external_data, test_cli_bad_targets and test_cli_out."""

from __future__ import annotations

import re

import onnx
import pytest
from cli_cases import ROOT, mlp, refused, save, wafer

from compiler.cli import main
from compiler.errors import ExitCode


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
