"""Run this model bundle without edgetl: only numpy, Pillow (images) or tokenizers (texts), and onnxruntime or
OpenVINO.

    python predict.py photo.jpg other.png                  # top-3 labels, the bundle's default artifact
    python predict.py photo.jpg --runtime openvino --top-k 5
    python predict.py "where is my card?"                  # a text bundle: the arguments are the texts
    python predict.py photo.jpg --json -                   # JSON records on stdout

It reads the files beside it (manifest.json, labels.json, preprocess.json, a tokenizer.json for texts, model/...),
checks their sha256 against the manifest, and prepares each input exactly as ``edgetl predict`` does (EXIF
rotation, the resize policy, channels, mean/std, NCHW float32; or lower-casing, truncation and padding of the
tokens), so it gives the same labels and probabilities.

From Python (put this folder on sys.path, or copy the file):

    from predict import Bundle
    print(Bundle("path/to/bundle").predict(["photo.jpg"], top_k=3))

edgetl ships this file as the bundle's ``predict.py`` (its source is ``edgetl/bundle/predict_script.py``); it
imports nothing from edgetl, by design.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# What this script imports for each kind of bundle input (pip names), besides a runtime.
NEEDS = {"image": ("numpy", "pillow"), "text": ("numpy", "tokenizers")}
# The pip package of each runtime, by artifact format.
RUNTIME_PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino"}
# Which artifact formats each backend opens, best first (OpenVINO also reads ONNX).
FORMATS_FOR_BACKEND = {"onnxruntime": ("onnx",), "openvino": ("openvino", "onnx")}
DEFAULT_DEVICE = {"onnxruntime": "CPUExecutionProvider", "openvino": "CPU"}
BACKEND_OF_FORMAT = {"onnx": "onnxruntime", "openvino": "openvino"}
MODEL_SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}
BATCH_SIZE = 32  # rows per runtime call, as edgetl's predict

_RESAMPLE = {"bilinear": 2, "bicubic": 3, "nearest": 0}  # PIL.Image.Resampling values
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_EXIF_ORIENTATION = 0x0112
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32"}
_OV_DTYPES = {"f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32"}


class PredictError(Exception):
    """A problem with the bundle or an input; the message says what to do."""


# -- images: the same steps as edgetl.preprocess.image ---------------------------------------------------


class ImageInputs:
    """preprocess.json of an image bundle: any image -> uint8 square (resize policy) -> normalised NCHW float32."""

    kind = "image"

    def __init__(self, data: dict[str, Any], root: Path):
        self.image_size = int(data["image_size"])
        self.channels = int(data.get("channels", 3))
        self.mean = tuple(float(v) for v in data.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(v) for v in data.get("std", (0.229, 0.224, 0.225)))
        self.resample = data.get("resample", "bilinear")
        self.resize = data.get("resize", "squash")  # bundles from before the policy was recorded squashed
        self.crop_fraction = float(data.get("crop_fraction", 1.0))
        if self.resize not in _POLICIES or self.resample not in _RESAMPLE or self.channels not in (1, 3):
            raise PredictError(f"preprocess.json asks for resize {self.resize!r}, resample {self.resample!r}, "
                               f"{self.channels} channel(s), which this predict.py does not know; use edgetl")
        self.scaled_size = round(self.image_size / self.crop_fraction)

    @property
    def fill_pixel(self) -> tuple[int, ...]:
        values = [min(255, max(0, round(float(m) * 255))) for m in self.mean]
        if self.channels == 1:
            return (round(sum(values) / len(values)),)
        return tuple(values) if len(values) == 3 else (values[0],) * 3

    def resize_image(self, image: Any) -> np.ndarray:
        """Path, PIL image or uint8 array -> uint8 (size, size, channels)."""
        from PIL import Image

        if isinstance(image, np.ndarray):
            array = image
            if array.dtype != np.uint8:
                raise PredictError(f"image arrays must be uint8, got {array.dtype}")
            if array.ndim == 3 and array.shape[2] == 1:
                array = array[:, :, 0]
            image = Image.fromarray(array)
        elif isinstance(image, Image.Image):
            image = _upright(image)
        else:
            image = _open_image(image)
        image = _to_8_bit(image).convert("RGB" if self.channels == 3 else "L")
        image = _POLICIES[self.resize](image, self)
        array = np.asarray(image, dtype=np.uint8)
        return array[:, :, None] if array.ndim == 2 else array

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[-1] == 1 and self.channels == 3:
            batch = np.repeat(batch, 3, axis=-1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 1, 1, -1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 1, 1, -1)
        out = (batch.astype(np.float32) / 255.0 - mean) / std
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def encode(self, images: Sequence[Any]) -> np.ndarray:
        return self.normalize(np.stack([self.resize_image(image) for image in images]))

    def required_files(self) -> list[str]:
        return []


def _upright(image):
    """``image`` turned by its EXIF orientation, as a photo viewer shows it."""
    from PIL import ImageOps

    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):  # a broken EXIF block says nothing
        return image
    return ImageOps.exif_transpose(image) if orientation in range(2, 9) else image


def _to_8_bit(image):
    """16-bit grayscale scaled to 8 bits (Pillow's own conversion clips)."""
    from PIL import Image

    if not image.mode.startswith("I"):
        return image
    array = np.asarray(image).astype(np.int64)
    if image.mode.startswith("I;16") or array.max(initial=0) > 255:
        array = array >> 8
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _open_image(path: Any):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return _upright(image)
    except FileNotFoundError:
        raise PredictError(f"image not found: {path}; check the path") from None
    except IsADirectoryError:
        raise PredictError(f"{path} is a folder, not an image; pass the image files in it") from None
    except Image.DecompressionBombError as exc:
        raise PredictError(f"image {path} is too large to open safely ({exc}); downscale it") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise PredictError(f"cannot read image {path}: {exc}; is it a valid PNG/JPEG file?") from None


def _shorter_side_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shorter * long / short)
    return (shorter, new_long) if width <= height else (new_long, shorter)


