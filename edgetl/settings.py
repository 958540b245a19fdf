"""The recipe's sections as typed dataclasses: every field, its default, type, range and choices.

``edgetl.recipe.load_recipe`` reads a TOML file into these (with ``edgetl.config``) and checks the recipe as a
whole; stages, tasks and quantizers take the sections they need from here. Every field has a default, so an
empty recipe runs the built-in example (EfficientNet-Lite0 on a Fashion-MNIST subset).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import checked, not_empty, plain_folder_name, plain_folder_name_or_empty, ranged

SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit
MODEL_KEYS = ("teacher", "student")
WEIGHT_SOURCES = ("package", "hub", "none")  # model.weights names; anything else is a path (or, for text, a hub id)


@dataclass
class RunConfig:
    name: str = checked("fashion-mnist-lite0", plain_folder_name)  # the run's folder inside output_dir
    output_dir: str = "runs"
    seed: int = ranged(0, ge=0, le=SEED_MAX)


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    # "package", "hub", "none" (random init), a local file (a Hugging Face folder or hub id for text); checked by
    # edgetl.recipe.check_names, which knows the task
    weights: str = checked("package", not_empty)
    image_size: int = ranged(64, ge=16)  # Fashion-MNIST's 28 px upscaled; the backbone's own default is 224
    # A registered task (edgetl.tasks.TASKS): "image-classification" or "text-classification" (a BERT-family
    # encoder; backbone: a registered name, folder or hub id).
    task: str = "image-classification"
    # A model you already have instead of a backbone to fine-tune: an ONNX file (for now). The run skips fine-tuning
    # and distillation: export -> quantize -> validate (against this model, on the data) -> bench -> ship.
    source: str = ""
    labels: str = ""  # the source's class names, one per line (or a JSON list), when the model carries none
    # How the source model's inputs are made, when it does not say (edgetl's own ONNX metadata does): pixel mean and
    # std in [0, 1] units, e.g. ImageNet's [0.485, 0.456, 0.406] and [0.229, 0.224, 0.225]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    # How an image of any shape becomes a square model input: "shorter-side+center-crop" (the standard: scale the
    # shorter side to image_size / crop_fraction, cut the centre square), "squash" (stretch to the square),
    # "squash+center-crop" (stretch to image_size / crop_fraction, cut the centre: DeiT's and BEiT's processors) or
    # "letterbox" (fit inside the square, pad the rest). crop_fraction 0.875 is torchvision's ImageNet evaluation
    # (resize to 256, crop 224); a square image is never cropped at 1.0.
    resize: Literal["shorter-side+center-crop", "squash", "squash+center-crop", "letterbox"] = (
        "shorter-side+center-crop")
    crop_fraction: float = ranged(1.0, gt=0, le=1)
    # A text model given as an ONNX file: the folder (or tokenizer.json / vocab.txt file) with its tokenizer
    tokenizer: str = ""
    # The source model's output to use when it has several (by name); "": the first float (N, D) output (class
    # logits or an embedding), else the first. The others are cut from the graph when it is brought into the run.
    output: str = ""


@dataclass
class DataConfig:
    source: str = "fashion-mnist"  # a registered source (edgetl.data.SOURCES), e.g. "folder"
    path: str = ""  # IDX folder or image folder; empty: Debian's dataset-fashion-mnist
    train_per_class: int = ranged(500, ge=0, note="0 = use everything")
    val_per_class: int = ranged(100, ge=0)
    test_per_class: int = ranged(200, ge=0, note="0 = the whole official test set")
    val_fraction: float = ranged(0.1, gt=0, lt=1)  # folder source (and fashion-mnist with train_per_class = 0)
    test_fraction: float = ranged(0.15, gt=0, lt=1)  # folder source without train/ and test/ sub-folders
    seed: int = ranged(0, ge=0, le=SEED_MAX)
    # text-file source: the column (CSV/TSV header) or field (JSONL) holding the text, and the one holding the label
    text_column: str = checked("text", not_empty)
    label_column: str = "label"  # "": the texts have no labels (a model.source is then held to agreement only)
    # Image folders are read from disk as training asks for them, not loaded whole: decoded (resized) images are
    # kept in a cache of at most cache_mb, and decoded in `workers` DataLoader processes while training (0: in the
    # training process itself). A file that is not a readable image is skipped, named, and counted in the run
    # summary; "error" stops the run at the first one instead.
    on_bad_file: Literal["skip", "error"] = "skip"
    cache_mb: int = ranged(1024, ge=0, note="0 = no cache: decode every time")
    workers: int = ranged(0, ge=0)


def _crop_scale(value: list[float]) -> str | None:
    if len(value) != 2 or not 0 < value[0] <= value[1] <= 1:
        return (f"must be [min, max] with 0 < min <= max <= 1, got {value}; [0.08, 1.0] is torchvision's ImageNet "
                "default, [1.0, 1.0] turns cropping off")
    return None


@dataclass
class AugmentConfig:
    """``[finetune.augment]``: image augmentation drawn on the fly (from run.seed) for each training batch of the
    fine-tune and the distillation (teacher and student see the same images); never at evaluation or in the
    probe's cached features. Off by default."""

    enabled: bool = False
    random_resized_crop: list[float] = checked([0.5, 1.0], _crop_scale)  # area fraction kept; aspect 3/4..4/3
    hflip: bool = True  # mirror half the images left-right
    # Brightness, contrast and saturation factors drawn from [1 - s, 1 + s]; skipped with a policy (as timm does)
    color_jitter: float = ranged(0.2, ge=0, le=1, note="0 = off")
    policy: Literal["none", "trivialaugment", "randaugment"] = "none"  # TrivialAugment Wide or RandAugment ops
    randaugment_ops: int = ranged(2, ge=1, le=14)  # ops per image (RandAugment's N)
    randaugment_magnitude: int = ranged(9, ge=0, le=30)  # strength of each op out of 30 (RandAugment's M)
    mixup: float = ranged(0.0, ge=0, note="Beta(alpha, alpha); 0 = off, 0.2 to 0.4 is usual")
    cutmix: float = ranged(0.0, ge=0, note="Beta(alpha, alpha); 0 = off, 1.0 is usual")
    shift: float = ranged(0.0, ge=0, le=0.5)  # random shift of up to this fraction of the side, border reflected


