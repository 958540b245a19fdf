"""What the report's figures share: matplotlib (imported lazily, object API, SVG out), the colours and markers,
the legend handles, and the readings of the report record every figure makes (quality, latency, gate, frontier)."""

from __future__ import annotations

import io
import re
from typing import Any

from ..errors import EdgetlError

RUNTIME_COLOURS = {"torch": "#7f7f7f", "onnxruntime": "#1f77b4", "openvino": "#9467bd"}


SPARE_COLOURS = ("#2ca02c", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


MODEL_MARKERS = {"teacher": "o", "student": "^"}


STYLE = {"svg.fonttype": "none", "svg.hashsalt": "edgetl", "font.size": 9, "axes.titlesize": 10,
          "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8, "legend.framealpha": 0.85}


def quality(record: dict[str, Any]) -> tuple[str, str]:
    """What the y axis shows: test accuracy when the data has labels, else agreement with the reference."""
    if any(a.get("accuracy") is not None for a in record["artifacts"]):
        return "accuracy", "test accuracy (%)"
    return "agreement", "agreement with the FP32 reference (%)"



def quality_value(artifact: dict[str, Any], quality: str) -> float | None:
    if quality == "accuracy":
        return artifact.get("accuracy")
    return artifact["agreement"] * 100 if artifact.get("agreement") is not None else None



def gate_lines(record: dict[str, Any], quality: str) -> list[tuple[float, str]]:
    """(y, label) of the gate: per model, its FP32 reference's accuracy less ``max_accuracy_drop`` (and the
    absolute floor); for agreement, ``min_agreement``."""
    gate = record.get("gate") or {}
    lines = []
    if quality == "agreement":
        if gate.get("min_agreement") is not None:
            lines.append((gate["min_agreement"] * 100, f"gate: agreement ≥ {gate['min_agreement']:.1%}"))
        return lines
    references = {}
    for artifact in record["artifacts"]:
        if artifact.get("reference_accuracy") is not None:
            references.setdefault(artifact["model"], artifact["reference_accuracy"])
    drop = gate.get("max_accuracy_drop")
    if drop is not None:
        for model, reference in references.items():
            label = f"{model} gate: ≥ {reference - drop:.2f}% ({drop:g} pt below its FP32 {reference:.2f}%)"
            lines.append((reference - drop, label))
    if gate.get("min_accuracy"):
        lines.append((gate["min_accuracy"], f"gate: accuracy floor {gate['min_accuracy']:.2f}%"))
    return lines



def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto frontier of (cost, quality) points: lower cost, higher quality; cheapest first."""
    frontier: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not frontier or y > frontier[-1][1]:
            frontier.append((x, y))
    return frontier



def short_layer(layer: str, width: int = 42) -> str:
    return layer if len(layer) <= width else "…" + layer[-(width - 1):]



def name_with_status(artifact: dict[str, Any]) -> str:
    if artifact["default"]:
        return f"★ {artifact['name']} (shipped, default)"
    return artifact["name"] + (" (shipped)" if artifact["status"] == "shipped" else "")



def smallest_batch(record: dict[str, Any]) -> int | None:
    batches = {s["batch_size"] for a in record["artifacts"] for s in a["latency"]}
    return 1 if 1 in batches else min(batches, default=None)



def stat(artifact: dict[str, Any], batch: int | None, key: str) -> float | None:
    return next((s.get(key) for s in artifact["latency"] if s["batch_size"] == batch), None)



def latency(artifact: dict[str, Any], batch: int | None) -> float | None:
    return stat(artifact, batch, "median_ms")



def runtime_colour(runtime: str | None) -> str:
    family = (runtime or "?").split(":")[0]
    if family in RUNTIME_COLOURS:
        return RUNTIME_COLOURS[family]
    return SPARE_COLOURS[sum(map(ord, family)) % len(SPARE_COLOURS)]



def runtime_handles(mpl, artifacts: list[dict[str, Any]]) -> list:
    families = dict.fromkeys((a["runtime"] or "?").split(":")[0] for a in artifacts)
    return [patch(mpl, runtime_colour(family), family) for family in families]



def model_handles(mpl, artifacts: list[dict[str, Any]]) -> list:
    models = dict.fromkeys(a["model"] for a in artifacts)
    return [mpl.lines.Line2D([], [], marker=MODEL_MARKERS.get(model, "s"), linestyle="", color="black",
                             label=model) for model in models]



def patch(mpl, colour: str, label: str, hatch: str | None = None):
    return mpl.patches.Patch(facecolor=colour, edgecolor="black" if hatch else colour, hatch=hatch, label=label)



def matplotlib_module():
    """(the matplotlib module with its lines and patches loaded, the Figure class); an EdgetlError saying what to
    install when it is missing."""
    try:
        import matplotlib
        import matplotlib.lines
        import matplotlib.patches
        import matplotlib.ticker
        from matplotlib.figure import Figure
    except ImportError:
        raise EdgetlError("drawing the report needs matplotlib: pip install matplotlib (it comes with "
                          "edgetl's `train` extra)") from None
    return matplotlib, Figure



def svg_of(fig, key: str) -> str:
    """The figure as an inline <svg> element: no XML header or metadata, ids prefixed with ``key``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue().decode("utf-8")
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg"):], flags=re.DOTALL)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{key}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{key}-\1)", text)
    return re.sub(r'href="#([^"]+)"', rf'href="#{key}-\1"', text)
