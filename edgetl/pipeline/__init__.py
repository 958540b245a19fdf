"""The one pipeline: ``run(recipe)`` chains finetune -> distill -> export -> quantize -> validate -> bench ->
select -> ship for every task (image and text classification alike; ``ctx.task`` supplies what differs).

Everything lands in ``runs/<name>/``: ``finetune/`` (the teacher), ``distill/`` (the student),
``artifacts/<artifact>/`` (one folder per deployable variant, with its export, validation and benchmark
records) and ``summary.json``. A stage whose inputs have not changed is skipped: its JSON record holds a key made
of the recipe sections and input files it depends on. An interrupted fine-tune or distillation resumes from its
last checkpoint. Artifacts are named ``[student-]<variant>``: ``onnx-fp32`` is the fine-tuned model exported to
ONNX, ``student-openvino-int8`` the distilled student quantized by NNCF.

Modules: ``context`` (RunContext), ``plan`` (the artifact plan), ``artifacts`` (each made once), ``stages``,
``race`` (the passing artifacts timed together), ``select`` (what ships, judged on the race; the summary table),
``ship``, ``run``.

>>> summary = run(load_recipe("banking77"))
"""

from .artifacts import made
from . import lock
from .context import RunContext
from .plan import Planned, plan
from .run import run
from .select import decide, distill_summary, select, summary_rows
from .ship import ship_stage
from .stages import (
    bench_stage, contract_stage, distill_stage, export_stage, finetune_stage, qat_stage, quantize_stage,
    scratch_stage, validate_artifact, validate_stage,
)

__all__ = [
    "Planned", "RunContext", "bench_stage", "contract_stage", "decide", "distill_stage", "distill_summary", "export_stage",
    "finetune_stage", "lock", "made", "plan", "qat_stage", "quantize_stage", "run", "scratch_stage", "select",
    "ship_stage", "summary_rows", "validate_artifact", "validate_stage",
]