@dataclass
class FinetuneConfig:
    batch_size: int = ranged(64, ge=2, note="batch norm needs at least 2 samples")
    probe_epochs: int = ranged(30, ge=1)  # linear probe on cached frozen features
    probe_lr: float = ranged(3e-3, gt=0)
    unfreeze: list[int] = ranged([3, 9], ge=1)  # groups trainable in each later stage
    stage_epochs: list[int] = ranged([2, 5], ge=1)
    lr: float = ranged(1e-3, gt=0)
    # Discriminative learning rates (ULMFiT's layer-wise decay): the head learns at lr, each unfreeze group deeper
    # at this fraction of the one above it: deeper features are more generic and need less change (1.5 points on
    # Fashion-MNIST against no decay); 1.0 = one rate for all (the from-scratch baseline's: nothing to protect)
    layer_lr_decay: float = ranged(0.7, gt=0, le=1)
    weight_decay: float = ranged(1e-4, ge=0)
    label_smoothing: float = ranged(0.1, ge=0, lt=1)
    patience: int = ranged(2, ge=0, note="0 = no early stop")  # epochs without val improvement before a stage stops
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training batches only (edgetl.train.augment)
    threads: int = ranged(0, ge=0, note="0 = torch's default")
    # Fine-tuning and distillation (edgetl.train.parallel, Hugging Face accelerate): "bf16" autocasts the training
    # passes (CPU, or a GPU that has bf16), "fp16" too with loss scaling (GPU only; fp32 on CPU, said), "no" = fp32.
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # Each process's share of a batch is run as this many micro-batches whose gradients add up before one step:
    # the same step in less memory. batch_size stays what one step sees, whatever the processes and accumulation.
    grad_accumulation: int = ranged(1, ge=1)
    # Also train the same backbone from random weights (model.weights = "none") on the same budget, every layer from
    # the start, into runs/<name>/scratch/: the run then says whether fine-tuning beat it (negative transfer)
    scratch_baseline: bool = False


