"""The report's figures, one function per figure: each takes the report record (``edgetl.report.record``) and
returns a ``Drawn``: its title and an inline SVG, or, when its data is absent, a one-line note instead.

Drawn with matplotlib's object-oriented API (``matplotlib.figure.Figure``, saved as SVG: no pyplot, no display, no
global backend), imported only when a figure is drawn. Text stays text in the SVG (``svg.fonttype = "none"``) and
each figure's element ids carry the figure's key, so several SVGs live in one page without clashing.

>>> drawn = accuracy_latency(record)
>>> drawn.title, drawn.svg[:4]
('Accuracy vs latency (batch 1)', '<svg')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import plotting

# One colour per runtime family (the part before ':'), one marker per model.
_TARGET_COLOURS = ("#ff7f0e", "#2ca02c", "#d62728", "#17becf", "#8c564b", "#e377c2")
_HOST_COLOUR = "#7f7f7f"
_KEPT_COLOUR, _INT8_COLOUR = "#d62728", "#1f77b4"
_FRONTIER_LABEL = "Pareto frontier of the passing ones"
_FRONTIER_OF_ONE = "Pareto frontier: one passing artifact\nbeats all the others on both"
_MAX_LAYERS = 25  # the sensitivity ranking shows the most costly layers, then says how many more


@dataclass(frozen=True)
class Drawn:
    """One figure of the page: ``svg`` when drawn, else ``note`` says why not."""

    key: str
    title: str
    svg: str | None = None
    note: str | None = None


FIGURES: list[Callable[[dict[str, Any]], Drawn]] = []


def _figure(function: Callable[[dict[str, Any]], Drawn]) -> Callable[[dict[str, Any]], Drawn]:
    FIGURES.append(function)
    return function


def draw_all(record: dict[str, Any]) -> list[Drawn]:
    """Every figure of the page, in order."""
    return [function(record) for function in FIGURES]


# -- the figures ---------------------------------------------------------------------------------------------
@_figure
def accuracy_latency(record: dict[str, Any]) -> Drawn:
    """Accuracy (or agreement, without labels) against latency at batch 1, with the Pareto frontier."""
    batch = plotting.smallest_batch(record)
    quality, _ = plotting.quality(record)
    title = f"{quality.capitalize()} vs latency (batch {batch or 1})"
    return _tradeoff(record, "accuracy-latency", title, lambda a: plotting.latency(a, batch),
                     f"median latency at batch {batch or 1} (ms)",
                     "no artifact has both a latency and a measured accuracy or agreement")


@_figure
def accuracy_size(record: dict[str, Any]) -> Drawn:
    """The same trade-off against the model's file size (torch models have none)."""
    quality, _ = plotting.quality(record)
    return _tradeoff(record, "accuracy-size", f"{quality.capitalize()} vs model size", lambda a: a.get("size_mb"),
                     "model size (MB, files shipped)", "no artifact has a recorded file size")


@_figure
def throughput(record: dict[str, Any]) -> Drawn:
    """Items per second of every artifact at batch 8 (or the largest batch measured)."""
    batches = {s["batch_size"] for a in record["artifacts"] for s in a["latency"]}
    batch = 8 if 8 in batches else max(batches, default=None)
    title = f"Throughput at batch {batch or 8}"
    rows = [(a, plotting.stat(a, batch, "throughput")) for a in record["artifacts"]]
    rows = sorted([(a, value) for a, value in rows if value], key=lambda row: row[1])
    if not rows:
        return Drawn("throughput", title, note="no artifact was benchmarked")
    mpl, Figure = plotting.matplotlib_module()
    with mpl.rc_context(plotting.STYLE):
        fig = Figure(figsize=(8, 1.2 + 0.32 * len(rows)))
        ax = fig.subplots()
        for y, (artifact, value) in enumerate(rows):
            ax.barh(y, value, color=plotting.runtime_colour(artifact["runtime"]),
                    alpha=1.0 if artifact["passed"] else 0.45,
                    hatch=None if artifact["passed"] else "//", edgecolor="black" if artifact["default"] else "none",
                    linewidth=1.5)
            ax.text(value, y, f" {value:,.0f}/s", va="center", fontsize=7)
        ax.set_yticks(range(len(rows)), [plotting.name_with_status(a) for a, _ in rows], fontsize=7)
        ax.set_xlabel(f"items per second at batch {batch} (higher is better)")
        ax.set_xlim(0, max(value for _, value in rows) * 1.18)
        failed = plotting.patch(mpl, "white", "failed the gate", "//")
        ax.legend(handles=plotting.runtime_handles(mpl, [a for a, _ in rows]) + [failed],
                  loc="lower right")
        ax.set_title(title)
        return Drawn("throughput", title, svg=plotting.svg_of(fig, "throughput"))


