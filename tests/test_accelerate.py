"""Fine-tuning and distillation on Hugging Face accelerate (edgetl.train.parallel).

One process: the accelerate path trains the very weights the plain torch loop trains; gradient accumulation takes
the same steps; bf16 runs on CPU, fp16 falls back to fp32 there and says so. Two processes (gloo on CPU, launched
with `accelerate launch`, through the `edgetl` CLI): interrupted and resumed, the fine-tune on a Fashion-MNIST slice
takes the single-process run's steps, gives a result.json of the same shape and a loadable checkpoint, and only the
main process writes (each file once) and prints; the distillation after it runs the same way.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import needs_fashion_mnist
from edgetl import tasks
from edgetl.recipe import load_recipe
from edgetl.tasks.image import ImageClassification, load_checkpoint
from edgetl.tasks.image_train import evaluate
from edgetl.train import parallel as par
from edgetl.train.loop import RESULT_FILE, STATE_FILE, model_hash
from edgetl.train.parallel import ONE, Parallel, micro_batches
from test_finetune import TINY, tiny_splits

def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


@pytest.fixture
def started(monkeypatch):
    """The Parallel objects runs started with (so a test knows accelerate was really used)."""
    made, start = [], par.Parallel.start.__func__

    def recording(cls, config, warn):
        made.append(start(cls, config, warn))
        return made[-1]

    monkeypatch.setattr(par.Parallel, "start", classmethod(recording))
    return made


@pytest.fixture(scope="module")
def init_weights(tmp_path_factory) -> Path:
    """Random tiny_convnet weights as a "pre-trained" file: BatchNorm then keeps its statistics while fine-tuning,
    so runs that split batches differently still take the same steps (nothing depends on the batch's make-up)."""
    from safetensors.torch import save_file

    from edgetl.backbones import create_model

    path = tmp_path_factory.mktemp("init") / "tiny.safetensors"
    torch.manual_seed(1)
    save_file(create_model("tiny_convnet", num_classes=10, image_size=32, weights=None).state_dict(), str(path))
    return path


# -- splitting the work ------------------------------------------------------------------------------------------


def test_every_process_gets_an_equal_distinct_share_of_each_batch():
    rows = torch.tensor([7, 3, 9, 1, 4, 8, 2])
    shares = [Parallel(rank=rank, count=3).shard(rows) for rank in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]  # 7 rows: wrapped round to 9, as DistributedSampler pads
    assert sorted(torch.cat(shares).tolist()) == sorted(rows.tolist() + [7, 3])  # every row; the first two twice
    assert shares[0].tolist() == [7, 1, 2] and shares[1].tolist() == [3, 4, 7]
    assert Parallel(rank=1, count=2).shard(np.arange(6)).tolist() == [1, 3, 5]  # arrays (text rows) too
    assert ONE.shard(rows) is rows
    parts = [Parallel(rank=rank, count=3).bounds(10) for rank in range(3)]
    assert parts == [(0, 3), (3, 6), (6, 10)]  # evaluation and features: contiguous parts, in order


def test_micro_batches_cut_every_part_of_a_batch_alike():
    inputs = {"input_ids": torch.arange(10).reshape(5, 2), "attention_mask": torch.ones(5, 2)}
    batch = (inputs, torch.arange(5), torch.randn(5, 3), None)
    pieces = micro_batches(batch, 2)
    assert [len(p[1]) for p in pieces] == [2, 3] or [len(p[1]) for p in pieces] == [3, 2]
    assert torch.equal(torch.cat([p[0]["input_ids"] for p in pieces]), inputs["input_ids"])
    assert torch.equal(torch.cat([p[2] for p in pieces]), batch[2]) and all(p[3] is None for p in pieces)
    assert len(micro_batches(batch, 9)) == 5 and micro_batches(batch, 1) == [batch]


# -- one process -------------------------------------------------------------------------------------------------

AUGMENT = ["finetune.augment.enabled=true", "finetune.augment.mixup=0.2"]
STUDENT = ["distill.student='tiny_convnet'", "distill.epochs=2", "distill.batch_size=16", "distill.lr=0.01",
           "distill.patience=0", "distill.hint_weight=0.5", "finetune.threads=1"]


def _train(root: Path, *overrides: str):
    """A tiny fine-tune, then a distillation (hint loss, ablation) from it; both results."""
    splits = tiny_splits()
    finetuned = tasks.finetune(load_recipe(None, [*TINY, *overrides]), splits, root / "finetune", progress=False)
    teacher = load_checkpoint(root / "finetune")[0]
    distilled = tasks.distill(load_recipe(None, [*TINY, *STUDENT, *overrides]), splits, teacher, root / "distill",
                              progress=False)
    return finetuned, distilled


def _weights(folder: Path) -> str:
    return model_hash(load_checkpoint(folder)[0])


def test_one_process_on_accelerate_trains_the_very_same_weights_as_plain_torch(tmp_path, started, monkeypatch):
    finetuned, distilled = _train(tmp_path / "accelerate", *AUGMENT)
    assert started and all(p.accelerator is not None and p.count == 1 for p in started)
    monkeypatch.setattr(par.Parallel, "start", classmethod(lambda cls, config, warn: ONE))
    plain_finetuned, plain_distilled = _train(tmp_path / "plain", *AUGMENT)
    for folder in ("finetune", "distill", "distill/baseline"):
        assert _weights(tmp_path / "accelerate" / folder) == _weights(tmp_path / "plain" / folder), folder
    assert without_times(finetuned.history) == without_times(plain_finetuned.history)
    assert without_times(distilled.history) == without_times(plain_distilled.history)
    assert (finetuned.processes, finetuned.device, finetuned.mixed_precision) == (1, "cpu", "no")


SHORT = [*TINY, "finetune.probe_epochs=2", "finetune.unfreeze=[2]", "finetune.stage_epochs=[3]"]


def test_gradient_accumulation_takes_the_same_steps_in_pieces(tmp_path, init_weights):
    weights = [f"model.weights='{init_weights}'", "finetune.augment.enabled=false"]
    whole = tasks.finetune(load_recipe(None, [*SHORT, *weights]), tiny_splits(), tmp_path / "whole", progress=False)
    pieces = tasks.finetune(load_recipe(None, [*SHORT, *weights, "finetune.grad_accumulation=3"]), tiny_splits(),
                            tmp_path / "pieces", progress=False)  # 16 rows a step: micro-batches of 5, 6 and 5
    assert len(pieces.history) == len(whole.history) == 2 + 3
    for a, b in zip(whole.history, pieces.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-5)
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=3.0)
    assert whole.history[-1]["train_loss"] < whole.history[2]["train_loss"]  # it learned


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs for real on a GPU; this checks the CPU fallback")
def test_bf16_trains_on_cpu_and_fp16_falls_back_to_fp32_saying_so(tmp_path, capsys, monkeypatch):
    from edgetl.tasks.image_train import ImageTrainHooks

    autocast, new_model = [], ImageTrainHooks.new_model

    def watched(self):  # records, on every forward pass, whether it ran in bf16 autocast
        model = new_model(self)
        model.head().register_forward_pre_hook(lambda module, args: autocast.append(
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16))
        return model

    monkeypatch.setattr(ImageTrainHooks, "new_model", watched)
    bf16 = tasks.finetune(load_recipe(None, [*SHORT, "finetune.mixed_precision='bf16'"]), tiny_splits(),
                          tmp_path / "bf16", progress=False)
    assert bf16.mixed_precision == "bf16" and all(np.isfinite(h["train_loss"]) for h in bf16.history)
    assert any(autocast) and not all(autocast)  # training passes in bf16; evaluation after the stage in fp32
    model, _ = load_checkpoint(tmp_path / "bf16")
    assert {p.dtype for p in model.state_dict().values() if p.is_floating_point()} == {torch.float32}
    assert 0 <= bf16.test_accuracy <= 100

    capsys.readouterr()
    autocast.clear()
    fp16 = tasks.finetune(load_recipe(None, [*SHORT, "finetune.mixed_precision='fp16'"]), tiny_splits(),
                          tmp_path / "fp16", progress=False)
    assert fp16.mixed_precision == "no" and not any(autocast)
    assert "finetune.mixed_precision = 'fp16' needs a GPU; training on cpu in fp32" in capsys.readouterr().out