@dataclass
class DistillConfig:
    enabled: bool = True
    student: str = "efficientnet_lite0_slim"  # any registry backbone that fits the task
    # Copy the teacher's weights where names and shapes fit (the slim student: every kept block);
    # off, the student starts from its own ImageNet weights. Measured on the default example, the
    # ImageNet start was as good or better (5 epochs: 91.35% vs 90.35% test) and keeps the
    # no-teacher baseline free of the teacher.
    init_from_teacher: bool = False
    temperature: float = ranged(4.0, gt=0, note="2 to 8 is usual")
    alpha: float = ranged(0.7, ge=0, le=1, note="it weights the soft-target (KD) loss; 1 - alpha the hard labels")
    hint_weight: float = ranged(0.0, ge=0, note="0 turns the hint loss off")  # feature loss on an intermediate map
    epochs: int = ranged(5, ge=1)  # per run; the ablation trains a second run with the same budget
    lr: float = ranged(2e-3, gt=0)
    batch_size: int = ranged(64, ge=2)
    patience: int = ranged(3, ge=0, note="0 = no early stop")
    ablation: bool = True  # also train the same student without the teacher, same budget
    min_relative_accuracy: float = ranged(0.97, gt=0, le=1)  # student test accuracy / teacher test accuracy


@dataclass
class QuantizeConfig:
    # ORT: "onnx-int8-dynamic", "onnx-int8-static", "onnx-int8-static-acc" (accuracy-aware), "onnx-fp16";
    # OpenVINO: "openvino-int8" (NNCF PTQ), "openvino-int8-acc" (accuracy-aware), "openvino-fp16".
    # openvino-int8-acc is not a default: held to min_agreement, NNCF's accuracy control was still reverting layers of
    # the default teacher after 9 minutes (stopped unfinished; the ORT search took 2).
    # No onnx-int8-dynamic by default (a CNN's default; text recipes name their own): ORT's dynamic INT8 quantizes
    # Conv weights per tensor and runs ConvInteger, on the built-in example 9x slower than FP32 at batch 1 with 90.5%
    # (teacher) and 21% (student) agreement, as ORT's docs advise (static for CNNs, dynamic for transformers).
    methods: list[str] = field(default_factory=lambda: ["onnx-int8-static", "onnx-int8-static-acc", "openvino-int8"])
    models: list[Literal["teacher", "student"]] = field(default_factory=lambda: list(MODEL_KEYS))  # which to quantize
    calibration_size: int = ranged(300, ge=1)  # training samples used to calibrate static INT8
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"  # ORT static
    per_channel: bool = True
    onnx_format: Literal["qdq", "qoperator"] = "qdq"  # ORT static
    max_accuracy_drop: float = ranged(1.0, ge=0)  # accuracy-aware quantization: percentage points
    # Accuracy-aware methods also keep this top-1 agreement with the FP32 model on the validation samples (0 = not
    # checked). Above validate.gate.min_agreement on purpose: the gate is judged on the test split afterwards.
    min_agreement: float = ranged(0.995, ge=0, le=1)
    # Quantization-aware fine-tune (NNCF, self-distilled from the FP32 model) for each model whose OpenVINO
    # post-training INT8 misses the gate. Off by default: on the built-in example 2 epochs took 120 s for the
    # student and reached 98.65% test agreement, no better than post-training INT8's 98.80%.
    qat: bool = False
    qat_epochs: int = ranged(2, ge=1)
    min_calibration_size: int = ranged(16, ge=1)  # fewer calibration samples than this is an error
    onnx_types: Literal["u8s8", "u8u8", "s8s8"] = "u8s8"  # ORT static: activation/weight integer types
    reduce_range: bool = False  # ORT: 7-bit weights (for CPUs without VNNI that saturate in u8s8)
    onnx_preprocess: bool = True  # ORT: quant_pre_process (shape inference + graph optimisation) first
    openvino_preset: Literal["performance", "mixed"] = "performance"  # NNCF: symmetric | asymmetric activations
    validation_size: int = ranged(1000, ge=1)  # accuracy-aware quantization: validation samples (from the val split)
    # Accuracy-aware ORT search: each layer's cost (quantized alone) is scored on the first this-many of those
    # samples; the gate (which layers stay FP32) is judged on all validation_size. Scoring was 2/3 of the search.
    ranking_size: int = ranged(300, ge=1)
    accuracy_control_max_iterations: int = ranged(50, ge=0)  # accuracy-aware: at most this many layers back to FP32
    qat_lr: float = ranged(1e-4, gt=0)
    qat_alpha: float = ranged(0.9, ge=0, le=1)  # QAT loss weight on matching the FP32 model (1 - alpha: the labels)
    qat_temperature: float = ranged(2.0, gt=0)


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["onnx", "openvino"])  # registered (edgetl.export.FORMATS)
    opset: int = ranged(17, ge=7)
    dynamo: bool = False  # the TorchScript exporter: ~2 s instead of ~15 s here
    compress_to_fp16: bool = False  # OpenVINO IR weights stored as FP16