@_figure
def target_latency(record: dict[str, Any]) -> Drawn:
    """Per target device, each runtime's latency next to the same artifact's on this host."""
    title = "Latency on target devices vs this host"
    groups = _target_groups(record)
    if not groups:
        return Drawn("targets", title, note="no target results: run `edgetl bench BUNDLE --target NAME`, then "
                                            "`edgetl report BUNDLE`")
    mpl, Figure = plotting.matplotlib_module()
    targets = list(dict.fromkeys(bar["target"] for bars in groups.values() for bar in bars if bar["target"]))
    colours = {target: _TARGET_COLOURS[i % len(_TARGET_COLOURS)] for i, target in enumerate(targets)}
    rows = sum(len(bars) + 1 for bars in groups.values())  # a heading row per artifact, then its bars
    with mpl.rc_context(plotting.STYLE):
        fig = Figure(figsize=(8, 1.2 + 0.28 * rows))
        ax = fig.subplots()
        y, ticks, labels, values = 0, [], [], []
        for artifact, bars in groups.items():
            ax.annotate(artifact, (0, y), xycoords=("axes fraction", "data"), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=8, fontweight="bold")
            for bar in bars:
                y += 1
                failed = bar["passed"] is False
                ax.barh(y, bar["ms"], color=colours.get(bar["target"], _HOST_COLOUR), hatch="//" if failed else None,
                        alpha=0.5 if failed else 1.0)
                ax.text(bar["ms"], y, f" {bar['ms']:.3g} ms", va="center", fontsize=7)
                ticks.append(y)
                labels.append(bar["label"])
                values.append(bar["ms"])
            y += 1
        ax.set_yticks(ticks, labels, fontsize=7)
        ax.set_ylim(y - 0.4, -0.6)  # top to bottom, in the record's order
        ax.set_xlabel("median latency at the smallest batch measured (ms, lower is better)")
        ax.set_xlim(0, max(values) * 1.2)
        handles = [plotting.patch(mpl, _HOST_COLOUR, "this host (the run's\nbench stage)")]
        handles += [plotting.patch(mpl, colours[t], t) for t in targets]
        handles += [plotting.patch(mpl, "white", "failed validation\non the device", "//")]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title(title)
        return Drawn("targets", title, svg=plotting.svg_of(fig, "targets"))


@_figure
def training_curves(record: dict[str, Any]) -> Drawn:
    """Loss and train/validation accuracy per epoch: the teacher's linear probe and unfreeze stages (and the
    from-scratch baseline), the student's distillation and its no-teacher ablation."""
    title = "Training curves"
    training = record.get("training") or {}
    columns = [(heading, [(key, label) for key, label in series if training.get(key)])
               for heading, series in (
                   ("Teacher: linear probe, then fine-tuning stages",
                    [("finetune", "fine-tuned"), ("scratch", "from scratch (random weights)")]),
                   ("Student: distillation vs the same student without the teacher",
                    [("distill", "distilled"), ("no_teacher", "no teacher (ablation)")]))]
    columns = [(heading, series) for heading, series in columns if series]
    if not columns:
        return Drawn("training", title, note="no training history (the model came from model.source, or the bundle "
                                             "carries no report.json)")
    mpl, Figure = plotting.matplotlib_module()
    with mpl.rc_context(plotting.STYLE):
        fig = Figure(figsize=(5.2 * len(columns), 6.4), layout="constrained")
        axes = fig.subplots(2, len(columns), squeeze=False)
        for column, (heading, series) in enumerate(columns):
            loss_ax, accuracy_ax = axes[0][column], axes[1][column]
            for index, (key, label) in enumerate(series):
                rows = training[key]
                colour = ("#1f77b4", "#ff7f0e")[index]
                x = list(range(1, len(rows) + 1))
                loss_ax.plot(x, [r.get("train_loss") for r in rows], color=colour, label=label)
                accuracy_ax.plot(x, [r.get("val_accuracy") for r in rows], color=colour, label=f"{label}: validation")
                accuracy_ax.plot(x, [r.get("train_accuracy") for r in rows], color=colour, linestyle="--",
                                 alpha=0.7, label=f"{label}: train")
                if index == 0:
                    for ax in (loss_ax, accuracy_ax):
                        _stage_boundaries(ax, rows)
            loss_ax.set_title(heading, fontsize=9)
            loss_ax.set_ylabel("training loss")
            accuracy_ax.set_ylabel("accuracy (%)")
            accuracy_ax.set_xlabel("epoch")
            loss_ax.legend(loc="best")
            accuracy_ax.legend(loc="best")
            for ax in (loss_ax, accuracy_ax):
                ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
        fig.suptitle(title)
        return Drawn("training", title, svg=plotting.svg_of(fig, "training"))


