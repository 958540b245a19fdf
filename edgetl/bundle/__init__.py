"""Ship validated artifacts as a self-checking bundle, and verify one.

A bundle is a folder (and a ``.tar.gz`` of it) that runs with onnxruntime or OpenVINO alone::

    <name>/
      model/<artifact>/...   one folder per artifact: .onnx (+ .onnx.data), or OpenVINO .xml + .bin
      labels.json  preprocess.json  recipe.toml  README.md
      <files the preprocessing needs, e.g. tokenizer.json>
      validation/slice.npz   (optional) preprocessed samples, labels and reference outputs for devices
      validation/bench.npz   (optional) preprocessed inputs devices time the models on
      manifest.json          sha256 + size of every other file, versions, validation reports, benchmarks

A bundle's models return class logits (one column per label of labels.json) or, shipped with
``output="embedding"``, an embedding of the manifest's ``embedding_dim`` columns, or with ``output="regression"``
real values in the manifest's ``output_dim`` columns; those two have no labels (labels.json ``[]``). What each kind
is held to and how it is worded is ``edgetl.validate.OUTPUT_KINDS``.

Modules: ``manifest`` (constants, reading, checksums, versions), ``slice`` (the .npz input files),
``ship`` (assembling), ``verify`` (checking, safe extraction), ``card`` (the README.md model card). None
imports torch, at import or at call time: ``edgetl verify`` runs on devices without it. Nothing here asks which
modality a bundle holds: the preprocessing object (see edgetl.preprocess) answers for it.

>>> shipped = ship([onnx_fp32, openvino_fp32], name="fmnist", output_dir=Path("models"), labels=classes,
...                preprocess=preprocess, recipe_toml=text, recipe_hash=digest, card={"backbone": "mobilenet_v2"})
>>> verify(shipped.archive).ok
True
"""

from .card import render_card
from .manifest import (BENCH_FILE, FORMAT_VERSION, MANIFEST, MODEL_SUFFIX, OUTPUTS, REQUIRED_FILES, SLICE_FILE,
                       BundleOutput, BundlePreprocess, bundle_output, file_table, load_bundle_preprocess, model_file,
                       read_manifest, runtime_versions)
from .ship import Artifact, ShippedBundle, ship
from .slice import ModelInputs, ValidationSlice, check_inputs, input_arrays, input_rows, slice_inputs
from .verify import VerifyReport, extract_archive, verify

__all__ = [
    "BENCH_FILE", "FORMAT_VERSION", "MANIFEST", "MODEL_SUFFIX", "OUTPUTS", "REQUIRED_FILES", "SLICE_FILE",
    "Artifact", "BundleOutput", "BundlePreprocess", "ModelInputs", "ShippedBundle", "ValidationSlice", "VerifyReport",
    "bundle_output", "check_inputs", "extract_archive", "file_table", "input_arrays", "input_rows",
    "load_bundle_preprocess", "model_file", "read_manifest", "render_card", "runtime_versions", "ship", "slice_inputs", "verify",
]