# -- two processes -------------------------------------------------------------------------------------------------

# Runs the edgetl CLI for each command given as one argument ("finetune --set ..."); every file a process puts in
# place (edgetl writes through os.replace) is logged to writes.<rank>. EDGETL_TEST_STOP=1 stops both processes with
# Ctrl-C right after the first completed epoch of stage 0 was saved, as an interrupted run.
LAUNCHED = '''
import os, shlex, sys
log, replace = os.path.join(sys.argv[1], "writes." + os.environ.get("RANK", "?")), os.replace
def logged(src, dst, *args, **kwargs):
    with open(log, "a") as handle:
        handle.write(f"{dst}\\n")
    return replace(src, dst, *args, **kwargs)
os.replace = logged
if os.environ.get("EDGETL_TEST_STOP") == "1":
    import edgetl.train.finetune as ft
    save_state = ft._Trainer._save_state
    def stop(self, state):
        save_state(self, state)
        if state["stage"] == 0:
            raise KeyboardInterrupt
    ft._Trainer._save_state = stop
from edgetl.cli import main
for command in sys.argv[2:]:
    sys.argv = ["edgetl", *shlex.split(command)]
    main()
'''

SMALL = {"run.name": "two", "model.backbone": "'tiny_convnet'", "model.image_size": "32",
         "data.train_per_class": "50", "data.val_per_class": "10", "data.test_per_class": "20",
         "finetune.batch_size": "32", "finetune.probe_epochs": "10", "finetune.probe_lr": "0.05",
         "finetune.unfreeze": "[3]", "finetune.stage_epochs": "[3]", "finetune.lr": "0.01", "finetune.patience": "0",
         "distill.student": "'tiny_convnet'", "distill.epochs": "2", "distill.batch_size": "32",
         "distill.ablation": "true", "distill.hint_weight": "0.5"}