@_figure
def layer_sensitivity(record: dict[str, Any]) -> Drawn:
    """The accuracy-aware INT8 search: the layers ranked by what quantizing each alone costs, the ones kept in
    FP32 marked; without recorded costs, the agreement before and after the search against its gate."""
    title = "Accuracy-aware quantization: per-layer sensitivity"
    searches = [s for s in record.get("quantization") or [] if s.get("ranked_layers") or s.get("fp32_layers")]
    if not searches:
        none = not record.get("quantization")
        return Drawn("sensitivity", title, note="no accuracy-aware INT8 search in this run (quantize.methods has no "
                     "onnx-int8-static-acc)" if none else "every accuracy-aware INT8 model passed with all layers "
                     "INT8: no layer had to stay FP32")
    mpl, Figure = plotting.matplotlib_module()
    costed = all(s.get("layer_costs") for s in searches)
    with mpl.rc_context(plotting.STYLE):
        if costed:
            heights = [min(len(s["layer_costs"]), _MAX_LAYERS) for s in searches]
            fig = Figure(figsize=(8.5, 1.0 + sum(0.22 * h + 0.9 for h in heights)), layout="constrained")
            axes = fig.subplots(len(searches), 1, squeeze=False, height_ratios=[h + 4 for h in heights])
            for ax, search in zip((row[0] for row in axes), searches):
                _costs_panel(mpl, ax, search)
        else:
            fig = Figure(figsize=(8, 1.0 + 1.3 * len(searches)), layout="constrained")
            axes = fig.subplots(len(searches), 1, squeeze=False)
            for ax, search in zip((row[0] for row in axes), searches):
                _agreement_panel(ax, search)
        fig.suptitle(title)
        note = None if costed else ("this edgetl version did not record each layer's cost: the FP32 layers are listed "
                                    "below, most sensitive first")
        return Drawn("sensitivity", title, svg=plotting.svg_of(fig, "sensitivity"), note=note)


