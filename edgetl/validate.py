"""The one shared validation check, used on every artifact, on the host and on every target.

Numpy only: the same code runs inside the device agent.

>>> report = validate(runner, test_set, preprocess, reference=torch_logits, gate=GateConfig())
>>> report.passed, report.reasons
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import DataError


@dataclass
class ValidationReport:
    """Accuracy on held-out data, agreement with the reference, and the verdict against the gate."""

    artifact: str
    runtime: str
    samples: int
    accuracy: float | None  # top-1, percent; None: the data has no labels
    macro_f1: float | None  # percent
    reference_accuracy: float | None = None
    accuracy_drop: float | None = None  # percentage points below the reference
    agreement: float | None = None  # top-1 agreement with the reference, fraction
    max_abs_logit_diff: float | None = None  # for embeddings: the largest difference of any coordinate
    mean_kl: float | None = None  # KL(reference || artifact) on softmax outputs, mean over samples
    mean_cosine: float | None = None  # embeddings: cosine similarity with the reference's, mean and worst sample
    min_cosine: float | None = None
    output: str = "logits"  # or "embedding": agreement is then nearest-neighbour agreement
    passed: bool = True
    reasons: list[str] = field(default_factory=list)
    gate: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.reasons)
        agree = f", agreement {self.agreement:.2%}" if self.agreement is not None else ""
        if self.output == "embedding":
            return (f"{self.artifact} [{self.runtime}] cosine {self.mean_cosine:.4f} (worst {self.min_cosine:.4f})"
                    f"{agree} -> {verdict}" if self.mean_cosine is not None else f"{self.artifact} -> {verdict}")
        accuracy = f"accuracy {self.accuracy:.2f}%" if self.accuracy is not None else "accuracy not measured (no labels)"
        return f"{self.artifact} [{self.runtime}] {accuracy}{agree} -> {verdict}"


OUTPUTS = ("logits", "embedding")


def predict_logits(runner, data, preprocess, batch_size: int = 64, output: str = "logits") -> np.ndarray:
    """Run ``runner`` over every sample of ``data`` in batches; returns float32 logits (N, classes).

    ``preprocess`` makes each batch's model inputs (``edgetl.preprocess`` protocol: an array, or named arrays,
    which every Runner accepts) in its own cheap order (texts of similar length together); the logits come
    back in the data's order.
    """
    from .preprocess import iter_batches

    if len(data) == 0:
        raise DataError("the validation split is empty; give the data source more samples")
    rows, outputs = zip(*((rows, runner.predict(inputs)) for rows, inputs in iter_batches(preprocess, data, batch_size)))
    logits = np.empty((len(data), *np.shape(outputs[0])[1:]), dtype=np.float32)
    logits[np.concatenate(rows)] = np.concatenate(outputs)
    if output == "embedding":
        if logits.ndim != 2:
            raise DataError(f"{runner.name} returned outputs of shape {logits.shape}; an embedding model returns one "
                            "vector per sample (N, D): pool its token outputs into one (e.g. mean pooling)")
        return logits
    if logits.ndim != 2 or logits.shape[1] != len(data.classes):
        raise DataError(
            f"{runner.name} returned logits of shape {logits.shape} for {len(data.classes)} classes; "
            "was the model trained on this dataset?"
        )
    return logits


def validate(
    runner,
    data,
    preprocess,
    *,
    reference: Any = None,
    gate=None,
    batch_size: int = 64,
    artifact: str = "",
    logits: np.ndarray | None = None,
    output: str = "logits",
) -> ValidationReport:
    """Measure ``runner`` on ``data`` and judge it against ``gate``.

    ``reference``: a Runner or its saved logits on the same data (the FP32 torch model, usually).
    ``logits``: outputs already computed (e.g. on a device); then ``runner`` may be None.
    Unlabelled ``data`` (every label ``UNLABELLED``, -1) has no accuracy: the report holds agreement with the
    reference only, and the gate's accuracy floor and drop do not apply.
    ``output="embedding"``: the outputs are embeddings (N, D), held to the reference's by cosine similarity (every
    sample at least ``gate.min_cosine``) and nearest-neighbour agreement: the share of samples whose nearest other
    sample is the same under both (``gate.min_agreement``); their labels, if any, are not used.
    """
    start = time.perf_counter()
    if output not in OUTPUTS:
        raise DataError(f"output must be one of {OUTPUTS}, got {output!r}")
    if logits is None:
        logits = predict_logits(runner, data, preprocess, batch_size, output=output)
    labels = data.labels
    if len(logits) != len(labels):
        raise DataError(f"{len(logits)} outputs for {len(labels)} samples; the validation slice does not match")
    labelled = output == "logits" and bool(len(labels)) and bool((labels >= 0).all())  # else: agreement only
    report = ValidationReport(
        artifact=artifact or getattr(runner, "name", "model"),
        runtime=getattr(runner, "name", "device"),
        samples=len(labels),
        accuracy=_accuracy(logits, labels) if labelled else None,
        macro_f1=_macro_f1(logits.argmax(1), labels, logits.shape[1]) if labelled else None,
        output=output,
    )
    if reference is not None:
        ref_logits = (reference if isinstance(reference, np.ndarray)
                      else predict_logits(reference, data, preprocess, batch_size, output=output))
        (_compare_embeddings if output == "embedding" else _compare)(report, logits, ref_logits, labels)
    if gate is not None:
        _judge(report, gate)
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def _compare(report: ValidationReport, logits: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> None:
    if ref.shape != logits.shape:
        raise DataError(f"reference logits have shape {ref.shape}, the artifact's {logits.shape}")
    if report.accuracy is not None:
        report.reference_accuracy = _accuracy(ref, labels)
        report.accuracy_drop = round(report.reference_accuracy - report.accuracy, 4)
    report.agreement = float((logits.argmax(1) == ref.argmax(1)).mean())
    report.max_abs_logit_diff = float(np.abs(logits - ref).max())
    log_p, log_q = _log_softmax(ref), _log_softmax(logits)
    report.mean_kl = float((np.exp(log_p) * (log_p - log_q)).sum(1).mean())


def _compare_embeddings(report: ValidationReport, out: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> None:
    if ref.shape != out.shape:
        raise DataError(f"reference embeddings have shape {ref.shape}, the artifact's {out.shape}")
    a, b = _unit(out), _unit(ref)
    cosine = (a * b).sum(1)
    report.mean_cosine, report.min_cosine = float(cosine.mean()), float(cosine.min())
    report.agreement = float((_nearest(a) == _nearest(b)).mean()) if len(out) > 1 else 1.0
    report.max_abs_logit_diff = float(np.abs(out - ref).max())


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _nearest(unit: np.ndarray) -> np.ndarray:
    """Each sample's nearest other sample by cosine similarity."""
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(1)


