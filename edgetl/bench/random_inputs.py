"""Random inputs for timing a bare model file: one batch of the model's own input shapes and dtypes.

A model file has no preprocessing and no data, so the inputs are made from what it declares. A dynamic batch
axis (the first) is left to each target's ``batch_sizes`` (the agent repeats the rows); every other dynamic
axis needs a value: the user's ``--shape NAME=1x3x224x224``, or for the token inputs of a text model
(``input_ids``, ``attention_mask``, ``token_type_ids``, ``position_ids``) the sequence length (``--seq-len``,
default 128). Token inputs get what a tokenizer would give (small ids, a mask of ones, type ids of zero);
other float inputs standard-normal values, other integer inputs zeros.

>>> options = InputOptions.parse(["image=1x3x224x224"], seq_len=None)
>>> batch, described = make_inputs(model_inputs, options, source="model.onnx")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import EdgetlError
from ..registry import Registry

DEFAULT_SEQ_LEN = 128
DEFAULT_ROWS = 4  # distinct random rows for a dynamic batch axis; the agent repeats them to each batch size
TOKEN_IDS = (1, 100)  # [low, high): inside any real vocabulary, clear of the usual padding id 0
# The dtypes edgetl's runners feed (backends.py maps every other input type to float32).
FED_DTYPES = ("float32", "float16", "int64", "int32")


@dataclass(frozen=True)
class ModelInput:
    """One input a model file declares: its name, its dims (an int, or the dynamic axis' name, "?" without
    one) and its numpy dtype name."""

    name: str
    dims: tuple[int | str, ...]
    dtype: str

    @property
    def shown(self) -> str:
        return f"({', '.join(str(d) for d in self.dims)})"

    def dynamic_axes(self) -> list[int]:
        """The dynamic axes after the batch axis."""
        return [axis for axis, dim in enumerate(self.dims) if axis > 0 and not isinstance(dim, int)]


@dataclass(frozen=True)
class Fill:
    """How an input's values are made: what to call them, and a maker of ``shape`` from a random generator."""

    describe: str
    make: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


# Inputs a tokenizer fills, by the names Hugging Face exporters give them: their non-batch dynamic axes take the
# sequence length, and their values look like a tokenizer's (the timing does not depend on them, a crash would).
TOKEN_INPUTS: Registry[Fill] = Registry("token input")
TOKEN_INPUTS.register("input_ids", Fill(f"token ids {TOKEN_IDS[0]}-{TOKEN_IDS[1] - 1}",
                                        lambda rng, shape: rng.integers(*TOKEN_IDS, shape)))
TOKEN_INPUTS.register("attention_mask", Fill("ones", lambda rng, shape: np.ones(shape)))
TOKEN_INPUTS.register("token_type_ids", Fill("zeros", lambda rng, shape: np.zeros(shape)))
TOKEN_INPUTS.register("position_ids", Fill("positions 0..L-1",
                                           lambda rng, shape: np.broadcast_to(np.arange(shape[-1]), shape)))
_FLOAT = Fill("standard normal", lambda rng, shape: rng.standard_normal(shape))
_INTEGER = Fill("zeros", lambda rng, shape: np.zeros(shape))