@_figure
def confusion_matrix(record: dict[str, Any]) -> Drawn:
    """The shipped default artifact's confusion matrix on the test split, each row as a share of its true class."""
    confusion = record.get("confusion")
    title = "Confusion matrix of the shipped artifact" + (f" ({confusion['artifact']})" if confusion else "")
    if not confusion or not confusion.get("matrix"):
        return Drawn("confusion", title, note="no confusion matrix: the shipped artifact's validation record has none "
                     "(a model without class labels, or validated before edgetl recorded it)")
    matrix = confusion["matrix"]
    size = len(matrix)
    labels = record.get("labels") or []
    names = labels if len(labels) == size else [str(i) for i in range(size)]
    shares = [[100.0 * count / max(sum(row), 1) for count in row] for row in matrix]
    mpl, Figure = plotting.matplotlib_module()
    inches = min(4.5 + 0.35 * size, 13.0)
    with mpl.rc_context({**plotting.STYLE, "axes.grid": False}):
        fig = Figure(figsize=(inches + 1.5, inches), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=100)
        if size <= 15:
            for i, row in enumerate(matrix):
                for j, count in enumerate(row):
                    if count:
                        ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                                color="white" if shares[i][j] > 60 else "black")
        if size <= 40:
            ax.set_xticks(range(size), names, rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(size), names, fontsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        fig.colorbar(image, ax=ax, label="% of the true class", shrink=0.8)
        samples = confusion.get("samples") or sum(map(sum, matrix))
        ax.set_title(f"{title}: {samples} test samples" + (", counts in the cells" if size <= 15 else ""))
        return Drawn("confusion", title, svg=plotting.svg_of(fig, "confusion"))


# -- shared pieces -------------------------------------------------------------------------------------------
def _tradeoff(record: dict[str, Any], key: str, title: str, x_of: Callable[[dict], float | None], xlabel: str,
              empty: str) -> Drawn:
    """A scatter of quality against ``x_of`` (lower is better), one colour per runtime and one marker per model,
    failed artifacts hollow, the passing Pareto frontier, the shipped artifacts ringed and the gate drawn."""
    quality, ylabel = plotting.quality(record)
    points = [(a, x_of(a), plotting.quality_value(a, quality)) for a in record["artifacts"]]
    points = [(a, x, y) for a, x, y in points if x and y is not None]
    if not points:
        return Drawn(key, title, note=empty)
    mpl, Figure = plotting.matplotlib_module()
    gates = plotting.gate_lines(record, quality)
    passing = [(x, y) for a, x, y in points if a["passed"]]
    top = max(y for _, _, y in points)
    core = min([y for _, y in passing] + [value for value, _ in gates] or [y for _, _, y in points])
    span = max(top - core, 1.0)
    low, high = core - 0.3 * span, top + 0.2 * span
    with mpl.rc_context(plotting.STYLE):
        fig = Figure(figsize=(8.5, 5.2))
        ax = fig.subplots()
        below = 0
        for artifact, x, y in points:
            colour = plotting.runtime_colour(artifact["runtime"])
            marker = plotting.MODEL_MARKERS.get(artifact["model"], "s")
            shown = max(y, low + 0.03 * (high - low))
            if y < low:  # far below the gate: drawn at the bottom edge, pointing down, its value stacked above
                marker, below = "v", below + 1
                ax.annotate(f"{artifact['name']} {y:.1f}", (x, shown), xytext=(4, 9 * below - 3),
                            textcoords="offset points", fontsize=6.5, color=colour)
            ax.scatter([x], [shown], s=55, marker=marker, linewidths=1.4, zorder=3,
                       facecolors=colour if artifact["passed"] else "none", edgecolors=colour)
        frontier = plotting.frontier(passing)
        if len(frontier) > 1:
            ax.step([x for x, _ in frontier], [y for _, y in frontier], where="post", color="black", alpha=0.55,
                    linewidth=1.2, zorder=2)
        named = set()
        for artifact, x, y in points:
            if artifact["status"] == "shipped" and y >= low:
                default = artifact["default"]
                ax.scatter([x], [y], s=260 if default else 170, facecolors="none", zorder=4,
                           edgecolors="#d4a017" if default else "black", linewidths=2.2 if default else 1.0)
                word = "SHIPPED (default)" if default else "shipped"
                ax.annotate(f"{word}: {artifact['name']}", (x, y), xytext=(10, 12 if default else -14),
                            textcoords="offset points", fontsize=7.5, fontweight="bold" if default else None)
                named.add(artifact["name"])
        for artifact, x, y in points:
            if (x, y) in frontier and artifact["name"] not in named and artifact["passed"]:
                ax.annotate(artifact["name"], (x, y), xytext=(5, -10), textcoords="offset points", fontsize=6.5)
        for value, label in gates:
            ax.axhline(value, color="#d62728", linestyle="--", linewidth=1, alpha=0.8)
            ax.annotate(label, (0.005, value), xycoords=("axes fraction", "data"), xytext=(0, 2),
                        textcoords="offset points", fontsize=7, color="#d62728")
        xs = [x for _, x, _ in points]
        if max(xs) / min(xs) > 8:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(mpl.ticker.FuncFormatter(  # 2 and 5 of each decade, as plain numbers
                lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))
        ax.set_ylim(low, high)
        ax.set_xlabel(xlabel + " (lower is better)")
        ax.set_ylabel(ylabel)
        shown_artifacts = [a for a, _, _ in points]
        handles = plotting.runtime_handles(mpl, shown_artifacts) + plotting.model_handles(mpl, shown_artifacts)
        handles += [mpl.lines.Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="black",
                                     label="hollow: failed the gate"),
                    mpl.lines.Line2D([], [], color="black", alpha=0.55, label=_FRONTIER_LABEL if len(frontier) > 1
                                     else _FRONTIER_OF_ONE)]
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.set_title(title)
        return Drawn(key, title, svg=plotting.svg_of(fig, key))


