"""The one shared validation check, used on every artifact, on the host and on every target.

Numpy only: the same code runs inside the device agent.

What an artifact's outputs are held to depends on what they are (``output``), and that is data: ``OUTPUT_KINDS``
holds one ``OutputKind`` per kind ("logits", "embedding", "regression") with its shape check, its comparison with
the reference, its gate checks and its wording, which bundles (``edgetl.bundle``) and ``predict`` read too.

>>> report = validate(runner, test_set, preprocess, reference=torch_logits, gate=GateConfig())
>>> report.passed, report.reasons
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .errors import DataError
from .registry import Registry


@dataclass
class ValidationReport:
    """Accuracy on held-out data, agreement with the reference, and the verdict against the gate."""

    artifact: str
    runtime: str
    samples: int
    accuracy: float | None  # top-1, percent; None: the data has no labels (or the outputs are not class logits)
    macro_f1: float | None  # percent
    reference_accuracy: float | None = None
    accuracy_drop: float | None = None  # percentage points below the reference
    agreement: float | None = None  # with the reference, fraction; what it counts depends on ``output``
    max_abs_logit_diff: float | None = None  # for embeddings and regression: the largest difference of any coordinate
    mean_kl: float | None = None  # KL(reference || artifact) on softmax outputs, mean over samples
    mean_cosine: float | None = None  # embeddings: cosine similarity with the reference's, mean and worst sample
    min_cosine: float | None = None
    # regression: each sample's ||y - y_ref|| / max(||y_ref||, floor), its mean, 99th percentile and maximum, the
    # floor used (see ``relative_errors``), and the largest |y - y_ref| of each output coordinate
    mean_relative_error: float | None = None
    p99_relative_error: float | None = None
    max_relative_error: float | None = None
    relative_error_floor: float | None = None
    max_abs_diff_per_output: list[float] | None = None
    output: str = "logits"  # an OUTPUT_KINDS name: "logits", "embedding" or "regression"
    passed: bool = True
    reasons: list[str] = field(default_factory=list)
    gate: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    confusion: list[list[int]] | None = None  # labelled class logits: counts, rows = true class, columns = predicted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.reasons)
        return f"{self.artifact} [{self.runtime}] {describe_measures(self.to_dict())} -> {verdict}"


@dataclass(frozen=True)
class OutputKind:
    """One kind of model output: how ``validate`` holds it to the reference and how a bundle describes it.

    ``compare(report, outputs, reference, labels, gate)`` fills the report's measures; ``judge(report, gate)``
    returns the kind's own gate failures (the accuracy, agreement and max |Δ| checks are shared); ``measures(report)``
    words a report's numbers (a dict, as saved); ``row_text(row)`` words one sample's output for ``edgetl predict``.
    """

    name: str
    labelled: bool  # the outputs are class scores: labels give accuracy, and bundles ship one label per column
    rows: str  # what the (N, width) outputs are called: "logits", "embeddings", "values"
    agreement: str  # what ``report.agreement`` counts, for the gate's message (formatted with ``gate``)
    delta: str  # how the largest difference of one coordinate is written
    shape_hint: str  # what to do about outputs that are not (N, width)
    compare: Callable[..., None]
    judge: Callable[[ValidationReport, Any], list[str]]
    measures: Callable[[Mapping[str, Any]], str]
    width_key: str | None = None  # the bundle manifest key holding the output width; None: one column per label
    width_unit: str = ""  # how ``describe`` words the width: "{width} labels", "a {width}-dim embedding"
    method: str = "predict"  # the ``BundleModel`` method that returns these outputs
    row_text: Callable[[np.ndarray], str] | None = None
    summary_fields: tuple[str, ...] = ()  # report keys a run's summary table shows for this kind

    def describe(self, width: int) -> str:
        """What one row of output stands for, for messages: "4 labels", "a 384-dim embedding", "2 values"."""
        return self.width_unit.format(width=width)

    @property
    def article(self) -> str:
        return "an" if self.name[0] in "aeiou" else "a"


OUTPUT_KINDS: Registry[OutputKind] = Registry("model output", key="output")


def output_kind(name: str) -> OutputKind:
    """The registered output kind ``name``; a DataError naming the known ones otherwise."""
    if name not in OUTPUT_KINDS:
        raise DataError(f"output must be one of {', '.join(OUTPUT_KINDS.names())}, got {name!r}")
    return OUTPUT_KINDS.get(name)


def describe_measures(report: Mapping[str, Any]) -> str:
    """A saved report's numbers in words, by its output kind: e.g. "accuracy 91.20%, agreement 99.40%, max |Δlogit|
    0.31" or "relative error mean 0.0012 (p99 0.004, max 0.0051), within tolerance 100.00%, max |Δ| 0.0031"."""
    return output_kind(report.get("output", "logits")).measures(report)


