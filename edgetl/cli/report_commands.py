"""``edgetl report``: (re)make the HTML report of a run or a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .console import JsonOpt, emit, json_command, out


@json_command
def report(
    source: Annotated[Path, typer.Argument(help="Run folder (runs/NAME) or bundle folder or .tar.gz.")],
    out_path: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Where to write the page (default: report.html in the run or bundle folder; "
                                         "beside an archive).")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Open the page in a web browser.")] = False,
    json_path: JsonOpt = None,
) -> None:
    """Write report.html: accuracy vs latency and size with the Pareto frontier, throughput, target devices,
    training curves, quantization and the confusion matrix, in one self-contained file.

    A bundle's page adds the results `edgetl bench BUNDLE --target NAME` saved in its targets/ folder.

    Example: edgetl report models/fashion-mnist-lite0 --open
    """
    from ..report import write_report

    path = write_report(source, out_path)
    out.print(f"report: {path}", highlight=False, soft_wrap=True)
    emit({"report": str(path), "source": str(source)}, json_path)
    if open_:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
