"""`wafer sweep`: the cross product compiled on a process pool and on a local Ray gives the same
table; failed points are recorded; the cache skips finished points and an interrupted sweep
resumes; bad --vary arguments are one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL, default_sigint

from compiler.cli import main
from compiler.driver import CompileOptions, compile_model
from compiler.errors import ExitCode
from compiler.sweep import FRONTIER_COSTS, cache_path, vary_keys
from compiler.sweep.pareto import frontier
from compiler.target import load_target
from compiler.tiling.candidates import TilingOptions

RUN_ONLY = ("compile_s", "verify_s", "cached", "reused")  # how a point was obtained, not what
# it is (which earlier point of its worker it reused depends on how the backend spread them)


def sweep(capsys, out: Path, *argv: str) -> tuple[int, dict, str, str]:
    code = main(["sweep", *argv, "-o", str(out)])
    stdout, stderr = capsys.readouterr()
    doc = json.loads((out / "sweep.json").read_text()) if code == 0 else {}
    return code, doc, stdout, stderr


def table(doc: dict) -> list[dict]:
    return [{k: v for k, v in p.items() if k not in RUN_ONLY} for p in doc["points"]]


def test_every_point_is_a_row_failed_ones_included(pool_sweep):
    _, doc, _ = pool_sweep
    points = doc["points"]
    assert len(points) == 3 * 2 * 2 == doc["run"]["points"]
    assert doc["run"]["computed"] == sum(bool(p["key"]) for p in points) == 10
    for p in points:
        sram, reserve = p["overrides"]["core.sram_bytes"], p["overrides"]["core.reserve_bytes"]
        if sram == "8KiB" and reserve == "16KiB":  # reserve >= SRAM: not a valid machine
            assert p["status"] == "error" and "core.reserve_bytes" in p["error"]
            assert p["total_sram_bytes"] is None and p["key"] == ""
        elif sram == "8KiB":
            assert p["status"] in ("does-not-fit", "infeasible") and p["error"]
        else:
            assert p["status"] == "ok" and p["error"] == "" and p["tokens_per_s"] > 0
            assert p["decode_context"] == int(p["overrides"]["context"])
    assert sum(doc["run"]["status"].values()) == len(points)


def test_a_point_is_what_compile_gives(pool_sweep):
    _, doc, _ = pool_sweep
    p = next(p for p in doc["points"] if p["status"] == "ok")
    target = load_target("mesh8x8", {k: v for k, v in p["overrides"].items() if "." in k})
    opts = CompileOptions(tiling=TilingOptions(context=int(p["overrides"]["context"])))
    r = compile_model("gpt2-tiny", target, opts)
    assert p["tokens_per_s"] == r.estimates["decode"].tokens_per_s
    assert p["ttft_s"] == r.estimates["prefill"].ttft_s
    assert p["cores_used"] == r.metrics.cores_used
    assert p["offchip_bytes_per_token"] == r.metrics.offchip_bytes_per_token
    assert p["total_sram_bytes"] == target.core.sram_bytes * target.total_cores


def test_pareto_flags_follow_the_ok_rows(pool_sweep):
    _, doc, _ = pool_sweep
    ok = [p if p["status"] == "ok" else None for p in doc["points"]]
    gains = [p and p["tokens_per_s"] for p in ok]
    for cost in FRONTIER_COSTS:
        flags = frontier([p and p[cost] for p in ok], gains)
        assert [p["pareto"][cost] for p in doc["points"]] == flags
        assert doc["frontiers"][cost]["points"] == [i for i, f in enumerate(flags) if f]
        assert any(flags)


def test_csv_holds_the_same_rows(pool_sweep):
    _, doc, text = pool_sweep
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == len(doc["points"])
    for row, p in zip(rows, doc["points"], strict=True):
        assert row["core.sram_bytes"] == p["overrides"]["core.sram_bytes"]
        assert row["status"] == p["status"] and row["error"] == p["error"]
        assert row["tokens_per_s"] == ("" if p["tokens_per_s"] is None else
                                       str(p["tokens_per_s"]))
        assert row["pareto_cores_used"] == str(p["pareto"]["cores_used"]).lower()


def test_ray_gives_the_same_table_as_the_pool(pool_sweep, capsys, tmp_path):
    _, pool_doc, _ = pool_sweep
    code, doc, out, err = sweep(capsys, tmp_path / "ray", *SMALL, "--backend", "ray",
                                "--workers", "2")
    assert code == 0, err
    assert doc["run"]["backend"] == "ray"
    assert table(doc) == table(pool_doc)
    assert "12 points (8 ok" in out


def test_the_cache_skips_finished_points(pool_sweep, capsys, tmp_path):
    src, first, _ = pool_sweep
    out = tmp_path / "again"
    shutil.copytree(src, out)
    # a marker in one cached result proves the re-run read it instead of compiling again
    done = next(p for p in first["points"] if p["status"] == "ok")
    path = cache_path(out, done["key"])
    cached = json.loads(path.read_text())
    cached["result"]["tokens_per_s"] = 12345.5
    path.write_text(json.dumps(cached))
    more = [*SMALL[:-1], "context=16,64,32"]
    code, doc, stdout, err = sweep(capsys, out, *more, "--workers", "2")
    assert code == 0
    new = [p for p in doc["points"] if p["overrides"]["context"] == "32" and p["key"]]
    assert doc["run"]["computed"] == len(new) == 5
    assert doc["run"]["cached"] == 10  # every valid point of the first sweep
    assert all(not p["cached"] for p in new)
    assert next(p for p in doc["points"] if p["key"] == done["key"])["tokens_per_s"] == 12345.5
    assert "[sweep] 18 points: 10 cached, 3 with an invalid target spec, 5 to compile" in err
    assert len(err.splitlines()) == 1 + 5  # the counts, then one line per computed point


def test_points_cached_by_other_code_are_computed_again(pool_sweep, capsys, tmp_path,
                                                        monkeypatch):
    """The key holds a hash of wafer's source: an edit without a version bump misses the cache."""
    import compiler.sweep.plan as sw  # point_key calls plan.code_sha256

    src, first, _ = pool_sweep
    assert len(sw.code_sha256()) == 64 and sw.code_sha256() == sw.code_sha256()
    out = tmp_path / "edited"
    shutil.copytree(src, out)
    monkeypatch.setattr(sw, "code_sha256", lambda: "0" * 64)  # as if a module had changed
    code, doc, _, _ = sweep(capsys, out, *SMALL, "--workers", "2")
    assert code == 0 and doc["run"]["cached"] == 0
    assert doc["run"]["computed"] == first["run"]["computed"] + first["run"]["cached"]
    assert table(doc) != table(first)  # other keys ...
    assert [p["tokens_per_s"] for p in doc["points"]] == [
        p["tokens_per_s"] for p in first["points"]]  # ... for the same (deterministic) results


