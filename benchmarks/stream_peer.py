"""Side by side with the Stream peer (stream-dse, ../shared/peer/stream) on its own shared case.

One run compiles the same synthetic 8-block GPT-style decoder (the peer's make_transformer.py:
d_model 64, 4 heads, 16-token prompt, ffn 256) with wafer for the peer's machine
(benchmarks/targets/stream-mesh8x8.toml: 8 x 8 cores of 2 MiB, 32 x 32 MACs, 256-bit links),
then runs the peer's harness (`PER_BLOCK=1 run_peer.sh 64 8`, cold output directory), and
reports both tools' compile time, cycles per forward (the 16-token prompt: wafer's prefill
estimate, Stream's latency) and off-chip bytes of that forward. Writes the `stream-peer`
section of docs/performance.md.

Usage: python benchmarks/stream_peer.py [--peer-json FILE] [--peer DIR] [--blocks N]
  --peer-json FILE  reuse a saved run_peer.sh JSON line instead of running Stream (which takes
                    5-15 minutes on 2 shared cores); the section then says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import ROOT, WAFER, machine, run, table, write_section

PEER = ROOT.parent.parent / "shared" / "peer" / "stream"
TARGET = ROOT / "benchmarks" / "targets" / "stream-mesh8x8.toml"
CORES = 64


def load() -> str:
    out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    return out.split("load average:")[-1].strip() if "load average" in out else "unknown"


def make_model(peer: Path, blocks: int, work: Path) -> Path:
    """The peer's decoder with zero weights in float32 (wafer compiles and could verify it;
    the target stores every float at 2 bytes, as Stream's bf16)."""
    path = work / f"decoder_L{blocks}.onnx"
    subprocess.run([sys.executable, str(peer / "inputs" / "make_transformer.py"), str(path),
                    "--layers", str(blocks), "--dtype", "f32", "--keep-weights"],
                   check=True, capture_output=True)
    return path


def offchip_bytes(out: Path) -> tuple[int, int]:
    """(bytes of one cold forward: every load and store, weights included; of those, weights
    loaded once at setup) from OUT/schedule.json."""
    doc = json.loads((out / "schedule.json").read_text())
    moved = [s for s in doc["steps"] if s["kind"] in ("load", "store")]
    setup = sum(s["nbytes"] for s in moved if s.get("phase") == "setup")
    return sum(s["nbytes"] for s in moved), setup


def run_wafer(model: Path, work: Path) -> dict:
    out = work / "wafer-out"
    wall, rss, code, text = run([*WAFER, "compile", str(model), "-t", str(TARGET), "-o",
                                 str(out), "--json"])
    if code != 0:
        raise SystemExit(f"error: wafer compile exited {code}")
    summary = json.loads(text)
    stages = {s["name"]: s["seconds"] for s in summary["stages"]}
    compile_s = sum(v for k, v in stages.items() if k not in ("artifacts", "report"))
    total, setup = offchip_bytes(out)
    perf = summary["performance"]
    return {"wall_s": wall, "compile_s": compile_s, "rss_mb": rss,
            "cycles": perf["prefill"]["cycles"], "decode_cycles": perf["decode"]["cycles"],
            "offchip": total, "weights": setup, "cores": summary["cores_used"],
            "idle": summary.get("idle_cores")}


def run_peer(peer: Path, blocks: int) -> dict:
    env = {**os.environ, "PER_BLOCK": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([str(peer / "run_peer.sh"), str(CORES), str(blocks)], env=env,
                          capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"error: run_peer.sh exited {proc.returncode}: {tail[0]}")
    res = json.loads(lines[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


def _seconds(value: float | str) -> str:
    """A wall time, or a saved line's range as written (e.g. "278-844")."""
    return f"{value:.1f}" if isinstance(value, int | float) else str(value)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", type=Path, default=PEER, help="the peer harness directory")
    ap.add_argument("--peer-json", type=Path, help="a saved run_peer.sh JSON line")
    ap.add_argument("--blocks", type=int, default=8)
    args = ap.parse_args()
    before = load()
    with tempfile.TemporaryDirectory(prefix="stream-peer-") as tmp:
        work = Path(tmp)
        model = make_model(args.peer, args.blocks, work)
        w = run_wafer(model, work)
        print(f"wafer: {w}", file=sys.stderr, flush=True)
        if args.peer_json:
            p = json.loads(args.peer_json.read_text().strip().splitlines()[-1])
        else:
            p = run_peer(args.peer, args.blocks)
        print(f"stream: {p}", file=sys.stderr, flush=True)
    after = load()
    rows = [
        ["wafer", f"{w['compile_s']:.1f} ({w['wall_s']:.1f} process)", f"{w['cycles']:,}",
         f"{w['offchip']:,} ({w['weights']:,} weights)", f"{w['cores']} of {CORES}"],
        ["Stream (stream-dse 2.1.1)", _seconds(p["wall_s"]), f"{p['latency_cycles']:,.0f}",
         f"{p['offchip_bytes']:,.0f}", f"{p.get('cores', CORES)} available"],
    ]
    ratio = w["cycles"] / p["latency_cycles"]
    source = (f"Stream's numbers from the saved run `{args.peer_json.name}`"
              + (f" ({p['note']})" if p.get("note") else "") if args.peer_json
              else "both tools run back to back in this run")
    body = (f"Synthetic GPT-style decoder, {args.blocks} blocks (d_model 64, 4 heads, 16-token "
            f"prompt, ffn 256), on an 8 x 8 mesh of 2 MiB cores with 32 x 32 MACs and 256-bit "
            f"links (benchmarks/targets/stream-mesh8x8.toml); one forward of the prompt. "
            f"{source}; load average {before} before, {after} after ({machine()}).\n\n"
            + table(["tool", "compile s", "cycles per forward", "off-chip bytes per forward",
                     "cores"], rows)
            + f"\n\nwafer / Stream cycles: {ratio:.2f}x. wafer's decode step (one token at "
              f"context 16): {w['decode_cycles']:,} cycles.")
    if w.get("idle"):
        body += f" wafer's idle cores: {w['idle']['cores']} ({w['idle']['reason']})."
    write_section("stream-peer", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