@dataclass
class InputOptions:
    """What a model file's inputs cannot say: full shapes ({input name: dims}, batch first; "" for the only
    input) for inputs with dynamic axes, and the sequence length of token inputs (None: a token input's
    ``shapes`` entry, else 128)."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seq_len: int | None = None

    @property
    def given(self) -> bool:
        return bool(self.shapes) or self.seq_len is not None

    @classmethod
    def parse(cls, shapes: Sequence[str] = (), seq_len: int | None = None) -> InputOptions:
        """From the CLI: ``--shape NAME=1x3x224x224`` (or ``1x3x224x224`` for a single-input model) and
        ``--seq-len``; an EdgetlError names a malformed value."""
        parsed: dict[str, tuple[int, ...]] = {}
        for text in shapes:
            name, _, dims = text.rpartition("=")  # input names may hold "=", dims never do
            try:
                values = tuple(int(d) for d in dims.replace(",", "x").split("x"))
            except ValueError:
                values = ()
            if not values or min(values) < 1:
                raise EdgetlError(f"--shape {text!r}: expected NAME=DIMS with positive integer dims, batch first, "
                                  "e.g. --shape image=1x3x224x224")
            if name in parsed:
                raise EdgetlError(f"--shape {name or '(unnamed)'} is given twice; give each input once")
            parsed[name] = values
        if seq_len is not None and seq_len < 1:
            raise EdgetlError(f"--seq-len must be >= 1, got {seq_len}")
        return cls(parsed, seq_len)


def resolve_shapes(inputs: Sequence[ModelInput], options: InputOptions, *, source: str) -> dict[str, tuple[int, ...]]:
    """One row's shape per input (the batch axis left out); an EdgetlError names each input whose dynamic axes
    have no value, with the option that gives one."""
    shapes = _named_shapes(inputs, options, source)
    seq_len = options.seq_len or next((s[1] for name, s in shapes.items() if name in TOKEN_INPUTS and len(s) > 1),
                                      DEFAULT_SEQ_LEN)
    resolved, missing = {}, []
    for model_input in inputs:
        if not model_input.dims:
            raise EdgetlError(f"{source}: input {model_input.name!r} is a scalar; edgetl times models whose inputs "
                              "have a batch axis first")
        given = shapes.get(model_input.name)
        if given is not None:
            resolved[model_input.name] = _checked(model_input, given, source)
        elif model_input.name in TOKEN_INPUTS:
            resolved[model_input.name] = tuple(d if isinstance(d, int) else seq_len for d in model_input.dims[1:])
        elif model_input.dynamic_axes():
            dynamic = ", ".join(_axis_name(model_input.dims[axis], axis) for axis in model_input.dynamic_axes())
            example = "x".join("1" if axis == 0 else str(d) if isinstance(d, int) else f"<{_axis_name(d, axis)}>"
                               for axis, d in enumerate(model_input.dims))
            missing.append(f"input {model_input.name!r} {model_input.shown} has dynamic dims {dynamic}; "
                           f"pass its full shape, batch first: --shape {model_input.name}={example}")
        else:
            resolved[model_input.name] = tuple(int(d) for d in model_input.dims[1:])
    if missing:
        raise EdgetlError(f"{source}: " + "; ".join(missing))
    return resolved


def make_inputs(inputs: Sequence[ModelInput], options: InputOptions, *, source: str,
                seed: int = 0) -> tuple[np.ndarray | dict[str, np.ndarray], str]:
    """Reproducible random inputs for ``inputs`` (one array for a single-input model, else {name: array}), each
    in the model's own dtype, and a one-line description of them."""
    for model_input in inputs:
        if model_input.dtype not in FED_DTYPES:
            raise EdgetlError(f"{source}: input {model_input.name!r} is {model_input.dtype}; edgetl's runners feed "
                              f"{', '.join(FED_DTYPES)} inputs only, so this model cannot be timed here")
    shapes = resolve_shapes(inputs, options, source=source)
    fixed = next((m.dims[0] for m in inputs if isinstance(m.dims[0], int) and m.dims[0] > 0), None)
    rows = fixed or DEFAULT_ROWS
    rng = np.random.default_rng(seed)
    arrays, parts = {}, []
    for model_input in inputs:
        fill = TOKEN_INPUTS.get(model_input.name) if model_input.name in TOKEN_INPUTS else (
            _FLOAT if np.dtype(model_input.dtype).kind == "f" else _INTEGER)
        shape = (rows, *shapes[model_input.name])
        arrays[model_input.name] = np.ascontiguousarray(fill.make(rng, shape), dtype=model_input.dtype)
        batch = str(fixed) if fixed else "batch"
        parts.append(f"{model_input.name} {model_input.dtype} ({', '.join([batch, *map(str, shape[1:])])}) "
                     f"{fill.describe}")
    batch_input = arrays if len(arrays) > 1 else next(iter(arrays.values()))
    return batch_input, f"random inputs of {source}'s own shapes: " + ", ".join(parts)


def _named_shapes(inputs: Sequence[ModelInput], options: InputOptions, source: str) -> dict[str, tuple[int, ...]]:
    """``options.shapes`` with the unnamed entry given its input's name; an EdgetlError names an unknown input."""
    names = [m.name for m in inputs]
    shapes = dict(options.shapes)
    if "" in shapes:
        if len(names) != 1:
            raise EdgetlError(f"--shape {'x'.join(map(str, shapes['']))} needs the input's name, as NAME=DIMS: "
                              f"{source} has inputs {', '.join(names)}")
        shapes[names[0]] = shapes.pop("")
    unknown = [name for name in shapes if name not in names]
    if unknown:
        raise EdgetlError(f"--shape names {', '.join(map(repr, unknown))}, not an input of {source}; "
                          f"its inputs are {', '.join(names)}")
    return shapes


def _axis_name(dim: int | str, axis: int) -> str:
    return f"axis{axis}" if dim in ("", "?") else str(dim)


def _checked(model_input: ModelInput, given: tuple[int, ...], source: str) -> tuple[int, ...]:
    """One row's shape from a full ``--shape`` (batch first), after checking it against the model's dims."""
    expected = "x".join(str(d) if isinstance(d, int) else "N" for d in model_input.dims)
    if len(given) != len(model_input.dims):
        raise EdgetlError(f"--shape {model_input.name}={'x'.join(map(str, given))} has {len(given)} dims; "
                          f"{source}'s input {model_input.name!r} has {len(model_input.dims)}: {expected}")
    for axis, (dim, value) in enumerate(zip(model_input.dims, given)):
        if isinstance(dim, int) and dim > 0 and dim != value:
            raise EdgetlError(f"--shape {model_input.name}={'x'.join(map(str, given))}: axis {axis} of "
                              f"{source}'s input {model_input.name!r} is fixed at {dim} ({expected})")
    return given[1:]
