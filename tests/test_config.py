"""The typed TOML -> dataclass loader (``edgetl.config``) that recipes and target profiles share, and the
target-profile checks built on it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from edgetl.bench.targets import SHIPPED_DIR, load_target
from edgetl.config import INTERNAL, Range, checked, field_hint, is_list, load, plain_folder_name, ranged
from edgetl.errors import RecipeError, TargetError


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Inner:
    rate: float = ranged(0.5, gt=0, lt=1)
    sizes: list[int] = ranged([1, 2], ge=1, min_items=1)
    mode: Literal["fast", "slow", "exact"] = "fast"


@dataclass
class Extra:
    cores: int = ranged(0, ge=0)


@dataclass
class Outer:
    name: str
    flag: bool = False
    count: int = 3
    colour: Colour = Colour.RED
    inner: Inner = field(default_factory=Inner)
    extra: Extra | None = None
    folder: str = checked("out", plain_folder_name)
    origin: str = field(default="", metadata={INTERNAL: True})


def test_nested_tables_lists_and_defaults():
    built = load(Outer, {"name": "x", "count": 4, "inner": {"rate": 0.25, "sizes": [8], "mode": "exact"}})
    assert built == Outer(name="x", count=4, inner=Inner(rate=0.25, sizes=[8], mode="exact"))
    assert built.extra is None and built.inner is not Outer(name="y").inner  # list defaults are not shared


def test_optional_table_and_str_enum():
    built = load(Outer, {"name": "x", "extra": {"cores": 2}, "colour": "blue"})
    assert built.extra == Extra(cores=2) and built.colour is Colour.BLUE


def test_float_accepts_an_int_but_int_and_bool_are_strict():
    with pytest.raises(RecipeError, match=r"^inner\.rate must be > 0 and < 1, got 1\.0$"):
        load(Outer, {"name": "x", "inner": {"rate": 1}})  # the int 1 became the float 1.0, then its range failed
    with pytest.raises(RecipeError, match="^flag must be bool, got 1$"):
        load(Outer, {"name": "x", "flag": 1})
    with pytest.raises(RecipeError, match="^count must be int, got True$"):
        load(Outer, {"name": "x", "count": True})
    with pytest.raises(RecipeError, match=r"^count must be int, got 3\.0$"):
        load(Outer, {"name": "x", "count": 3.0})


@dataclass
class Rates:
    low: float = 0.5
    high: float = 2.0


def test_an_int_for_a_float_becomes_a_float():
    built = load(Rates, {"low": 0, "high": 3})
    assert built == Rates(0.0, 3.0) and type(built.low) is float and type(built.high) is float


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "inner": {"sped": 1}}, r"^unknown key inner\.sped; known keys here: mode, rate, sizes$"),
        ({"name": "x", "origin": "f"}, r"^unknown key origin; known keys here: colour, count, extra, flag, folder, "),
        ({}, "^missing required key name$"),
        ({"name": "x", "inner": 3}, "^inner must be a table, got 3$"),
        ({"name": "x", "inner": {"sizes": 8}}, r"^inner\.sizes must be a list, got 8$"),
        ({"name": "x", "inner": {"sizes": []}}, r"^inner\.sizes must list at least 1 item, got \[\]$"),
        ({"name": "x", "inner": {"sizes": [2, 0]}}, r"^inner\.sizes\[1\] must be >= 1, got 0$"),
        ({"name": "x", "inner": {"sizes": [2, "3"]}}, r"^inner\.sizes\[1\] must be int, got '3'$"),
        ({"name": "x", "inner": {"mode": "quick"}},
         r"^inner\.mode must be one of 'fast', 'slow' or 'exact', got 'quick'$"),
        ({"name": "x", "colour": "green"}, r"^colour must be 'red' or 'blue', got 'green'$"),
        ({"name": "x", "extra": {"cores": -1}}, r"^extra\.cores must be >= 0, got -1$"),
        ({"name": "x", "folder": "../up"}, r"^folder must be a plain folder name .*, got '\.\./up'$"),
        ({"name": 5}, "^name must be str, got 5$"),
    ],
)
def test_every_error_is_one_line_naming_the_full_key(data, message):
    with pytest.raises(RecipeError, match=message) as caught:
        load(Outer, data)
    assert "\n" not in str(caught.value)


def test_prefix_error_class_noun_and_renamed_keys():
    with pytest.raises(TargetError, match=r"^f\.toml: unknown profile key inner\.x; known keys here"):
        load(Outer, {"name": "x", "inner": {"x": 1}}, error=TargetError, prefix="f.toml: ", noun="profile key")
    with pytest.raises(RecipeError, match="^inner.speed is now inner.rate$"):
        load(Outer, {"name": "x", "inner": {"speed": 1}}, renamed={"inner.speed": "inner.speed is now inner.rate"})


def test_range_describes_itself_and_notes_what_the_value_means():
    assert Range(ge=0, le=1).describe() == "within [0, 1]"
    assert Range(gt=0, le=1.5).describe() == "> 0 and <= 1.5"
    assert Range(ge=2, note="batch norm")(1) == "must be >= 2, got 1; batch norm"
    assert Range(ge=2)(2) is None and Range(gt=0)([1, 2]) is None


def test_plain_folder_name():
    for good in ("run", "try-2", "a.b_c"):
        assert plain_folder_name(good) is None
    for bad in ("", ".", "..", "../x", "a/b", "a\\b", ".hidden", "c:x", " x"):
        assert plain_folder_name(bad), bad


def test_field_hint_walks_dotted_keys():
    assert is_list(field_hint(Outer, "inner.sizes")) and not is_list(field_hint(Outer, "inner.rate"))
    assert field_hint(Outer, "extra.cores") is int
    assert field_hint(Outer, "inner.nope") is None and field_hint(Outer, "count.x") is None


# -- target profiles ---------------------------------------------------------------------------------------


def test_the_shipped_profiles_live_inside_the_package():
    import edgetl

    assert SHIPPED_DIR == Path(edgetl.__file__).resolve().parent / "targets"
    assert {p.stem for p in SHIPPED_DIR.glob("*.toml")} >= {"local-cpu", "raspberry-pi-4"}
    assert Path(load_target("local-cpu").source) == SHIPPED_DIR / "local-cpu.toml"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[connection]\nport = 70000\n", r"connection\.port must be within \[1, 65535\], got 70000"),
        ('[connection]\nkind = "telnet"\n', r"connection\.kind must be 'local' or 'ssh', got 'telnet'"),
        ("runtimes = []\n", "runtimes must list at least 1 item, got \\[\\]; e.g. 'onnxruntime:CPUExecutionProvider'"),
        ("batch_sizes = [1, 0]\n", r"batch_sizes\[1\] must be >= 1, got 0"),
        ("threads = -1\n", "threads must be >= 0, got -1; 0 = the runtime's default"),
        ("[measure]\nmin_runs = 0\n", r"measure\.min_runs must be >= 1, got 0"),
        ("[measure]\ntimeout_s = 0\n", r"measure\.timeout_s must be >= 1"),
        ("[measure]\nwarmup = -1\n", r"measure\.warmup must be >= 0"),
        ("[budgets]\nlatency_ms = -5\n", r"budgets\.latency_ms must be >= 0"),
        ("[emulate]\ncores = -1\n", r"emulate\.cores must be >= 0"),
        ('[connection]\nkind = "ssh"\nhost = "pi"\n[emulate]\ncores = 1\n',
         r"\[emulate\] applies to local targets only"),
        ('runtimes = ["onnxruntime:CPUExecutionProvider", "tflite:CPU"]\n',
         r"runtimes\[1\]: runtime 'tflite:CPU' .*unknown .*'tflite'.*onnxruntime"),
        ('source = "elsewhere.toml"\n', "unknown key source; known keys here"),
        ("[connection]\nport = 22.5\n", r"connection\.port must be int, got 22\.5"),
    ],
)
def test_a_bad_profile_fails_in_one_line_naming_the_file_and_key(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TargetError, match=message) as caught:
        load_target(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_a_profile_without_a_device_part_and_with_floats_for_ints(tmp_path: Path):
    path = tmp_path / "ok.toml"
    path.write_text('runtimes = ["openvino:CPU", "torch:cpu"]\n[measure]\nmax_seconds = 2\n[budgets]\nmodel_mb = 10\n')
    profile = load_target(path)
    assert profile.runtimes == ["openvino:CPU", "torch:cpu"] and profile.measure.max_seconds == 2.0
    assert isinstance(profile.budgets.model_mb, float) and profile.name == "ok" and profile.source == str(path)