def summary_fields(report: Mapping[str, Any]) -> dict[str, Any]:
    """The kind-specific numbers of a saved report a run's summary table shows (e.g. mean cosine, mean relative
    error); {} for class logits."""
    return {key: report.get(key) for key in output_kind(report.get("output", "logits")).summary_fields}


def predict_logits(runner, data, preprocess, batch_size: int = 64, output: str = "logits") -> np.ndarray:
    """Run ``runner`` over every sample of ``data`` in batches; returns float32 outputs (N, width): class logits,
    embeddings or regression values (``output``).

    ``preprocess`` makes each batch's model inputs (``edgetl.preprocess`` protocol: an array, or named arrays,
    which every Runner accepts) in its own cheap order (texts of similar length together); the outputs come
    back in the data's order.
    """
    from .preprocess import iter_batches

    kind = output_kind(output)
    if len(data) == 0:
        raise DataError("the validation split is empty; give the data source more samples")
    rows, outputs = zip(*((rows, runner.predict(inputs)) for rows, inputs in iter_batches(preprocess, data, batch_size)))
    logits = np.empty((len(data), *np.shape(outputs[0])[1:]), dtype=np.float32)
    logits[np.concatenate(rows)] = np.concatenate(outputs)
    _check_shape(kind, logits, data, runner.name)
    return logits


def _check_shape(kind: OutputKind, logits: np.ndarray, data, name: str) -> None:
    if kind.labelled and (logits.ndim != 2 or logits.shape[1] != len(data.classes)):
        raise DataError(f"{name} returned logits of shape {logits.shape} for {len(data.classes)} classes; "
                        "was the model trained on this dataset?")
    if logits.ndim != 2:
        raise DataError(f"{name} returned outputs of shape {logits.shape}; {kind.shape_hint}")


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

    ``reference``: a Runner or its saved outputs on the same data (the FP32 torch model, usually).
    ``logits``: outputs already computed (e.g. on a device); then ``runner`` may be None.
    Unlabelled ``data`` (every label ``UNLABELLED``, -1) has no accuracy: the report holds agreement with the
    reference only, and the gate's accuracy floor and drop do not apply.
    ``output="embedding"``: the outputs are embeddings (N, D), held to the reference's by cosine similarity (every
    sample at least ``gate.min_cosine``) and nearest-neighbour agreement: the share of samples whose nearest other
    sample is the same under both (``gate.min_agreement``); their labels, if any, are not used.
    ``output="regression"``: the outputs are real values (N, K), held to the reference's by each sample's relative
    error ``||y - y_ref||_2 / max(||y_ref||_2, floor)`` (see ``relative_errors``: the floor, 1e-3 of the references'
    RMS, keeps samples whose true values are near zero from blowing it up): its mean at most
    ``gate.max_relative_error``, and agreement is the share of samples within that same tolerance
    (``gate.min_agreement``); accuracy is not measured.
    """
    start = time.perf_counter()
    kind = output_kind(output)
    if logits is None:
        logits = predict_logits(runner, data, preprocess, batch_size, output=output)
    labels = data.labels
    if len(logits) != len(labels):
        raise DataError(f"{len(logits)} outputs for {len(labels)} samples; the validation slice does not match")
    labelled = kind.labelled and bool(len(labels)) and bool((labels >= 0).all())  # else: agreement only
    report = ValidationReport(
        artifact=artifact or getattr(runner, "name", "model"),
        runtime=getattr(runner, "name", "device"),
        samples=len(labels),
        accuracy=_accuracy(logits, labels) if labelled else None,
        macro_f1=_macro_f1(logits.argmax(1), labels, logits.shape[1]) if labelled else None,
        output=output,
        confusion=_confusion(logits.argmax(1), labels, logits.shape[1]) if labelled else None,
    )
    if reference is not None:
        ref_logits = (reference if isinstance(reference, np.ndarray)
                      else predict_logits(reference, data, preprocess, batch_size, output=output))
        if ref_logits.shape != logits.shape:
            raise DataError(f"reference {kind.rows} have shape {ref_logits.shape}, the artifact's {logits.shape}")
        kind.compare(report, logits, ref_logits, labels, gate)
    if gate is not None:
        _judge(report, gate)
    report.seconds = round(time.perf_counter() - start, 3)
    return report


# -- class logits --------------------------------------------------------------------------------------------
def _compare_logits(report: ValidationReport, logits: np.ndarray, ref: np.ndarray, labels: np.ndarray, gate) -> None:
    if report.accuracy is not None:
        report.reference_accuracy = _accuracy(ref, labels)
        report.accuracy_drop = round(report.reference_accuracy - report.accuracy, 4)
    report.agreement = float((logits.argmax(1) == ref.argmax(1)).mean())
    report.max_abs_logit_diff = float(np.abs(logits - ref).max())
    log_p, log_q = _log_softmax(ref), _log_softmax(logits)
    report.mean_kl = float((np.exp(log_p) * (log_p - log_q)).sum(1).mean())


def _logit_measures(report: Mapping[str, Any]) -> str:
    accuracy = report.get("accuracy")
    words = [f"accuracy {accuracy:.2f}%" if accuracy is not None else "accuracy not measured (no labels)"]
    words += [f"agreement {report['agreement']:.2%}"] if report.get("agreement") is not None else []
    diff = report.get("max_abs_logit_diff")
    words += [f"max |Δlogit| {diff:.3g}"] if diff is not None else []
    return ", ".join(words)


# -- embeddings ----------------------------------------------------------------------------------------------
def _compare_embeddings(report: ValidationReport, out: np.ndarray, ref: np.ndarray, labels: np.ndarray, gate) -> None:
    a, b = _unit(out), _unit(ref)
    cosine = (a * b).sum(1)
    report.mean_cosine, report.min_cosine = float(cosine.mean()), float(cosine.min())
    report.agreement = float((_nearest(a) == _nearest(b)).mean()) if len(out) > 1 else 1.0
    report.max_abs_logit_diff = float(np.abs(out - ref).max())


def _judge_embeddings(report: ValidationReport, gate) -> list[str]:
    if report.min_cosine is not None and report.min_cosine < gate.min_cosine:
        return [f"cosine similarity {report.min_cosine:.4f} (worst sample) < {gate.min_cosine:.4f} required"]
    return []


def _embedding_measures(report: Mapping[str, Any]) -> str:
    words = []
    if report.get("mean_cosine") is not None:
        words.append(f"cosine {report['mean_cosine']:.4f} (worst {report['min_cosine']:.4f})")
    if report.get("agreement") is not None:
        words.append(f"nearest-neighbour agreement {report['agreement']:.2%}")
    return ", ".join(words) or "not compared with a reference"


def _embedding_row(vector: np.ndarray) -> str:
    first = ", ".join(f"{value:.4f}" for value in vector[:4])
    more = ", …" if len(vector) > 4 else ""
    return f"{len(vector)}-dim embedding, L2 norm {float(np.linalg.norm(vector)):.4f}, [{first}{more}]"


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _nearest(unit: np.ndarray) -> np.ndarray:
    """Each sample's nearest other sample by cosine similarity."""
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(1)