def _center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    left, top = round((width - size) / 2.0), round((height - size) / 2.0)
    return left, top, left + size, top + size


def _shorter_side_center_crop(image, pre: ImageInputs):
    size = (pre.image_size, pre.image_size)
    scaled = _shorter_side_size(*image.size, pre.scaled_size)
    if image.size != scaled:
        image = image.resize(scaled, _RESAMPLE[pre.resample])
    return image if image.size == size else image.crop(_center_crop_box(*image.size, pre.image_size))


def _squash(image, pre: ImageInputs):
    size = (pre.image_size, pre.image_size)
    return image if image.size == size else image.resize(size, _RESAMPLE[pre.resample])


def _squash_center_crop(image, pre: ImageInputs):
    scaled = (pre.scaled_size, pre.scaled_size)
    if image.size != scaled:
        image = image.resize(scaled, _RESAMPLE[pre.resample])
    return image if pre.scaled_size == pre.image_size else image.crop(_center_crop_box(*scaled, pre.image_size))


def _letterbox(image, pre: ImageInputs):
    from PIL import Image

    size = pre.image_size
    longer = max(image.size)
    fitted = (max(1, round(image.size[0] * size / longer)), max(1, round(image.size[1] * size / longer)))
    if image.size != fitted:
        image = image.resize(fitted, _RESAMPLE[pre.resample])
    if fitted == (size, size):
        return image
    fill = pre.fill_pixel
    canvas = Image.new(image.mode, (size, size), fill if image.mode == "RGB" else fill[0])
    canvas.paste(image, ((size - fitted[0]) // 2, (size - fitted[1]) // 2))
    return canvas


_POLICIES = {"shorter-side+center-crop": _shorter_side_center_crop, "squash": _squash,
             "squash+center-crop": _squash_center_crop, "letterbox": _letterbox}


# -- texts: the same steps as edgetl.preprocess.text -----------------------------------------------------


class TextInputs:
    """preprocess.json of a text bundle: lower-case, tokenize with tokenizer.json, truncate, pad, int64 arrays."""

    kind = "text"

    def __init__(self, data: dict[str, Any], root: Path):
        self.max_length = int(data.get("max_length", 128))
        self.lowercase = bool(data.get("lowercase", True))
        self.padding = data.get("padding", "longest")
        self.truncation = bool(data.get("truncation", True))
        self.tokenizer_file = data.get("tokenizer_file", "tokenizer.json")
        self.pad_token = data.get("pad_token", "[PAD]")
        self.input_names = tuple(data.get("input_names", ("input_ids", "attention_mask", "token_type_ids")))
        self.root = root
        self._tokenizer = None

    def tokenizer(self):
        if self._tokenizer is None:
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise PredictError("a text bundle needs the tokenizers package: pip install tokenizers") from None
            path = self.root / self.tokenizer_file
            if not path.is_file():
                raise PredictError(f"tokenizer file not found: {path}; the bundle must hold {self.tokenizer_file}")
            tokenizer = Tokenizer.from_file(str(path))
            tokenizer.no_padding()  # a tokenizer.json may carry its own padding and truncation: preprocess.json rules
            if self.truncation:
                tokenizer.enable_truncation(self.max_length)
            else:
                tokenizer.no_truncation()
            self._tokenizer = tokenizer
        return self._tokenizer

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise PredictError(f"text #{position} is a {type(text).__name__}, not a string")
            if Path(text).suffix.lower() in _IMAGE_SUFFIXES and os.path.isfile(text):
                raise PredictError(f"{text} is an image file, but this model classifies texts; pass the texts")
        texts = [text.lower() for text in texts] if self.lowercase else texts
        tokenizer = self.tokenizer()
        encodings = tokenizer.encode_batch(texts)
        lengths = [len(encoding.ids) for encoding in encodings]
        if not self.truncation and lengths and max(lengths) > self.max_length:
            position = int(np.argmax(lengths))
            raise PredictError(f"text #{position} has {lengths[position]} tokens > max_length {self.max_length}")
        width = self.max_length if self.padding == "max_length" else max(lengths, default=0)
        pad_id = tokenizer.token_to_id(self.pad_token)
        if pad_id is None:
            raise PredictError(f"the tokenizer has no pad token {self.pad_token!r}; set pad_token in preprocess.json")
        ids = np.full((len(texts), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        types = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = lengths[row]
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
            types[row, :n] = encoding.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: arrays[name] for name in self.input_names}

    def required_files(self) -> list[str]:
        return [self.tokenizer_file]


INPUTS = {"image": ImageInputs, "text": TextInputs}


# -- runtimes ---------------------------------------------------------------------------------------------


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise PredictError(f"{module} is not installed here; run `pip install {module}`") from None


class OrtModel:
    """An .onnx file on one onnxruntime execution provider."""

    def __init__(self, path: Path, device: str, threads: int):
        ort = _require("onnxruntime")
        provider = device or DEFAULT_DEVICE["onnxruntime"]
        if provider not in ort.get_available_providers():
            raise PredictError(f"onnxruntime here has no {provider} (has {', '.join(ort.get_available_providers())})")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=[provider])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for a bad model
            raise PredictError(f"onnxruntime cannot load {path}: {_first_line(exc)}") from None
        nodes = self.session.get_inputs()
        self.inputs = [(node.name, _ORT_DTYPES.get(node.type, "float32")) for node in nodes]
        first = nodes[0].shape[0] if nodes[0].shape else None
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None
        self.name = f"onnxruntime:{provider}"

    def run(self, batch: Any) -> np.ndarray:
        feed = _feed(batch, self.inputs)
        try:
            outputs = self.session.run(None, feed)
        except Exception as exc:  # noqa: BLE001 - e.g. inputs of a shape the model does not take
            raise PredictError(f"{self.name} failed: {_first_line(exc)}; run `edgetl verify` on the bundle") from None
        return np.asarray(outputs[0], dtype=np.float32)


class OpenVinoModel:
    """An OpenVINO IR (or .onnx) compiled for one device, in f32 (not the bf16 some CPUs would pick)."""

    def __init__(self, path: Path, device: str, threads: int):
        ov = _require("openvino")
        device = device or DEFAULT_DEVICE["openvino"]
        core = ov.Core()
        if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
            raise PredictError(f"OpenVINO sees no {device} device here (has {', '.join(core.available_devices)})")
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(str(path), device, config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError for anything
            raise PredictError(f"OpenVINO cannot load {path}: {_first_line(exc)}") from None
        self.request = self.compiled.create_infer_request()
        self.inputs = [(port.get_any_name() if port.get_names() else f"input{i}",
                        _OV_DTYPES.get(port.get_element_type().get_type_name(), "float32"))
                       for i, port in enumerate(self.compiled.inputs)]
        first = self.compiled.input(0).get_partial_shape()[0]
        self.fixed_batch = first.get_length() if first.is_static else None
        self.name = f"openvino:{device}"

    def run(self, batch: Any) -> np.ndarray:
        feed = _feed(batch, self.inputs)
        try:
            result = self.request.infer({i: feed[name] for i, (name, _) in enumerate(self.inputs)})
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError for anything
            raise PredictError(f"{self.name} failed: {_first_line(exc)}; run `edgetl verify` on the bundle") from None
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32).copy()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _feed(batch: Any, inputs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """The model's inputs [(name, dtype)] from one array (the first input) or named arrays."""
    if not isinstance(batch, dict):
        name, dtype = inputs[0]
        return {name: np.ascontiguousarray(batch, dtype=dtype)}
    missing = [name for name, _ in inputs if name not in batch]
    if missing:
        raise PredictError(f"the model takes {', '.join(missing)}, which preprocess.json does not make; re-ship")
    return {name: np.ascontiguousarray(batch[name], dtype=dtype) for name, dtype in inputs}


RUNTIMES = {"onnxruntime": OrtModel, "openvino": OpenVinoModel}


# -- the bundle -------------------------------------------------------------------------------------------


class Bundle:
    """A bundle folder opened on one runtime: ``predict`` (labels, or a regression model's values) or ``embed``.

    ``runtime``: "onnxruntime", "openvino" or backend:device ("openvino:GPU"); None: the manifest's default artifact.
    """

    def __init__(self, root: str | os.PathLike = ".", runtime: str | None = None, artifact: str | None = None,
                 threads: int = 0, check_files: bool = True):
        self.root = Path(root)
        self.manifest = _read_json(self.root / "manifest.json")
        if runtime is None and artifact is None:
            runtime = _installed_runtime(self.manifest)
        self.artifact = select_artifact(self.manifest, runtime, artifact)
        entry = self.manifest["artifacts"][self.artifact]
        model = _model_file(entry)
        data = _read_json(self.root / "preprocess.json")
        kind = data.get("kind", "image")
        if kind not in INPUTS:
            raise PredictError(f"this predict.py reads image and text bundles, not {kind!r}; use `edgetl predict`")
        self.inputs = INPUTS[kind](data, self.root)
        if check_files:
            self._check(["labels.json", "preprocess.json", *entry["files"], *self.inputs.required_files()])
        self.labels: list[str] = _read_json(self.root / "labels.json")
        self.output = self.manifest.get("output", "logits")
        width_key = {"embedding": "embedding_dim", "regression": "output_dim"}.get(self.output)
        self.width = len(self.labels) if width_key is None else int(self.manifest[width_key])
        self.model = _open(self.root / model, runtime or entry.get("runtime") or BACKEND_OF_FORMAT[entry["format"]],
                           threads, fallback=BACKEND_OF_FORMAT[entry["format"]] if runtime is None else None)
        self.runtime = self.model.name

    def _check(self, files: list[str]) -> None:
        listed = self.manifest.get("files", {})
        for rel in files:
            path = self.root / rel
            if rel not in listed or not path.is_file() or _sha256(path) != listed[rel].get("sha256"):
                raise PredictError(f"{rel} is missing or does not match manifest.json; copy the bundle again")

    def outputs(self, samples: Sequence[Any], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """The model's raw outputs, float32 (len(samples), width)."""
        samples = [os.fspath(s) if isinstance(s, os.PathLike) else s for s in _as_list(samples)]
        fixed = self.model.fixed_batch
        step = fixed or max(1, batch_size)
        rows = []
        for start in range(0, len(samples), step):
            chunk = samples[start:start + step]
            batch = self.inputs.encode(chunk)
            out = np.asarray(self.model.run(_pad_rows(batch, fixed) if fixed else batch))[: len(chunk)]
            if out.ndim != 2 or out.shape[1] != self.width:
                raise PredictError(f"{self.artifact} returned shape {out.shape}, expected (N, {self.width}); "
                                   "the bundle is inconsistent")
            rows.append(out)
        return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, self.width), np.float32)

    def predict(self, samples: Sequence[Any], top_k: int = 3, batch_size: int = BATCH_SIZE) -> Any:
        """Per sample {"label", "index", "probability", "top_k": [(label, probability)]}; a regression bundle:
        its float32 (N, width) values."""
        if self.output == "regression":
            return self.outputs(samples, batch_size)
        if self.output != "logits":
            raise PredictError(f"this bundle's model returns an {self.output}, not labels; call embed(samples)")
        if top_k < 1:
            raise PredictError(f"top_k must be at least 1, got {top_k}")
        probabilities = softmax(self.outputs(samples, batch_size))
        k = min(top_k, len(self.labels))
        predictions = []
        for row in probabilities:
            order = np.argsort(-row, kind="stable")[:k]
            ranked = [(self.labels[i], float(row[i])) for i in order]
            predictions.append({"label": ranked[0][0], "index": int(order[0]), "probability": ranked[0][1],
                                "top_k": ranked})
        return predictions

    def embed(self, samples: Sequence[Any], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """An embedding bundle's vectors, float32 (N, embedding_dim), as the model returns them."""
        if self.output != "embedding":
            raise PredictError(f"this bundle's model returns {self.output}, not an embedding; call predict(samples)")
        return self.outputs(samples, batch_size)


def select_artifact(manifest: dict[str, Any], runtime: str | None, artifact: str | None) -> str:
    """The named artifact, else the default one if ``runtime`` runs it, else one whose format it opens."""
    artifacts = manifest["artifacts"]
    if artifact is not None:
        if artifact not in artifacts:
            raise PredictError(f"no artifact {artifact!r} in this bundle; it has {', '.join(artifacts)}")
        return artifact
    default = manifest.get("default_artifact")
    if runtime is None:
        return default
    exact = [name for name, entry in artifacts.items() if entry.get("runtime") == runtime]
    if exact:
        return exact[0]
    backend, _ = _backend_device(runtime)
    for fmt in FORMATS_FOR_BACKEND[backend]:
        matches = [name for name, entry in artifacts.items() if entry.get("format") == fmt]
        if matches:
            return default if default in matches else matches[0]
    raise PredictError(f"no artifact in this bundle runs on {runtime}; it has "
                       + ", ".join(f"{name} ({entry.get('runtime')})" for name, entry in artifacts.items()))


def _backend_device(runtime: str) -> tuple[str, str]:
    backend, _, device = runtime.partition(":")
    if backend not in RUNTIMES:
        raise PredictError(f"unknown runtime {runtime!r}; use onnxruntime or openvino (optionally :DEVICE)")
    return backend, device or DEFAULT_DEVICE[backend]


def _installed_runtime(manifest: dict[str, Any]) -> str | None:
    """None when the default artifact's runtime is installed here; else an installed runtime that opens another
    artifact (a device with only onnxruntime, or only OpenVINO), or None when there is none (opening says what to
    install)."""
    from importlib.util import find_spec

    artifacts = manifest.get("artifacts", {})
    default = artifacts.get(manifest.get("default_artifact"), {})
    if find_spec(BACKEND_OF_FORMAT.get(default.get("format"), "onnxruntime")) is not None:
        return None
    return next((backend for backend, formats in FORMATS_FOR_BACKEND.items() if find_spec(backend) is not None
                 and any(entry.get("format") in formats for entry in artifacts.values())), None)


def _open(path: Path, runtime: str, threads: int, fallback: str | None) -> Any:
    """The model on ``runtime``; when that device is missing here and no runtime was asked for, on ``fallback``
    (the format's CPU default: an artifact validated on a GPU still runs on a CPU host)."""
    backend, device = _backend_device(runtime)
    try:
        return RUNTIMES[backend](path, device, threads)
    except PredictError:
        if fallback is None or _backend_device(fallback) == (backend, device):
            raise
    backend, device = _backend_device(fallback)
    return RUNTIMES[backend](path, device, threads)


def _model_file(entry: dict[str, Any]) -> str:
    suffix = MODEL_SUFFIX.get(entry.get("format", ""), "")
    matches = [f for f in entry.get("files", []) if suffix and f.endswith(suffix)]
    if len(matches) != 1:
        raise PredictError(f"artifact lists {entry.get('files')}; expected one {suffix or 'model'} file")
    return matches[0]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _pad_rows(batch: Any, rows: int) -> Any:
    def pad(array: np.ndarray) -> np.ndarray:
        missing = rows - len(array)
        return np.concatenate([array, np.zeros((missing, *array.shape[1:]), array.dtype)]) if missing > 0 else array

    return {name: pad(array) for name, array in batch.items()} if isinstance(batch, dict) else pad(batch)


def _as_list(samples: Any) -> list[Any]:
    return [samples] if isinstance(samples, (str, os.PathLike)) else list(samples)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PredictError(f"{path} is missing; run predict.py from inside a complete bundle (or pass --bundle)") \
            from None
    except ValueError as exc:
        raise PredictError(f"{path} is not valid JSON ({exc}); copy the bundle again") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the command line -------------------------------------------------------------------------------------


def _records(bundle: Bundle, samples: list[str], top_k: int) -> list[dict[str, Any]]:
    if bundle.output == "logits":
        return [{"input": sample, "label": p["label"], "probability": p["probability"],
                 "top_k": [{"label": label, "probability": prob} for label, prob in p["top_k"]]}
                for sample, p in zip(samples, bundle.predict(samples, top_k=top_k))]
    rows = bundle.embed(samples) if bundle.output == "embedding" else bundle.predict(samples)
    return [{"input": sample, "output": bundle.output, "values": row.tolist()} for sample, row in zip(samples, rows)]


def _line(record: dict[str, Any], top_k: int) -> str:
    if "label" in record:
        ranked = ", ".join(f"{r['label']} {r['probability']:.1%}" for r in record["top_k"])
        return f"{record['input']}: {record['label']} ({record['probability']:.1%})  top-{top_k}: {ranked}"
    values = np.asarray(record["values"], dtype=np.float32)
    if record["output"] == "embedding":
        first = ", ".join(f"{v:.4f}" for v in values[:4])
        return f"{record['input']}: {values.size}-dim, L2 norm {np.linalg.norm(values):.4f}, [{first}, ...]"
    return f"{record['input']}: " + ", ".join(f"{v:.6g}" for v in values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", nargs="+", help="image files, or texts for a text bundle ('-': lines of stdin)")
    parser.add_argument("--runtime", help="onnxruntime or openvino, optionally :DEVICE (default: the bundle's)")
    parser.add_argument("--artifact", help="an artifact by name (manifest.json 'artifacts')")
    parser.add_argument("--top-k", "-k", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="0: the runtime's default")
    parser.add_argument("--bundle", default=str(Path(__file__).resolve().parent), help="default: this file's folder")
    parser.add_argument("--json", metavar="PATH", help="also write JSON records to PATH; '-': only JSON on stdout")
    args = parser.parse_args(argv)
    samples = [line.rstrip("\n") for line in sys.stdin if line.strip()] if args.samples == ["-"] else args.samples
    try:
        bundle = Bundle(args.bundle, runtime=args.runtime, artifact=args.artifact, threads=args.threads)
        records = _records(bundle, samples, args.top_k)
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json != "-":
        for record in records:
            print(_line(record, args.top_k))
    if args.json == "-":
        print(json.dumps(records, indent=1))
    elif args.json:
        Path(args.json).write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