def _judge(report: ValidationReport, gate) -> None:
    report.gate = asdict(gate)
    reasons = []
    if gate.min_accuracy and report.accuracy is not None and report.accuracy < gate.min_accuracy:
        reasons.append(f"accuracy {report.accuracy:.2f}% < floor {gate.min_accuracy:.2f}%")
    if report.accuracy_drop is not None and report.accuracy_drop > gate.max_accuracy_drop:
        reasons.append(f"accuracy drop {report.accuracy_drop:.2f} pt > {gate.max_accuracy_drop:.2f} pt allowed")
    if report.agreement is not None and report.agreement < gate.min_agreement:
        what = "nearest-neighbour agreement" if report.output == "embedding" else "top-1 agreement"
        reasons.append(f"{what} {report.agreement:.2%} < {gate.min_agreement:.2%} required")
    if report.min_cosine is not None and report.min_cosine < getattr(gate, "min_cosine", 0.0):
        reasons.append(f"cosine similarity {report.min_cosine:.4f} (worst sample) < {gate.min_cosine:.4f} required")
    if gate.max_abs_logit_diff and (report.max_abs_logit_diff or 0.0) > gate.max_abs_logit_diff:
        reasons.append(f"max |Δlogit| {report.max_abs_logit_diff:.4g} > {gate.max_abs_logit_diff:.4g} allowed")
    report.reasons = reasons
    report.passed = not reasons


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return round(float((logits.argmax(1) == labels).mean() * 100), 4)


def _macro_f1(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    scores = []
    for cls in range(num_classes):
        tp = np.sum((pred == cls) & (labels == cls))
        fp = np.sum((pred == cls) & (labels != cls))
        fn = np.sum((pred != cls) & (labels == cls))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return round(float(np.mean(scores)) * 100, 4) if scores else 0.0


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))