# -- regression values ---------------------------------------------------------------------------------------
RELATIVE_FLOOR = 1e-3  # the relative error's denominator is at least this share of the references' RMS


def relative_errors(out: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, float]:
    """Each sample's relative error ``||y - y_ref||_2 / max(||y_ref||_2, floor)``, and the floor.

    The floor is ``RELATIVE_FLOOR`` (1e-3) times the RMS of every reference value over the data set (at least 1e-12),
    so a sample whose reference is near zero is judged against the outputs' overall scale instead of blowing the
    ratio up: with references of RMS 50, a sample whose reference is (0, 0) and output (0.01, 0) has error 0.2.

    >>> relative_errors(np.array([[1.1, 0.0]]), np.array([[1.0, 0.0]]))[0]
    array([0.1])
    """
    out64, ref64 = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    floor = max(RELATIVE_FLOOR * float(np.sqrt(np.mean(ref64 ** 2))), 1e-12)
    norms = np.linalg.norm(ref64.reshape(len(ref64), -1), axis=1)
    return np.linalg.norm((out64 - ref64).reshape(len(ref64), -1), axis=1) / np.maximum(norms, floor), floor


def _tolerance(gate) -> float:
    if gate is None:
        from .settings import GateConfig

        gate = GateConfig()
    return float(gate.max_relative_error)


def _compare_values(report: ValidationReport, out: np.ndarray, ref: np.ndarray, labels: np.ndarray, gate) -> None:
    errors, floor = relative_errors(out, ref)
    report.mean_relative_error = float(errors.mean())
    report.p99_relative_error = float(np.percentile(errors, 99))
    report.max_relative_error = float(errors.max())
    report.relative_error_floor = floor
    report.agreement = float((errors <= _tolerance(gate)).mean())  # within the gate's tolerance
    difference = np.abs(np.asarray(out, np.float64) - np.asarray(ref, np.float64)).reshape(len(out), -1)
    report.max_abs_diff_per_output = [float(d) for d in difference.max(0)]
    report.max_abs_logit_diff = float(difference.max())