def _target_groups(record: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per artifact: this host's latency, then each target runtime's, at the device's smallest batch."""
    by_name = {a["name"]: a for a in record["artifacts"]}
    groups: dict[str, list[dict[str, Any]]] = {}
    for target, result in (record.get("targets") or {}).items():
        for rt in result.get("runtimes") or []:
            stats = [s for s in rt.get("stats") or [] if s.get("median_ms")]
            if rt.get("status") != "ok" or not stats:
                continue
            first = min(stats, key=lambda s: s["batch_size"])
            name = rt.get("artifact") or rt["runtime"]
            bars = groups.setdefault(name, [])
            host = plotting.latency(by_name[name], first["batch_size"]) if name in by_name else None
            if host and not any(bar["target"] is None for bar in bars):
                bars.insert(0, {"target": None, "ms": host, "passed": by_name[name]["passed"],
                                "label": f"this host, {by_name[name]['runtime']}, batch {first['batch_size']}"})
            validation = rt.get("validation")
            emulated = " (emulated)" if result.get("emulated") else ""
            bars.append({"target": target, "ms": first["median_ms"],
                         "passed": None if validation is None else validation.get("passed"),
                         "label": f"{target}{emulated}, {rt['runtime']}, batch {first['batch_size']}"})
    return groups


def _stage_boundaries(ax, rows: list[dict[str, Any]]) -> None:
    """Dotted lines where a training history's stage changes, named at the top."""
    stages = [(index, row.get("stage")) for index, row in enumerate(rows, start=1)]
    starts = [(index, stage) for n, (index, stage) in enumerate(stages) if n == 0 or stages[n - 1][1] != stage]
    if len(starts) < 2:
        return
    for number, (index, stage) in enumerate(starts):
        if index > 1:
            ax.axvline(index - 0.5, color="black", linestyle=":", linewidth=0.8, alpha=0.6)
        groups = next((row.get("groups") for row in rows[index - 1:index] if row.get("groups")), None)
        label = stage + (f" ({groups} groups)" if groups else "")
        ax.annotate(label, (index - 0.4, 1.0), xycoords=("data", "axes fraction"), xytext=(0, -10 - 9 * (number % 2)),
                    textcoords="offset points", fontsize=6.5, alpha=0.8)


def _costs_panel(mpl, ax, search: dict[str, Any]) -> None:
    """One search's ranking: each layer's disagreement when quantized alone, FP32-kept layers in red."""
    costs = search["layer_costs"][:_MAX_LAYERS]
    kept = set(search.get("fp32_layers") or [])
    values = [(1 - c["agreement"]) * 100 for c in costs]
    ax.barh(range(len(costs)), values, color=[_KEPT_COLOUR if c["layer"] in kept else _INT8_COLOUR for c in costs])
    ax.set_yticks(range(len(costs)), [plotting.short_layer(c["layer"]) for c in costs], fontsize=6.5)
    ax.invert_yaxis()
    more = len(search["layer_costs"]) - len(costs)
    ax.set_xlabel("top-1 disagreement with FP32 when only this layer is INT8 (%)"
                  + (f"; {more} less sensitive layers not shown" if more > 0 else ""))
    ax.set_title(_search_title(search), fontsize=9)
    ax.legend(handles=[plotting.patch(mpl, _KEPT_COLOUR, "kept in FP32"),
                       plotting.patch(mpl, _INT8_COLOUR, "quantized to INT8")],
              loc="lower right")


def _agreement_panel(ax, search: dict[str, Any]) -> None:
    """Without per-layer costs: the search's agreement with all layers INT8 and after keeping the FP32 layers."""
    rows = [("all layers INT8", search.get("all_int8_agreement")),
            (f"{len(search.get('fp32_layers') or [])} most sensitive kept FP32", search.get("agreement"))]
    rows = [(label, value * 100) for label, value in rows if value is not None]
    ax.barh(range(len(rows)), [v for _, v in rows], color=[_INT8_COLOUR, _KEPT_COLOUR][:len(rows)])
    for y, (_, value) in enumerate(rows):
        ax.text(value, y, f" {value:.2f}%", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    gate = search.get("min_agreement")
    low = min([v for _, v in rows] + ([gate * 100] if gate else [])) - 1.0
    if gate:
        ax.axvline(gate * 100, color="#d62728", linestyle="--", linewidth=1)
        ax.annotate(f"search gate {gate:.1%}", (gate * 100, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -10), textcoords="offset points", fontsize=7, color="#d62728")
    ax.set_xlim(max(low, 0), 100.3)
    ax.set_xlabel("top-1 agreement with the FP32 model on the validation samples (%)")
    ax.set_title(_search_title(search), fontsize=9)


def _search_title(search: dict[str, Any]) -> str:
    kept, ranked = len(search.get("fp32_layers") or []), search.get("ranked_layers")
    before, after = search.get("all_int8_agreement"), search.get("agreement")
    words = f"{search['artifact']}: {kept} of {ranked or '?'} ranked layers kept in FP32"
    if before is not None and after is not None:
        words += f" (agreement {before:.2%} all-INT8 → {after:.2%})"
    return words






















