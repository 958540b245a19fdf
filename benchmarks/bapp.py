"""OpenVINO's ``benchmark_app`` beside edgetl's own latency harness, for ``peers.py``: each FP32 IR at batch 1 under
benchmark_app (as given, and with f32 precision like edgetl's runner) between two runs of ``edgetl.bench.measure``,
what benchmark_app's report says (latency, the compiled model's properties, port precisions), and the report's table.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from compression import OV
from peer_tools import Subject, error_line, first_line

BAPP_KEYS = ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT",
             "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE")


def parse_benchmark_app(output: str) -> dict[str, Any]:
    """Latency (ms) and the compiled model's properties from benchmark_app's report."""
    latency = {key.lower(): float(value) / (1000 if unit == "us" else 1)
               for key, value, unit in re.findall(r"\b(Median|Average|Min|Max):\s+([\d.]+)\s*(ms|us)", output)}
    properties = {key: re.sub(r"<Type: '(\w+)'>", r"\1", value.strip())
                  for key, value in re.findall(r"\[ INFO \]\s+([A-Z_]+): (.+)", output) if key in BAPP_KEYS}
    ports = dict(re.findall(r"\[ INFO \]\s+(\S+) \(node: [^)]*\) : (\w+) /", output))  # the last listing wins
    return {"latency_ms": latency, "properties": properties, "port_precision": ports}


def harness(subject: Subject, *, threads: int, seconds: float) -> dict[str, Any]:
    """edgetl's own latency harness (``edgetl.bench.measure``, as the pipeline's bench stage), FP32 IR, batch 1."""
    from edgetl.bench import measure as harness_measure
    from edgetl.bench import runtime_settings
    from edgetl.runners import open_runner

    runner, make_input = subject.harness(open_runner(subject.xml, OV, threads=threads))
    stats = harness_measure(runner, batch_size=1, max_seconds=seconds, make_input=make_input)
    settings = runtime_settings(getattr(runner, "runner", runner))
    runner.close()
    return {"median_ms": round(stats.median_ms, 4), "mean_ms": round(stats.mean_ms, 4), "runs": stats.runs,
            "settings": settings}


def benchmark_app_rows(subjects: list[Subject], *, threads: int, seconds: float, work: Path, log=print) -> list[dict]:
    """benchmark_app at batch 1 on each FP32 IR (latency hint, ``threads`` threads; as given, and with f32 precision
    like edgetl's runner), between two runs of edgetl's own harness on the same IR."""
    import openvino as ov

    tool = Path(sys.executable).parent / "benchmark_app"
    config = work / "benchmark_app.json"  # -nthreads is refused beside -hint (a benchmark_app UI rule): pass it here
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'{{"CPU": {{"INFERENCE_NUM_THREADS": "{threads}"}}}}\n')
    rows = []
    for subject in subjects:
        names = {port.get_any_name() for port in ov.Core().read_model(str(subject.xml)).inputs}
        feed = subject.feed(1)
        shape = (",".join(f"{k}[{','.join(map(str, v.shape))}]" for k, v in feed.items() if k in names)
                 if isinstance(feed, dict) else f"[{','.join(map(str, feed.shape))}]")
        row: dict[str, Any] = {"model": f"{subject.workload}/{subject.key}", "ir": str(subject.xml), "shape": shape}

        row["edgetl_before"] = harness(subject, threads=threads, seconds=seconds)
        base = [str(tool), "-m", str(subject.xml), "-d", "CPU", "-hint", "latency", "-load_config", str(config),
                "-shape", shape, "-t", str(max(1, round(seconds)))]
        extra = ["-infer_precision", "f32"] + ([] if isinstance(feed, dict) else ["-ip", "f32"])
        for label, args in (("as_given", base), ("f32_like_edgetl", base + extra)):
            try:
                proc = subprocess.run(args, capture_output=True, text=True, timeout=120 + 2 * seconds,
                                      check=False)
                row[label] = {"command": " ".join(args[1:]), **parse_benchmark_app(proc.stdout + proc.stderr)}
                if proc.returncode or not row[label]["latency_ms"]:
                    row[label]["error"] = error_line(proc.stdout + proc.stderr)
            except (OSError, subprocess.TimeoutExpired) as exc:
                row[label] = {"command": " ".join(args[1:]), "error": first_line(exc)}
        row["edgetl_after"] = harness(subject, threads=threads, seconds=seconds)
        log(f"benchmark_app {row['model']}: edgetl {row['edgetl_before']['median_ms']:.3f} / "
            f"{row['edgetl_after']['median_ms']:.3f} ms, benchmark_app "
            f"{row['as_given'].get('latency_ms', {}).get('median', float('nan')):.3f} ms (as given), "
            f"{row['f32_like_edgetl'].get('latency_ms', {}).get('median', float('nan')):.3f} ms (f32)")
        rows.append(row)
    return rows


def bapp_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["IR (batch 1)", "edgetl harness ms (before / after)", "benchmark_app median / avg ms (as given)",
            "its precision, input, pinning", "benchmark_app median ms (-infer_precision f32)", "edgetl settings"]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for row in rows:
        given, f32 = row["as_given"], row["f32_like_edgetl"]

        def lat(run: dict) -> str:
            if run.get("error"):
                return f"FAILED: {run['error']}"
            return f"{run['latency_ms']['median']:.3f} / {run['latency_ms'].get('average', float('nan')):.3f}"

        props = given.get("properties", {})
        edgetl = row["edgetl_before"]["settings"]
        lines.append(f"| {row['model']} | {row['edgetl_before']['median_ms']:.3f} / "
                     f"{row['edgetl_after']['median_ms']:.3f} | {lat(given)} | "
                     f"{props.get('INFERENCE_PRECISION_HINT', '?')}, "
                     f"{', '.join(f'{k}:{p}' for k, p in given.get('port_precision', {}).items())}, pinning "
                     f"{props.get('ENABLE_CPU_PINNING', '?')}, streams {props.get('NUM_STREAMS', '?')} | {lat(f32)} | "
                     f"{edgetl.get('inference_precision_hint', '?')}, "
                     f"threads {edgetl.get('inference_num_threads', '?')}, "
                     f"pinning {edgetl.get('enable_cpu_pinning', '?')} |")
    return lines


def bapp_section(rows: list[dict[str, Any]], *, threads: int, seconds: float) -> list[str]:
    """The report's benchmark_app section: heading, the command's settings, and ``bapp_table``."""
    return ["", "### OpenVINO benchmark_app beside edgetl's harness (same FP32 IR, batch 1)", "",
            (f"benchmark_app `-hint latency -load_config` ({{\"CPU\": {{\"INFERENCE_NUM_THREADS\": {threads}}}}}: "
             "it refuses `-nthreads` beside `-hint`), `-shape` batch 1, `-t` "
             f"{max(1, round(seconds))} s; edgetl: `edgetl.bench.measure` on the same IR just before and after."),
            ""] + bapp_table(rows)