def _judge_values(report: ValidationReport, gate) -> list[str]:
    mean, limit = report.mean_relative_error, gate.max_relative_error
    if mean is not None and mean > limit:
        return [(f"mean relative error {mean:.4g} > {limit:.4g} allowed (over by {mean - limit:.3g}, "
                 f"{mean / limit:.2f}× the limit; worst sample {report.max_relative_error:.4g})")]
    return []


def _value_measures(report: Mapping[str, Any]) -> str:
    if report.get("mean_relative_error") is None:
        return "not compared with a reference"
    words = [(f"relative error mean {report['mean_relative_error']:.4g} (p99 {report['p99_relative_error']:.4g}, "
              f"max {report['max_relative_error']:.4g})")]
    words += [f"within tolerance {report['agreement']:.2%}"] if report.get("agreement") is not None else []
    words += [f"max |Δ| {report['max_abs_logit_diff']:.3g}"] if report.get("max_abs_logit_diff") is not None else []
    return ", ".join(words)


def _value_row(values: np.ndarray) -> str:
    shown = ", ".join(f"{float(value):.7g}" for value in values[:8])
    more = ", …" if len(values) > 8 else ""
    return f"{len(values)} value{'s' if len(values) != 1 else ''}: [{shown}{more}]"


OUTPUT_KINDS.register("logits", OutputKind(
    "logits", labelled=True, rows="logits", agreement="top-1 agreement", delta="|Δlogit|",
    shape_hint="a classifier returns (N, classes) logits", compare=_compare_logits,
    judge=lambda report, gate: [], measures=_logit_measures, width_unit="{width} labels"))
OUTPUT_KINDS.register("embedding", OutputKind(
    "embedding", labelled=False, rows="embeddings", agreement="nearest-neighbour agreement", delta="|Δlogit|",
    shape_hint="an embedding model returns one vector per sample (N, D): pool its token outputs into one (e.g. mean "
               "pooling)",
    compare=_compare_embeddings, judge=_judge_embeddings, measures=_embedding_measures, width_key="embedding_dim",
    width_unit="a {width}-dim embedding", method="embed", row_text=_embedding_row,
    summary_fields=("mean_cosine", "min_cosine")))
OUTPUT_KINDS.register("regression", OutputKind(
    "regression", labelled=False, rows="values",
    agreement="agreement (samples within relative error {gate.max_relative_error:.4g})",
    delta="|Δ|",
    shape_hint="a regression model returns (N, K) values: export one value per sample as shape (N, 1)",
    compare=_compare_values, judge=_judge_values, measures=_value_measures, width_key="output_dim",
    width_unit="{width} values", row_text=_value_row, summary_fields=("mean_relative_error", "max_relative_error")))
OUTPUTS = tuple(OUTPUT_KINDS.names())


# -- the gate ------------------------------------------------------------------------------------------------
def _judge(report: ValidationReport, gate) -> None:
    kind = output_kind(report.output)
    report.gate = asdict(gate)
    reasons = []
    if gate.min_accuracy and report.accuracy is not None and report.accuracy < gate.min_accuracy:
        reasons.append(f"accuracy {report.accuracy:.2f}% < floor {gate.min_accuracy:.2f}%")
    if report.accuracy_drop is not None and report.accuracy_drop > gate.max_accuracy_drop:
        reasons.append(f"accuracy drop {report.accuracy_drop:.2f} pt > {gate.max_accuracy_drop:.2f} pt allowed")
    if report.agreement is not None and report.agreement < gate.min_agreement:
        reasons.append(f"{kind.agreement.format(gate=gate)} {report.agreement:.2%} < {gate.min_agreement:.2%} required")
    reasons += kind.judge(report, gate)
    if gate.max_abs_logit_diff and (report.max_abs_logit_diff or 0.0) > gate.max_abs_logit_diff:
        reasons.append(f"max {kind.delta} {report.max_abs_logit_diff:.4g} > {gate.max_abs_logit_diff:.4g} allowed")
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


def _confusion(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> list[list[int]]:
    """Counts of (true class, predicted class): row i, column j = samples of class i predicted as j."""
    pairs = np.bincount(labels.astype(np.int64) * num_classes + pred, minlength=num_classes * num_classes)
    return pairs[: num_classes * num_classes].reshape(num_classes, num_classes).tolist()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))