def _launch(root: Path, commands: list[str], stop: bool = False) -> subprocess.CompletedProcess:
    script = root / "launched.py"
    script.write_text(LAUNCHED)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "COLUMNS": "200", "EDGETL_TEST_STOP": "1" if stop else "0"}  # CPU and gloo, even on a GPU machine
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0", str(script), str(root), *commands]
    return subprocess.run(command, check=False, cwd=root, env=env, capture_output=True, text=True, timeout=300)


@needs_fashion_mnist
def test_two_processes_on_cpu_resume_and_take_the_single_process_steps(tmp_path, init_weights):
    settings = {**SMALL, "run.output_dir": f"'{tmp_path / 'runs'}'", "model.weights": f"'{init_weights}'"}
    sets = " ".join(f"--set {shlex.quote(f'{key}={value}')}" for key, value in settings.items())
    run_dir = tmp_path / "runs" / "two"

    stopped = _launch(tmp_path, [f"finetune --quiet {sets}"], stop=True)
    assert stopped.returncode != 0, stopped.stdout + stopped.stderr
    assert "interrupted; completed stages are kept" in stopped.stderr, stopped.stderr  # edgetl's one line
    state = torch.load(run_dir / "finetune" / STATE_FILE, weights_only=True)
    assert (state["stage"], state["epoch"], state["done"]) == (0, 1, False)

    done = _launch(tmp_path, [f"finetune {sets}", f"distill --quiet {sets}"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming after 0 epoch 1" in done.stdout and "training on 2 processes (gloo), cpu, fp32" in done.stdout
    assert done.stdout.count("-> fine-tuned") == 1 and done.stdout.count("distilled tiny_convnet") == 1  # main only
    assert done.stdout.count("stage0 epoch 3:") == 1  # one progress log, from the main process

    # The same recipe on one process, in this one: the same steps (losses to rounding), the same result's shape
    recipe = load_recipe(None, [f"{key}={value}" for key, value in settings.items()])
    splits = tasks.get_task(recipe).load_splits(recipe)
    single = tasks.finetune(recipe, splits, tmp_path / "single", progress=False)
    two = json.loads((run_dir / "finetune" / RESULT_FILE).read_text())
    assert set(two) == {"key", *asdict(single)} and two["key"] == json.loads(
        (tmp_path / "single" / RESULT_FILE).read_text())["key"]
    assert (two["processes"], two["device"], single.processes) == (2, "cpu", 1)
    stages = ["probe"] * 10 + ["stage0"] * 3
    assert [h["stage"] for h in two["history"]] == [h["stage"] for h in single.history] == stages
    for multi, one in zip(two["history"], single.history):
        assert multi["train_loss"] == pytest.approx(one["train_loss"], rel=1e-3)
        assert multi["val_accuracy"] == pytest.approx(one["val_accuracy"], abs=2.0)
    assert 20 < two["probe_test_accuracy"] and 30 < two["test_accuracy"] <= 100  # chance: 10%

    # The checkpoint loads, and the accuracy the processes summed is the whole test split's
    model, meta = load_checkpoint(run_dir / "finetune")
    assert meta["backbone"] == "tiny_convnet" and not model.training
    preprocess = ImageClassification().teacher_preprocess(recipe)
    assert evaluate(model, splits.test, preprocess) == pytest.approx(two["test_accuracy"], abs=1e-4)

    distilled = json.loads((run_dir / "distill" / RESULT_FILE).read_text())
    assert distilled["processes"] == 2 and len(distilled["history"]) == 2 and len(distilled["baseline_history"]) == 2
    assert 0 < distilled["student_test_accuracy"] <= 100 and distilled["baseline_test_accuracy"] is not None
    assert load_checkpoint(run_dir / "distill")[0] is not None

    # Only the main process wrote, each result once; nothing half-written left behind
    writes = {rank: (tmp_path / f"writes.{rank}").read_text().split() for rank in ("0", "1")
              if (tmp_path / f"writes.{rank}").exists()}
    assert "1" not in writes, writes.get("1", [])[:5]
    assert writes["0"].count(str(run_dir / "finetune" / RESULT_FILE)) == 1
    assert writes["0"].count(str(run_dir / "distill" / RESULT_FILE)) == 1
    assert str(run_dir / "distill" / "baseline" / "best.safetensors") in writes["0"]
    assert not [p for p in run_dir.rglob(".*") if p.name != ".lock"]
