"""Decisions that survive a noisy machine: paired, interleaved rounds and the interval of the latency ratio
(edgetl.bench.paired), and ``select`` judging on them (edgetl.pipeline.select, the race of edgetl.pipeline.race)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from edgetl.bench import measure
from edgetl.bench.paired import MARGIN, SETTLE_SECONDS, Ratio, interleaved_rounds, paired_ratio, pick
from edgetl.errors import RecipeError
from edgetl.pipeline.plan import Planned
from edgetl.pipeline.select import select
from edgetl.recipe import load_recipe
from edgetl.runners import InputSpec


class NoisyMachine:
    """A fake clock on a shared machine: every call costs its model's time times the machine's load at that moment
    (1, or ``burst`` inside the burst window) times a little seeded jitter (±10%). Nanoseconds, exact."""

    def __init__(self, burst: float = 1.0, window_ms: tuple[float, float] = (0.0, 0.0), seed: int = 0):
        self.now, self.burst, self.window, self.rng = 0, burst, window_ms, np.random.default_rng(seed)

    def __call__(self) -> int:
        return self.now

    def load(self) -> float:
        return self.burst if self.window[0] <= self.now / 1e6 < self.window[1] else 1.0

    def model(self, ms: float):
        def call():
            self.now += int(ms * 1e6 * self.load() * self.rng.uniform(0.9, 1.1))
        return call


class FakeRunner:
    name, input_spec = "fake:cpu", InputSpec((None, 4))

    def __init__(self, call):
        self.call = call

    def predict(self, batch):
        self.call()
        return batch


def separate_medians(machine: NoisyMachine, models: dict[str, float]) -> dict[str, float]:
    """The old way: each model timed on its own, one after the other, compared by median."""
    return {name: measure(FakeRunner(machine.model(ms)), batch_size=1, warmup=2, min_runs=30, max_seconds=0.03,
                          target_rel_ci=0, clock=machine).median_ms for name, ms in models.items()}


# -- the ratio and its verdict ----------------------------------------------------------------


def test_ratio_verdict_needs_the_whole_interval_beyond_the_margin():
    assert Ratio(0.80, 0.75, 0.90, 20).verdict() == "faster"
    assert Ratio(1.30, 1.10, 1.40, 20).verdict() == "slower"
    assert Ratio(0.90, 0.80, 0.96, 20).verdict() == "tie"  # the interval reaches into the 5% margin
    assert Ratio(0.90, 0.80, 0.96, 20).verdict(margin=0.02) == "faster"
    assert Ratio(1.0, 1.0, 1.0, 20).verdict(margin=0) == "tie"


def test_paired_ratio_is_the_median_per_round_ratio_with_a_distribution_free_interval():
    a, b = [2.0] * 10 + [4.0] * 10, [1.0] * 10 + [2.0] * 10  # a load step: every round still says 2x
    ratio = paired_ratio(a, b)
    assert (ratio.ratio, ratio.low, ratio.high, ratio.rounds) == (2.0, 2.0, 2.0, 20)
    with pytest.raises(ValueError, match="at least 6"):
        paired_ratio([1.0] * 5, [1.0] * 5)
    with pytest.raises(ValueError, match="one to one"):
        paired_ratio([1.0] * 8, [1.0] * 7)


def test_rounds_interleave_every_candidate_in_a_rotating_order():
    order: list[str] = []
    machine = NoisyMachine()
    calls = {name: (lambda n=name: (order.append(n), machine.model(1.0)())) for name in "abc"}
    slept: list[float] = []
    finished: list[int] = []
    times = interleaved_rounds(calls, rounds=6, calls_per_round=2, warmup=1, clock=machine, sleep=slept.append,
                               on_round=finished.append)
    assert finished == [1, 2, 3, 4, 5, 6]  # after each round, outside the timed calls
    assert slept == [SETTLE_SECONDS] * 18  # a pause before every turn: the previous model's threads go idle
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6, "c": 6}
    firsts = [order[i * 9] for i in range(6)]  # 3 candidates x (1 warm-up + 2 timed) per round
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert all(0.9 <= t <= 1.1 for ts in times.values() for t in ts)
    with pytest.raises(ValueError, match="at least 6"):
        interleaved_rounds(calls, rounds=5, clock=machine)


# -- a 2x burst does not flip the decision -----------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_a_2x_burst_flips_separate_medians_but_not_the_paired_pick(seed):
    models = {"fp32": 1.0, "int8": 0.8}  # int8 is truly 20% faster
    # The old way: the burst lands while int8 is timed (fp32 first, ~34 ms of fake time each), and it "loses".
    old = separate_medians(NoisyMachine(burst=2.0, window_ms=(40.0, 80.0), seed=seed), models)
    assert old["int8"] > old["fp32"]
    # Paired rounds: the same burst over ~40% of the race hits both candidates of a round alike.
    machine = NoisyMachine(burst=2.0, window_ms=(40.0, 110.0), seed=seed)
    times = interleaved_rounds({n: machine.model(ms) for n, ms in models.items()}, rounds=20, clock=machine,
                               settle_s=0)
    assert machine.now / 1e6 > 200  # the burst covered about a third of it
    chosen = pick(times, tie_key=lambda name: 0)
    assert chosen.winner == "int8" and chosen.tied == ["int8"]
    ratio = chosen.ratios["fp32"]  # fp32 over the winner
    assert ratio.verdict() == "slower" and 1.15 < ratio.ratio < 1.35 and ratio.low > 1 + MARGIN


@pytest.mark.parametrize("seed", range(5))
def test_within_the_margin_the_tie_rule_decides_every_time(seed):
    """fp32 2% faster than int8: noise decides which median is lower, the tie rule (smaller file) what ships."""
    machine = NoisyMachine(burst=2.0, window_ms=(30.0, 90.0), seed=seed)
    models, sizes = {"fp32": 0.98, "int8": 1.0}, {"fp32": 4_000_000, "int8": 1_100_000}
    times = interleaved_rounds({n: machine.model(ms) for n, ms in models.items()}, rounds=20, clock=machine,
                               settle_s=0)
    chosen = pick(times, tie_key=lambda name: sizes[name])
    assert chosen.winner == "int8" and sorted(chosen.tied) == ["fp32", "int8"]
    assert chosen.ratios["fp32"].verdict() == "tie"


# -- select on the race ---------------------------------------------------------------------------


def planned(name: str, model: str = "student", fmt: str = "onnx") -> Planned:
    return Planned(name, model, name, fmt, {"onnx": "onnxruntime:CPUExecutionProvider", "openvino": "openvino:CPU"}[fmt],
                   "model.onnx" if fmt == "onnx" else "model.xml")


def fake_run(race_times: dict[str, list[float]] | None, sizes: dict[str, int], medians: dict[str, float],
             models: dict[str, str] | None = None, formats: dict[str, str] | None = None, overrides=()):
    """A RunContext stand-in with just what ``select`` reads, and the validation and bench records it judges."""
    models, formats = models or {}, formats or {}
    plan = [planned(n, models.get(n, "student"), formats.get(n, "onnx")) for n in sizes]
    ctx = SimpleNamespace(plan=lambda: plan, skip_reason=lambda a: None, recipe=load_recipe(None, list(overrides)))
    validation = {n: {"passed": True, "reasons": [], "agreement": 0.995, "runtime": "x"} for n in sizes}
    benchmarks = {n: {"model_size_bytes": sizes[n], "stats": [{"batch_size": 1, "median_ms": medians[n]}]}
                  for n in sizes}
    race = None if race_times is None else {"batch_size": 1, "times_ms": race_times}
    return ctx, validation, benchmarks, race


def test_select_ships_the_race_winner_not_the_lower_median_and_records_the_ratio():
    rng = np.random.default_rng(0)
    load = rng.uniform(1, 2, 20)  # the machine's load, shared by both in each round
    times = {"student-onnx-fp32": list(1.0 * load), "student-onnx-int8": list(0.6 * load)}
    # The bench stage's medians were taken minutes apart: a burst made the int8 one look slower.
    ctx, validation, benchmarks, race = fake_run(times, {"student-onnx-fp32": 4_000_000, "student-onnx-int8": 1_000_000},
                                                 {"student-onnx-fp32": 0.5, "student-onnx-int8": 0.9})
    decisions = select(ctx, validation, benchmarks, race)
    assert decisions["student-onnx-int8"]["status"] == "shipped" and decisions["student-onnx-int8"]["default"]
    lost = decisions["student-onnx-fp32"]
    assert lost["status"] == "lost" and lost["reason"].startswith("slower than student-onnx-int8: 1.67× (95% CI")
    assert lost["ratio"]["vs"] == "student-onnx-int8" and lost["ratio"]["low"] > 1.05 and lost["ratio"]["rounds"] == 20
    assert decisions["student-onnx-int8"]["ratio"]["vs"] == "student-onnx-fp32"
    # Without a race the medians decide, as before, and say they were timed separately.
    decisions = select(ctx, validation, benchmarks, None)
    assert decisions["student-onnx-fp32"]["status"] == "shipped"
    assert "each timed on its own" in decisions["student-onnx-int8"]["reason"]
    assert decisions["student-onnx-int8"]["ratio"]["low"] is None


def test_select_breaks_a_tie_by_file_size_then_agreement_then_runtime():
    load = np.random.default_rng(1).uniform(1, 2, 20)
    same = {"student-onnx-fp16": list(1.00 * load), "student-openvino-fp16": list(1.01 * load)}
    ctx, validation, benchmarks, race = fake_run(same, {"student-onnx-fp16": 2_000_000, "student-openvino-fp16": 2_000_000},
                                                 {"student-onnx-fp16": 1.0, "student-openvino-fp16": 1.0},
                                                 formats={"student-openvino-fp16": "openvino"},
                                                 overrides=["ship.formats=['onnx']"])
    validation["student-openvino-fp16"]["agreement"] = 0.999
    # ship.formats leaves openvino out: the onnx one ships alone
    assert select(ctx, validation, benchmarks, race)["student-openvino-fp16"]["reason"].startswith("format openvino")
    ctx.recipe = load_recipe(None, ["ship.formats=['onnx', 'openvino']"])
    decisions = select(ctx, validation, benchmarks, race)
    assert decisions["student-openvino-fp16"]["default"]  # same size, higher agreement
    assert "tied on speed with student-onnx-fp16" in decisions["student-openvino-fp16"]["reason"]
    assert "has the higher agreement (99.90% vs 99.50%)" in decisions["student-openvino-fp16"]["reason"]
    # the other format from the same model ships beside it, not the default, with its ratio to the default
    assert decisions["student-onnx-fp16"]["status"] == "shipped" and not decisions["student-onnx-fp16"]["default"]
    assert decisions["student-onnx-fp16"]["ratio"]["vs"] == "student-openvino-fp16"


def test_select_the_teacher_loses_to_the_student_with_the_ratio_in_its_reason():
    load = np.random.default_rng(2).uniform(1, 3, 20)
    times = {"onnx-fp32": list(3.0 * load), "student-onnx-fp32": list(1.0 * load), "student-onnx-int8": list(1.02 * load)}
    sizes = {"onnx-fp32": 13_000_000, "student-onnx-fp32": 5_000_000, "student-onnx-int8": 1_500_000}
    ctx, validation, benchmarks, race = fake_run(times, sizes, {n: 1.0 for n in sizes}, models={"onnx-fp32": "teacher"})
    decisions = select(ctx, validation, benchmarks, race)
    assert decisions["student-onnx-int8"]["default"]  # tied with fp32 within 5%, a smaller file
    assert decisions["student-onnx-int8"]["reason"].endswith("has the smaller file (1.5 vs 5 MB)")
    assert decisions["student-onnx-fp32"]["reason"].startswith("tied on speed with student-onnx-int8")
    teacher = decisions["onnx-fp32"]["reason"]
    assert teacher.startswith("teacher model: the bundle ships the student, whose student-onnx-int8 won (2.94×")


def test_race_rounds_below_six_are_refused_at_recipe_load():
    with pytest.raises(RecipeError, match="bench.race_rounds = 3 gives no 95% interval"):
        load_recipe(None, ["bench.race_rounds=3"])
    assert load_recipe(None, ["bench.race_rounds=0"]).bench.race_rounds == 0
    assert math.isclose(load_recipe(None, []).bench.race_margin, MARGIN)


# -- the target picks ------------------------------------------------------------------------------


def target_result(race_times: dict[str, list[float]] | None, medians: dict[str, float], sizes: dict[str, int]):
    from edgetl.bench.results import RuntimeResult, TargetResult

    runtimes = [RuntimeResult(rt, "ok", artifact=rt.split(":")[0], model_size_bytes=sizes[rt],
                              stats=[{"batch_size": 1, "median_ms": medians[rt]}]) for rt in medians]
    race = None if race_times is None else {"batch_size": 1, "rounds": 20, "times_ms": race_times, "margin": MARGIN}
    return TargetResult("pi", "pi.local", runtimes=runtimes, race=race)


def test_a_target_pick_rests_on_the_device_race_and_its_tie_rule():
    from edgetl.bench.results import TargetsReport

    load = np.random.default_rng(3).uniform(1, 2, 20)
    ort, ov = "onnxruntime:CPUExecutionProvider", "openvino:CPU"
    sizes = {ort: 3_000_000, ov: 1_500_000}
    # openvino clearly faster on the device, though a burst made its separate median the higher one
    report = TargetsReport("b", {"pi": target_result({ort: list(1.5 * load), ov: list(1.0 * load)},
                                                     {ort: 1.0, ov: 1.2}, sizes)})
    pick = report.choices()["pi"]
    assert pick["runtime"] == ov and pick["ratio"]["vs"] == ort and pick["ratio"]["low"] > 1.05
    assert not pick["ratio"]["tied"] and "1.50× its latency (95% CI" in report.notes()[0]
    # within the margin: tied, the smaller file (openvino's) wins even with the higher median
    tied = TargetsReport("b", {"pi": target_result({ort: list(1.0 * load), ov: list(1.02 * load)},
                                                   {ort: 1.0, ov: 1.2}, sizes)}).choices()["pi"]
    assert tied["runtime"] == ov and tied["ratio"]["tied"]
    # no race (an older agent, or race_rounds = 0): the medians, as before
    assert TargetsReport("b", {"pi": target_result(None, {ort: 1.0, ov: 1.2}, sizes)}).choices()["pi"]["runtime"] == ort