@dataclass
class GateConfig:
    max_accuracy_drop: float = ranged(1.0, ge=0)  # percentage points below the reference
    min_agreement: float = ranged(0.99, ge=0, le=1)  # top-1 agreement with the reference
    max_abs_logit_diff: float = ranged(0.0, ge=0, note="0 = not checked")
    min_accuracy: float = ranged(0.0, ge=0, le=100)  # absolute floor, percent
    # Embedding models (model.task = "text-embedding"): every sample's cosine similarity with the reference's
    # embedding at least this; their "agreement" is nearest-neighbour agreement (min_agreement above)
    min_cosine: float = ranged(0.99, ge=0, le=1)
    # Regression models (model.task = "image-regression"): the mean over samples of ||y - y_ref|| / ||y_ref|| at most
    # this; it is also each sample's tolerance, and their "agreement" is the share of samples within it
    max_relative_error: float = ranged(0.02, gt=0)


@dataclass
class ValidateConfig:
    batch_size: int = ranged(64, ge=1)
    gate: GateConfig = field(default_factory=GateConfig)


@dataclass
class BenchConfig:
    threads: int = ranged(2, ge=1)
    batch_sizes: list[int] = ranged([1, 8], ge=1, min_items=1)
    warmup: int = ranged(10, ge=0)
    min_runs: int = ranged(30, ge=1)
    max_seconds: float = ranged(5.0, gt=0)  # per variant and batch size
    # What ships is decided by a race (edgetl.pipeline.race): the passing candidates timed back to back in this many
    # rounds at the smallest batch size, compared by the 95% interval of their latency ratio; 0 = by the medians
    # above, taken one model at a time (noise on a busy machine can then flip the choice)
    race_rounds: int = ranged(20, ge=0, note="0 = no race; else at least 6")
    race_calls: int = ranged(5, ge=1)  # timed calls per candidate and round (their median is the round's time)
    # One candidate is faster than another only when the whole interval of the ratio is this far from 1; else tied,
    # and the smaller file, then the higher agreement, then the simpler runtime (onnxruntime) ships
    race_margin: float = ranged(0.05, ge=0, lt=1)


@dataclass
class ShipConfig:
    name: str = checked("", plain_folder_name_or_empty)  # bundle name; empty = run.name
    output_dir: str = "models"
    formats: list[str] = field(default_factory=lambda: ["onnx", "openvino"])  # registered (edgetl.export.FORMATS)
    validation_slice: int = ranged(128, ge=0, note="0 = none")  # test samples packed for on-device validation


@dataclass
class TextConfig:
    """Text models only (``model.task = "text-classification"``): sequence length, batching, the distillation
    student."""

    # Tokens, [CLS] and [SEP] included; 0 = from the training texts (length_percentile).
    max_length: int = ranged(0, ge=0, note="0 = from the training texts' lengths")
    length_percentile: float = ranged(99.0, gt=0, le=100)  # of the training texts' token lengths, rounded up to 8
    normalize: bool = False  # L2-normalise the mean-pooled embedding before the head
    bucketing: bool = True  # training batches of similar lengths, each padded to its longest text
    eval_batch_size: int = ranged(128, ge=1)
    student_layers: list[int] = ranged([], ge=0)  # teacher layers the student keeps; [] = every other


@dataclass
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    ship: ShipConfig = field(default_factory=ShipConfig)
    text: TextConfig = field(default_factory=TextConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Hash of the named sections (all when none): what decides whether a stage must rerun."""
        data = self.to_dict()
        chosen = {name: data[name] for name in (sections or data)}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        return _to_toml(self.to_dict())


def _to_toml(data: dict[str, Any], prefix: str = "") -> str:
    scalars = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for k, v in data.items():
        if isinstance(v, dict):
            out.append(_to_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out) + "\n"