def test_an_interrupted_sweep_resumes(capsys, tmp_path):
    out = tmp_path / "sw"
    argv = ["gpt2-tiny", "-t", "mesh8x8", "--vary", "core.sram_bytes=16KiB,32KiB,64KiB,96KiB",
            "--vary", "context=16,32,48,64"]
    proc = subprocess.Popen([sys.executable, "-m", "compiler", "sweep", *argv, "-o", str(out),
                             "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=default_sigint)
    points = out / "points"
    while not (points.is_dir() and any(points.glob("*.json"))) and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors == [line for line in stderr.splitlines() if not line.startswith("[sweep]")]
    assert len(errors) == 1 and "run the same command again to resume" in errors[0]
    finished = len(list(points.glob("*.json")))
    assert 1 <= finished < 16
    assert not (out / "sweep.json").exists() and not (out / "sweep.html").exists()
    assert stdout == ""
    code, doc, _, _ = sweep(capsys, out, *argv, "--workers", "2")
    assert code == 0
    assert doc["run"]["cached"] == finished and doc["run"]["computed"] == 16 - finished


def test_verify_each_point(capsys, tmp_path):
    code, doc, _, err = sweep(capsys, tmp_path / "v", "llama-tiny", "-t", "mesh8x8", "--verify",
                              "--vary", "links.bytes_per_cycle=2,8", "--workers", "1")
    assert code == 0, err
    assert [p["verify"] for p in doc["points"]] == ["passed", "passed"]
    assert all(p["verify_max_abs"] < 1e-4 for p in doc["points"])
    # slower links cannot make decode faster
    assert doc["points"][0]["tokens_per_s"] <= doc["points"][1]["tokens_per_s"]


def one_line_error(capsys, tmp_path, *argv: str) -> tuple[int, str]:
    out = tmp_path / "never"
    code = main(["-q", "sweep", "gpt2-tiny", "-t", "mesh8x8", *argv, "-o", str(out)])
    _, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not out.exists()
    return code, err


def test_a_bad_vary_key_names_the_valid_keys(capsys, tmp_path):
    code, err = one_line_error(capsys, tmp_path, "--vary", "core.sram_byte=24KiB,48KiB")
    assert code == ExitCode.USAGE
    assert "unknown key; did you mean core.sram_bytes?" in err
    assert all(key in err for key in vary_keys())


@pytest.mark.parametrize("vary, says", [
    ("core.sram_bytes=24KiB,lots", "core.sram_bytes=lots"),
    ("context=16,zero", "context=zero: expected a whole number"),
    ("method=cpsat,magic", "expected one of cpsat, first-fit, serpentine"),
    ("core.sram_bytes=24KiB,24KiB", "value '24KiB' is given twice"),
    ("core.sram_bytes=", "expected KEY=V1,V2,..."),
    ("grid.rows=0", "grid.rows: expected a value in 1..65,536"),
])
def test_bad_vary_values_are_one_line_errors(capsys, tmp_path, vary, says):
    code, err = one_line_error(capsys, tmp_path, "--vary", vary)
    assert code == ExitCode.USAGE and says in err


def test_a_key_given_twice_is_an_error(capsys, tmp_path):
    code, err = one_line_error(capsys, tmp_path, "--vary", "context=16", "--vary", "context=32")
    assert code == ExitCode.USAGE and "--vary context is given twice" in err


def test_verify_of_a_shape_only_model_is_refused(capsys, tmp_path):
    out = tmp_path / "never"
    code = main(["-q", "sweep", "llama3-8b", "-t", "wse3", "--verify", "--vary",
                 "context=16,32", "-o", str(out)])
    assert code == ExitCode.USAGE and "shape-only" in capsys.readouterr().err
    assert not out.exists()


def test_sweepdir_must_be_new_empty_or_a_sweep(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code = main(["-q", "sweep", "gpt2-tiny", "-t", "mesh8x8", "--vary", "context=16",
                 "-o", str(tmp_path)])
    assert code == ExitCode.USAGE and "is not a sweep directory" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_ray_backend_without_ray_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from compiler.cli import main; "
            f"sys.exit(main(['sweep', 'gpt2-tiny', '-t', 'mesh8x8', '--vary', 'context=16', "
            f"'--backend', 'ray', '-o', {str(tmp_path / 'x')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == ExitCode.USAGE
    assert proc.stderr.splitlines() == [
        "error: --backend ray needs Ray, which is not installed: "
        "pip install 'wafer-compiler[ray]'"]


def test_ready_points_go_out_longest_first_and_a_chain_stays_on_its_worker():
    """The pool's order (issue 18): the longest work first (the longest context, then the
    longest chain), and a worker that finished a point gets the point after it in its chain
    when that is ready, whatever else is longer, so the chain's shared work stays in one
    worker's `Reuse`."""
    from compiler.sweep.plan import plan_sweep
    from compiler.sweep.point import Queue

    plan = plan_sweep("gpt2-tiny", "mesh8x8", ["context=16,64,32",
                                               "links.bytes_per_cycle=2,4"], CompileOptions())
    assert [p.after for p in plan.points] == [None, 0, None, 2, None, 4]
    assert [s.index for s, _ in Queue(plan.points).take()] == [2, 4, 0]
    q = Queue(plan.points)
    a, b = q.take_for(None), q.take_for(None)
    assert (a[0].index, b[0].index) == (2, 4)
    q.done(b[0], None)
    q.done(a[0], None)
    assert q.take_for(2)[0].index == 3  # its own chain's, before the longer-context point 5
    assert [q.take_for(None)[0].index for _ in range(2)] == [5, 0]
    assert q.take_for(0) is None


def test_an_idle_worker_leaves_a_point_to_the_worker_whose_chain_leads_to_it():
    """The hand-out to idle workers: a worker whose chain ended does not take the next point
    of a chain another worker has just advanced (it came first in worker order, and took the
    point to the other worker's `Reuse` loss: a flaky pool sweep before this)."""
    from compiler.sweep.plan import plan_sweep
    from compiler.sweep.point import Queue

    plan = plan_sweep("gpt2-tiny", "mesh8x8", ["context=16,64,32",
                                               "links.bytes_per_cycle=2,4"], CompileOptions())
    q = Queue(plan.points)
    assert [q.take_for(None)[0].index for _ in range(3)] == [2, 4, 0]
    q.done(plan.points[2], None)
    assert q.take_for(2)[0].index == 3
    q.done(plan.points[4], None)  # 5 is ready; worker 0 has ended its chain (ran 3)
    assert [(w, t[0].index) for w, t in q.hand_out({0: 3, 1: 4})] == [(1, 5)]
    q.done(plan.points[0], None)
    assert [(w, t[0].index) for w, t in q.hand_out({0: 3, 1: None, 2: 0})] == [(2, 1)]


def test_a_pool_sweep_keeps_each_chain_on_one_worker(capsys, tmp_path):
    """Two chains of three points on two workers: every point after the first of its chain
    runs where its chain began, so it takes the decode forms (of its context) and the decode
    schedule that worker derived for the point before it (`reused`)."""
    code, doc, _, _ = sweep(capsys, tmp_path / "sw", "llama-tiny", "-t", "mesh8x8", "--vary",
                            "context=4096,8192", "--vary", "links.bytes_per_cycle=2,4,8",
                            "--time-limit", "5", "--workers", "2")
    assert code == 0
    followers = [p for p in doc["points"] if p["hinted_by"] is not None]
    assert len(followers) == 4
    assert all("decode-forms" in p["reused"] for p in followers)



class _FreedLoudly:
    def __del__(self):
        print("freed at exit", flush=True)


def _keep_one() -> None:
    global _KEPT
    _KEPT = _FreedLoudly()
    print("kept one", end="")


def test_a_pool_worker_ends_without_freeing_its_heap(capfd):
    """Pool workers end at once (pool._exit_now), skipping the interpreter's teardown of what
    their Reuse holds: an object a worker keeps is never finalized, yet what it printed
    arrives and it ends with status 0."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from compiler.sweep.pool import _quiet_worker

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_quiet_worker)
    pool.submit(_keep_one).result()
    procs = list(pool._processes.values())
    pool.shutdown()
    for proc in procs:
        proc.join()
    out = capfd.readouterr().out
    assert "kept one" in out and "freed at exit" not in out
    assert [proc.exitcode for proc in procs] == [0]
