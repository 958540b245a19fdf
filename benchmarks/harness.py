"""Measured, not asserted: edgetl's median latency against the runtimes' own tools, in one run.

For the default example's ONNX and OpenVINO models (made by `edgetl run`), at the same threads and batch:

- OpenVINO: edgetl's ``measure()`` vs OpenVINO's ``benchmark_app`` (sync API, one stream as edgetl's latency
  hint gives, f32, same threads);
- onnxruntime: edgetl vs ``onnxruntime_perf_test`` when it is on PATH, otherwise a minimal loop written
  directly on the onnxruntime API (same session options as edgetl's runner).

Rounds are interleaved (edgetl, peer, edgetl, peer, ... with the order swapped every round) so slow drift of
the machine hits both alike. Printed: each round's medians, the ratio edgetl / peer (goal: within ±5%), and
the run-to-run spread of each tool ((max - min) / median over rounds). JSON lands in benchmarks/results/.

    .venv/bin/python benchmarks/harness.py --run runs/fashion-mnist-lite0 --threads 2 --batch 1 --rounds 5
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgetl._io import write_json  # noqa: E402
from edgetl.bench import environment, measure  # noqa: E402
from edgetl.errors import EdgetlError  # noqa: E402
from edgetl.runners import open_runner  # noqa: E402

MODELS = {"onnx": ("artifacts/onnx-fp32/model.onnx", "onnxruntime:CPUExecutionProvider"),
          "openvino": ("artifacts/openvino-fp32/model.xml", "openvino:CPU")}


def edgetl_median(path: Path, runtime: str, threads: int, batch: int, seconds: float) -> float:
    runner = open_runner(path, runtime, threads=threads)
    try:
        stats = measure(runner, batch_size=batch, warmup=10, min_runs=30, max_seconds=seconds, target_rel_ci=0.02)
    finally:
        runner.close()
    return stats.median_ms


def benchmark_app_median(path: Path, threads: int, batch: int, seconds: float, item_shape: list[int]) -> float:
    tool = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    argv = [tool, "-m", str(path), "-d", "CPU", "-api", "sync", "-hint", "none", "-nstreams", "1",
            "-nthreads", str(threads), "-infer_precision", "f32", "-ip", "f32", "-t", str(max(1, round(seconds))),
            # -data_shape keeps the model's dynamic batch axis, as edgetl runs it (-shape would recompile it
            # static, a different model); -ip f32 stops benchmark_app from switching image inputs to u8.
            "-data_shape", str([batch, *item_shape]).replace(" ", "")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    found = re.search(r"Median:\s+([\d.]+)\s*ms", done.stdout)
    if done.returncode != 0 or not found:
        raise EdgetlError(f"benchmark_app failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return float(found.group(1))


def ort_perf_test_median(path: Path, threads: int, batch: int, seconds: float) -> float:
    tool = shutil.which("onnxruntime_perf_test")
    argv = [tool, "-m", "duration", "-t", str(max(1, round(seconds))), "-x", str(threads), "-y", "1", "-e", "cpu",
            str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    found = re.search(r"P50 Latency:\s+([\d.eE+-]+)\s*s", done.stdout)
    if done.returncode != 0 or not found:
        raise EdgetlError(f"onnxruntime_perf_test failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return float(found.group(1)) * 1000


def ort_direct_median(path: Path, threads: int, batch: int, seconds: float) -> float:
    """The plainest loop on onnxruntime's API: same session options as edgetl, perf_counter_ns around run()."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    node = session.get_inputs()[0]
    feed = {node.name: np.random.default_rng(0).standard_normal((batch, *node.shape[1:]), dtype=np.float32)}
    for _ in range(10):
        session.run(None, feed)
    samples, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 30:
        start = time.perf_counter_ns()
        session.run(None, feed)
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "fashion-mnist-lite0",
                        help="run folder made by `edgetl run` (holds artifacts/onnx-fp32 and artifacts/openvino-fp32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="time budget of each measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    paths = {fmt: args.run / rel for fmt, (rel, _) in MODELS.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        print(f"error: {', '.join(missing)} not found; run `edgetl run` first (or pass --run RUN_FOLDER)",
              file=sys.stderr)
        return 2
    probe = open_runner(paths["openvino"], "openvino:CPU", threads=args.threads)
    item_shape = [int(d) for d in probe.input_spec.shape[1:]]
    probe.close()
    ort_peer = ("onnxruntime_perf_test", ort_perf_test_median) if shutil.which("onnxruntime_perf_test") else (
        "direct onnxruntime loop", ort_direct_median)
    peers = {
        "openvino": ("benchmark_app", lambda: benchmark_app_median(paths["openvino"], args.threads, args.batch,
                                                                   args.seconds, item_shape)),
        "onnx": (ort_peer[0], lambda: ort_peer[1](paths["onnx"], args.threads, args.batch, args.seconds)),
    }
    rounds: dict[str, list[dict[str, float]]] = {fmt: [] for fmt in MODELS}
    for index in range(args.rounds):
        for fmt, (_, runtime) in MODELS.items():
            def ours():
                return edgetl_median(paths[fmt], runtime, args.threads, args.batch, args.seconds)

            order = [("edgetl", ours), ("peer", peers[fmt][1])]
            measured = {who: fn() for who, fn in (order if index % 2 == 0 else order[::-1])}
            measured["ratio"] = measured["edgetl"] / measured["peer"]
            rounds[fmt].append(measured)
            print(f"round {index + 1} {fmt:8s} edgetl {measured['edgetl']:8.3f} ms  {peers[fmt][0]} "
                  f"{measured['peer']:8.3f} ms  ratio {measured['ratio']:.3f}", flush=True)

    def spread(values: list[float]) -> float:
        return (max(values) - min(values)) / statistics.median(values)

    summary = {}
    print(f"\nthreads {args.threads}, batch {args.batch}, {args.rounds} rounds of {args.seconds:g} s each")
    print(f"{'model':9s} {'peer':24s} {'edgetl ms':>10s} {'peer ms':>9s} {'ratio':>7s} {'ratio range':>15s} "
          f"{'edgetl spread':>14s} {'peer spread':>12s}  within ±5%")
    for fmt, items in rounds.items():
        ratios = [r["ratio"] for r in items]
        row = {
            "peer": peers[fmt][0], "edgetl_median_ms": statistics.median(r["edgetl"] for r in items),
            "peer_median_ms": statistics.median(r["peer"] for r in items), "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "edgetl_spread": spread([r["edgetl"] for r in items]),
            "peer_spread": spread([r["peer"] for r in items]), "rounds": items,
        }
        row["within_5_percent"] = abs(row["ratio_median"] - 1) <= 0.05
        summary[fmt] = row
        print(f"{fmt:9s} {row['peer']:24s} {row['edgetl_median_ms']:10.3f} {row['peer_median_ms']:9.3f} "
              f"{row['ratio_median']:7.3f} {row['ratio_min']:7.3f}-{row['ratio_max']:.3f} "
              f"{row['edgetl_spread']:13.1%} {row['peer_spread']:11.1%}  {'yes' if row['within_5_percent'] else 'NO'}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = write_json(args.out / f"harness-t{args.threads}-b{args.batch}-{stamp}.json", {
        "created": stamp, "run": str(args.run), "threads": args.threads, "batch": args.batch, "rounds": args.rounds,
        "seconds": args.seconds, "environment": environment(), "results": summary,
    })
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
